"""Optuna pruning from the predicted final score: ``PredictivePruner`` and ``report_probe``.

The objective records the probe features of each step with :func:`report_probe`; they live in the
trial's user attributes, so every Optuna storage (in memory, RDB, journal, gRPC) carries them to the
worker that asks :meth:`PredictivePruner.prune`. The pruner answers from one
:class:`plan_probe.LiveProbe` per trial: prune exactly when the live decision is ``no_go``; after
``go`` the trial runs to the end. Install the extra: ``pip install 'plan-probe[optuna]'``.

Example (docs/guide/integrations.md)::

    pruner = PredictivePruner(models_dir, static_row=static, settings=DecisionSettings(threshold=55, full_cost=1000))
    study = optuna.create_study(direction="maximize", pruner=pruner, storage="sqlite:///study.db")

    def objective(trial):
        lr = trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True)
        for step in range(1, 1001):
            ...  # one training step
            if step in (5, 10, 20, 50, 100, 200):
                report_probe(trial, step, recorder.latest())  # {"dyn_...": value}
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return final_score
"""

from __future__ import annotations

try:
    import optuna
    from optuna.pruners import BasePruner
except ImportError as exc:  # the extra is optional
    raise ImportError(
        "plan_probe.integrations.optuna needs Optuna, but it is not installed; "
        "install the extra: pip install 'plan-probe[optuna]'."
    ) from exc

from collections.abc import Callable, Mapping
from typing import Any

from plan_probe.integrations._tracker import (
    TrialTracker,
    check_depth,
    check_dyn_row,
    default_probe_factory,
    hyperparams_getter,
)

__all__ = ["PredictivePruner", "report_probe", "probe_records", "USER_ATTR_PREFIX"]

#: User attribute ``plan_probe.dyn.<step>`` holds the features recorded at that step.
USER_ATTR_PREFIX = "plan_probe.dyn."


def report_probe(trial, step: int, dyn_row: Mapping[str, float]) -> None:
    """Record the probe features of ``trial`` at training step ``step`` (a trial user attribute).

    Parameters
    ----------
    trial : optuna.trial.Trial
        The running trial (inside the objective).
    step : int
        The optimiser step (>= 1) at which the features were recorded: the probe depth.
    dyn_row : mapping
        ``{"dyn_<name>": value}``; NaN/inf are stored as missing.
    """
    trial.set_user_attr(f"{USER_ATTR_PREFIX}{check_depth(step)}", check_dyn_row(dyn_row))


def probe_records(trial) -> list[tuple[int, dict]]:
    """``[(step, dyn_row), ...]`` recorded by :func:`report_probe` on a (frozen) trial, by step."""
    out = []
    for key, value in trial.user_attrs.items():
        if key.startswith(USER_ATTR_PREFIX) and key[len(USER_ATTR_PREFIX):].isdigit():
            out.append((int(key[len(USER_ATTR_PREFIX):]), value))
    return sorted(out, key=lambda r: r[0])


def _params(trial) -> dict:
    return trial.params


class PredictivePruner(BasePruner):
    """Prune a trial when plan-probe's live decision for it is ``no_go``.

    Parameters
    ----------
    models_dir : path or None
        A ``plan-probe refit`` output (risk model and both predictors), loaded once when the pruner is
        built; None: the shipped LLM-tier models.
    static_row : mapping or callable
        The candidate's ``static_*`` descriptors (``plan-probe static``), or
        ``trial -> mapping`` when trials train on different data.
    settings : DecisionSettings
        τ and the costs (:class:`plan_probe.DecisionSettings`; ``full_cost`` in training steps).
    hyperparams : mapping or callable, optional
        A mapping of fixed ``hp_*`` values (the trial's params, each prefixed ``hp_``, are added on
        top), or ``trial -> {"hp_<name>": value}``. Default: the trial's params alone.
    make_probe : callable, optional
        ``(static_row, hyperparams) -> LiveProbe``; default: a :class:`plan_probe.LiveProbe` on the
        models of ``models_dir``. ``models_dir`` is not read when this is given.
    probe_kwargs
        Keyword arguments of :class:`plan_probe.LiveProbe` (``step_cost``, ``depths``, ``coverage``, ...).

    Notes
    -----
    ``prune`` builds the trial's probe on its first record, then calls ``LiveProbe.update`` only on a
    new record at or beyond the last decision's ``next_depth``; other calls return the last answer.
    A failed decision is logged and the trial is never pruned (a monitoring problem must not kill
    training). ``decisions`` maps ``(study_name, trial_number)`` to the last decision seen in this process.
    """

    def __init__(self, models_dir=None, *, static_row, settings, hyperparams=None, make_probe: Callable | None = None,
                 **probe_kwargs):
        if not (isinstance(static_row, Mapping) or callable(static_row)):
            raise ValueError(f"static_row must be a mapping of static_* descriptors or a callable trial -> mapping, but "
                             f"got {type(static_row).__name__}; pass the plan-probe static output.")
        self._static_row = static_row
        self._hyperparams = hyperparams_getter(hyperparams, _params)
        self.settings = settings
        self._tracker = TrialTracker(make_probe or default_probe_factory(models_dir, settings, **probe_kwargs))

    @property
    def decisions(self) -> dict:
        return {k: s.decision for k, s in self._tracker.states.items() if s.decision is not None}

    @property
    def errors(self) -> dict:
        """Trials whose decisions failed (never pruned): key -> message."""
        return {k: s.error for k, s in self._tracker.states.items() if s.error is not None}

    def prune(self, study, trial) -> bool:
        records = probe_records(trial)
        if not records:
            return False
        depth, row = records[-1]
        key = (study.study_name, trial.number)
        static = self._static_row
        self._tracker.decide(key, depth, row,
                             static_row=lambda: static(trial) if callable(static) else static,
                             hyperparams=lambda: self._hyperparams(trial))
        return self._tracker.should_stop(key)
