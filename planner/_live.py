r"""Live decisions inside a training run: continue, go or no-go at each record depth (docs/guide/live.md).

The probe is the first steps of the real run. At a record depth c the depth-aware predictor gives
the run's predicted final score, its CV+ interval and the calibrated
:math:`p = P(R \ge \tau \mid I_c)`; the risk model gives how much the next record depth c' will
resolve. With :math:`C_{lb}` (let a run finish that ends below τ) and :math:`C_{kg}` (kill a run that
would have reached τ) from :class:`~plan_probe.DecisionSettings` and λ the cost of one step:

* deciding now costs :math:`\ell_\mathrm{now} = \min\bigl(C_{lb}(1-p),\; C_{kg}\,p\bigr)` ("go" when
  the first term is the smaller);
* probing on to c' leaves the predictive variance :math:`\sigma^2_{c'} = \min(L(c'), S_0)` of
  :math:`\sigma^2_c = \min(L(c), S_0)` (risk model :math:`L(c) = L_\mathrm{int} + K c^{-\alpha}`,
  static-only variance :math:`S_0`), so by preposterior analysis (docs/theory.md §2,
  :func:`plan_probe.theory.decision_loss`) its expected loss is
  :math:`\bar\ell(c') = \frac1D\sum_d \ell\bigl(u, r_d\bigr)` with the standardised distance
  :math:`u = \Phi^{-1}(p)` and the resolved share
  :math:`r_d^2 = 1 - \sigma^2_{c',d}/\sigma^2_{c,d}` per posterior draw d of the risk curve;
* the value of the next segment is
  :math:`V = \ell_\mathrm{now} - \bar\ell(c') - \lambda (c' - c)`, and the run **continues exactly
  when V > 0**; otherwise it decides now (go or no-go). At the last record depth it always decides.

Only the variance *ratio* enters, so the risk model's units need not match the predictor's; the
mean of the predictive is the predictor's, through p (so the decision is go exactly when
:math:`p \ge C_{lb}/(C_{lb}+C_{kg})`, consistent with the reported P(score ≥ τ)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["LiveDecision", "LiveProbe", "ACTIONS", "load_models_dir", "record_depths"]

ACTIONS = ("continue", "go", "no_go")


@dataclass(frozen=True)
class LiveDecision:
    """One decision of :class:`LiveProbe` at a record depth.

    Attributes
    ----------
    action : str
        ``"continue"`` (probe on to ``next_depth``), ``"go"`` (let the run finish, stop monitoring) or
        ``"no_go"`` (stop the run).
    depth : int
        The training step the decision was taken at (0: before training, from the static prior).
    prediction : float
        Predicted final score (label units).
    interval : tuple of float
        ``(lo, hi)``: CV+ prediction interval of the final score at the probe's coverage.
    p_above : float
        Calibrated P(final score ≥ τ).
    expected_loss_now : float
        :math:`\\min(C_{lb}(1-p), C_{kg} p)`: the expected loss of deciding now (cost units).
    value_of_next : float or None
        Value of information of probing on to ``next_depth`` net of its cost λ(c' − c); None at the
        last record depth.
    next_depth : int or None
        The next record depth (None at the last one).
    reasons : list of (str, float)
        The three features with the largest |SHAP| contribution to ``prediction``, signed.
    """

    action: str
    depth: int
    prediction: float
    interval: tuple
    p_above: float
    expected_loss_now: float
    value_of_next: float | None
    next_depth: int | None
    reasons: list

    @property
    def final(self) -> bool:
        """True for ``go`` and ``no_go`` (the probe has decided)."""
        return self.action != "continue"

    def to_json(self) -> dict:
        """A JSON-ready dict (finite floats, lists instead of tuples)."""
        doc = asdict(self)
        doc["interval"] = [float(v) for v in self.interval]
        doc["reasons"] = [[str(f), float(v)] for f, v in self.reasons]
        return doc


def _finite(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v):
        raise ValueError(f"feature {name} must be a finite number, but got {name}={value!r}; pass a finite value.")
    return v


def _hp_key(key: str) -> str:
    return key if key.startswith("hp_") else f"hp_{key}"


class LiveProbe:
    """Decide continue / go / no-go at each record depth of one training run.

    Parameters
    ----------
    static_row : mapping
        The run's ``static_*`` descriptors (the features the predictors and the risk model need).
    hyperparams : mapping
        ``hp_*`` values (the ``hp_`` prefix may be omitted: ``{"lr": 2e-4}`` is ``hp_lr``).
    risk_model : RiskModel
        Fitted risk model: its posterior draws of :math:`L(c)` tell how much the next depth resolves.
    predictor : ProbePredictor
        Depth-aware predictor (``depth`` and ``dyn_*`` among its features).
    static_predictor : ProbePredictor
        Static-only predictor: the prior N(m₀, S₀) before the first record depth (:meth:`initial`)
        and the cap S₀ on the predictive variance.
    settings : DecisionSettings
        τ (``threshold``) and the costs; ``full_cost`` (or both explicit costs) must be set.
    step_cost : float
        λ, the cost of one training step, in the unit of the costs (default 1: costs in steps).
    depths : sequence of int, optional
        Record depths (default: the predictor's, i.e. the depths of its depth scale table or
        ``extra["depths"]`` of its sidecar).
    coverage : float
        Coverage of the reported interval.
    n_draws, seed : int
        Posterior draws of the risk curve for this run, and their seed.

    Notes
    -----
    :meth:`update` must be called with strictly increasing depths; once the decision is final
    (``go``/``no_go``) further calls return it unchanged.
    """

    def __init__(self, static_row: Mapping, hyperparams: Mapping, *, risk_model, predictor, static_predictor,
                 settings, step_cost: float = 1.0, depths=None, coverage: float = 0.9, n_draws: int = 256,
                 seed: int = 0):
        import pandas as pd

        from plan_probe._decision_plan import DecisionSettings, predictive_variance

        if risk_model is None or predictor is None or static_predictor is None:
            missing = [n for n, v in (("risk_model", risk_model), ("predictor", predictor),
                                      ("static_predictor", static_predictor)) if v is None]
            raise ValueError(f"LiveProbe needs a risk model and both predictors, but got no {missing}; pass them or "
                             "use LiveProbe.from_models_dir(MODELS_DIR, ...) (plan-probe refit writes one).")
        if not isinstance(settings, DecisionSettings):
            raise ValueError(f"settings must be a DecisionSettings, but got {type(settings).__name__}; "
                             "pass DecisionSettings(threshold=τ, full_cost=...).")
        if settings.full_cost is None and (settings.launch_cost is None or settings.kill_cost is None):
            raise ValueError("the live decision needs the cost of a full run, but got full_cost=None in the settings; "
                             "pass DecisionSettings(threshold=τ, full_cost=C) (e.g. the run's steps with step_cost=1).")
        if settings.setup_steps:  # the run's own steps are the probe: nothing runs beside them
            raise ValueError(f"a live decision has no probe setup, so setup_steps must be 0, but got "
                             f"setup_steps={settings.setup_steps!r}; pass DecisionSettings(..., setup_steps=0).")
        if not (isinstance(step_cost, (int, float)) and math.isfinite(step_cost) and step_cost > 0):
            raise ValueError(f"step_cost must be positive, but got {step_cost=}; pass λ > 0 (e.g. 1 per step).")
        if not 0 < coverage < 1:
            raise ValueError(f"coverage must be in (0, 1), but got {coverage=}; pass e.g. 0.9.")
        names = list(getattr(predictor, "feature_names_", []))
        if "depth" not in names:
            raise ValueError("predictor must be depth-aware (a 'depth' feature), but it is not; pass the predictor "
                             "fitted with plan-probe fit-predictor --features all.")
        if "depth" in static_predictor.feature_names_:
            raise ValueError("static_predictor must be static-only (no 'depth' feature), but it is depth-aware; pass "
                             "the predictor fitted with --features static.")
        self.settings = settings
        self.step_cost = float(step_cost)
        self.coverage = float(coverage)
        self.predictor = predictor
        self.static_predictor = static_predictor
        self.risk_model = risk_model
        base = {str(k): v for k, v in dict(static_row).items()}
        base.update({_hp_key(str(k)): v for k, v in dict(hyperparams).items()})
        need = [f for f in dict.fromkeys([*names, *static_predictor.feature_names_, *risk_model.static_features_])
                if f != "depth" and not f.startswith("dyn_")]
        lacking = [f for f in need if f not in base]
        if lacking:
            raise ValueError(f"static_row and hyperparams must hold every static/hyperparameter feature of the models, "
                             f"but {lacking[:5]} are missing; pass them (static_* from plan-probe static, hp_* from "
                             "the run's settings).")
        self._base = {f: _finite(f, base[f]) for f in need}
        self.dyn_features = [f for f in names if f.startswith("dyn_")]
        others = [f for f in names if f != "depth" and f not in self.dyn_features and f not in self._base]
        if others:
            raise ValueError(f"the predictor's features must be depth, dyn_*, static_* or hp_*, but got {others[:5]}; "
                             "refit it with plan-probe refit.")
        self.depths = record_depths(predictor, depths)
        self.c_lb, self.c_kg = (float(v[0]) for v in settings.costs(1))
        # the risk curve of this run: posterior draws (population regression on its static features)
        task = pd.DataFrame([{"task_id": "live", **{f: self._base[f] for f in risk_model.static_features_}}])
        draws = risk_model.posterior_task_draws(task, n_draws=int(n_draws), seed=int(seed))
        self._l_int, self._k, self._alpha = (np.asarray(draws[n][0], dtype=float) for n in ("l_int", "k", "alpha"))
        # the static prior N(m0, S0)
        xs = self._frame(static_predictor.feature_names_, {})
        scale = self._scale(static_predictor, 1.0)
        self.prior_mean = float(static_predictor.predict(xs)[0])
        self.prior_var = float(predictive_variance(static_predictor, xs, scale)[0])
        if settings.anchor_ratio is not None:  # tie the curve to the prior (docs/theory.md §2, "Anchoring")
            from plan_probe.theory import anchor_risk_draws

            l_int, k = anchor_risk_draws([self.prior_var], self._l_int[None, :], self._k[None, :], self._alpha[None, :],
                                         settings.anchor_depth, settings.anchor_ratio)
            self._l_int, self._k = l_int[0], k[0]
        self._last_depth = 0
        self.decision: LiveDecision | None = None
        self.history: list[LiveDecision] = []

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_models_dir(cls, models_dir, static_row: Mapping, hyperparams: Mapping, settings, **kwargs) -> "LiveProbe":
        """Load ``risk_model.json``, ``predictor/`` and ``predictor_static/`` from ``models_dir``.

        ``models_dir`` is what ``plan-probe refit`` writes, or ``"default"`` for the shipped LLM-tier
        defaults (``planner/defaults/llm``). Keyword arguments go to the constructor.
        """
        risk, pred, static = load_models_dir(models_dir)
        return cls(static_row, hyperparams, risk_model=risk, predictor=pred, static_predictor=static,
                   settings=settings, **kwargs)

    # ------------------------------------------------------------------------------- internals
    def _frame(self, names, extra: dict):
        import pandas as pd

        row = {**self._base, **extra}
        return pd.DataFrame([[row[f] for f in names]], columns=list(names), dtype=float)

    def _risk(self, depth: float) -> np.ndarray:
        """Posterior draws of :math:`L(c)` at ``depth`` (> 0)."""
        return self._l_int + self._k * np.exp(-self._alpha * math.log(depth))

    def _scale(self, predictor, depth: float):
        """The external interval scale sqrt(E[L(c)]) for a predictor calibrated on a risk model's scale."""
        if getattr(predictor, "scale_mode_", "none") != "risk":
            return None
        return np.array([math.sqrt(float(self._risk(max(depth, 1.0)).mean()))])

    def _post_var(self, depth: float) -> np.ndarray:
        """:math:`\\sigma^2_c = \\min(L(c), S_0)` per draw (S₀ at depth 0)."""
        if depth <= 0:
            return np.full(self._l_int.shape, self.prior_var)
        return np.minimum(self._risk(depth), self.prior_var)

    def _next_depth(self, depth: int) -> int | None:
        later = [d for d in self.depths if d > depth]
        return later[0] if later else None

    def _decide(self, depth: int, prediction: float, interval, p: float, reasons) -> LiveDecision:
        from scipy.special import ndtri

        from plan_probe.theory import decision_loss

        p = float(np.clip(p, 1e-12, 1.0 - 1e-12))
        loss_go, loss_kill = self.c_lb * (1.0 - p), self.c_kg * p
        loss_now = min(loss_go, loss_kill)
        nxt = self._next_depth(depth)
        value = None
        action = "go" if loss_go <= loss_kill else "no_go"
        if nxt is not None:
            ratio = np.minimum(self._post_var(nxt) / self._post_var(depth), 1.0)
            u = float(ndtri(p))
            loss_next = float(np.mean(decision_loss(u, 1.0, ratio, 0.0, self.c_lb, self.c_kg)))
            value = loss_now - loss_next - self.step_cost * (nxt - depth)
            if value > 0:
                action = "continue"
        decision = LiveDecision(action=action, depth=int(depth), prediction=float(prediction),
                                interval=(float(interval[0]), float(interval[1])), p_above=p,
                                expected_loss_now=float(loss_now), value_of_next=None if value is None else float(value),
                                next_depth=nxt, reasons=reasons)
        self.history.append(decision)
        if decision.final:
            self.decision = decision
        return decision

    @staticmethod
    def _reasons(predictor, X, top: int = 3) -> list:
        contrib = predictor.shap_values(X)[0][0]
        order = np.argsort(-np.abs(contrib), kind="stable")[:top]
        return [(predictor.feature_names_[i], float(contrib[i])) for i in order]

    # ---------------------------------------------------------------------------------- public
    def initial(self) -> LiveDecision:
        """The decision before training (depth 0) from the static-only predictor.

        ``continue`` means the first record depth is worth its steps; ``go``/``no_go`` decide without
        any probe (as ``plan-probe plan --objective decision`` does for a candidate planned at 0 steps).
        """
        if self.decision is not None:
            return self.decision
        sp = self.static_predictor
        xs = self._frame(sp.feature_names_, {})
        scale = self._scale(sp, 1.0)
        _, lo, hi = sp.predict_interval(xs, self.coverage, scale)
        p = float(sp.prob_at_least(xs, self.settings.threshold, scale)[0])
        return self._decide(0, self.prior_mean, (lo[0], hi[0]), p, self._reasons(sp, xs))

    def update(self, depth: int, dyn_row: Mapping[str, float]) -> LiveDecision:
        """The decision at ``depth`` given the run's ``dyn_*`` features recorded there.

        Raises ``ValueError`` for a depth that is not after the previous one, a missing or
        non-finite ``dyn_*`` feature. After a final decision it returns that decision unchanged.
        """
        if self.decision is not None:
            return self.decision
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer, float)) or not math.isfinite(depth) \
                or depth != int(depth) or depth < 1:
            raise ValueError(f"depth must be a positive whole step, but got {depth=!r}; pass the global step.")
        depth = int(depth)
        if depth <= self._last_depth:
            raise ValueError(f"depths must increase from one update to the next, but got depth={depth} after "
                             f"{self._last_depth}; call update once per record depth, in order.")
        if not isinstance(dyn_row, Mapping):
            raise ValueError(f"dyn_row must be a mapping of dyn_* features, but got {type(dyn_row).__name__}; pass a dict.")
        lacking = [f for f in self.dyn_features if f not in dyn_row]
        if lacking:
            raise ValueError(f"dyn_row must hold every dynamic feature of the predictor, but {lacking[:5]} are missing; "
                             "record them with ProbeRecorderCallback (or PlanProbeCallback).")
        dyn = {f: _finite(f, dyn_row[f]) for f in self.dyn_features}
        self._last_depth = depth
        pr = self.predictor
        X = self._frame(pr.feature_names_, {**dyn, "depth": float(depth)})
        scale = self._scale(pr, depth)
        pred, lo, hi = pr.predict_interval(X, self.coverage, scale)
        p = float(pr.prob_at_least(X, self.settings.threshold, scale)[0])
        return self._decide(depth, float(pred[0]), (lo[0], hi[0]), p, self._reasons(pr, X))

    def __repr__(self) -> str:
        return f"LiveProbe(depths={list(self.depths)}, threshold={self.settings.threshold})"


def load_models_dir(models_dir):
    """``(risk_model, predictor, static_predictor)`` from a MODELS_DIR (``"default"``: the shipped ones)."""
    from plan_probe._defaults import DEFAULT_FILES, default_path
    from plan_probe._predictor import ProbePredictor
    from plan_probe._risk_model import RiskModel

    if str(models_dir) == "default":
        paths = {kind: default_path(kind) for kind in DEFAULT_FILES}
    else:
        root = Path(models_dir)
        paths = {kind: root / name for kind, name in DEFAULT_FILES.items()}
        lacking = [name for kind, name in DEFAULT_FILES.items()
                   if not (paths[kind] if kind == "risk_model" else paths[kind] / "predictor.json").is_file()]
        if lacking:
            raise ValueError(f"MODELS_DIR must hold risk_model.json, predictor/ and predictor_static/, but "
                             f"{str(root)!r} lacks {lacking}; write one with plan-probe refit ... -o MODELS_DIR.")
    return (RiskModel.load(paths["risk_model"]), ProbePredictor.load(paths["predictor"]),
            ProbePredictor.load(paths["predictor_static"]))


def record_depths(predictor, depths=None) -> tuple:
    """The record depths: ``depths`` if given, else the predictor's (its depth scale table, or
    ``extra["depths"]`` of its sidecar), sorted and unique."""
    if depths is None:
        table = getattr(predictor, "depth_scale_", None) or {}
        depths = sorted(table) if table else (getattr(predictor, "extra_", {}) or {}).get("depths")
    if not depths:
        raise ValueError("LiveProbe needs record depths, but the predictor has no depth table or extra['depths']; "
                         "pass depths=[...] (the depths its training rows were recorded at).")
    out = sorted({int(round(float(d))) for d in depths})
    if out[0] < 2:
        raise ValueError(f"record depths must be training steps >= 2, but got {out}; pass depths >= 2.")
    return tuple(out)
