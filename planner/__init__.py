"""plan-probe: how many probe steps each LLM fine-tuning candidate deserves, its predicted final
score with an honest interval, and why it may fail.

The public objects load on first use, so ``import plan_probe`` (and ``plan-probe --help``) stays light.
Subpackages: ``plan_probe.theory`` (closed forms), ``plan_probe.probes`` (static descriptors, LoRA
probe, Trainer callback), ``plan_probe.experiments`` (meta-dataset builders and checks).
"""

from plan_probe.probes._version import __version__

__all__ = [
    "__version__",
    "RiskFitSettings",
    "RiskModel",
    "PlanSettings",
    "compute_plan",
    "residual_observations",
    "DecisionSettings",
    "decision_plan",
    "compute_decision_plan",
    "LiveProbe",
    "LiveDecision",
    "PlanProbeCallback",
    "PredictorConfig",
    "ProbePredictor",
    "load_portfolio",
    "prepare_run",
    "run_portfolio",
]

_LAZY = {
    "RiskFitSettings": "plan_probe._risk_model",
    "RiskModel": "plan_probe._risk_model",
    "PlanSettings": "plan_probe._plan",
    "compute_plan": "plan_probe._plan",
    "residual_observations": "plan_probe._residuals",
    "DecisionSettings": "plan_probe._decision_plan",
    "decision_plan": "plan_probe._decision_plan",
    "compute_decision_plan": "plan_probe._decision_plan",
    "LiveProbe": "plan_probe._live",
    "LiveDecision": "plan_probe._live",
    "PlanProbeCallback": "plan_probe._callback",
    "PredictorConfig": "plan_probe._predictor",
    "ProbePredictor": "plan_probe._predictor",
    "load_portfolio": "plan_probe._portfolio",
    "prepare_run": "plan_probe._run",
    "run_portfolio": "plan_probe._run",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'plan_probe' has no attribute {name!r}")
