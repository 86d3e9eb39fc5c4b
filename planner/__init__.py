"""plan-probe planner: risk estimator, regimes, budgets, predictor, plan and CLI.

The public objects load on first use, so ``import planner`` (and ``plan-probe --help``) stays light.
"""

from planner._version import __version__

__all__ = [
    "__version__",
    "RiskFitSettings",
    "RiskModel",
    "PlanSettings",
    "compute_plan",
    "PredictorConfig",
    "ProbePredictor",
    "load_portfolio",
    "prepare_run",
    "run_portfolio",
]

_LAZY = {
    "RiskFitSettings": "planner._risk_model",
    "RiskModel": "planner._risk_model",
    "PlanSettings": "planner._plan",
    "compute_plan": "planner._plan",
    "PredictorConfig": "planner._predictor",
    "ProbePredictor": "planner._predictor",
    "load_portfolio": "planner._portfolio",
    "prepare_run": "planner._run",
    "run_portfolio": "planner._run",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'planner' has no attribute {name!r}")
