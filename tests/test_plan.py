"""The planner against brute force, on a risk model with a known population (no fitting)."""

from __future__ import annotations

import numpy as np
import pytest

from plan_probe.experiments.synthetic.risk_generator import RiskGeneratorConfig, generate_tasks, tasks_table
from plan_probe._plan import PlanSettings, allocate_budget, compute_plan, plan_from_draws
from plan_probe._risk_model import RiskModel
from plan_probe.theory import RegimeThresholds, regime_probabilities

CFG = RiskGeneratorConfig(margin=0.3)


def known_model(cfg=CFG):
    """The generator's own population as a risk model: draws = the true (B, b, Sigma)."""
    names = [f"static_f{j}" for j in range(cfg.n_features)]
    return RiskModel.from_population(cfg.coef, cfg.intercept, np.diag(cfg.task_noise), names)


@pytest.fixture(scope="module")
def small_draws():
    rng = np.random.default_rng(3)
    n, d = 40, 64
    truth = generate_tasks(n, CFG, seed=11)
    noise = lambda sd: np.exp(sd * rng.standard_normal((n, d)))  # noqa: E731
    return (truth["task_id"].to_numpy(), truth["l_int"].to_numpy()[:, None] * noise(0.3),
            truth["k"].to_numpy()[:, None] * noise(0.5), truth["alpha"].to_numpy()[:, None] * noise(0.2))


def test_c_opt_is_brute_force_minimiser_of_expected_objective(small_draws):
    ids, l, k, a = small_draws
    s = PlanSettings()
    plan = plan_from_draws(ids, l, k, a, s)
    grid = np.arange(10, 1001, dtype=float)
    # posterior expected objective on every integer depth; exact minimiser (ties -> smaller c)
    obj = (k[:, :, None] * grid[None, None, :] ** (-a[:, :, None])).mean(axis=1) + s.cost * grid
    brute = grid[np.argmin(obj, axis=1)]
    np.testing.assert_array_equal(plan["c_opt"].to_numpy(), brute)
    # risk_at_c_opt is E[L(c_opt)], exactly
    c = plan["c_opt"].to_numpy(dtype=float)[:, None]
    np.testing.assert_allclose(plan["risk_at_c_opt"], (l + k * c ** (-a)).mean(axis=1), rtol=1e-12)


def test_regime_probabilities_match_theory(small_draws):
    ids, l, k, a = small_draws
    for s in (PlanSettings(), PlanSettings(risk_weight=0.1, target_rmse=1.5, min_depth=20)):
        plan = plan_from_draws(ids, l, k, a, s)
        th = RegimeThresholds(cost=s.cost, target_rmse=s.target_rmse, c_min=s.min_depth, c_max=s.max_depth)
        expected = regime_probabilities(l, k, a, th)
        got = plan[["p_static_sufficient", "p_dynamic_critical", "p_noise_dominant"]].to_numpy()
        np.testing.assert_array_equal(got, expected)
        assert (plan["probe_steps"][plan["regime"] != "dynamic_critical"] == 0).all()
        dyn = plan["regime"] == "dynamic_critical"
        assert (plan["probe_steps"][dyn] == plan["c_opt"][dyn]).all()


def _greedy(k, a, budget, c_min, c_max):
    """Exact optimum of a separable convex integer allocation: one step at a time to the best gain."""
    c = np.full(k.shape[0], c_min)
    g = lambda c: (k * c[:, None] ** (-a)).mean(axis=1)  # noqa: E731
    for _ in range(int(budget) - c.sum()):
        gain = np.where(c < c_max, g(c.astype(float)) - g(c + 1.0), -np.inf)
        c[np.argmax(gain)] += 1
    return c


@pytest.mark.parametrize("budget", [400, 1000, 2500])
def test_budget_allocation_matches_greedy_optimum(small_draws, budget):
    ids, l, k, a = small_draws
    c = allocate_budget(k, a, budget, 10, 1000)
    assert c.sum() <= budget and c.min() >= 10 and c.max() <= 1000
    assert c.sum() >= budget - 1  # the leftover after rounding is handed out
    ref = _greedy(k, a, budget, 10, 1000)
    risk = lambda c: (k * c[:, None] ** (-a)).mean(axis=1).sum()  # noqa: E731
    # greedy is the exact integer optimum; equal marginal gains + top-up may differ by a few steps
    assert risk(c.astype(float)) <= risk(ref.astype(float)) * (1 + 1e-4)


def test_budget_edges(small_draws):
    ids, l, k, a = small_draws
    n = len(ids)
    assert (allocate_budget(k, a, 10 * n, 10, 1000) == 10).all()
    assert (allocate_budget(k, a, 10**7, 10, 1000) == 1000).all()
    with pytest.raises(ValueError, match="budget must"):
        plan_from_draws(ids, l, k, a, PlanSettings(budget=10 * n - 1))


def test_plan_is_deterministic_and_seed_dependent():
    model = known_model()
    tasks = tasks_table(generate_tasks(50, CFG, seed=5))
    p1, _ = compute_plan(model, tasks, PlanSettings(seed=1))
    p2, _ = compute_plan(model, tasks, PlanSettings(seed=1))
    p3, _ = compute_plan(model, tasks, PlanSettings(seed=2))
    assert p1.to_csv(index=False) == p2.to_csv(index=False)
    assert p1.to_csv(index=False) != p3.to_csv(index=False)


def test_known_population_plans_heldout_tasks_accurately():
    """With the true population, static features alone meet issue #3's thresholds (margin tasks)."""
    model = known_model()
    truth = generate_tasks(1500, CFG, seed=21)
    plan, _ = compute_plan(model, tasks_table(truth), PlanSettings(seed=0))
    acc = (plan["regime"] == truth["regime"]).mean()
    c = plan["c_opt"].to_numpy(dtype=float)
    realised = truth["l_int"] + truth["k"] * c ** (-truth["alpha"]) + 0.01 * c
    within = (realised / truth["objective_oracle"] - 1 <= 0.05).mean()
    assert acc >= 0.95, acc
    assert within >= 0.90, within
    budget = 0.4 * 100 * len(truth)
    bplan, _ = compute_plan(model, tasks_table(truth), PlanSettings(seed=0, budget=budget))
    steps = bplan["probe_steps"].to_numpy(dtype=float)
    assert steps.sum() <= budget
    risk_budget = (truth["l_int"] + truth["k"] * steps ** (-truth["alpha"])).mean()
    risk_fixed = (truth["l_int"] + truth["k"] * 100.0 ** (-truth["alpha"])).mean()
    assert risk_budget <= risk_fixed


def test_theta_draws_match_population_moments():
    """Monte Carlo mean/covariance of the regression draws vs closed form (tolerance ~5 SE)."""
    model = known_model()
    tasks = tasks_table(generate_tasks(3, CFG, seed=2))
    n = 40_000
    d = model.posterior_task_draws(tasks, n_draws=n, seed=0)
    s = tasks[model.static_features_].to_numpy()
    mean = s @ np.asarray(CFG.coef).T + np.asarray(CFG.intercept)
    sd = np.asarray(CFG.task_noise)
    logs = np.stack([np.log(d["l_int"]), np.log(d["k"]), np.log(d["alpha"])], axis=-1)
    np.testing.assert_allclose(logs.mean(axis=1), mean, atol=5 * sd.max() / np.sqrt(n))
    np.testing.assert_allclose(logs.std(axis=1), np.broadcast_to(sd, (3, 3)), rtol=0.02)


def test_settings_round_trip_and_validation():
    s = PlanSettings(step_cost=2.0, risk_weight=0.5, budget=1000.0, seed=4)
    assert PlanSettings.from_dict(s.to_dict()) == s
    for bad in ({"step_cost": -1}, {"risk_weight": 0}, {"min_depth": 50, "max_depth": 10}, {"budget": -5}, {"target_rmse": float("nan")}):
        with pytest.raises(ValueError, match="must"):
            PlanSettings(**bad)
