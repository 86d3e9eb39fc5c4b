"""Live decisions inside other tools' training loops: an Optuna pruner and a Ray Tune stopper.

Each integration is a module of its own that imports its tool on import, so ``import plan_probe``
never needs Optuna or Ray:

* ``from plan_probe.integrations.optuna import PredictivePruner, report_probe`` (extra ``[optuna]``);
* ``from plan_probe.integrations.ray import PredictiveStopper`` (extra ``[ray]``).

Both answer from :class:`plan_probe.LiveProbe` (one per trial): a trial is stopped exactly when the
live decision is ``no_go``; after ``go`` it is left alone (docs/guide/integrations.md).
"""

__all__: list[str] = []
