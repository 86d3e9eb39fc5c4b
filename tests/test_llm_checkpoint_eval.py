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


def test_a_cooldown_branch_keeps_the_record_and_scores_the_cooled_model(built, tmp_path, capsys):
    """--cooldown K: the rows up to the depth are still the run's own (matches_record), the K decaying steps after
    them move the adapter, so the scored model differs from the constant-lr iterate's."""
    spec, records = built
    run_id = sorted(json.loads(p.read_text())["run_id"] for p in records.glob("*.json"))[0]
    scores = {}
    for cooldown in (0, 2):
        lines = tmp_path / f"ckpt{cooldown}.jsonl"
        args = ["run", str(spec), "--records", str(records), "--out", str(lines), "--runs", run_id, "--depth", "2",
                "--reference", "9", "--cooldown", str(cooldown)]
        assert ce.main(args) == 0
        capsys.readouterr()
        (line,) = [json.loads(s) for s in lines.read_text().splitlines()]
        assert line["matches_record"] and line["cooldown"] == cooldown and line["depth"] == 2
        scores[cooldown] = line["reference"]["log_score"]
    assert scores[0] != scores[2]
    assert ce.main(["run", str(spec), "--records", str(records), "--out", str(tmp_path / "bad.jsonl"), "--runs", run_id,
                    "--cooldown", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error: --cooldown must be >= 0") and not (tmp_path / "bad.jsonl").exists()


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


def test_comparison_with_a_rival_by_direct_leave_one_out_fits(tmp_path, capsys):
    """The rival's LOO R² alone and with the reference score, against direct two-feature LOO fits; a rival
    that is the label plus noise leaves the reference nothing to add (its paired difference is ~0 or positive)."""
    rng = np.random.default_rng(1)
    n = 15
    x = rng.normal(size=n)
    r = rng.normal(size=n)
    y = 1.5 * r + 0.8 * x + rng.normal(scale=0.3, size=n)
    lines = [{"run_id": f"r{i}", "label": float(y[i]), "matches_record": True, "cpu_time_s": 1.0, "reference": {"m": float(x[i])}}
             for i in range(n)]
    rival = {f"r{i}": float(r[i]) for i in range(n)}

    def loo(*cols):
        out = []
        for i in range(n):
            keep = np.arange(n) != i
            X = np.column_stack([np.ones(n), *cols])
            beta = np.linalg.lstsq(X[keep], y[keep], rcond=None)[0]
            out.append(y[i] - X[i] @ beta)
        return np.array(out)

    ss = np.sum((y - y.mean()) ** 2)
    got = ce.compare_with_rival(lines, "m", rival)
    assert got["runs"] == n
    assert got["rival_r2"] == pytest.approx(1 - np.sum((y - r) ** 2) / ss)
    assert got["rival_loo_r2"] == pytest.approx(1 - np.sum(loo(r) ** 2) / ss, rel=1e-9)
    assert got["rival_plus_reference_loo_r2"] == pytest.approx(1 - np.sum(loo(r, x) ** 2) / ss, rel=1e-9)
    assert got["sq_err_diff"] < 0 and got["rival_plus_reference_loo_r2"] > got["rival_loo_r2"]  # x carries signal here
    with pytest.raises(ValueError, match="at least 5 runs both scored and predicted"):
        ce.compare_with_rival(lines, "m", {"r0": 1.0})
    # through the command: the rival comes from an evaluate --predictions table
    import pandas as pd

    lines_path = tmp_path / "ckpt.jsonl"
    lines_path.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    table = tmp_path / "oof.parquet"
    pd.DataFrame({"run_id": list(rival), "label": y, "full": list(rival.values())}).to_parquet(table)
    assert ce.main(["summary", str(lines_path), "--metric", "m", "--predictions", str(table)]) == 0
    assert json.loads(capsys.readouterr().out)["against_full"] == pytest.approx(got)
    assert ce.main(["summary", str(lines_path), "--metric", "m", "--predictions", str(table), "--model", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: --predictions must have run_id and 'nope' columns")


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
