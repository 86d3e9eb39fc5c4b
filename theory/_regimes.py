"""Predictability regimes on the (L_int, alpha) plane (risk-decomposition paper, Sec. 7)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plan_probe.theory._budget import optimal_probe_length
from plan_probe.theory._validate import check_depth_range, check_nonnegative, check_positive

__all__ = ["REGIMES", "RegimeThresholds", "classify_regimes", "regime_probabilities"]

#: Regime codes, in the order of the probability columns.
REGIMES = ("static_sufficient", "dynamic_critical", "noise_dominant")


@dataclass(frozen=True)
class RegimeThresholds:
    """Operational regime boundaries (docs/theory.md §1), validated on construction.

    cost : gamma * lambda, the risk-equivalent cost of one probe step.
    target_rmse : epsilon, the RMSE the user needs, in score units.
    c_min, c_max : probe length limits.
    """

    cost: float = 0.01
    target_rmse: float = 3.0
    c_min: float = 10.0
    c_max: float = 1000.0

    def __post_init__(self):
        check_positive("cost", self.cost)
        check_positive("target_rmse", self.target_rmse)
        check_depth_range(self.c_min, self.c_max)


def classify_regimes(l_int, k, alpha, thresholds: RegimeThresholds = RegimeThresholds()):
    r"""Regime of each parameter draw, as an integer index into :data:`REGIMES`.

    Rule (docs/theory.md §1, with :math:`c^\ast = (\alpha K/\gamma\lambda)^{1/(\alpha+1)}`, Thm. 6.1):

    * Noise-Dominant if :math:`L_\mathrm{int} \ge \varepsilon^2`;
    * else Static-Sufficient if :math:`c^\ast \le c_\min`;
    * else Dynamic-Critical.

    Arrays broadcast; any shape.
    """
    l_int = check_nonnegative("l_int", l_int)
    k = check_positive("k", k)
    alpha = check_positive("alpha", alpha)
    c_star = optimal_probe_length(k, alpha, thresholds.cost)
    noise = l_int >= thresholds.target_rmse**2
    static = c_star <= thresholds.c_min
    return np.where(noise, 2, np.where(static, 0, 1))


def regime_probabilities(l_int, k, alpha, thresholds: RegimeThresholds = RegimeThresholds(), axis: int = -1):
    """Share of draws in each regime along ``axis``: an array with a last axis of length 3
    ordered as :data:`REGIMES` (static_sufficient, dynamic_critical, noise_dominant)."""
    codes = classify_regimes(l_int, k, alpha, thresholds)
    codes = np.moveaxis(codes, axis, -1)
    return np.stack([(codes == r).mean(axis=-1) for r in range(3)], axis=-1)
