"""The probe-checkpoint evaluation experiment (experiments/llm_checkpoint_eval.py) on a tiny random LLaMA:
the re-run probe reproduces the recorded rows, lines are appended once per run, bad input is one error line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from plan_probe.cli import main as cli

pytest.importorskip("torch")

from plan_probe.experiments import llm_checkpoint_eval as ce  # noqa: E402
from tests.test_llm_tier import _spec  # noqa: E402


@pytest.fixture(scope="module")
def built(tiny_folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    spec = _spec(tmp, tiny_folder, n_candidates=4)
    out = tmp / "out"
    result = CliRunner().invoke(cli, ["build-meta", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return spec, out / "records"


def test_rerun_probe_matches_the_record_and_scores_the_reference_once(built, tmp_path, capsys):
    spec, records = built
    lines = tmp_path / "ckpt.jsonl"
    args = ["run", str(spec), "--records", str(records), "--out", str(lines), "--pick", "4", "--depth", "2", "--reference", "9"]
    assert ce.main(args) == 0
    assert json.loads(capsys.readouterr().out) == {"scored": 4, "skipped": 0}
    got = [json.loads(s) for s in lines.read_text().splitlines()]
    labels = {json.loads(p.read_text())["run_id"]: json.loads(p.read_text())["result"]["label"] for p in records.glob("*.json")}
    assert sorted(g["run_id"] for g in got) == sorted(labels)
    for g in got:
        # same seed and data order: the first 2 steps of the recorded 4-step run, feature for feature
        assert g["matches_record"] and g["depth"] == 2 and g["label"] == labels[g["run_id"]]
        assert 0 <= g["reference"]["accuracy"] <= 100 and g["reference"]["brier_skill_se"] > 0
    before = lines.read_text()
    assert ce.main(args) == 0  # resumable: nothing left to score
    assert json.loads(capsys.readouterr().out) == {"scored": 0, "skipped": 4} and lines.read_text() == before
    assert ce.main(["summary", str(lines), "--records", str(records)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["runs"] == 4 and summary["all_match_record"] and summary["median_cpu_time_s"] > 0
    # a tiny random model may score every run alike: then there is no correlation (null), never a NaN in the JSON
    assert summary["spearman"] is None or -1 <= summary["spearman"] <= 1


def test_summary_of_runs_scored_alike_has_no_correlation():
    lines = [{"label": float(i), "reference": {"m": 0.5}, "matches_record": True, "cpu_time_s": 1.0} for i in range(5)]
    summary = ce.summarise(lines, "m")
    assert summary["runs"] == 5 and summary["pearson"] is None and summary["spearman"] is None and summary["loo_r2"] is None


def test_summary_loo_r2_against_a_direct_leave_one_out_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = 2.0 * x + rng.normal(scale=0.5, size=12)
    lines = [{"run_id": str(i), "label": float(b), "matches_record": True, "cpu_time_s": 1.0, "reference": {"m": float(a)}}
             for i, (a, b) in enumerate(zip(x, y))]
    loo = []
    for i in range(12):
        keep = np.arange(12) != i
        slope, intercept = np.polyfit(x[keep], y[keep], 1)
        loo.append(y[i] - (intercept + slope * x[i]))
    expected = 1 - np.mean(np.square(loo)) / np.var(y)
    assert ce.summarise(lines, "m")["loo_r2"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("extra, message", [
    (["--pick", "2", "--depth", "3"], "depth must be a recorded depth"),
    (["--pick", "9"], "--pick must be between 1 and the 4 ok runs"),
    (["--runs", "nope"], "unknown run ids"),
    ([], "exactly one of --runs / --pick"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(built, tmp_path, capsys, extra, message):
    spec, records = built
    lines = tmp_path / "ckpt.jsonl"
    assert ce.main(["run", str(spec), "--records", str(records), "--out", str(lines), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not lines.exists()
