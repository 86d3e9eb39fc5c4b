"""``PlanProbeCallback``: decide continue / go / no-go inside the user's own ``Trainer`` run (docs/guide/live.md).

It records the ``dyn_*`` features exactly as :class:`~plan_probe.probes.ProbeRecorderCallback` does
(the probe *is* the run's first steps), and at each record depth asks a :class:`~plan_probe.LiveProbe`:

* ``no_go``: ``control.should_training_stop = True`` (the run is stopped and recorded as censored);
* ``go``: the recording hooks are removed and every later event returns at once (no overhead) and
  the run trains to its end;
* ``continue``: record on to the next depth.

Every decision is logged (one line) and written, atomically, into the run's history record
(``HISTORY/records/<run_id>.json``, :mod:`plan_probe._history`); at the end of training the final
evaluation's ``metric_for_outcome`` is added as the run's label. A monitoring problem (models that do
not fit the run, a missing feature, an unwritable folder, ...) never stops training: the callback logs
it, stops deciding and writes why into the record's ``error``.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from plan_probe.probes._callback import ProbeRecorderCallback
from plan_probe.probes._glossary import feature_phrase

__all__ = ["PlanProbeCallback"]

log = logging.getLogger(__name__)


class PlanProbeCallback(ProbeRecorderCallback):
    """A ``transformers.TrainerCallback`` that stops doomed runs and learns from finished ones.

    Parameters
    ----------
    static_row : mapping
        The training set's ``static_*`` descriptors (``plan-probe static``).
    settings : DecisionSettings
        τ and the costs. Without ``full_cost`` (and explicit costs) the full-run cost is the
        Trainer's ``max_steps`` (so with ``step_cost = 1`` every cost is in training steps).
    models_dir : path or "default", optional
        A MODELS_DIR (``plan-probe refit``) or ``"default"`` (the shipped LLM-tier models); or pass
        ``risk_model``, ``predictor`` and ``static_predictor`` objects instead.
    hyperparams : mapping, optional
        ``hp_*`` values overriding those read from the Trainer (learning rate, batch size, gradient
        accumulation, LoRA r/alpha/dropout; ``hp_max_length`` from ``max_length``).
    metric_for_outcome : str, optional
        The evaluation metric that is the run's final score (``"eval_accuracy"`` or ``"accuracy"``),
        on the scale of the models' label. Read from the evaluation at the last training step
        (``eval_strategy``, or ``trainer.evaluate()`` after ``train()``). None: no outcome.
    greater_is_better : bool, optional
        False stores ``-metric`` as the label (losses); default: False for names ending in
        ``loss``, else True (the rule of ``TrainingArguments.greater_is_better``).
    history_dir : path, optional
        Where the record goes (``<history_dir>/records/<run_id>.json``); default
        ``<output_dir>/plan_probe_history``.
    run_id : str, optional
        The record's name (default: a random id).
    step_cost : float
        λ per training step (default 1: costs in steps).
    decide_at_start : bool
        Take the depth-0 decision from the static-only predictor before the first step.
    tokenizer, ood_examples, seed, flatness_k, flatness_sigma, sparsity_tol, max_length :
        As in :class:`~plan_probe.probes.ProbeRecorderCallback`.

    Attributes
    ----------
    live : LiveProbe or None
    decisions : list of LiveDecision
    decision : LiveDecision or None
        The final decision (``go``/``no_go``).
    record : dict
        The history record as last written; ``record_path`` its file.
    error : str or None
        Why the callback stopped deciding, if it did.
    """

    def __init__(self, static_row: Mapping, settings, *, models_dir=None, risk_model=None, predictor=None,
                 static_predictor=None, hyperparams: Mapping | None = None, metric_for_outcome: str | None = None,
                 greater_is_better: bool | None = None, history_dir=None, run_id: str | None = None,
                 step_cost: float = 1.0, decide_at_start: bool = True, tokenizer=None, ood_examples=None,
                 seed: int = 0, flatness_k: int = 1, flatness_sigma: float = 1e-2, sparsity_tol: float = 1e-3,
                 max_length: int | None = None):
        from plan_probe._decision_plan import DecisionSettings
        from plan_probe._live import load_models_dir, record_depths

        if models_dir is not None:
            if any(m is not None for m in (risk_model, predictor, static_predictor)):
                raise ValueError("PlanProbeCallback takes models_dir or the three model objects, but got both; pass one.")
            risk_model, predictor, static_predictor = load_models_dir(models_dir)
        missing = [n for n, v in (("risk_model", risk_model), ("predictor", predictor),
                                  ("static_predictor", static_predictor)) if v is None]
        if missing:
            raise ValueError(f"PlanProbeCallback needs a risk model and both predictors, but got no {missing}; pass "
                             "models_dir=MODELS_DIR (plan-probe refit, or \"default\") or the three objects.")
        if not isinstance(settings, DecisionSettings):
            raise ValueError(f"settings must be a DecisionSettings, but got {type(settings).__name__}; "
                             "pass DecisionSettings(threshold=τ).")
        from plan_probe.probes import READOUT_COLUMNS

        readout = sorted(set(predictor.feature_names_) & set(READOUT_COLUMNS))
        if readout:  # a readout branches off the probe; the callback does not fork the user's training run
            raise ValueError(f"the predictor must use features a training run records, but it uses the probe readout "
                             f"{readout}; pass a predictor refitted without it (plan-probe refit on a meta-dataset "
                             "without that column).")
        if not isinstance(static_row, Mapping):
            raise ValueError(f"static_row must be a mapping of static_* descriptors, but got {type(static_row).__name__}; "
                             "pass the descriptors of plan-probe static.")
        if metric_for_outcome is not None and not (isinstance(metric_for_outcome, str) and metric_for_outcome):
            raise ValueError(f"metric_for_outcome must be a metric name, but got {metric_for_outcome!r}; pass e.g. "
                             "'eval_accuracy'.")
        super().__init__(record_depths(predictor), tokenizer=tokenizer, ood_examples=ood_examples, seed=seed,
                         flatness_k=flatness_k, flatness_sigma=flatness_sigma, sparsity_tol=sparsity_tol,
                         max_length=max_length)
        self.static_row = {str(k): v for k, v in static_row.items()}
        self.settings = settings
        self.models = {"risk_model": risk_model, "predictor": predictor, "static_predictor": static_predictor}
        self.models_dir = None if models_dir is None else str(models_dir)
        self.hyperparams = {}
        for key, value in dict(hyperparams or {}).items():
            name = str(key) if str(key).startswith("hp_") else f"hp_{key}"
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"hyperparams must be finite numbers, but got {name}={value!r}; pass e.g. {{'lr': 2e-4}}.")
            self.hyperparams[name] = float(value)
        self.metric_for_outcome = metric_for_outcome
        self.greater_is_better = (not metric_for_outcome.endswith("loss") if metric_for_outcome else True) \
            if greater_is_better is None else bool(greater_is_better)
        self.history_dir = history_dir
        self.run_id = run_id or uuid.uuid4().hex[:16]
        self.step_cost = float(step_cost)
        self.decide_at_start = bool(decide_at_start)
        self.live = None
        self.decisions: list = []
        self.decision = None
        self.error: str | None = None
        self.record: dict | None = None
        self.record_path: Path | None = None
        self._active = False
        self._stopped_at: int | None = None
        self._outcome: dict | None = None
        self._train_ended = False
        self._final_step: int | None = None
        self._metric_names: set = set()

    # ---------------------------------------------------------------------------------- helpers
    def _fail(self, what: str, exc: BaseException | None = None) -> None:
        """A monitoring problem: log it, stop deciding and recording, keep training."""
        msg = f"{what}: {type(exc).__name__}: {exc}" if exc is not None else what
        self.error = msg
        self._active = False
        self._remove_hooks()
        log.warning("plan-probe stops deciding for run %s (training goes on): %s", self.run_id, msg)
        self._write()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _status(self) -> str:
        if getattr(self, "_diverged", None) is not None:
            return "diverged"
        if self.decision is not None and self.decision.action == "no_go":
            return "censored"
        if not self._train_ended:
            return "running"
        return "ok" if self._outcome is not None and self._outcome.get("label") is not None else "no_outcome"

    def _write(self) -> None:
        """Write the history record (atomically); a failure to write is logged, never raised."""
        from plan_probe._history import live_record, write_record

        try:
            status = self._status()
            dyn = {int(r["depth"]): {k: v for k, v in r.items() if k.startswith("dyn_")}
                   for r in self._rows if r.get("status") == "ok"}
            label = self._outcome.get("label") if self._outcome and status == "ok" else None
            error = self.error
            if status == "no_outcome" and error is None:
                error = self._no_outcome_reason()
            config = {"settings": self.settings.to_dict(), "step_cost": self.step_cost, "record_at": list(self.record_at),
                      "metric_for_outcome": self.metric_for_outcome, "greater_is_better": self.greater_is_better,
                      "models_dir": self.models_dir, "full_cost": getattr(self, "_full_cost", None),
                      "stopped_at": self._stopped_at}
            self.record = live_record(
                run_id=self.run_id, task_id=self.run_id, seed=self.seed, config=config, status=status, error=error,
                wall_time_s=time.perf_counter() - getattr(self, "_t0", time.perf_counter()), static=self.static_row,
                hp=getattr(self, "_hp_used", {}), dyn=dyn, label=label,
                decisions=[d.to_json() if hasattr(d, "to_json") else d for d in self.decisions],
                decision=self.decision.to_json() if self.decision is not None else None, outcome=self._outcome)
            if self.record_path is not None:
                self.record_path = write_record(self.record, self.record_path.parents[1])
        except Exception as exc:  # noqa: BLE001 - a monitoring problem never stops training
            log.warning("plan-probe could not write the record of run %s: %s: %s", self.run_id, type(exc).__name__, exc)

    def _no_outcome_reason(self) -> str:
        if self.metric_for_outcome is None:
            return "no metric_for_outcome was given, so the run has no label"
        seen = sorted(getattr(self, "_metric_names", set()))
        return (f"metric_for_outcome {self.metric_for_outcome!r} never appeared in an evaluation at the last training "
                f"step (evaluation metrics seen: {seen}); evaluate at the end (eval_strategy or trainer.evaluate())")

    def _act(self, decision, control) -> None:
        self.decisions.append(decision)
        extra = "" if decision.value_of_next is None else f", value of probing to {decision.next_depth}: {decision.value_of_next:.3g}"
        reasons = ", ".join(feature_phrase(f, effect=v) for f, v in decision.reasons)
        log.info("plan-probe run %s at step %d: %s (prediction %.4g, interval [%.4g, %.4g], P(score >= %g) = %.3f, "
                 "expected loss now %.3g%s; reasons: %s)", self.run_id, decision.depth, decision.action,
                 decision.prediction, decision.interval[0], decision.interval[1], self.settings.threshold,
                 decision.p_above, decision.expected_loss_now, extra, reasons)
        if decision.final:
            self.decision = decision
            self._active = False
            self._remove_hooks()
            if decision.action == "no_go":
                control.should_training_stop = True
                self._stopped_at = decision.depth
        self._write()

    # --------------------------------------------------------------------------------- events
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        from dataclasses import replace

        from plan_probe._live import LiveProbe

        self._t0 = time.perf_counter()
        root = Path(self.history_dir) if self.history_dir is not None else Path(args.output_dir) / "plan_probe_history"
        from plan_probe._history import record_path

        self.record_path = record_path(root, self.run_id)
        try:
            super().on_train_begin(args, state, control, model=model, processing_class=processing_class, **kwargs)
        except Exception as exc:  # noqa: BLE001
            self._hp_used = {}
            return self._fail("recording the probe features failed to start", exc)
        self._hp_used = {**self._hp, **self.hyperparams}
        try:
            settings = self.settings
            self._full_cost = settings.full_cost
            if settings.full_cost is None and (settings.launch_cost is None or settings.kill_cost is None):
                if not state.max_steps or state.max_steps <= 0:
                    raise ValueError("the full-run cost must be known, but settings have no full_cost and the Trainer no "
                                     "max_steps; pass DecisionSettings(full_cost=...)")
                settings = replace(settings, full_cost=float(state.max_steps))
                self._full_cost = float(state.max_steps)
            hp = {k: v for k, v in self._hp_used.items() if not (isinstance(v, float) and math.isnan(v))}
            self.live = LiveProbe(self.static_row, hp, settings=settings, step_cost=self.step_cost,
                                  depths=self.record_at, **self.models)
        except Exception as exc:  # noqa: BLE001
            return self._fail("the live probe could not be built for this run", exc)
        self._active = True
        if self.decide_at_start:
            try:
                self._act(self.live.initial(), control)
            except Exception as exc:  # noqa: BLE001
                return self._fail("the decision before training failed", exc)
        else:
            self._write()

    def on_step_end(self, args, state, control, **kwargs):
        if not self._active:
            return  # decided, failed or never started: no work at all
        step = state.global_step
        n_rows = len(self._rows)
        try:
            super().on_step_end(args, state, control, **kwargs)
        except Exception as exc:  # noqa: BLE001
            return self._fail(f"recording the probe features at step {step} failed", exc)
        new = self._rows[n_rows:]
        if not new:
            return
        if self._diverged is not None:
            self.decisions.append({"action": "no_go", "depth": int(step), "reason": f"training diverged at step {self._diverged}"})
            log.info("plan-probe run %s at step %d: no_go (training diverged at step %d)", self.run_id, step, self._diverged)
            self._active = False
            self._remove_hooks()
            self._stopped_at = int(step)
            control.should_training_stop = True
            self._write()
            return
        row = new[0]
        try:
            decision = self.live.update(int(row["depth"]), {k: v for k, v in row.items() if k.startswith("dyn_")})
        except Exception as exc:  # noqa: BLE001
            return self._fail(f"the decision at step {step} failed", exc)
        self._act(decision, control)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        try:
            metrics = metrics or {}
            self._metric_names.update(metrics)
            name = self.metric_for_outcome
            if name is None:
                return
            key = name if name in metrics else f"eval_{name}" if f"eval_{name}" in metrics else None
            if key is None:
                if self._train_ended:
                    log.warning("plan-probe run %s: the evaluation after training has no %r (metrics: %s); the run "
                                "has no outcome", self.run_id, name, sorted(metrics))
                    self._write()
                return
            value = float(metrics[key])
            label = value if self.greater_is_better else -value
            self._outcome = {"metric": key, "value": value, "step": int(state.global_step),
                             "greater_is_better": self.greater_is_better,
                             "label": label if math.isfinite(label) else None}
            if self._train_ended:
                self._settle_outcome()
                self._write()
        except Exception as exc:  # noqa: BLE001
            log.warning("plan-probe could not read the evaluation metrics of run %s: %s: %s", self.run_id,
                        type(exc).__name__, exc)

    def _settle_outcome(self) -> None:
        """Keep an outcome only when it was measured at the run's last training step."""
        if self._outcome is not None and self._final_step is not None and self._outcome["step"] != self._final_step:
            self._outcome = {**self._outcome, "label": None,
                             "note": f"evaluated at step {self._outcome['step']}, not at the last step {self._final_step}"}

    def on_train_end(self, args, state, control, **kwargs):
        try:
            self._remove_hooks()
            self._active = False
            self._train_ended = True
            self._final_step = int(state.global_step)
            self._settle_outcome()
        finally:
            self._write()
            status = self.record["status"] if self.record else "unknown"
            if status == "no_outcome":
                log.info("plan-probe run %s ended without an outcome so far: %s", self.run_id, self._no_outcome_reason())
            elif status == "censored":
                log.info("plan-probe run %s stopped as no_go at step %s (censored: no label)", self.run_id, self._stopped_at)
