"""Issue #21 item 6: the fleet experiment's accounting, its Optuna rivals and its matched compute."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from click.testing import CliRunner

optuna_missing = importlib.util.find_spec("optuna") is None
pytestmark = pytest.mark.skipif(optuna_missing, reason="optuna is not installed (pip install 'plan-probe[optuna]')")


@pytest.fixture(scope="module")
def results():
    from plan_probe.experiments.synthetic.fleet import FleetSettings, FleetSuite, run_fleet_experiment

    settings = FleetSettings(n_runs=40, n_fleets=2, n_train=80, n_boot=200,
                             suites=(FleetSuite("late", 20.0, 500.0), FleetSuite("early", 2.0, 10.0)))
    return run_fleet_experiment(settings)


def test_threshold_pruner_policy_matches_brute_force():
    """Our Optuna loop stops each run at the first record depth whose value is below ``lower``."""
    import optuna

    from plan_probe.experiments.synthetic.fleet import _optuna_policy

    rng = np.random.default_rng(0)
    depths = np.array([5, 10, 20, 50])
    curves = rng.normal(50, 5, (30, 4))
    stop = _optuna_policy(optuna.pruners.ThresholdPruner(lower=45.0), curves, curves[:, -1], depths, 1000)
    below = curves < 45.0
    expected = np.where(below.any(axis=1), depths[np.argmax(below, axis=1)], 1000)
    np.testing.assert_array_equal(stop, expected)


def test_fleet_accounting_and_matched_compute(results):
    n = results["settings"]["n_runs"]
    by = {(r["suite"], r["policy"]): r for r in results["rows"]}
    for r in results["rows"]:
        # every success is either kept or falsely killed; compute lies between nothing and everything
        assert r["kept_success"] + r["false_kill"] == pytest.approx(r["successes"])
        assert 0 < r["compute"] <= n
        for key in ("live_minus_compute", "live_minus_kept_success", "live_minus_false_kill"):
            if key in r:
                mean, lo, hi = r[key]
                assert lo <= mean <= hi
    for suite in ("late", "early"):
        everything, live = by[(suite, "all")], by[(suite, "live")]
        assert everything["compute"] == n and everything["false_kill"] == 0
        assert everything["kept_success"] == everything["successes"]
        assert live["compute"] < n  # live stopped some runs
        for rival in ("percentile", "threshold"):  # matched compute: within 10 % of live's
            assert by[(suite, rival)]["compute"] == pytest.approx(live["compute"], rel=0.10)
        # the paired difference is the difference of the means
        assert by[(suite, "median")]["live_minus_compute"][0] == pytest.approx(
            live["compute"] - by[(suite, "median")]["compute"])


def test_fleet_table_and_figure(results):
    from plan_probe._figures import subplots
    from plan_probe.experiments.synthetic.fleet import POLICIES, format_table, plot_fleet

    table = format_table(results)
    assert table.count("\n") == 1 + len(results["rows"])
    assert all(label in table for label in POLICIES.values())
    fig, ax = subplots(figsize=(5, 4))
    plot_fleet(ax, results, "late")
    assert len(ax.get_legend().get_texts()) == len(POLICIES)
    with pytest.raises(ValueError, match="suite must be one of"):
        plot_fleet(ax, results, "nope")


def test_fleet_bad_input(tmp_path):
    from plan_probe.cli import main
    from plan_probe.experiments.synthetic.fleet import FleetSettings

    with pytest.raises(ValueError, match="n_runs >= 20"):
        FleetSettings(n_runs=5)
    with pytest.raises(ValueError, match="probe_step must be a record depth"):
        FleetSettings(probe_step=7)
    target = tmp_path / "file"
    target.write_text("x")
    result = CliRunner().invoke(main, ["experiment", "fleet", "--out", str(target), "--quick"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: --out must be a") and target.read_text() == "x"
