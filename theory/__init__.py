"""Closed forms and bounds of the risk-decomposition theory (docs/theory.md §1)."""

from plan_probe.theory._budget import (
    depth_for_marginal_gain,
    efficiency_frontier,
    expected_optimal_depth,
    log_expected_marginal_gain,
    optimal_probe_length,
    probe_objective,
    risk_curve,
)
from plan_probe.theory._decomposition import (
    ForkEstimate,
    PowerLawFit,
    RiskDecomposition,
    decompose_risk,
    fit_power_law,
    fork_risk,
    power_law_alpha_interval,
    power_law_deviance,
)
from plan_probe.theory._envelope import (
    NQMTransfer,
    decay_bound,
    flat_future_variance,
    loglog_slope,
    nqm_conditional_moments,
    nqm_risk,
    nqm_transfer,
    sgd_step_sizes,
)
from plan_probe.theory._regimes import REGIMES, RegimeThresholds, classify_regimes, regime_probabilities

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
    "power_law_alpha_interval",
    "power_law_deviance",
    "flat_future_variance",
    "fork_risk",
    "log_expected_marginal_gain",
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
