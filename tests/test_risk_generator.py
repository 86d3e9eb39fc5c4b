"""The synthetic risk-observation generator (issue #2 item 4)."""

from __future__ import annotations

import numpy as np
import pytest

from plan_probe.experiments.synthetic.risk_generator import RiskGeneratorConfig, generate_tasks, oracle_depth, risk_observations, tasks_table
from plan_probe._tables import validate_risk_observations, validate_tasks
from plan_probe.theory import REGIMES, RegimeThresholds, classify_regimes


def test_observations_are_scaled_chi_square():
    """u / L(c) ~ chi2_nu / nu: mean 1, variance 2/nu (Monte Carlo, 5 standard errors)."""
    cfg = RiskGeneratorConfig(dof=7.0)
    truth = generate_tasks(3000, cfg, seed=0)
    obs = risk_observations(truth, cfg, seed=1)
    t = truth.set_index("task_id").loc[obs["task_id"]]
    ratio = obs["risk_obs"].to_numpy() / (t["l_int"].to_numpy() + t["k"].to_numpy() * obs["depth"].to_numpy() ** -t["alpha"].to_numpy())
    n = ratio.size
    var = 2 / 7.0
    assert abs(ratio.mean() - 1) < 5 * np.sqrt(var / n)
    # sd of the sample variance of chi2_7/7: sqrt((m4 - var^2)/n), m4 = 12(nu+4)/nu^3 + 3 var^2 ... use 10 % tolerance
    assert abs(ratio.var() / var - 1) < 0.1
    assert set(obs["depth"]) == set(cfg.depths) and (obs["dof"] == 7.0).all()
    validate_risk_observations(obs)  # follows the docs/theory.md §3 contract


def test_regression_and_noise_as_configured():
    cfg = RiskGeneratorConfig()
    truth = generate_tasks(20000, cfg, seed=2)
    s = truth[[f"static_f{j}" for j in range(3)]].to_numpy()
    theta = np.log(truth[["l_int", "k", "alpha"]].to_numpy())
    X = np.column_stack([s, np.ones(len(s))])
    coef, *_ = np.linalg.lstsq(X, theta, rcond=None)
    # alpha is capped at alpha_max, which bends a few draws; otherwise OLS recovers the truth
    np.testing.assert_allclose(coef[:3].T, np.asarray(cfg.coef), atol=0.02)
    np.testing.assert_allclose(coef[3], np.asarray(cfg.intercept), atol=0.02)
    np.testing.assert_allclose((theta - X @ coef).std(axis=0), cfg.task_noise, rtol=0.05)


def test_truth_regimes_and_oracle():
    cfg = RiskGeneratorConfig()
    truth = generate_tasks(500, cfg, seed=3)
    codes = classify_regimes(truth["l_int"], truth["k"], truth["alpha"], RegimeThresholds())
    assert list(truth["regime"]) == [REGIMES[c] for c in codes]
    assert set(truth["regime"]) == set(REGIMES)  # the default population has all three regimes
    grid = np.arange(10, 1001, dtype=float)
    obj = truth["l_int"].to_numpy()[:, None] + truth["k"].to_numpy()[:, None] * grid ** -truth["alpha"].to_numpy()[:, None] + 0.01 * grid
    np.testing.assert_array_equal(truth["c_oracle"], grid[obj.argmin(axis=1)])
    np.testing.assert_allclose(truth["objective_oracle"], obj.min(axis=1), rtol=1e-12)
    c, j = oracle_depth(1.0, 0.5, 1.0, 0.01, 10, 1000)
    assert c == 10 and np.isclose(j, 1.0 + 0.05 + 0.1)


def test_margin_keeps_tasks_away_from_boundaries():
    cfg = RiskGeneratorConfig(margin=0.3)
    truth = generate_tasks(400, cfg, seed=4)
    theta = np.log(truth[["l_int", "k", "alpha"]].to_numpy())
    rng = np.random.default_rng(0)
    base = classify_regimes(*np.exp(theta).T)
    for _ in range(20):
        shift = rng.uniform(-0.3, 0.3, size=theta.shape)
        assert (classify_regimes(*np.exp(theta + shift).T) == base).all()


def test_deterministic_and_tasks_table():
    cfg = RiskGeneratorConfig(margin=0.2)
    a = risk_observations(generate_tasks(30, cfg, seed=5), cfg, seed=6)
    b = risk_observations(generate_tasks(30, cfg, seed=5), cfg, seed=6)
    assert a.equals(b)
    tasks = tasks_table(generate_tasks(30, cfg, seed=5))
    assert list(tasks.columns) == ["task_id", "static_f0", "static_f1", "static_f2"]
    t, pilots = validate_tasks(tasks)
    assert len(t) == 30 and len(pilots) == 0


@pytest.mark.parametrize("bad", [{"dof": 0}, {"margin": -1}, {"depths": ()}, {"task_noise": (0.1, -0.1, 0.1)}, {"coef": ((1.0,),)}])
def test_bad_config(bad):
    with pytest.raises(ValueError, match="must"):
        RiskGeneratorConfig(**bad)
