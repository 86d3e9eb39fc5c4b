"""Closed forms and bounds of the risk-decomposition theory (DESIGN.md Sec. 1)."""

from theory._budget import (
    depth_for_marginal_gain,
    efficiency_frontier,
    expected_optimal_depth,
    optimal_probe_length,
    probe_objective,
    risk_curve,
)
from theory._decomposition import (
    ForkEstimate,
    PowerLawFit,
    RiskDecomposition,
    decompose_risk,
    fit_power_law,
    fork_risk,
)
from theory._envelope import (
    NQMTransfer,
    decay_bound,
    flat_future_variance,
    loglog_slope,
    nqm_conditional_moments,
    nqm_risk,
    nqm_transfer,
    sgd_step_sizes,
)
from theory._regimes import REGIMES, RegimeThresholds, classify_regimes, regime_probabilities

__all__ = [
    "REGIMES",
    "ForkEstimate",
    "NQMTransfer",
    "PowerLawFit",
    "RegimeThresholds",
    "RiskDecomposition",
    "classify_regimes",
    "decay_bound",
    "decompose_risk",
    "depth_for_marginal_gain",
    "efficiency_frontier",
    "expected_optimal_depth",
    "fit_power_law",
    "flat_future_variance",
    "fork_risk",
    "loglog_slope",
    "nqm_conditional_moments",
    "nqm_risk",
    "nqm_transfer",
    "optimal_probe_length",
    "probe_objective",
    "regime_probabilities",
    "risk_curve",
    "sgd_step_sizes",
]
