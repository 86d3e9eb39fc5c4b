"""Budget closed forms (Thm. 6.1) against brute-force minimisation on grids."""

from __future__ import annotations

import numpy as np
import pytest

from plan_probe.theory import (
    depth_for_marginal_gain,
    efficiency_frontier,
    expected_optimal_depth,
    optimal_probe_length,
    probe_objective,
    risk_curve,
)


@pytest.mark.parametrize("k,alpha,cost", [(30.0, 0.5, 0.01), (1.0, 1.0, 0.01), (200.0, 0.2, 0.05), (5.0, 2.5, 0.001)])
def test_c_star_matches_grid_minimum(k, alpha, cost):
    c_star = float(optimal_probe_length(k, alpha, cost))
    # log grid with ratio 1 + 1e-4 between neighbours: the grid argmin is within 1e-4 (relative) of c*
    grid = np.exp(np.arange(np.log(c_star / 20), np.log(c_star * 20), 1e-4))
    j = probe_objective(grid, 1.3, k, alpha, cost)
    c_grid = grid[np.argmin(j)]
    assert abs(c_grid / c_star - 1) < 2e-4
    # stationarity: |dV/dc| = alpha K c^-(alpha+1) = cost
    assert alpha * k * c_star ** (-alpha - 1) == pytest.approx(cost, rel=1e-10)


def test_c_star_does_not_depend_on_floor_and_is_clipped():
    grid = np.geomspace(1, 1e4, 200_001)
    for l_int in (0.0, 5.0, 100.0):
        assert grid[np.argmin(probe_objective(grid, l_int, 30.0, 0.5, 0.01))] == pytest.approx(
            float(optimal_probe_length(30.0, 0.5, 0.01)), rel=1e-4
        )
    assert float(optimal_probe_length(1e6, 0.5, 0.01, c_min=10, c_max=1000)) == 1000.0
    assert float(optimal_probe_length(1e-6, 0.5, 0.01, c_min=10, c_max=1000)) == 10.0


def test_expected_optimal_depth_matches_brute_force_over_draws():
    rng = np.random.default_rng(3)
    n_tasks, n_draws = 6, 400
    k = np.exp(rng.normal(np.log(20.0), 1.0, (n_tasks, n_draws)))
    alpha = np.exp(rng.normal(np.log(0.5), 0.4, (n_tasks, n_draws)))
    cost, c_min, c_max = 0.01, 10.0, 1000.0
    got = expected_optimal_depth(k, alpha, cost, c_min, c_max)
    # brute force: posterior-expected objective on a log grid of ratio 1 + 2e-4 over [c_min, c_max]
    grid = np.exp(np.arange(np.log(c_min), np.log(c_max) + 1e-12, 2e-4))
    for i in range(n_tasks):
        obj = (k[i][None, :] * grid[:, None] ** (-alpha[i][None, :])).mean(axis=1) + cost * grid
        c_bf = grid[np.argmin(obj)]
        assert abs(got[i] / c_bf - 1) < 5e-4  # grid spacing 2e-4; the objective is flat at its minimum
    # a common marginal gain mu: each task's expected gain equals mu where it is not clipped
    mu = 0.02
    c_mu = depth_for_marginal_gain(k, alpha, mu, c_min, c_max)
    gain = (alpha * k * c_mu[:, None] ** (-alpha - 1)).mean(axis=1)
    inside = (c_mu > c_min) & (c_mu < c_max)
    assert inside.any()
    np.testing.assert_allclose(gain[inside], mu, rtol=1e-8)


def test_frontier_is_the_risk_curve():
    c, risk = efficiency_frontier([1, 10, 100], 0.5, 20.0, 0.5)
    np.testing.assert_allclose(risk, 0.5 + 20.0 * np.array([1, 10, 100.0]) ** -0.5)
    assert np.all(np.diff(risk) < 0)
    np.testing.assert_allclose(risk_curve(4.0, 1.0, 2.0, 1.0), 1.5)


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda: optimal_probe_length(1.0, 0.5, -0.01), "cost must be positive"),
        (lambda: optimal_probe_length(1.0, 0.0, 0.01), "alpha must be positive"),
        (lambda: optimal_probe_length(1.0, -1.0, 0.01), "alpha must be positive"),
        (lambda: expected_optimal_depth(np.ones((1, 3)), np.ones((1, 3)), 0.01, 100, 10), "c_min must not exceed c_max"),
        (lambda: risk_curve([], 1.0, 1.0, 1.0), "must not be empty"),
        (lambda: probe_objective(10.0, 1.0, 1.0, 1.0, 0.0), "cost must be positive"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(call, needle):
    with pytest.raises(ValueError, match=needle) as info:
        call()
    assert "but got" in str(info.value) and ";" in str(info.value)  # rule, value, fix


def test_expected_optimal_depth_many_tasks_converging_at_different_speeds():
    """Regression: rows that converge early must leave the Newton loop without breaking the others.

    Brute force: minimise the posterior-expected objective on a 20,001-point log grid over
    [10, 1000]; the grid spacing is 2.3e-4 in log c, so agreement within 5e-4 in log c is exact
    up to the grid.
    """
    import numpy as np

    from plan_probe.theory import expected_optimal_depth

    rng = np.random.default_rng(0)
    k = np.exp(rng.normal(2.0, 1.5, (40, 150)))
    alpha = np.exp(rng.normal(-0.7, 0.5, (40, 150)))
    c = expected_optimal_depth(k, alpha, 0.01, 10, 1000)
    grid = np.exp(np.linspace(np.log(10), np.log(1000), 20001))
    objective = (k[:, :, None] * grid[None, None, :] ** (-alpha[:, :, None])).mean(axis=1) + 0.01 * grid
    assert np.max(np.abs(np.log(c / grid[objective.argmin(axis=1)]))) < 5e-4
