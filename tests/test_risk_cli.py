"""CLI of the risk area: bad input gives one line, exit 2 and no output; good input works."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from plan_probe.experiments.synthetic.risk_generator import RiskGeneratorConfig, generate_tasks, risk_observations, tasks_table
from plan_probe._risk_model import RiskModel
from plan_probe.cli import main

CFG = RiskGeneratorConfig(margin=0.3)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("risk_cli")
    truth = generate_tasks(12, CFG, seed=1)
    obs = risk_observations(truth, CFG, seed=2)
    obs.to_csv(d / "obs.csv", index=False)
    tasks = tasks_table(generate_tasks(30, CFG, seed=3, prefix="new"))
    tasks.to_csv(d / "tasks.csv", index=False)
    names = [f"static_f{j}" for j in range(CFG.n_features)]
    RiskModel.from_population(CFG.coef, CFG.intercept, np.diag(CFG.task_noise), names).save(d / "model.json")
    return d, obs, tasks


def _fails(args, out_path):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not out_path.exists()
    return lines[0]


def _bad_obs(obs, how):
    o = obs.copy()
    if how == "missing":
        o = o.drop(columns="dof")
    elif how == "non_numeric":
        o["static_f0"] = o["static_f0"].astype(object)
        o.loc[0, "static_f0"] = "abc"
    elif how == "nan":
        o.loc[3, "static_f1"] = np.nan
    elif how == "depth0":
        o.loc[2, "depth"] = 0
    elif how == "neg_risk":
        o.loc[2, "risk_obs"] = -0.5
    elif how == "dof0":
        o.loc[2, "dof"] = 0
    elif how == "changing_static":
        o.loc[1, "static_f2"] = o.loc[1, "static_f2"] + 1.0
    return o


@pytest.mark.parametrize(
    "how, needle",
    [("missing", "dof"), ("non_numeric", "static_f0"), ("nan", "static_f1"), ("depth0", "depth"),
     ("neg_risk", "risk_obs"), ("dof0", "dof"), ("changing_static", "constant within a task")],
)
def test_fit_risk_bad_input(files, tmp_path, how, needle):
    d, obs, _ = files
    path = tmp_path / "obs.csv"
    _bad_obs(obs, how).to_csv(path, index=False)
    out = tmp_path / "model.json"
    line = _fails(["fit-risk", path, "-o", out, "--method", "svi", "--svi-steps", "5"], out)
    assert needle in line


def _tamper(src, dst, how):
    payload = json.loads(src.read_text())
    if how == "schema":
        payload["schema_version"] = payload["schema_version"] + 1
    else:
        payload["draws"]["b"][0][0] += 0.1
    dst.write_text(json.dumps(payload))


@pytest.mark.parametrize("how, needle", [("schema", "schema_version"), ("tampered", "checksum")])
def test_plan_rejects_foreign_or_tampered_model(files, tmp_path, how, needle):
    d, _, _ = files
    model = tmp_path / "m.json"
    _tamper(d / "model.json", model, how)
    out = tmp_path / "plan.csv"
    assert needle in _fails(["plan", d / "tasks.csv", "--risk-model", model, "-o", out], out)


@pytest.mark.parametrize(
    "how, needle",
    [("unknown", "unknown column"), ("mismatch", "match the risk model"), ("nan", "static_f0"),
     ("changing", "constant within a task"), ("no_id", "task_id"), ("partial_pilot", "pilot")],
)
def test_plan_bad_tasks(files, tmp_path, how, needle):
    d, _, tasks = files
    t = tasks.copy()
    if how == "unknown":
        t["learning_rate"] = 1e-4
    elif how == "mismatch":
        t = t.rename(columns={"static_f2": "static_other"})
    elif how == "nan":
        t.loc[4, "static_f0"] = np.nan
    elif how == "changing":
        t = pd.concat([t, t.iloc[[0]].assign(static_f1=9.0)])
    elif how == "no_id":
        t = t.drop(columns="task_id")
    elif how == "partial_pilot":
        t["depth"], t["risk_obs"], t["dof"] = 10, np.nan, 3.0
    path = tmp_path / "tasks.csv"
    t.to_csv(path, index=False)
    out = tmp_path / "plan.csv"
    assert needle in _fails(["plan", path, "--risk-model", d / "model.json", "-o", out], out)


def test_plan_budget_too_small(files, tmp_path):
    d, _, tasks = files
    out = tmp_path / "plan.csv"
    line = _fails(["plan", d / "tasks.csv", "--risk-model", d / "model.json", "-o", out, "--budget", 10 * len(tasks) - 1], out)
    assert "budget" in line and str(10 * len(tasks)) in line


@pytest.mark.parametrize("opt, val", [("--step-cost", "-1"), ("--min-depth", "0"), ("--max-depth", "5")])
def test_plan_bad_settings(files, tmp_path, opt, val):
    d, _, _ = files
    out = tmp_path / "plan.csv"
    _fails(["plan", d / "tasks.csv", "--risk-model", d / "model.json", "-o", out, opt, val], out)


def test_plan_same_seed_byte_identical(files, tmp_path):
    d, _, tasks = files
    outs = []
    for name, seed in (("a.parquet", 3), ("b.parquet", 3), ("a.csv", 3), ("b.csv", 3), ("c.csv", 4)):
        out = tmp_path / name
        r = CliRunner().invoke(main, ["plan", str(d / "tasks.csv"), "--risk-model", str(d / "model.json"), "-o", str(out),
                                      "--seed", str(seed)])
        assert r.exit_code == 0, r.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and outs[2] == outs[3] and outs[2] != outs[4]
    plan = pd.read_csv(tmp_path / "a.csv")
    assert list(plan.columns) == ["task_id", "regime", "p_static_sufficient", "p_dynamic_critical", "p_noise_dominant",
                                  "l_int", "k", "alpha", "c_opt", "probe_steps", "risk_at_c_opt",
                                  "l_int_q10", "l_int_q90", "k_q10", "k_q90", "alpha_q10", "alpha_q90", "at_bound"]
    assert len(plan) == len(tasks)


def test_fit_risk_same_seed_byte_identical_model_file(files, tmp_path):
    """The fit's wall time goes to the printed summary, not into MODEL.json: same seed, same bytes."""
    d, _, _ = files
    saved, printed = [], []
    for name in ("a.json", "b.json"):
        r = CliRunner().invoke(main, ["fit-risk", str(d / "obs.csv"), "-o", str(tmp_path / name), "--method", "svi",
                                      "--svi-steps", "200", "--seed", "5"])
        assert r.exit_code == 0, r.output
        saved.append((tmp_path / name).read_bytes())
        printed.append(json.loads(r.stdout))
    assert saved[0] == saved[1]
    assert "fit_seconds" not in json.loads(saved[0])["diagnostics"] and "fit_seconds" in printed[0]["diagnostics"]


def test_plan_json_budget_and_pilots(files, tmp_path):
    d, _, tasks = files
    budget = 40 * len(tasks)
    r = CliRunner().invoke(main, ["plan", str(d / "tasks.csv"), "--risk-model", str(d / "model.json"), "--format", "json",
                                  "--budget", str(budget)])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    steps = np.array([row["probe_steps"] for row in rows])
    assert steps.sum() <= budget and steps.min() >= 10
    # pilot rows for one task: accepted, one plan row per task
    pil = pd.concat([tasks.assign(depth=np.nan, risk_obs=np.nan, dof=np.nan),
                     tasks.iloc[[0, 0]].assign(depth=[10, 50], risk_obs=[3.0, 2.0], dof=[7.0, 7.0])])
    path = tmp_path / "pilots.csv"
    pil.to_csv(path, index=False)
    r = CliRunner().invoke(main, ["plan", str(path), "--risk-model", str(d / "model.json"), "--format", "json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)) == len(tasks)


def test_phase_diagram(files, tmp_path):
    d, _, _ = files
    plan = tmp_path / "plan.csv"
    assert CliRunner().invoke(main, ["plan", str(d / "tasks.csv"), "--risk-model", str(d / "model.json"), "-o", str(plan)]).exit_code == 0
    fig = tmp_path / "phase.png"
    r = CliRunner().invoke(main, ["phase-diagram", str(plan), "--risk-model", str(d / "model.json"), "-o", str(fig),
                                  "--tasks", str(d / "tasks.csv"), "--risk-curves", str(tmp_path / "curves")])
    assert r.exit_code == 0, r.output
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "curves").glob("*.png"))) == 30
    bad = tmp_path / "bad.csv"
    pd.read_csv(plan).drop(columns="alpha").to_csv(bad, index=False)
    out = tmp_path / "bad.png"
    _fails(["phase-diagram", bad, "--risk-model", d / "model.json", "-o", out], out)


def test_plan_warns_when_most_tasks_sit_at_a_bound(files, tmp_path):
    d, _, tasks = files
    r = CliRunner().invoke(main, ["plan", str(d / "tasks.csv"), "--risk-model", str(d / "model.json"), "-o",
                                  str(tmp_path / "p.csv"), "--risk-weight", "1000"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["at_bound"] == {"c_min": len(tasks)}
    assert any("c_opt at a probe limit" in w and "c_min" in w for w in summary["warnings"])
    assert "c_opt at a probe limit" in r.stderr
    assert (pd.read_csv(tmp_path / "p.csv")["at_bound"] == "c_min").all()
    # relative defaults are reported with the label scale they were resolved against
    r = CliRunner().invoke(main, ["plan", str(d / "tasks.csv"), "--risk-model", str(d / "model.json"), "-o",
                                  str(tmp_path / "q.csv")])
    summary = json.loads(r.stdout)
    assert summary["relative_defaults"] == ["risk_weight", "target_rmse"] and summary["label_scale"] == 1.0
    assert summary["settings"]["risk_weight"] == pytest.approx(1e-3) and summary["settings"]["target_rmse"] == pytest.approx(0.5**0.5)


def test_plan_repeats_a_convergence_warning(files, tmp_path):
    d, _, _ = files
    model = RiskModel.load(d / "model.json")
    model.diagnostics_ = {"method": "nuts", "max_r_hat": 1.2, "min_ess": 40.0, "divergences": 3, "ok": False,
                          "problems": ["max r_hat 1.200 > 1.05", "min bulk ESS 40 < 100", "3 divergent transition(s)"]}
    model.save(tmp_path / "bad_model.json")
    r = CliRunner().invoke(main, ["plan", str(d / "tasks.csv"), "--risk-model", str(tmp_path / "bad_model.json"),
                                  "--format", "json"])
    assert r.exit_code == 0, r.output
    assert "did not converge cleanly" in r.stderr and "max r_hat 1.200" in r.stderr


def test_schema_1_risk_model_migrates(files, tmp_path):
    """A schema-1 file (no label_scale, no diagnostics.ok) loads: S from risk_scale, ok from today's thresholds."""
    from plan_probe._risk_model import _checksum

    d, _, _ = files
    payload = RiskModel.load(d / "model.json").to_dict()
    for key in ("label_scale", "label_scale_rule", "schema_version", "checksum"):
        payload.pop(key)
    payload["format"] = "plan-probe-risk-model/1"
    payload["risk_scale"] = 7.5
    payload["diagnostics"] = {"method": "nuts", "max_r_hat": 1.0678, "min_ess": 61.8, "divergences": 4}
    payload["checksum"] = _checksum(payload)
    (tmp_path / "old.json").write_text(json.dumps(payload))
    old = RiskModel.load(tmp_path / "old.json")
    assert old.label_scale_ == 7.5 and old.diagnostics_["ok"] is False
    assert len(old.diagnostics_["problems"]) == 3
    assert RiskModel.load(d / "model.json").diagnostics_["ok"] is True


def test_fit_risk_warns_on_a_short_chain(tmp_path):
    """A deliberately short NUTS run cannot reach bulk ESS 100: fit-risk says so and records ok = false."""
    obs = risk_observations(generate_tasks(10, CFG, seed=5), CFG, seed=6)
    obs.to_csv(tmp_path / "obs.csv", index=False)
    r = CliRunner().invoke(main, ["fit-risk", str(tmp_path / "obs.csv"), "-o", str(tmp_path / "m.json"), "--method", "nuts",
                                  "--warmup", "30", "--draws", "30", "--chains", "1"])
    assert r.exit_code == 0, r.output
    diag = json.loads(r.stdout)["diagnostics"]
    assert diag["ok"] is False and any("ESS" in p for p in diag["problems"])
    assert diag["min_ess"] < 100 and "did not converge cleanly" in r.stderr
    assert RiskModel.load(tmp_path / "m.json").diagnostics_["ok"] is False


def test_scale_free_plan_from_nested_residuals(tmp_path):
    """Every label x 100 (residuals x 100, risk observations x 10^4): the same regimes, c_opt and probe_steps
    with the default (relative) settings, through fit-risk and plan."""
    from plan_probe.experiments.synthetic.residual_coverage import nested_residual_table

    truth = generate_tasks(40, RiskGeneratorConfig(), seed=8)
    obs = nested_residual_table(truth, (5, 10, 20, 50, 100), 2, np.random.default_rng(9))
    tasks = tasks_table(generate_tasks(60, RiskGeneratorConfig(), seed=10, prefix="new"))
    tasks.to_csv(tmp_path / "tasks.csv", index=False)
    plans = {}
    for name, factor in (("pp", 1.0), ("x100", 100.0)):
        o = obs.assign(residual=obs["residual"] * factor, risk_obs=obs["risk_obs"] * factor**2)
        o.to_csv(tmp_path / f"obs_{name}.csv", index=False)
        r = CliRunner().invoke(main, ["fit-risk", str(tmp_path / f"obs_{name}.csv"), "-o", str(tmp_path / f"m_{name}.json"),
                                      "--method", "nuts", "--warmup", "150", "--draws", "150", "--chains", "1"])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(main, ["plan", str(tmp_path / "tasks.csv"), "--risk-model", str(tmp_path / f"m_{name}.json"),
                                      "-o", str(tmp_path / f"plan_{name}.csv")])
        assert r.exit_code == 0, r.output
        plans[name] = pd.read_csv(tmp_path / f"plan_{name}.csv")
    a, b = plans["pp"], plans["x100"]
    for col in ("regime", "c_opt", "probe_steps"):
        assert (a[col] == b[col]).all(), col
    np.testing.assert_allclose(b["l_int"], a["l_int"] * 1e4, rtol=1e-3)
    scale = {n: RiskModel.load(tmp_path / f"m_{n}.json").label_scale_ for n in plans}
    assert scale["x100"] == pytest.approx(1e4 * scale["pp"], rel=1e-9)
