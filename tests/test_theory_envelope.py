"""Exact NQM moments against a step-by-step recursion and the Hurwitz-zeta closed form; the envelope."""

from __future__ import annotations

import numpy as np
import pytest

from plan_probe.theory import decay_bound, flat_future_variance, loglog_slope, nqm_risk, nqm_transfer, sgd_step_sizes

H = np.array([0.0, 1e-3, 0.5, 1.5])
S2 = np.array([1.0, 2.0, 0.5, 1.0])
TH0 = np.array([1.0, -2.0, 0.5, 3.0])
T, ETA0, T0, RHO = 600, 0.3, 5.0, 0.7


def test_transfer_matches_sequential_recursion():
    depths = [0, 1, 7, 100, 599, 600, 50]
    m = nqm_transfer(depths, T, H, S2, ETA0, T0, RHO, TH0)
    eta = sgd_step_sizes(T, ETA0, T0, RHO)
    for i, c in enumerate(depths):
        mu, v = TH0.copy(), np.zeros(4)
        for t in range(c):
            f = 1 - eta[t] * H
            mu, v = f * mu, f * f * v + eta[t] ** 2 * S2
        a, s = np.ones(4), np.zeros(4)
        for t in range(c, T):
            f = 1 - eta[t] * H
            a, s = f * a, f * f * s + eta[t] ** 2 * S2
        # same arithmetic in a different order: agreement to ~1e-12 relative
        np.testing.assert_allclose(m.prefix_mean[i], mu, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(m.prefix_var[i], v, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(m.transfer[i], a, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(m.future_var[i], s, rtol=1e-10, atol=1e-14)


def test_flat_direction_matches_hurwitz_zeta():
    depths = np.array([0, 3, 50, 400, 600])
    m = nqm_transfer(depths, T, [0.0], [2.0], ETA0, T0, RHO)
    np.testing.assert_allclose(m.future_var[:, 0], flat_future_variance(depths, T, ETA0, T0, RHO, 2.0), rtol=1e-10, atol=1e-15)


def test_risk_identity_at_the_ends():
    m = nqm_transfer([0, T], T, H, S2, ETA0, T0, RHO, TH0)
    risk, v_opt, l_int = nqm_risk(m, [1, 0.5, 1, 0.3], [0.2, 0.2, 0.1, 0.1], 0.3)
    assert l_int == 0.3 and v_opt[1] == 0.0 and risk[1] == pytest.approx(0.3)
    # at c=0 the prefix is the fixed start, so L(0) = Var(R): check by brute-force sampling of theta_T
    a, s2 = m.transfer[0], m.future_var[0]
    rng = np.random.default_rng(0)
    theta = a * TH0 + np.sqrt(s2) * rng.standard_normal((400_000, 4))
    r = theta @ np.array([1, 0.5, 1, 0.3]) + 0.5 * theta**2 @ np.array([0.2, 0.2, 0.1, 0.1])
    # sample variance of 4e5 draws: relative SE ~ sqrt(2/4e5)*sqrt(kurtosis factor) < 0.5 %; allow 2 %
    assert risk[0] == pytest.approx(r.var() + 0.3, rel=0.02)


@pytest.mark.parametrize("rho", [0.6, 0.8, 1.0])
def test_envelope_slope_within_bound(rho):
    # flat direction, depths far inside a long horizon (see experiments.synthetic._experiment.envelope_config)
    depths = np.unique(np.geomspace(100, 1000, 15).round().astype(int))
    v = flat_future_variance(depths, 10**7, 0.5, 10.0, rho)
    alpha = loglog_slope(depths, v)
    assert alpha <= decay_bound(rho) + 0.05
    assert abs(alpha - decay_bound(rho)) <= 0.15


def test_decay_bound_and_errors():
    assert decay_bound(0.75) == pytest.approx(0.5)
    np.testing.assert_allclose(decay_bound([0.6, 1.0]), [0.2, 1.0])
    with pytest.raises(ValueError, match="rho must exceed 0.5"):
        decay_bound(0.5)
    with pytest.raises(ValueError, match="eta0 \\* max\\(curvature\\) must be < 1"):
        nqm_transfer([1], 10, [3.0], [1.0], 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="depths must be integers"):
        nqm_transfer([11], 10, [0.1], [1.0], 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="horizon must be a positive integer"):
        sgd_step_sizes(0, 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="must not be empty"):
        loglog_slope([], [])


def test_curved_direction_closed_form_matches_exact_transfer():
    """rho = 1 with curvature: polynomial contraction, exponent 1 - 2 eta0 h t0 (below the bound 1)."""
    from plan_probe.theory import curved_decay_exponent, curved_future_variance, nqm_transfer

    c = np.array([5, 20, 80, 320, 1280, 5000])
    for h, q in ((0.02, 0.1), (0.05, 0.25), (0.08, 0.4)):
        exact = nqm_transfer(c, 200_000, [h], [2.0], 0.5, 10.0, 1.0).future_var[:, 0]
        closed = curved_future_variance(c, 200_000, 0.5, 10.0, h, noise_var=2.0)
        np.testing.assert_allclose(closed, exact, rtol=0.01)  # continuum contraction, eta0*h <= 0.04
        assert curved_decay_exponent(0.5, 10.0, h) == pytest.approx(1 - 2 * q)
        # the exact local slope is the closed form's, whose horizon-free part decays like (t0+c)^-(1-2q)
        far = nqm_transfer([320, 1280], 200_000, [h], [2.0], 0.5, 10.0, 1.0).future_var[:, 0]
        cf = curved_future_variance([320, 1280], 200_000, 0.5, 10.0, h)
        assert np.log(far[1] / far[0]) == pytest.approx(np.log(cf[1] / cf[0]), abs=0.01)
        from scipy.special import zeta

        tail = zeta(2 - 2 * q, np.array([10.0 + 1e4, 10.0 + 1e5]))
        assert -np.log(tail[1] / tail[0]) / np.log((1e5 + 10) / (1e4 + 10)) == pytest.approx(1 - 2 * q, abs=0.01)
    assert curved_decay_exponent(0.5, 10.0, 0.2) == 0.0
    with pytest.raises(ValueError, match="below 1/2"):
        curved_future_variance([10], 1000, 0.5, 10.0, 0.2)
