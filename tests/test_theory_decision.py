"""Decision-aware probing (plan_probe.theory._decision) against known truths: scipy's bivariate normal
CDF, numerical integration, a Monte Carlo simulation of the whole decide-after-probing process,
brute force over every integer depth, and the label-scale invariance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import integrate, stats

from plan_probe.theory import (
    allocate_decision_budget,
    bivariate_normal_cdf,
    decision_curves,
    decision_loss,
    decision_loss_now,
    expected_decision_loss,
    probe_cost_steps,
    success_probability,
)


def _tasks(n, n_draws, seed, spread=1.0):
    """Static predictives around tau = 0 and lognormal risk-curve draws (label units: pp)."""
    rng = np.random.default_rng(seed)
    s0 = np.exp(rng.normal(np.log(16.0), 0.3, n))
    m0 = rng.normal(0.0, spread * np.sqrt(s0))
    l_int = np.exp(rng.normal(np.log(1.5), 0.5, (n, n_draws)))
    k = np.exp(rng.normal(np.log(30.0), 0.5, (n, n_draws)))
    alpha = np.exp(rng.normal(np.log(0.5), 0.4, (n, n_draws)))
    return m0, s0, l_int, k, alpha


def test_bivariate_normal_cdf_matches_scipy_and_its_limits():
    rng = np.random.default_rng(0)
    h, k = rng.normal(0, 2, (2, 60))
    rho = np.tanh(rng.normal(0, 1.5, 60))
    got = bivariate_normal_cdf(h, k, rho)
    want = [stats.multivariate_normal([0, 0], [[1, r], [r, 1]]).cdf([a, b]) for a, b, r in zip(h, k, rho)]
    np.testing.assert_allclose(got, want, atol=1e-7)
    # zeros, perfect (anti-)correlation and infinite bounds, in closed form
    np.testing.assert_allclose(bivariate_normal_cdf(0.0, 0.0, 0.3), 0.25 + np.arcsin(0.3) / (2 * np.pi), atol=1e-15)
    np.testing.assert_allclose(bivariate_normal_cdf(0.0, 0.7, -0.4),
                               stats.multivariate_normal([0, 0], [[1, -0.4], [-0.4, 1]]).cdf([0, 0.7]), atol=1e-7)
    np.testing.assert_allclose(bivariate_normal_cdf(0.4, -0.2, 1.0), stats.norm.cdf(-0.2), atol=1e-15)
    np.testing.assert_allclose(bivariate_normal_cdf(0.4, -0.2, -1.0), max(stats.norm.cdf(0.4) + stats.norm.cdf(-0.2) - 1, 0))
    np.testing.assert_allclose(bivariate_normal_cdf([np.inf, 0.3, -np.inf], [0.3, np.inf, 1.0], 0.5),
                               [stats.norm.cdf(0.3), stats.norm.cdf(0.3), 0.0], atol=1e-15)


@pytest.mark.parametrize("c_lb, c_kg", [(1000.0, 1000.0), (1000.0, 150.0), (80.0, 1000.0)])
def test_closed_form_loss_matches_numerical_integration(c_lb, c_kg):
    tau, s0 = 55.0, 12.0
    for m0, post_var in [(55.0, 4.0), (53.0, 1.0), (60.0, 9.0), (49.0, 0.3), (55.5, 11.9)]:
        v, sig = s0 - post_var, np.sqrt(post_var)

        def integrand(m):
            p_below = stats.norm.cdf((tau - m) / sig)
            return min(c_lb * p_below, c_kg * (1 - p_below)) * stats.norm.pdf(m, m0, np.sqrt(v))

        want = integrate.quad(integrand, m0 - 12 * np.sqrt(v), m0 + 12 * np.sqrt(v), limit=400, epsabs=1e-10)[0]
        got = float(decision_loss(m0, s0, post_var, tau, c_lb, c_kg))
        assert got == pytest.approx(want, abs=1e-6 * max(c_lb, c_kg))
    # no information (post_var >= S0) is deciding now; perfect information costs nothing
    now = decision_loss_now(53.0, s0, tau, c_lb, c_kg)
    assert float(decision_loss(53.0, s0, 2 * s0, tau, c_lb, c_kg)) == pytest.approx(float(now), abs=1e-12)
    p = float(success_probability(53.0, s0, tau))
    assert float(now) == pytest.approx(min(c_lb * (1 - p), c_kg * p))
    assert float(decision_loss(53.0, s0, 0.0, tau, c_lb, c_kg)) == 0.0


def test_loss_falls_as_the_probe_resolves_more():
    post = np.linspace(0.0, 20.0, 401)
    loss = decision_loss(54.0, 16.0, post, 55.0, 1000.0, 400.0)
    assert np.all(np.diff(loss) >= -1e-12)
    assert loss[0] == 0.0 and loss[-1] == pytest.approx(float(decision_loss_now(54.0, 16.0, 55.0, 1000.0, 400.0)))


@pytest.mark.parametrize("c_lb, c_kg", [(1000.0, 1000.0), (1000.0, 250.0)])
def test_monte_carlo_of_the_decide_after_probing_process_agrees_at_every_depth(c_lb, c_kg):
    """Simulate the whole process: a draw of the risk curve, the probe's posterior mean m_c, the
    Bayes decision from it, the realised score R and the realised loss; compare with the formula."""
    m0, s0, l_int, k, alpha = _tasks(4, 32, seed=3, spread=0.4)
    depths = np.array([0, 1, 5, 10, 30, 100, 300, 1000], dtype=float)
    tau, n_sim = 0.0, 200_000
    want = expected_decision_loss(depths, m0, s0, l_int, k, alpha, tau, c_lb, c_kg)
    rng = np.random.default_rng(11)
    z_q = stats.norm.ppf(c_kg / (c_lb + c_kg))
    for i in range(len(m0)):
        for j, c in enumerate(depths):
            d = rng.integers(0, l_int.shape[1], n_sim)
            L = np.inf if c == 0 else l_int[i, d] + k[i, d] * c ** -alpha[i, d]
            sig2 = np.minimum(L, s0[i])
            m_c = m0[i] + np.sqrt(s0[i] - sig2) * rng.standard_normal(n_sim)
            R = m_c + np.sqrt(sig2) * rng.standard_normal(n_sim)
            go = m_c >= tau - np.sqrt(sig2) * z_q  # C_lb P(R < tau | m_c) <= C_kg P(R >= tau | m_c)
            loss = np.where(go, c_lb * (R < tau), c_kg * (R >= tau))
            se = loss.std(ddof=1) / np.sqrt(n_sim)
            assert abs(loss.mean() - want[i, j]) <= 3 * se + 1e-4 * max(c_lb, c_kg), (i, c, loss.mean(), want[i, j], se)


def test_tabulated_loss_matches_the_closed_form_for_every_draw():
    m0, s0, l_int, k, alpha = _tasks(200, 48, seed=4, spread=1.5)
    depths = np.array([0, 1, 3, 10, 40, 150, 1000], dtype=float)
    for c_lb, c_kg in [(1000.0, 1000.0), (1000.0, 30.0), (20.0, 1000.0)]:
        exact = expected_decision_loss(depths, m0, s0, l_int, k, alpha, 0.0, c_lb, c_kg, exact=True)
        table = expected_decision_loss(depths, m0, s0, l_int, k, alpha, 0.0, c_lb, c_kg)
        assert np.abs(exact - table).max() <= 5e-5 * max(c_lb, c_kg)


@pytest.mark.parametrize("seed, lam, c_kg", [(5, 1.0, 1000.0), (6, 0.2, 300.0), (7, 3.0, 1000.0)])
def test_c_opt_matches_brute_force_over_every_integer_depth(seed, lam, c_kg):
    m0, s0, l_int, k, alpha = _tasks(30, 64, seed=seed, spread=0.8)
    # a bimodal posterior (two kinds of curve) makes some objectives non-convex in c
    alpha[:, ::2] *= 6.0
    c_min, c_max = 10, 400
    cur = decision_curves(m0, s0, l_int, k, alpha, 0.0, 1000.0, c_kg, lam, c_min, c_max)
    every = np.concatenate([[0.0], np.arange(c_min, c_max + 1, dtype=float)])
    obj = expected_decision_loss(every, m0, s0, l_int, k, alpha, 0.0, 1000.0, c_kg) + lam * every
    got = obj[np.arange(30), np.searchsorted(every, cur.c_opt)]
    # within a twentieth of one step's cost plus the loss table's interpolation error (2e-5 of the costs)
    assert np.all(got - obj.min(axis=1) <= 0.05 * lam + 2e-5 * 1000.0)
    assert np.all(cur.value_of_probe >= 0)
    np.testing.assert_allclose(cur.value_of_probe, cur.loss_now - cur.loss_at_c_opt - lam * cur.c_opt, atol=1e-9)
    assert np.all((cur.c_opt == 0) | ((cur.c_opt >= c_min) & (cur.c_opt <= c_max)))
    assert np.all(cur.p_flip[cur.c_opt == 0] == 0) and np.all((cur.p_flip >= 0) & (cur.p_flip <= 1))


@pytest.mark.parametrize("setup", [10.0, 60.0])
def test_setup_steps_match_brute_force_and_only_move_the_choice_to_probe(setup):
    """A probe that costs s steps beyond its depth: c_opt is the brute-force argmin of
    loss(c) + lam (c + s [c > 0]); a task that still probes keeps the depth it had without setup
    (a constant cannot move an argmin among c > 0), and fewer tasks probe."""
    m0, s0, l_int, k, alpha = _tasks(40, 64, seed=11, spread=0.8)
    lam, c_min, c_max = 1.0, 10, 400
    free = decision_curves(m0, s0, l_int, k, alpha, 0.0, 1000.0, 1000.0, lam, c_min, c_max)
    cur = decision_curves(m0, s0, l_int, k, alpha, 0.0, 1000.0, 1000.0, lam, c_min, c_max, setup_steps=setup)
    every = np.concatenate([[0.0], np.arange(c_min, c_max + 1, dtype=float)])
    obj = expected_decision_loss(every, m0, s0, l_int, k, alpha, 0.0, 1000.0, 1000.0) + lam * probe_cost_steps(every, setup)
    got = obj[np.arange(40), np.searchsorted(every, cur.c_opt)]
    assert np.all(got - obj.min(axis=1) <= 0.05 * lam + 2e-5 * 1000.0)
    probing = cur.c_opt > 0
    assert 0 < probing.sum() < (free.c_opt > 0).sum()  # the setup tips some tasks to deciding now, not all
    np.testing.assert_array_equal(cur.c_opt[probing], free.c_opt[probing])
    np.testing.assert_allclose(cur.value_of_probe, np.where(probing, cur.loss_now - cur.loss_at_c_opt - lam * (cur.c_opt + setup), 0.0),
                               atol=1e-9)
    np.testing.assert_allclose(np.nanmin(np.where(np.isnan(cur.objective), np.inf, cur.objective), axis=1), got, atol=1e-9)
    c = allocate_decision_budget(cur, 100)
    assert c.sum() <= 100  # the setup is charged in the objective, not against the probe budget


def test_setup_steps_cost_nothing_without_a_probe():
    np.testing.assert_array_equal(probe_cost_steps([0, 5, 12], 10), [0, 15, 22])
    np.testing.assert_array_equal(probe_cost_steps([0, 5], 0), [0, 5])


def test_far_from_tau_or_unresolvable_tasks_decide_now():
    m0 = np.array([30.0, -30.0, 0.0, 0.0])
    s0 = np.full(4, 16.0)
    l_int = np.full((4, 8), 1.0)
    l_int[3] = 20.0  # intrinsic risk above S0: no probe resolves anything
    k, alpha = np.full((4, 8), 30.0), np.full((4, 8), 0.5)
    cur = decision_curves(m0, s0, l_int, k, alpha, 0.0, 1000.0, 1000.0, 1.0, 10, 1000)
    assert list(cur.c_opt[[0, 1, 3]]) == [0, 0, 0] and cur.c_opt[2] > 0
    assert list(cur.go_now[:2]) == [True, False]
    assert cur.loss_floor[3] == pytest.approx(cur.loss_now[3])


def test_plan_is_unchanged_when_labels_tau_and_risks_are_rescaled():
    m0, s0, l_int, k, alpha = _tasks(300, 64, seed=8, spread=1.0)
    base = decision_curves(m0 + 50.0, s0, l_int, k, alpha, 50.0, 1000.0, 400.0, 1.0, 10, 1000)
    for scale in (0.01, 100.0):
        cur = decision_curves((m0 + 50.0) * scale, s0 * scale**2, l_int * scale**2, k * scale**2, alpha, 50.0 * scale,
                              1000.0, 400.0, 1.0, 10, 1000)
        np.testing.assert_array_equal(cur.c_opt, base.c_opt)
        np.testing.assert_allclose(cur.loss_at_c_opt, base.loss_at_c_opt, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(allocate_decision_budget(cur, 800), allocate_decision_budget(base, 800))


def test_budget_is_never_exceeded_and_is_optimal_on_convex_curves():
    m0, s0, l_int, k, alpha = _tasks(60, 64, seed=9, spread=0.6)
    cur = decision_curves(m0, s0, l_int, k, alpha, 0.0, 1000.0, 1000.0, 1.0, 10, 400)
    assert np.array_equal(allocate_decision_budget(cur, cur.c_opt.sum() + 5), cur.c_opt)
    totals = []
    for budget in (0, 9, 10, 37, 200, 555, 1500):
        c = allocate_decision_budget(cur, budget)
        assert c.sum() <= budget
        assert np.all(np.isin(c, np.concatenate([[0], np.arange(10, 401)])))
        obj = cur.objective[np.arange(60), [np.flatnonzero(cur.depths[i] == c[i])[0] for i in range(60)]]
        totals.append(obj.sum())
    assert all(b <= a + 1e-9 for a, b in zip(totals, totals[1:]))  # more budget never hurts

    # brute force on three tasks: every combination of evaluated depths within the budget
    sub = decision_curves(m0[:3], s0[:3], l_int[:3], k[:3], alpha[:3], 0.0, 1000.0, 1000.0, 1.0, 10, 400, grid_ratio=1.6)
    obj = np.where(np.isnan(sub.objective), np.inf, sub.objective)
    for budget in (10, 25, 60, 120):
        best = min(sum(obj[i, j] for i, j in enumerate(combo))
                   for combo in itertools.product(range(obj.shape[1]), repeat=3)
                   if sum(sub.depths[i, j] for i, j in enumerate(combo)) <= budget)
        c = allocate_decision_budget(sub, budget)
        got = sum(obj[i, np.flatnonzero(sub.depths[i] == c[i])].min() for i in range(3))
        # greedy on convex envelopes: optimal up to the one envelope segment that did not fit
        gap = np.nanmax(sub.loss_now - sub.loss_floor)
        assert best <= got <= best + gap
        assert c.sum() <= budget


@pytest.mark.parametrize("kwargs, fragment", [
    ({"launch_cost": 0.0}, "launch_cost must be positive"),
    ({"kill_cost": -1.0}, "kill_cost must be positive"),
    ({"step_cost": 0.0}, "step_cost must be positive"),
    ({"s0": -1.0}, "s0 must be positive"),
    ({"setup_steps": -1.0}, "setup_steps must be non-negative"),
])
def test_bad_arguments_raise_one_clear_error(kwargs, fragment):
    m0, s0, l_int, k, alpha = _tasks(3, 4, seed=1)
    args = dict(m0=m0, s0=s0, l_int=l_int, k=k, alpha=alpha, tau=0.0, launch_cost=1.0, kill_cost=1.0, step_cost=1.0,
                c_min=10, c_max=100)
    args.update(kwargs)
    with pytest.raises(ValueError, match=fragment):
        decision_curves(**args)
