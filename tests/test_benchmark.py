"""plan-probe benchmark: policies against brute force, bad input, the output contract."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from plan_probe.cli import main
from plan_probe.experiments.benchmark._policies import (
    oracle_allocation,
    random_allocation,
    uniform_depth,
    uniform_fill_allocation,
)
from plan_probe.experiments.synthetic.meta_generator import make_decay_meta_dataset


def test_oracle_is_the_exact_optimum():
    rng = np.random.default_rng(0)
    grid = np.array([5.0, 10.0, 20.0, 50.0])
    for _ in range(20):
        loss = rng.uniform(0, 10, (4, 4))
        budget = float(rng.integers(20, 200))
        alloc = oracle_allocation(loss, grid, budget)
        assert alloc.sum() <= budget
        best = min(sum(loss[i, j] for i, j in enumerate(c)) for c in itertools.product(range(4), repeat=4)
                   if grid[list(c)].sum() <= budget)
        got = sum(loss[i, np.searchsorted(grid, a)] for i, a in enumerate(alloc))
        assert got == pytest.approx(best)


def test_random_allocation_uses_the_budget_and_respects_the_floor():
    grid = np.array([5.0, 10.0, 20.0, 50.0, 100.0])
    rng = np.random.default_rng(1)
    for budget in (5 * 30, 40 * 30, 100 * 30):
        draws = [random_allocation(grid, budget, 30, rng) for _ in range(20)]
        for a in draws:
            assert a.sum() <= budget + 1e-9 and a.min() >= 5 and set(a) <= set(grid)
            assert budget - a.sum() < 5 or np.all(a == 100)  # no upgrade fits any more
        if budget == 40 * 30:
            assert np.std(np.concatenate(draws)) > 10  # allocations really vary


def test_uniform_depth_is_the_deepest_that_fits_and_fill_spends_the_rest():
    assert uniform_depth([5, 10, 20, 50, 100], 40 * 10, 10) == 20
    assert uniform_depth([5, 10, 20, 50, 100], 50 * 10, 10) == 50
    fill = uniform_fill_allocation([5, 10, 20, 50, 100], 40 * 10, 10, np.random.default_rng(0))
    assert sorted(fill.tolist()) == [20] * 4 + [50] * 6 and fill.sum() <= 400


def _decay(tmp_path, **kw):
    frame = make_decay_meta_dataset(kw.pop("n_tasks", 12), runs_per_task=2, depths=(5, 10, 20, 50, 100), seed=3, **kw)
    path = tmp_path / "meta.csv"
    frame.to_csv(path, index=False)
    return frame, path


@pytest.mark.parametrize("case", ["no_depth", "one_depth", "few_tasks", "share_zero", "share_negative", "nan_label", "bad_share"])
def test_bad_input_is_one_error_line_exit_2_and_no_output(tmp_path, case):
    frame, path = _decay(tmp_path)
    args = ["--label", "score"]
    if case == "no_depth":
        frame.drop(columns="depth").to_csv(path, index=False)
    elif case == "one_depth":
        frame[frame["depth"] == 20].to_csv(path, index=False)
    elif case == "few_tasks":
        args += ["--folds", "20"]
    elif case == "share_zero":
        args += ["--budget-share", "0"]
    elif case == "share_negative":
        args += ["--budget-share", "-0.4"]
    elif case == "nan_label":
        frame.loc[3, "score"] = np.nan
        frame.to_csv(path, index=False)
    elif case == "bad_share":
        args += ["--budget-share", "0.4,x"]
    out, fig = tmp_path / "out.json", tmp_path / "fig.png"
    result = CliRunner().invoke(main, ["benchmark", str(path), *args, "-o", str(out), "--figure", str(fig)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert not out.exists() and not fig.exists()


def _stub_fitter(obs, settings):
    """A known risk population (no inference): L(c) = 1 + 20 c^-1 for every task, scaled to the data."""
    from plan_probe._risk_model import RiskModel

    statics = [c for c in obs.columns if c.startswith("static_")]
    scale = float(obs["risk_obs"].mean())
    b = np.array([np.log(0.2 * scale), np.log(5.0 * scale), 0.0])
    return RiskModel.from_population(np.zeros((3, len(statics))), b, 0.1 * np.eye(3), statics)


def test_json_contract_and_equal_budget(tmp_path):
    from plan_probe.experiments.benchmark._core import BenchSettings, load_bench, run_benchmark

    frame, _ = _decay(tmp_path, n_tasks=20)
    settings = BenchSettings(label="score", folds=4, n_boot=200, budget_shares=(0.4, 0.8), threshold=55.0)
    result = run_benchmark(load_bench(frame, settings), settings, fit_risk=_stub_fitter)
    assert set(result) == {"policies", "paired", "settings"}
    assert set(result["policies"]) == {"planned", "planned_decision", "uniform", "uniform_fill", "fixed_min", "fixed", "static_only",
                                       "random", "oracle"}
    assert set(result["paired"]) == set(result["policies"]) - {"planned"}
    for entry in result["paired"].values():  # with --threshold: paired decision-loss differences too
        assert {"rmse_diff", "ci90", "decision_loss_diff", "decision_ci90"} <= set(entry)
        assert entry["decision_ci90"][0] <= entry["decision_ci90"][1]
    own = result["policies"]["planned_decision"]["paired_decision_loss"]
    assert set(own) == set(result["policies"]) - {"planned_decision"}
    for name, entry in result["policies"].items():
        assert np.isfinite(entry["rmse"]) and entry["steps"] >= 0
        assert {"decision_loss", "false_kill", "false_launch"} <= set(entry)
        assert 0 <= entry["decision_loss"] <= 1
    for name, entry in result["paired"].items():
        lo, hi = entry["ci90"]
        assert lo <= hi
    budget = result["settings"]["budget_steps"]
    assert budget == pytest.approx(0.4 * 100 * 20)
    assert result["policies"]["uniform_fill"]["steps"] >= result["policies"]["uniform"]["steps"]
    for name in ("planned", "planned_decision", "uniform", "uniform_fill", "random", "oracle", "fixed_min", "static_only"):
        assert result["policies"][name]["steps"] <= budget + 1e-6
    assert result["policies"]["fixed"]["steps"] == pytest.approx(100 * 20)  # over budget by design
    assert result["policies"]["oracle"]["rmse"] <= result["policies"]["planned"]["rmse"] + 1e-9
    assert [s["budget_share"] for s in result["settings"]["sweep"]] == [0.4, 0.8]
    json.dumps(result)  # JSON-ready
    # without a threshold: no decision policy, no decision keys
    plain = BenchSettings(label="score", folds=4, n_boot=200)
    res2 = run_benchmark(load_bench(frame, plain), plain, fit_risk=_stub_fitter)
    assert "planned_decision" not in res2["policies"] and "decision_ci90" not in res2["paired"]["uniform"]
    assert res2["policies"]["uniform"]["rmse"] == pytest.approx(result["policies"]["uniform"]["rmse"])
    # same seed, same result
    again = run_benchmark(load_bench(frame, settings), settings, fit_risk=_stub_fitter)
    assert json.dumps(again, sort_keys=True) == json.dumps(result, sort_keys=True)


@pytest.mark.slow
def test_planned_beats_uniform_and_random_where_static_features_predict_the_revelation_speed(tmp_path):
    """End to end through the CLI with the real risk model: on the decay generator planned wins (90 %
    intervals below zero), and it wins for the right reason: it gives the slow-revelation tasks the
    deep probes (its allocation rises with the static feature that sets the revelation speed)."""
    from scipy.stats import spearmanr

    from plan_probe.experiments.benchmark._core import BenchSettings, load_bench, run_benchmark

    frame = make_decay_meta_dataset(150, runs_per_task=2, seed=11)
    path = tmp_path / "decay.parquet"
    frame.to_parquet(path)
    out = tmp_path / "res.json"
    result = CliRunner().invoke(main, ["benchmark", str(path), "--label", "score", "-o", str(out), "--figure", str(tmp_path / "f.png")])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    for rival in ("uniform", "random", "fixed_min"):
        assert res["paired"][rival]["ci90"][1] < 0, (rival, res["paired"][rival])
    assert (tmp_path / "f.png").stat().st_size > 1000
    # the reason: allocations follow the revelation speed the static feature encodes
    settings = BenchSettings(label="score")
    data = load_bench(frame, settings)
    from plan_probe.experiments.benchmark import _core

    seen = {}
    orig = _core._allocations

    def spy(share, st, grid, tasks, expected, p, rng):
        allocs = orig(share, st, grid, tasks, expected, p, rng)
        seen.update(dict(zip(tasks, allocs["planned"])))
        return allocs

    _core._allocations = spy
    try:
        run_benchmark(data, settings)
    finally:
        _core._allocations = orig
    rate = frame.groupby("task_id")["static_6"].first()
    rho = spearmanr([seen[t] for t in rate.index], rate.to_numpy()).statistic
    assert rho > 0.5, rho


def test_table_and_figure_of_a_budget_sweep(tmp_path):
    """The table names every policy with its paired interval; the figure has one point per budget share."""
    from plan_probe._figures import subplots
    from plan_probe.experiments.benchmark._cmd import _table
    from plan_probe.experiments.benchmark._core import BenchSettings, load_bench, run_benchmark
    from plan_probe.experiments.benchmark._figure import plot_benchmark

    frame, _ = _decay(tmp_path, n_tasks=16)
    settings = BenchSettings(label="score", folds=4, n_boot=100, budget_shares=(0.4, 0.2, 0.8), threshold=55.0)
    result = run_benchmark(load_bench(frame, settings), settings, fit_risk=_stub_fitter)
    text = _table(result)
    for name in result["settings"]["policy_order"]:
        assert any(line.startswith(name + " ") for line in text.splitlines()), name
    assert text.count("dec.loss") == len(result["paired"]) + 1  # header + one per paired policy
    fig, ax = subplots(figsize=(6, 4))
    plot_benchmark(ax, result)
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == set(result["settings"]["policy_order"])
    assert len(lines["planned"].get_xdata()) == 3 and len(lines["fixed"].get_xdata()) == 1
    steps = sorted(s["policies"]["planned"]["steps"] for s in result["settings"]["sweep"])
    assert list(lines["planned"].get_xdata()) == steps
