"""Closed forms and bounds of the risk-decomposition theory (DESIGN.md Sec. 1)."""

from theory._budget import (
    depth_for_marginal_gain,
    efficiency_frontier,
    expected_optimal_depth,
    optimal_probe_length,
    probe_objective,
    risk_curve,
)
from theory._regimes import REGIMES, RegimeThresholds, classify_regimes, regime_probabilities

__all__ = [
    "REGIMES",
    "RegimeThresholds",
    "classify_regimes",
    "depth_for_marginal_gain",
    "efficiency_frontier",
    "expected_optimal_depth",
    "optimal_probe_length",
    "probe_objective",
    "regime_probabilities",
    "risk_curve",
]
