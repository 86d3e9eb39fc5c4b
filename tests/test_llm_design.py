"""The design check of an LLM tier (experiments/llm_design.py) on hand-made records: each criterion
against its definition computed here from the same numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _spec_file(tmp_path):
    text = """
name = "design_test"
tier = "llm"
model = "unused-model-folder"
seed = 0
[protocol]
task = "binary"
label_metric = "brier_skill"
steps = 12
record_at = [2, 4]
eval_examples = 40
n_candidates = 3
[grid]
n = [20, 600]
label_noise = [0.0, 0.3]
duplicate_rate = [0.0]
imbalance = [0.0, 0.9]
off_task = [0.0, 0.2]
lr = [1e-4, 3e-3]
batch_size = [2]
lora_r = [8]
[[reference]]
n = 600
label_noise = 0.0
duplicate_rate = 0.0
imbalance = 0.0
lr = 3e-4
batch_size = 2
lora_r = 8
"""
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def _write(out, spec, rng):
    from plan_probe.experiments.llm_eval import metrics_from_nll
    from plan_probe.experiments.llm_tier import candidates

    truth = np.tile([0, 1], 20)
    (out / "records").mkdir(parents=True)
    base_nll = rng.exponential(1.0, (40, 2))
    (out / "base.json").write_text(json.dumps({"label": metrics_from_nll(base_nll, truth)["brier_skill"],
                                               "label_se": metrics_from_nll(base_nll, truth)["brier_skill_se"],
                                               "metrics": metrics_from_nll(base_nll, truth), "eval_nll": base_nll.tolist(),
                                               "eval_truth": truth.tolist()}))
    nlls = {}
    for k, cand in enumerate(candidates(spec)):
        # run k pushes the true label's NLL down by k+1: a growing gain over the base model
        nll = rng.exponential(1.0, (40, 2))
        nll[np.arange(40), truth] -= 0.8 * (k + 1)
        nll = np.maximum(nll, 0.0)
        nlls[cand.run_id] = nll
        metrics = metrics_from_nll(nll, truth)
        rec = {"run_id": cand.run_id, "variant_id": cand.variant_id, "variant": cand.variant, "hp_config": cand.hp,
               "seed": cand.seed, "status": "ok", "error": None, "wall_time_s": 10.0 + k, "device": "cpu",
               "result": {"metrics": metrics, "eval_nll": nll.tolist(), "eval_truth": truth.tolist(), "cpu_time_s": 5.0 + k}}
        (out / "records" / f"{cand.run_id}.json").write_text(json.dumps(rec))
    return base_nll, truth, nlls


def test_design_check_criteria_against_their_definitions(tmp_path):
    from plan_probe.experiments.llm_design import DesignCriteria, design_check, design_markdown
    from plan_probe.experiments.llm_eval import example_scores, metrics_from_nll
    from plan_probe.experiments.llm_tier import candidates, load_llm_spec

    spec = load_llm_spec(_spec_file(tmp_path))
    out = tmp_path / "out"
    base_nll, truth, nlls = _write(out, spec, np.random.default_rng(0))
    res = design_check(spec, out)
    cands = candidates(spec)
    assert [r["run_id"] for r in res["runs"]] == [c.run_id for c in cands] and res["records"] == 4
    labels = np.array([metrics_from_nll(nlls[c.run_id], truth)["brier_skill"] for c in cands])
    ses = np.array([metrics_from_nll(nlls[c.run_id], truth)["brier_skill_se"] for c in cands])
    ref = res["runs"][0]  # the reference: clean data, 600 records, lr 3e-4 -> a clean sensible run
    diff = example_scores(nlls[cands[0].run_id], truth, "brier_skill") - example_scores(base_nll, truth, "brier_skill")
    assert ref["clean"] and ref["gain"] == pytest.approx(labels[0] - metrics_from_nll(base_nll, truth)["brier_skill"], abs=1e-9)
    assert ref["gain_in_se"] == pytest.approx(diff.mean() / ses[0]) and ref["paired_gain_se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(40))
    clean = [r for r in res["runs"] if r["clean"]]
    crit = res["criteria"]
    assert crit["clean_runs_beat_base"]["min_gain_in_se"] == pytest.approx(min(r["gain_in_se"] for r in clean))
    assert crit["clean_runs_beat_base"]["pass"] == (min(r["gain_in_se"] for r in clean) >= 5)
    far = np.abs(labels - np.median(labels)).max() / labels.std(ddof=1)
    assert crit["bounded_label"]["max_sds_from_median"] == pytest.approx(far) and crit["bounded_label"]["pass"] == (far <= 5)
    assert crit["se_vs_spread"]["ratio"] == pytest.approx(ses.mean() / labels.std(ddof=1))
    assert crit["run_length"]["ratio"] == 3.0 and crit["run_length"]["pass"] is True
    # lr 3e-3 lies above the practitioner range (1e-5, 1e-3); duplicates are never varied
    assert crit["practitioner_ranges"]["pass"] is False and crit["practitioner_ranges"]["lr"] == [1e-4, 3e-3]
    assert crit["defects_covered"]["varied"] == {"size": True, "label_noise": True, "duplicate_rate": False, "imbalance": True,
                                                 "off_task": True} and crit["defects_covered"]["pass"] is False
    assert res["cpu_time_s"]["median"] == pytest.approx(6.5) and res["wall_time_s"]["total"] == pytest.approx(46.0)
    strict = design_check(spec, out, DesignCriteria(min_gain_se=1e6))
    assert strict["criteria"]["clean_runs_beat_base"]["pass"] is False
    table = design_markdown(res)
    assert all(c.run_id in table for c in cands) and "| run_length |" in table and "share 'negative'" in table


def test_design_check_refuses_a_base_model_scored_on_other_examples(tmp_path):
    from plan_probe.experiments.llm_tier import load_llm_spec, main

    spec_path = _spec_file(tmp_path)
    out = tmp_path / "out"
    _write(out, load_llm_spec(spec_path), np.random.default_rng(1))
    base = json.loads((out / "base.json").read_text())
    base["eval_truth"] = base["eval_truth"][::-1][1:] + [0]
    (out / "base.json").write_text(json.dumps(base))
    assert main(["check", str(spec_path), "--out", str(out)]) == 2
    with pytest.raises(ValueError, match="DesignCriteria|max_sds"):
        from plan_probe.experiments.llm_design import DesignCriteria

        DesignCriteria(max_sds=0)


def test_check_into_replaces_only_the_marked_block(tmp_path):
    from plan_probe.experiments.llm_design import BEGIN, END
    from plan_probe.experiments.llm_tier import load_llm_spec, main

    spec_path = _spec_file(tmp_path)
    out = tmp_path / "out"
    _write(out, load_llm_spec(spec_path), np.random.default_rng(2))
    readme = tmp_path / "README.md"
    readme.write_text(f"# head\n\n{BEGIN}\nold numbers\n{END}\n\ntail text\n")
    assert main(["check", str(spec_path), "--out", str(out), "--into", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"# head\n\n{BEGIN}\nRecords: 4 of the design") and text.endswith(f"{END}\n\ntail text\n")
    assert "old numbers" not in text and "| clean_runs_beat_base |" in text
    unmarked = tmp_path / "plain.md"
    unmarked.write_text("no markers\n")
    assert main(["check", str(spec_path), "--out", str(out), "--into", str(unmarked)]) == 2
    assert unmarked.read_text() == "no markers\n"


def test_design_oracle_table_puts_the_true_design_in_place_of_the_static_descriptors(tmp_path, capsys):
    import pandas as pd

    from plan_probe.experiments.llm_design import design_oracle_table
    from plan_probe.experiments.llm_tier import main

    meta = pd.DataFrame({"run_id": ["a", "a", "b", "b"], "variant_id": ["v", "v", "w", "w"], "depth": [5, 10, 5, 10],
                         "static_n_examples": [40.0, 40.0, 500.0, 500.0], "hp_lr": [1e-4, 1e-4, 1e-3, 1e-3],
                         "dyn_loss_decay": [-0.1, -0.2, -0.3, -0.4], "label": [3.0, 3.0, -7.0, -7.0]})
    runs = pd.DataFrame({"run_id": ["b", "a", "c"], "variant_n": [500, 40, 150], "variant_label_noise": [0.3, 0.0, 0.0],
                         "variant_duplicate_rate": [0.0, 0.5, 0.0], "variant_imbalance": [None, 0.95, 0.8],
                         "variant_seed": [1, 2, 3]})  # no off_task column: a three-way-era tier
    table = design_oracle_table(meta, runs)
    assert [c for c in table.columns if c.startswith("static_")] == [
        "static_design_n", "static_design_label_noise", "static_design_duplicate_rate", "static_design_imbalance",
        "static_design_off_task"]
    assert table["static_design_n"].tolist() == [40.0, 40.0, 500.0, 500.0]
    # imbalance None = balanced; a missing off_task axis = no off-task records; the seed is not a design feature
    assert table["static_design_imbalance"].tolist() == [0.95, 0.95, 0.0, 0.0] and (table["static_design_off_task"] == 0).all()
    pd.testing.assert_frame_equal(table[["run_id", "depth", "hp_lr", "dyn_loss_decay", "label"]],
                                  meta[["run_id", "depth", "hp_lr", "dyn_loss_decay", "label"]])
    # the stage: written next to the assembled tables; without them, one error line and exit 2
    meta.to_parquet(tmp_path / "meta.parquet")
    runs.to_parquet(tmp_path / "runs.parquet")
    spec = _spec_file(tmp_path)
    assert main(["oracle", str(spec), "--out", str(tmp_path)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "design_oracle.parquet"), table)
    capsys.readouterr()
    assert main(["oracle", str(spec), "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the oracle stage needs meta.parquet")
    assert not (tmp_path / "none").exists()


def _rec(run_id, label, *, n=40, noise=0.0, lr=1e-4, seed=0, imbalance=None, status="ok"):
    return {"run_id": run_id, "status": status, "variant": {"n": n, "label_noise": noise, "duplicate_rate": 0.0, "imbalance": imbalance,
                                                           "seed": seed, "task": "binary", "off_task": 0.0},
            "hp_config": {"lr": lr, "batch_size": 4, "lora_r": 8}, "result": {"label": label, "label_se": 2.0}}


def test_replicate_spread_pools_within_point_variance_against_the_tier_variance():
    from plan_probe.experiments.llm_design import replicate_spread

    tier = [_rec("a", 10.0, n=40), _rec("b", -20.0, n=150), _rec("c", 0.0, n=500), _rec("d", 30.0, n=2000),
            _rec("x", 99.0, n=40, status="diverged")]
    # two replicates of a (imbalance 0 = None: the same point), one of b, one of a point the tier lacks
    reps = [_rec("a1", 14.0, n=40, seed=1, imbalance=0.0), _rec("a2", 12.0, n=40, seed=2), _rec("b1", -10.0, n=150, seed=3),
            _rec("z1", 5.0, n=40, noise=0.3, seed=4)]
    got = replicate_spread(tier, reps, n_boot=500, seed=1)
    # by hand: point a {10, 14, 12}: SS 8, df 2; point b {-20, -10}: SS 50, df 1; tier var of {10, -20, 0, 30}
    tier_var = np.var([10.0, -20.0, 0.0, 30.0], ddof=1)
    assert got["design_points"] == 2 and got["runs"] == 5 and got["df"] == 3
    assert got["within_sd"] == pytest.approx(np.sqrt(58.0 / 3.0), rel=1e-12)
    assert got["share"] == pytest.approx(58.0 / 3.0 / tier_var, rel=1e-12) and got["r2_ceiling"] == pytest.approx(1 - got["share"])
    assert got["eval_noise_share"] == pytest.approx(4.0 / tier_var)
    lo, hi = got["share_90"]
    # resampling two groups: every draw's pooled ratio lies between the two groups' own ratios
    assert lo <= hi and min(8.0 / 2, 50.0 / 1) / tier_var - 1e-12 <= lo and hi <= max(8.0 / 2, 50.0 / 1) / tier_var + 1e-12
    assert replicate_spread(tier, reps, n_boot=500, seed=1) == got  # seeded
    with pytest.raises(ValueError, match="2 design points with >= 2 runs"):
        replicate_spread(tier, reps[-1:])


def test_replicates_stage_without_against_is_one_error_line(tmp_path, capsys):
    from plan_probe.experiments.llm_tier import main

    assert main(["replicates", str(_spec_file(tmp_path)), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the replicates stage needs --against")


def test_design_visibility_sees_an_axis_a_descriptor_carries_and_not_an_independent_one():
    import pandas as pd

    from plan_probe.experiments.llm_design import design_visibility

    rng = np.random.default_rng(0)
    runs = [f"r{i}" for i in range(200)]
    seen, unseen = rng.choice([0.0, 0.3, 0.6], 200), rng.choice([0.0, 0.5], 200)
    # two depth rows a run, as in a meta table; the descriptors repeat across depths
    meta = pd.DataFrame({"run_id": np.repeat(runs, 2), "depth": np.tile([5, 10], 200),
                         "static_a": np.repeat(seen + rng.normal(0, 0.01, 200), 2), "static_b": np.repeat(rng.normal(size=200), 2)})
    oracle = pd.DataFrame({"run_id": runs, "static_design_seen": seen, "static_design_unseen": unseen,
                           "static_design_constant": np.zeros(200)})
    got = design_visibility(meta, oracle)
    assert set(got) == {"seen", "unseen"}  # an axis the design does not vary is left out
    assert got["seen"] > 0.95 and got["unseen"] < 0.1
    assert design_visibility(meta, oracle) == got  # seeded and deterministic
    # the folds follow the run ids (planner's group_folds), not the table's row order
    assert design_visibility(meta.sample(frac=1.0, random_state=3), oracle) == got
    # a probe feature that carries the hidden axis makes it visible once dyn_* columns are included
    meta["dyn_x"] = np.repeat(unseen + rng.normal(0, 0.01, 200), 2)
    assert design_visibility(meta, oracle)["unseen"] < 0.1
    assert design_visibility(meta, oracle, prefixes=("static_", "dyn_"))["unseen"] > 0.95
