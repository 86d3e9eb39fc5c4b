"""One :class:`plan_probe.LiveProbe` per trial, fed the newest probe record: the core both
integrations share (docs/guide/integrations.md).

The depth-aware predictor reads one row (the features at one depth), so a decision needs only the
newest record; a worker that has never seen the trial (another process, a restarted driver) builds
its probe and decides from that record alone, without replaying the history. Between record depths
the tracker answers from the last decision (no model call): ``prune``/``__call__`` then cost a dict
look-up.

A decision that fails (a missing feature, a broken model file) is a monitoring problem, not a
training problem: the tracker logs it once, stops deciding for that trial and never stops it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrialTracker", "TrialState", "default_probe_factory", "hp_from_params", "check_dyn_row",
           "check_depth", "hyperparams_getter"]

log = logging.getLogger(__name__)

#: A factory ``(static_row, hyperparams) -> LiveProbe`` (anything with ``update(depth, dyn_row)``).
ProbeFactory = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]


def check_depth(depth) -> int:
    """The record depth as an int >= 1 (training steps), or ValueError."""
    if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not float(depth).is_integer() or depth < 1:
        raise ValueError(f"step must be a whole number of training steps >= 1, but got step={depth!r}; "
                         "pass the optimiser step at which the features were recorded.")
    return int(depth)


def check_dyn_row(dyn_row) -> dict[str, float | None]:
    """The dynamic features as {name: float or None (missing)}, or ValueError naming the first bad entry."""
    if not isinstance(dyn_row, Mapping) or not dyn_row:
        raise ValueError(f"dyn_row must be a non-empty mapping of dyn_* feature names to numbers, but got "
                         f"{type(dyn_row).__name__}; pass e.g. the row ProbeRecorderCallback records.")
    out: dict[str, float | None] = {}
    for name, value in dyn_row.items():
        if not isinstance(name, str) or not name.startswith("dyn_"):
            raise ValueError(f"dyn_row keys must be dyn_* feature names, but got {name!r}; rename it "
                             "(docs/reference/features.md lists the names).")
        if value is None:
            out[name] = None
            continue
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"dyn_row values must be numbers, but got {name}={value!r}; pass a float.") from None
        out[name] = x if math.isfinite(x) else None  # NaN/inf: recorded as missing (JSON-safe in any storage)
    return out


def hp_from_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters under the predictors' names: each key gets the ``hp_`` prefix unless it has it."""
    return {(k if str(k).startswith("hp_") else f"hp_{k}"): v for k, v in params.items()}


def default_probe_factory(models_dir, settings, **probe_kwargs) -> ProbeFactory:
    """``(static_row, hyperparams) -> LiveProbe`` on the models of ``models_dir``, loaded once, now.

    ``models_dir``: a ``plan-probe refit`` output, or None / ``"default"`` for the shipped LLM-tier
    models. Loading here (not per trial) keeps a trial's first decision cheap and reports a bad
    folder before any training starts. ``probe_kwargs`` go to :class:`plan_probe.LiveProbe`.
    """
    from plan_probe import LiveProbe
    from plan_probe._live import load_models_dir

    risk_model, predictor, static_predictor = load_models_dir("default" if models_dir is None else models_dir)

    def make(static_row, hyperparams):
        return LiveProbe(dict(static_row), dict(hyperparams), risk_model=risk_model, predictor=predictor,
                         static_predictor=static_predictor, settings=settings, **probe_kwargs)

    return make


def hyperparams_getter(hyperparams, params_of: Callable[[Any], Mapping]) -> Callable[[Any], dict]:
    """``trial -> hp dict``: a callable as given; a mapping (fixed values) under the trial's own params."""
    if callable(hyperparams):
        return hyperparams
    if hyperparams is not None and not isinstance(hyperparams, Mapping):
        raise ValueError(f"hyperparams must be a mapping of fixed hp_* values or a callable, but got "
                         f"{type(hyperparams).__name__}; pass e.g. {{'hp_batch_size': 16}}.")
    return _MergedParams(hp_from_params(hyperparams or {}), params_of)


@dataclass(frozen=True)
class _MergedParams:
    """Fixed hp_* values under a trial's own params (a class, not a closure: Ray pickles stoppers)."""

    fixed: dict
    params_of: Callable

    def __call__(self, trial) -> dict:
        return {**self.fixed, **hp_from_params(self.params_of(trial))}


@dataclass
class TrialState:
    """What the tracker knows about one trial."""

    probe: Any = None
    last_depth: int = 0
    decision: Any = None  # the last LiveDecision
    error: str | None = None
    history: list = field(default_factory=list)  # every LiveDecision, in order

    @property
    def settled(self) -> bool:
        """True once the trial needs no more decisions (go, no_go, or deciding failed)."""
        return self.error is not None or (self.decision is not None and self.decision.action != "continue")


class TrialTracker:
    """Live decisions per trial key.

    Parameters
    ----------
    make_probe : callable
        ``(static_row, hyperparams) -> LiveProbe`` for a new trial.
    """

    def __init__(self, make_probe: ProbeFactory):
        self.make_probe = make_probe
        self.states: dict[Hashable, TrialState] = {}

    def decide(self, key: Hashable, depth: int, dyn_row: Mapping[str, Any],
               static_row: Callable[[], Mapping[str, Any]], hyperparams: Callable[[], Mapping[str, Any]]):
        """The trial's decision after its newest record ``(depth, dyn_row)``; None when there is none.

        ``static_row`` and ``hyperparams`` are called only when the trial's probe is built.
        A record at or below the last decided depth, or below the last decision's ``next_depth``,
        does not call the model (the last decision stands).
        """
        state = self.states.setdefault(key, TrialState())
        if state.settled or depth <= state.last_depth:
            return state.decision
        pending = getattr(state.decision, "next_depth", None)
        if pending is not None and depth < pending:
            return state.decision
        try:
            if state.probe is None:
                state.probe = self.make_probe(static_row(), hyperparams())
            decision = state.probe.update(depth, dict(dyn_row))
        except Exception as exc:  # noqa: BLE001 -- any monitoring failure must leave training alone
            self.fail(key, f"{type(exc).__name__}: {exc}")
            return state.decision
        state.last_depth = depth
        state.decision = decision
        state.history.append(decision)
        log.info("plan-probe trial %s at step %d: %s (P(score >= tau) = %.3f)", key, depth, decision.action,
                 float(decision.p_above))
        return decision

    def fail(self, key: Hashable, message: str) -> None:
        """Stop deciding for ``key`` (logged once): the trial is never stopped afterwards."""
        state = self.states.setdefault(key, TrialState())
        if state.error is None:
            state.error = message
            log.error("plan-probe stops deciding for trial %s (it will not be stopped): %s", key, message)

    def should_stop(self, key: Hashable) -> bool:
        """True exactly when the trial's last decision is ``no_go``."""
        state = self.states.get(key)
        return bool(state and state.error is None and state.decision is not None and state.decision.action == "no_go")
