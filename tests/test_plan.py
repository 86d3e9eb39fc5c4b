"""The planner against brute force, on a risk model with a known population (no fitting)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plan_probe.experiments.synthetic.risk_generator import RiskGeneratorConfig, generate_tasks, tasks_table
from plan_probe._plan import PlanSettings, allocate_budget, compute_plan, plan_from_draws
from plan_probe._risk_model import RiskModel
from plan_probe.theory import RegimeThresholds, regime_probabilities

CFG = RiskGeneratorConfig(margin=0.3)
#: The generator's truth (regimes, oracle depths) uses absolute thresholds: plan with the same ones.
ABS = {"risk_weight": CFG.cost, "target_rmse": CFG.target_rmse}


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
    s = PlanSettings(**ABS)
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
    for s in (PlanSettings(**ABS), PlanSettings(risk_weight=0.1, target_rmse=1.5, min_depth=20)):
        plan = plan_from_draws(ids, l, k, a, s)
        th = RegimeThresholds(cost=s.cost, target_rmse=s.target_rmse, c_min=s.min_depth, c_max=s.max_depth)
        expected = regime_probabilities(l, k, a, th)
        got = plan[["p_static_sufficient", "p_dynamic_critical", "p_noise_dominant"]].to_numpy()
        np.testing.assert_array_equal(got, expected)
        # the regime is a diagnosis: only Static-Sufficient tasks skip the probe (issue #14 item 3)
        static = plan["regime"] == "static_sufficient"
        assert (plan["probe_steps"][static] == 0).all()
        assert (plan["probe_steps"][~static] == plan["c_opt"][~static]).all()
    assert (plan["regime"] == "noise_dominant").any() and (plan["probe_steps"][plan["regime"] == "noise_dominant"] > 0).all()


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
        plan_from_draws(ids, l, k, a, PlanSettings(budget=10 * n - 1, **ABS))


def test_plan_is_deterministic_and_seed_dependent():
    model = known_model()
    tasks = tasks_table(generate_tasks(50, CFG, seed=5))
    p1, _ = compute_plan(model, tasks, PlanSettings(seed=1, **ABS))
    p2, _ = compute_plan(model, tasks, PlanSettings(seed=1, **ABS))
    p3, _ = compute_plan(model, tasks, PlanSettings(seed=2, **ABS))
    assert p1.to_csv(index=False) == p2.to_csv(index=False)
    assert p1.to_csv(index=False) != p3.to_csv(index=False)


def test_known_population_plans_heldout_tasks_accurately():
    """With the true population, static features alone meet issue #3's thresholds (margin tasks)."""
    model = known_model()
    truth = generate_tasks(1500, CFG, seed=21)
    plan, _ = compute_plan(model, tasks_table(truth), PlanSettings(seed=0, **ABS))
    acc = (plan["regime"] == truth["regime"]).mean()
    c = plan["c_opt"].to_numpy(dtype=float)
    realised = truth["l_int"] + truth["k"] * c ** (-truth["alpha"]) + 0.01 * c
    within = (realised / truth["objective_oracle"] - 1 <= 0.05).mean()
    assert acc >= 0.95, acc
    assert within >= 0.90, within
    budget = 0.4 * 100 * len(truth)
    bplan, _ = compute_plan(model, tasks_table(truth), PlanSettings(seed=0, budget=budget, **ABS))
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


def test_settings_with_relative_defaults_round_trip():
    s = PlanSettings(step_cost=2.0, budget=1000.0)
    assert s.risk_weight is None and s.target_rmse is None and not s.resolved
    assert s.relative_keys() == ["risk_weight", "target_rmse"]
    assert PlanSettings.from_dict(s.to_dict()) == s
    # a schema-1 document (always explicit numbers) still loads, with the same meaning
    old = {k: v for k, v in PlanSettings(risk_weight=0.01, target_rmse=3.0).to_dict().items()}
    old["schema_version"] = 1
    assert PlanSettings.from_dict(old) == PlanSettings(risk_weight=0.01, target_rmse=3.0)
    with pytest.raises(ValueError, match="resolved"):
        _ = s.cost


def test_relative_defaults_rule_and_explicit_values_in_label_units():
    from plan_probe._plan import RELATIVE_RISK_WEIGHT, RELATIVE_TARGET_RISK

    r = PlanSettings(step_cost=2.0).resolve(400.0)
    assert r.risk_weight == pytest.approx(RELATIVE_RISK_WEIGHT * 400.0) and r.cost == pytest.approx(2.0 * 1e-3 * 400.0)
    assert r.target_rmse == pytest.approx(np.sqrt(RELATIVE_TARGET_RISK * 400.0)) == pytest.approx(np.sqrt(200.0))
    given = PlanSettings(risk_weight=0.01, target_rmse=3.0).resolve(400.0)
    assert (given.risk_weight, given.target_rmse) == (0.01, 3.0)
    with pytest.raises(ValueError, match="label_scale must be"):
        PlanSettings().resolve(0.0)


@pytest.mark.parametrize("factor", [1e-2, 100.0])
def test_plan_is_scale_free_with_default_settings(small_draws, factor):
    """Labels times a: risk draws and S times a^2 -> the same regimes, c_opt and probe_steps."""
    ids, l, k, a = small_draws
    base = plan_from_draws(ids, l, k, a, PlanSettings(), label_scale=5.0)
    scaled = plan_from_draws(ids, l * factor**2, k * factor**2, a, PlanSettings(), label_scale=5.0 * factor**2)
    for col in ("regime", "c_opt", "probe_steps", "at_bound"):
        assert (base[col] == scaled[col]).all(), col
    np.testing.assert_allclose(scaled["l_int"], base["l_int"] * factor**2, rtol=1e-9)
    assert len(set(base["regime"])) >= 2  # the check is not vacuous
    # explicit values stay in label units, so they do change the plan of rescaled labels
    explicit = plan_from_draws(ids, l * 1e4, k * 1e4, a, PlanSettings(**ABS), label_scale=5.0e4)
    assert (explicit["regime"] != plan_from_draws(ids, l, k, a, PlanSettings(**ABS))["regime"]).any()


def test_medians_and_80_percent_intervals(small_draws):
    ids, l, k, a = small_draws
    plan = plan_from_draws(ids, l, k, a, PlanSettings(**ABS))
    for name, x in (("l_int", l), ("k", k), ("alpha", a)):
        np.testing.assert_allclose(plan[name], np.median(x, axis=1), rtol=1e-12)
        np.testing.assert_allclose(plan[f"{name}_q10"], np.quantile(x, 0.1, axis=1), rtol=1e-12)
        np.testing.assert_allclose(plan[f"{name}_q90"], np.quantile(x, 0.9, axis=1), rtol=1e-12)
        assert (plan[f"{name}_q10"] <= plan[name]).all() and (plan[name] <= plan[f"{name}_q90"]).all()


def test_bound_flag_and_warning(small_draws):
    from plan_probe._plan import bound_warning

    ids, l, k, a = small_draws
    cheap = PlanSettings(risk_weight=1e-9, target_rmse=3.0)  # probing nearly free: everyone at c_max
    plan = plan_from_draws(ids, l, k, a, cheap)
    assert (plan["at_bound"] == "c_max").all() and (plan["c_opt"] == 1000).all()
    msg = bound_warning(plan, cheap)
    assert msg and f"{len(ids)} of {len(ids)} tasks" in msg and "c_max" in msg and "--max-depth" in msg
    dear = PlanSettings(risk_weight=1e3, target_rmse=3.0)  # probing very dear: everyone at c_min
    plan = plan_from_draws(ids, l, k, a, dear)
    assert (plan["at_bound"] == "c_min").all() and "c_min" in bound_warning(plan, dear)
    mid = plan_from_draws(ids, l, k, a, PlanSettings(**ABS))
    inside = (mid["at_bound"] == "none").mean()
    assert (bound_warning(mid, PlanSettings(**ABS)) is None) == (inside >= 0.5)
    assert set(mid["at_bound"]) <= {"none", "c_min", "c_max"}
    np.testing.assert_array_equal(mid["at_bound"] == "c_min", mid["c_opt"] == 10)


def _full_population():
    """A population with a full (non-diagonal) task covariance, so the Cholesky product matters."""
    L = np.array([[0.40, 0.0, 0.0], [-0.25, 0.30, 0.0], [0.10, 0.12, 0.15]])
    B = np.array([[0.5, 0.0], [0.0, 0.4], [0.2, -0.1]])
    b = np.array([0.3, 1.2, np.log(0.5)])
    return B, b, L


def test_theta_draws_with_full_covariance_match_closed_form():
    """Monte Carlo mean and full covariance of the log-parameters vs mu = B s + b, Sigma = L L^T."""
    B, b, L = _full_population()
    model = RiskModel.from_population(B, b, L, ["static_a", "static_b"])
    tasks = pd.DataFrame({"task_id": ["t0", "t1"], "static_a": [0.5, -1.0], "static_b": [1.0, 0.3]})
    n = 60_000
    d = model.posterior_task_draws(tasks, n_draws=n, seed=1)
    sigma = L @ L.T
    for i, s in enumerate(tasks[["static_a", "static_b"]].to_numpy()):
        logs = np.stack([np.log(d["l_int"][i]), np.log(d["k"][i]), np.log(d["alpha"][i])])
        # mean within 5 SE; sample covariance within 5 SE of each entry (SE^2 = (S_ij^2 + S_ii S_jj) / n)
        np.testing.assert_allclose(logs.mean(axis=1), B @ s + b, atol=5 * np.sqrt(np.diag(sigma).max() / n))
        se = np.sqrt((sigma**2 + np.outer(np.diag(sigma), np.diag(sigma))) / n)
        assert np.all(np.abs(np.cov(logs) - sigma) <= 5 * se), (np.cov(logs), sigma)


def _risk_moments_by_quadrature(mu, sigma, c, n_nodes: int = 80):
    """E[L(c)] and E[L(c)^2] for log (L_int, K, alpha) ~ N(mu, sigma), by conditioning on log alpha
    (Gauss-Hermite over it; the rest is the log-normal closed form). Independent of the planner's code."""
    x, w = np.polynomial.hermite_e.hermegauss(n_nodes)
    w = w / w.sum()
    a = mu[2] + np.sqrt(sigma[2, 2]) * x  # nodes of log alpha
    s12 = sigma[:2, 2]
    cond_mu = mu[:2, None] + np.outer(s12 / sigma[2, 2], a - mu[2])  # (2, nodes)
    cond_cov = sigma[:2, :2] - np.outer(s12, s12) / sigma[2, 2]
    decay = -np.exp(a) * np.log(c)

    def e_exp(u0, u1):  # E[exp(u0 * log L_int + u1 * (log K + decay)) | log alpha]
        m = u0 * cond_mu[0] + u1 * (cond_mu[1] + decay)
        v = u0**2 * cond_cov[0, 0] + u1**2 * cond_cov[1, 1] + 2 * u0 * u1 * cond_cov[0, 1]
        return np.exp(m + v / 2)

    first = np.sum(w * (e_exp(1, 0) + e_exp(0, 1)))
    second = np.sum(w * (e_exp(2, 0) + 2 * e_exp(1, 1) + e_exp(0, 2)))
    return first, second


def test_expected_risk_matches_quadrature_with_full_covariance():
    """expected_risk (Monte Carlo over the Cholesky draws) vs an independent quadrature of E[L(c)]."""
    B, b, L = _full_population()
    model = RiskModel.from_population(B, b, L, ["static_a", "static_b"])
    rows = pd.DataFrame({"static_a": [0.5, 0.5, -1.0, 2.0], "static_b": [1.0, 1.0, 0.3, -1.5], "depth": [5, 200, 20, 50]})
    n = 20_000
    got = model.expected_risk(rows, n_draws=n, seed=3)
    sigma = L @ L.T
    for i, r in rows.iterrows():
        mu = B @ r[["static_a", "static_b"]].to_numpy(dtype=float) + b
        m1, m2 = _risk_moments_by_quadrature(mu, sigma, float(r["depth"]))
        se = np.sqrt((m2 - m1**2) / n)
        assert abs(got[i] - m1) <= 4 * se, (i, got[i], m1, se)


def test_plan_bounds_experiment_counts_every_task():
    """experiments/plan_bounds.py: the at-bound counts partition the tasks under both settings."""
    from plan_probe.experiments.plan_bounds import bound_counts
    from plan_probe.experiments.synthetic.risk_generator import risk_observations

    model = known_model()
    model.label_scale_ = 12.0
    obs = risk_observations(generate_tasks(25, CFG, seed=4), CFG, seed=5)
    res = bound_counts(model, obs)
    assert res["n_tasks"] == 25 and res["label_scale"] == 12.0
    for key in ("relative_defaults", "former_absolute"):
        assert sum(res[key]["at_bound"].values()) == 25 and sum(res[key]["regimes"].values()) == 25
    assert res["relative_defaults"]["cost"] == pytest.approx(0.012) and res["former_absolute"]["cost"] == 0.01
