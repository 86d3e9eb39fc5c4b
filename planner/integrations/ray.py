"""Ray Tune stopping from the predicted final score: ``PredictiveStopper``.

Each trial reports its probe features as ``dyn_*`` keys of ``tune.report`` (or ``train.report``)
results; the stopper, a :class:`ray.tune.Stopper`, keeps one :class:`plan_probe.LiveProbe` per trial
and stops a trial exactly when the live decision is ``no_go``. Install the extra:
``pip install 'plan-probe[ray]'``.
"""

from __future__ import annotations

try:
    from ray.tune import Stopper
except ImportError as exc:  # the extra is optional
    raise ImportError(
        "plan_probe.integrations.ray needs Ray Tune, but it is not installed; "
        "install the extra: pip install 'plan-probe[ray]'."
    ) from exc

import logging
from collections.abc import Callable, Mapping

from plan_probe.integrations._tracker import (
    TrialTracker,
    check_depth,
    check_dyn_row,
    default_probe_factory,
    hyperparams_getter,
)

__all__ = ["PredictiveStopper"]

log = logging.getLogger(__name__)


class PredictiveStopper(Stopper):
    """Stop a Ray Tune trial when plan-probe's live decision for it is ``no_go``.

    Parameters
    ----------
    models_dir : path or None
        A ``plan-probe refit`` output (risk model and both predictors); None: the shipped defaults.
    static_row : mapping or callable
        The candidate's ``static_*`` descriptors, or ``config -> mapping`` when trials train on different data.
    settings : DecisionSettings
        τ and the costs (``full_cost`` in training steps).
    depth_key : str
        The result key holding the training step of the features (default ``"step"``; e.g.
        ``"training_iteration"`` when one iteration is one step).
    hyperparams : mapping or callable, optional
        A mapping of fixed ``hp_*`` values (the trial's config, each key prefixed ``hp_``, is added on
        top), or ``config -> {"hp_<name>": value}``. Default: the config alone.
    make_probe : callable, optional
        ``(static_row, hyperparams) -> LiveProbe``; default: a :class:`plan_probe.LiveProbe` on the
        models of ``models_dir`` (loaded on the first record, in the Tune driver).
    probe_kwargs
        Keyword arguments of :class:`plan_probe.LiveProbe` (``step_cost``, ``depths``, ``coverage``, ...).

    Notes
    -----
    A result without ``dyn_*`` keys is not a probe record: the trial goes on. A failed decision is
    logged and the trial is never stopped. ``decisions`` maps a trial id to its last decision. The
    stopper runs in the Tune driver; its per-trial state is not pickled (a restored driver decides
    again from the next record).
    """

    def __init__(self, models_dir=None, *, static_row, settings, depth_key: str = "step", hyperparams=None,
                 make_probe: Callable | None = None, **probe_kwargs):
        if not (isinstance(static_row, Mapping) or callable(static_row)):
            raise ValueError(f"static_row must be a mapping of static_* descriptors or a callable config -> mapping, "
                             f"but got {type(static_row).__name__}; pass the plan-probe static output.")
        if not isinstance(depth_key, str) or not depth_key:
            raise ValueError(f"depth_key must be a result key, but got {depth_key!r}; pass e.g. 'step'.")
        self.models_dir, self.settings, self.depth_key = models_dir, settings, depth_key
        self._static_row, self._make_probe, self._probe_kwargs = static_row, make_probe, probe_kwargs
        self._hyperparams = hyperparams_getter(hyperparams, dict)
        self._tracker = None
        if make_probe is None:
            self._get_tracker()  # load the models now: a bad models_dir fails here, not inside Tune

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tracker"] = None  # live probes hold fitted models: rebuilt on first use
        return state

    def _get_tracker(self) -> TrialTracker:
        if self._tracker is None:
            self._tracker = TrialTracker(self._make_probe or default_probe_factory(self.models_dir, self.settings,
                                                                                **self._probe_kwargs))
        return self._tracker

    @property
    def decisions(self) -> dict:
        tracker = self._get_tracker()
        return {k: s.decision for k, s in tracker.states.items() if s.decision is not None}

    @property
    def errors(self) -> dict:
        """Trials whose decisions failed (never stopped): trial id -> message."""
        return {k: s.error for k, s in self._get_tracker().states.items() if s.error is not None}

    def __call__(self, trial_id: str, result: dict) -> bool:
        dyn = {k: v for k, v in result.items() if isinstance(k, str) and k.startswith("dyn_")}
        if not dyn:
            return False
        tracker = self._get_tracker()
        try:
            if self.depth_key not in result:
                raise ValueError(f"a result with dyn_* features must carry the training step under depth_key="
                                 f"{self.depth_key!r}, but got the keys {sorted(result)[:8]}; report it or pass depth_key.")
            depth, row = check_depth(result[self.depth_key]), check_dyn_row(dyn)
        except ValueError as exc:  # a monitoring problem: say so once, never stop the trial for it
            tracker.fail(trial_id, str(exc))
            return False
        config = result.get("config") or {}
        static = self._static_row
        tracker.decide(trial_id, depth, row,
                       static_row=lambda: static(config) if callable(static) else static,
                       hyperparams=lambda: self._hyperparams(config))
        return tracker.should_stop(trial_id)

    def stop_all(self) -> bool:
        return False
