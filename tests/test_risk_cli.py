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
                                  "l_int", "k", "alpha", "c_opt", "probe_steps", "risk_at_c_opt"]
    assert len(plan) == len(tasks)


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
