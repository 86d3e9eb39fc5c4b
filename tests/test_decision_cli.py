"""``plan --objective decision``: the plan's decision columns, budgets, the static-predictor route,
label-scale invariance through the CLI, and every bad input (one ``error:`` line, exit 2, no file)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from plan_probe._risk_model import RiskModel
from plan_probe.cli import main
from plan_probe.experiments.synthetic.risk_generator import RiskGeneratorConfig, generate_tasks, tasks_table

CFG = RiskGeneratorConfig()
NAMES = [f"static_f{j}" for j in range(CFG.n_features)]
TAU = 55.0


def _model(path, label_scale=1.0):
    """The known population; risks (L_int and K) in label units squared, so scaled by label_scale**2."""
    b = np.asarray(CFG.intercept, dtype=float) + np.array([2, 2, 0]) * np.log(label_scale)
    RiskModel.from_population(CFG.coef, b, np.diag(CFG.task_noise), NAMES).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("decision_cli")
    _model(d / "model.json")
    tasks = tasks_table(generate_tasks(24, CFG, seed=3))
    rng = np.random.default_rng(0)
    tasks["prior_var"] = rng.uniform(9.0, 30.0, len(tasks))
    tasks["prior_mean"] = TAU + rng.normal(0.0, 6.0, len(tasks))
    tasks.to_csv(d / "tasks.csv", index=False)
    return d, tasks


def _ok(args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def _fails(args, out_path):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert not out_path.exists()
    return lines[0]


def _plan(d, tasks_path, out, *extra, model="model.json"):
    return ["plan", tasks_path, "--risk-model", d / model, "-o", out, "--objective", "decision", "--threshold", TAU,
            "--full-cost", 1000, *extra]


def test_decision_plan_columns_and_meaning(files, tmp_path):
    d, tasks = files
    res = _ok(_plan(d, d / "tasks.csv", tmp_path / "plan.csv"))
    plan = pd.read_csv(tmp_path / "plan.csv")
    summary = json.loads(res.stdout)
    assert summary["objective"] == "decision" and summary["total_probe_steps"] == plan["probe_steps"].sum()
    for col in ("regime", "p_success_now", "loss_now", "loss_at_c_opt", "value_of_probe", "decision_now", "reason"):
        assert col in plan.columns
    assert (plan["probe_steps"] == plan["c_opt"]).all()
    assert plan["c_opt"].isin([0, *range(10, 1001)]).all()
    np.testing.assert_allclose(plan["value_of_probe"], plan["loss_now"] - plan["loss_at_c_opt"] - plan["c_opt"], atol=1e-6)
    # decide now when the probe is not worth it, otherwise probe
    assert set(plan.loc[plan["c_opt"] == 0, "decision_now"]) <= {"go", "no-go"}
    assert (plan.loc[plan["c_opt"] > 0, "decision_now"] == "probe").all()
    go = plan["decision_now"] == "go"
    assert (plan.loc[go, "p_success_now"] >= 0.5).all() and (plan.loc[plan["decision_now"] == "no-go", "p_success_now"] < 0.5).all()
    # far from tau: no probe, whatever the risk curve
    far = (plan["prior_mean"] - TAU).abs() / np.sqrt(plan["prior_var"]) > 3.5
    assert (plan.loc[far, "c_opt"] == 0).all()
    assert plan["reason"].str.len().gt(20).all()


def test_budget_is_respected_even_below_c_min_times_tasks(files, tmp_path):
    d, _ = files
    _ok(_plan(d, d / "tasks.csv", tmp_path / "free.csv"))
    free = pd.read_csv(tmp_path / "free.csv")
    budget = max(10, int(free["c_opt"].sum() // 3))  # below 10 steps x 24 tasks: fine for this objective
    res = _ok(_plan(d, d / "tasks.csv", tmp_path / "plan.csv", "--budget", budget))
    plan = pd.read_csv(tmp_path / "plan.csv")
    assert plan["probe_steps"].sum() <= budget < 10 * len(plan)
    assert json.loads(res.stdout)["total_probe_steps"] <= budget
    assert (plan["probe_steps"] <= plan["c_opt"].clip(lower=plan["probe_steps"])).all()


def test_rescaled_labels_tau_and_risks_give_the_same_plan(files, tmp_path):
    d, tasks = files
    _ok(_plan(d, d / "tasks.csv", tmp_path / "a.csv", "--budget", 150))
    s = 100.0
    scaled = tasks.assign(prior_mean=tasks["prior_mean"] * s, prior_var=tasks["prior_var"] * s**2)
    scaled.to_csv(tmp_path / "tasks_s.csv", index=False)
    _model(tmp_path / "model_s.json", label_scale=s)
    args = ["plan", tmp_path / "tasks_s.csv", "--risk-model", tmp_path / "model_s.json", "-o", tmp_path / "b.csv",
            "--objective", "decision", "--threshold", TAU * s, "--full-cost", 1000, "--budget", 150]
    _ok(args)
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    for col in ("c_opt", "probe_steps", "decision_now"):
        assert (a[col] == b[col]).all(), col
    for col in ("p_success_now", "loss_now", "loss_at_c_opt", "value_of_probe", "p_flip"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b["risk_at_c_opt"], a["risk_at_c_opt"] * s**2, rtol=1e-6)


def test_static_predictor_gives_the_priors(files, tmp_path):
    from plan_probe._predictor import PredictorConfig, ProbePredictor

    d, tasks = files
    rng = np.random.default_rng(1)
    train = pd.DataFrame(rng.standard_normal((200, len(NAMES))), columns=NAMES)
    y = pd.Series(TAU + 4.0 * train["static_f0"] + rng.normal(0, 3.0, 200), name="score")
    model = ProbePredictor(PredictorConfig(n_estimators=40)).fit(train, y)
    model.save(tmp_path / "static_pred")
    plain = tasks.drop(columns=["prior_mean", "prior_var"])
    plain.to_csv(tmp_path / "tasks.csv", index=False)
    _ok(_plan(d, tmp_path / "tasks.csv", tmp_path / "plan.csv", "--static-predictor", tmp_path / "static_pred"))
    plan = pd.read_csv(tmp_path / "plan.csv")
    np.testing.assert_allclose(plan["prior_mean"], model.predict(plain[NAMES]))
    np.testing.assert_allclose(plan["prior_var"], np.mean(model.scores_**2))
    # plan-probe predict writes the same numbers as pred / pred_var
    plain[["task_id", *NAMES]].to_csv(tmp_path / "meta.csv", index=False)
    _ok(["predict", tmp_path / "meta.csv", "--predictor", tmp_path / "static_pred", "-o", tmp_path / "pred.csv"])
    pred = pd.read_csv(tmp_path / "pred.csv")
    np.testing.assert_allclose(pred["pred"], plan["prior_mean"])
    np.testing.assert_allclose(pred["pred_var"], plan["prior_var"])


def test_cheap_full_run_is_a_warning_not_an_error(files, tmp_path, caplog):
    d, _ = files
    with caplog.at_level("WARNING"):
        res = _ok(_plan(d, d / "tasks.csv", tmp_path / "plan.csv", "--max-depth", 2000))  # 1000 < 1 x 2000
    assert any("longest probe" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert "longest probe" in json.loads(res.stdout)["warning"]


@pytest.mark.parametrize("how, needle", [
    ("no_threshold", "needs the go threshold"),
    ("zero_full_cost", "full_cost must be a positive cost"),
    ("negative_full_cost", "full_cost must be a positive cost"),
    ("zero_launch_cost", "launch_cost must be a positive cost"),
    ("negative_kill_cost", "kill_cost must be a positive cost"),
    ("zero_step_cost", "step_cost must be a positive number"),
    ("no_full_cost", "needs the cost of a full run"),
    ("prior_var_zero", "prior_var must be a positive variance"),
    ("prior_var_negative", "prior_var must be a positive variance"),
    ("prior_var_nan", "prior_var must be a positive variance"),
    ("prior_mean_missing", "lacks ['prior_mean']"),
    ("priors_missing", "lacks ['prior_mean', 'prior_var']"),
    ("both_prior_sources", "must come from one place"),
    ("decision_flag_with_risk", "only applies to the decision objective"),
    ("prior_not_constant", "must be constant within a task"),
])
def test_bad_decision_input_is_one_line_exit_2_no_file(files, tmp_path, how, needle):
    d, tasks = files
    out = tmp_path / "plan.csv"
    t = tasks.copy()
    base = ["plan", tmp_path / "tasks.csv", "--risk-model", d / "model.json", "-o", out]
    args = [*base, "--objective", "decision", "--threshold", TAU, "--full-cost", 1000]
    if how == "no_threshold":
        args = [*base, "--objective", "decision", "--full-cost", 1000]
    elif how == "zero_full_cost":
        args = [*base, "--objective", "decision", "--threshold", TAU, "--full-cost", 0]
    elif how == "negative_full_cost":
        args = [*base, "--objective", "decision", "--threshold", TAU, "--full-cost", -5]
    elif how == "zero_launch_cost":
        args += ["--launch-cost", 0]
    elif how == "negative_kill_cost":
        args += ["--kill-cost", -1]
    elif how == "zero_step_cost":
        args += ["--step-cost", 0]
    elif how == "no_full_cost":
        args = [*base, "--objective", "decision", "--threshold", TAU, "--launch-cost", 10]
    elif how == "prior_var_zero":
        t.loc[3, "prior_var"] = 0.0
    elif how == "prior_var_negative":
        t.loc[3, "prior_var"] = -2.0
    elif how == "prior_var_nan":
        t.loc[3, "prior_var"] = np.nan
    elif how == "prior_mean_missing":
        t = t.drop(columns="prior_mean")
    elif how == "priors_missing":
        t = t.drop(columns=["prior_mean", "prior_var"])
    elif how == "both_prior_sources":
        args += ["--static-predictor", tmp_path]
    elif how == "decision_flag_with_risk":
        args = [*base, "--threshold", TAU]
    elif how == "prior_not_constant":
        t = pd.concat([t, t.iloc[[0]].assign(prior_mean=t.loc[0, "prior_mean"] + 1.0)], ignore_index=True)
    t.to_csv(tmp_path / "tasks.csv", index=False)
    line = _fails(args, out)
    assert needle in line, line


def test_anchor_flags_tie_the_curves_to_the_priors(files, tmp_path):
    """--anchor-depth/--anchor-ratio move the plan (the known-truth checks of anchoring are in
    test_decision_anchor.py); a ratio of 5 (the probe measured to add nothing at the anchor, its curve far
    above the prior) probes no task; one flag alone, or a bad ratio, is one error line, exit 2, no file."""
    d, tasks = files
    _ok(_plan(d, d / "tasks.csv", tmp_path / "plain.csv"))
    _ok(_plan(d, d / "tasks.csv", tmp_path / "anchored.csv", "--anchor-depth", 10, "--anchor-ratio", 0.5))
    plain, anchored = pd.read_csv(tmp_path / "plain.csv"), pd.read_csv(tmp_path / "anchored.csv")
    assert (plain["c_opt"] > 0).any() and not plain["c_opt"].equals(anchored["c_opt"])
    _ok(_plan(d, d / "tasks.csv", tmp_path / "none.csv", "--anchor-depth", 10, "--anchor-ratio", 5))
    assert (pd.read_csv(tmp_path / "none.csv")["c_opt"] == 0).all()
    line = _fails(_plan(d, d / "tasks.csv", tmp_path / "bad.csv", "--anchor-depth", 10), tmp_path / "bad.csv")
    assert "--anchor-depth and --anchor-ratio go together, but got --anchor-depth alone" in line
    line = _fails(_plan(d, d / "tasks.csv", tmp_path / "bad.csv", "--anchor-depth", 10, "--anchor-ratio", -1),
                  tmp_path / "bad.csv")
    assert "anchor_ratio must be a positive number, but got anchor_ratio=-1.0" in line
