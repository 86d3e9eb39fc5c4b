"""plan-probe planner: risk estimator, regimes, budgets, predictor, plan and CLI."""

from planner._version import __version__

__all__ = ["__version__"]
