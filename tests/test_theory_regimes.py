"""Regime rule of docs/theory.md §1 against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from plan_probe.theory import REGIMES, RegimeThresholds, classify_regimes, regime_probabilities


def test_hand_cases():
    th = RegimeThresholds()  # cost 0.01, eps 3, c_min 10
    # L_int >= eps^2 = 9 is noise-dominant whatever K and alpha
    assert REGIMES[int(classify_regimes(9.0, 1e3, 0.5, th))] == "noise_dominant"
    # K=30, alpha=0.5: c* = (1500)^(2/3) = 131 > 10
    assert REGIMES[int(classify_regimes(1.0, 30.0, 0.5, th))] == "dynamic_critical"
    # K=0.5, alpha=1: c* = sqrt(50) = 7.07 <= 10
    assert REGIMES[int(classify_regimes(1.0, 0.5, 1.0, th))] == "static_sufficient"
    # boundary alpha K = cost c_min^(alpha+1): at alpha=1 it is K = 1 (c* = 10); either side of it
    assert REGIMES[int(classify_regimes(0.0, 0.999, 1.0, th))] == "static_sufficient"
    assert REGIMES[int(classify_regimes(0.0, 1.001, 1.0, th))] == "dynamic_critical"
    # a stricter target moves the noise boundary
    assert REGIMES[int(classify_regimes(1.0, 30.0, 0.5, RegimeThresholds(target_rmse=0.9)))] == "noise_dominant"


def test_probabilities_are_shares_and_sum_to_one():
    rng = np.random.default_rng(0)
    l_int = rng.exponential(5.0, (4, 1000))
    k = np.exp(rng.normal(1.0, 1.5, (4, 1000)))
    alpha = np.exp(rng.normal(-0.5, 0.6, (4, 1000)))
    probs = regime_probabilities(l_int, k, alpha)
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0)
    codes = classify_regimes(l_int, k, alpha)
    np.testing.assert_allclose(probs[:, 2], (l_int >= 9).mean(axis=1))
    np.testing.assert_allclose(probs[:, 0], (codes == 0).mean(axis=1))


@pytest.mark.parametrize(
    "kwargs,needle",
    [({"cost": -0.01}, "cost must be positive"), ({"c_min": 100, "c_max": 10}, "c_min must not exceed c_max"), ({"target_rmse": 0}, "target_rmse")],
)
def test_bad_thresholds(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        RegimeThresholds(**kwargs)


def test_bad_draws():
    with pytest.raises(ValueError, match="alpha must be positive"):
        classify_regimes(1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="must not be empty"):
        regime_probabilities([], [], [])
