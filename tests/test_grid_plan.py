"""Portfolio budgets on a depth grid (plan_probe._grid) against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from plan_probe._grid import allocate_on_grid, expected_risk_on_grid


def _brute(risk, depths, budget):
    best, arg = np.inf, None
    for combo in itertools.product(range(len(depths)), repeat=risk.shape[0]):
        if sum(depths[j] for j in combo) <= budget + 1e-9:
            total = sum(risk[i, j] for i, j in enumerate(combo))
            if total < best:
                best, arg = total, combo
    return best, arg


def _power_risk(rng, n, depths):
    l_int = rng.uniform(0.1, 1.0, n)
    k = rng.lognormal(1.0, 1.0, n)
    alpha = rng.lognormal(np.log(0.6), 0.6, n)
    return l_int[:, None] + k[:, None] * np.asarray(depths, float)[None, :] ** -alpha[:, None]


def test_greedy_matches_brute_force_on_convex_power_laws():
    """Power-law curves are convex in depth; the hull greedy plus top-up is then within one segment's gain."""
    rng = np.random.default_rng(0)
    depths = np.array([5.0, 10.0, 20.0, 50.0, 100.0])
    worst = 0.0
    for _ in range(30):
        risk = _power_risk(rng, 4, depths)
        budget = rng.uniform(5 * 4, 100 * 4)
        choice = allocate_on_grid(risk, depths, budget)
        assert depths[choice].sum() <= budget + 1e-9
        best, _ = _brute(risk, depths, budget)
        got = risk[np.arange(4), choice].sum()
        max_step_gain = np.max(risk[:, :-1] - risk[:, 1:])
        assert got <= best + max_step_gain + 1e-12
        worst = max(worst, (got - best) / best)
    assert worst < 0.05  # on these instances the greedy is within 5 % of the optimum


def test_budget_for_everyone_at_the_top_gives_the_deepest_depth_and_floor_is_enforced():
    depths = np.array([5.0, 20.0, 100.0])
    risk = _power_risk(np.random.default_rng(1), 6, depths)
    assert np.all(allocate_on_grid(risk, depths, 100 * 6) == 2)
    assert np.all(allocate_on_grid(risk, depths, 5 * 6) == 0)
    with pytest.raises(ValueError, match="budget must cover the shallowest depth"):
        allocate_on_grid(risk, depths, 5 * 6 - 1)


def test_flat_curves_get_nothing_and_steep_ones_get_the_budget():
    depths = np.array([5.0, 10.0, 20.0, 40.0])
    flat = np.full(4, 3.0)
    steep = 1.0 + 50.0 * depths**-1.0
    risk = np.stack([flat, steep, flat])
    choice = allocate_on_grid(risk, depths, 5 + 40 + 5)
    assert choice.tolist() == [0, 3, 0]


def test_expected_risk_on_grid_is_the_posterior_mean():
    rng = np.random.default_rng(2)
    l_int, k, alpha = rng.uniform(0, 1, (3, 7)), rng.uniform(1, 5, (3, 7)), rng.uniform(0.2, 2, (3, 7))
    depths = [5, 50]
    got = expected_risk_on_grid(l_int, k, alpha, depths)
    want = np.stack([(l_int + k * d**-alpha).mean(axis=1) for d in depths], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12)
