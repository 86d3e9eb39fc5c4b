r"""Decision-aware probe plans (docs/theory.md §2, "Decision-aware probing"; theory in
:mod:`plan_probe.theory._decision`).

The plan's probe lengths minimise the expected go/no-go decision loss plus the probe's cost, in the
user's cost unit (natural default: training steps, λ = 1 per probe step, a full run = its
``full_steps``), instead of the risk objective's :math:`L(c) + \gamma\lambda c`. Inputs per task:
the static-only predictive N(m₀, S₀) (``prior_mean``, ``prior_var``: from TASKS columns or from a
static-only predictor), the risk model's posterior draws of (L_int, K, α), the threshold τ and the
costs :math:`C_{lb}` (launch a run that ends below τ) and :math:`C_{kg}` (kill a run that would
have reached τ), both defaulting to the full-run cost.

:func:`decision_plan` is the entry point for any caller that already has priors and draws (e.g. a
benchmark policy): it returns the per-task ``c_opt``/``probe_steps`` and the decision columns.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace

import numpy as np

__all__ = [
    "DecisionSettings",
    "DECISION_COLUMNS",
    "PRIOR_COLUMNS",
    "anchor_from_predictors",
    "decision_plan",
    "compute_decision_plan",
    "priors_from_table",
    "priors_from_predictor",
    "predictive_variance",
    "split_decision_columns",
    "warn_cost_scale",
]

log = logging.getLogger(__name__)

PRIOR_COLUMNS = ("prior_mean", "prior_var")
#: Columns a decision plan adds to the risk plan (after ``risk_at_c_opt``).
DECISION_COLUMNS = (
    "prior_mean", "prior_var", "launch_cost", "kill_cost", "p_success_now", "decision_now", "loss_now",
    "loss_at_c_opt", "value_of_probe", "loss_at_probe_steps", "p_flip", "loss_floor", "reason",
)


@dataclass(frozen=True)
class DecisionSettings:
    """The decision objective's settings (validated). Costs are in the unit of the plan's ``step_cost``.

    threshold : τ, the go score (label units).
    full_cost : cost of one full run (None: per task, e.g. from ``full_steps`` or a ``full_cost`` column).
    launch_cost : :math:`C_{lb}`, cost of launching a run that ends below τ (None: the full-run cost).
    kill_cost : :math:`C_{kg}`, cost of not launching a run that would have reached τ (None: the full-run cost).
    grid_ratio : ratio between neighbouring depths of the search grid (theory.decision_curves).
    setup_steps : steps every probe costs beyond its depth (a readout's cooldown): charged in the
        objective, so a probe must pay for them; not counted against a probe budget.
    anchor_depth, anchor_ratio : tie the risk model's curve to the prior (both or neither; None: off):
        each task's draws are rescaled so that L(anchor_depth) = anchor_ratio × S₀
        (:func:`plan_probe.theory.anchor_risk_draws`); ``anchor_ratio`` is the depth-aware predictor's
        out-of-fold MSE at that depth over the static-only predictor's (:func:`anchor_from_predictors`).
    """

    threshold: float
    full_cost: float | None = None
    launch_cost: float | None = None
    kill_cost: float | None = None
    grid_ratio: float = 1.25
    setup_steps: float = 0.0
    anchor_depth: float | None = None
    anchor_ratio: float | None = None

    def __post_init__(self):
        t = self.threshold
        if not (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)):
            raise ValueError(f"threshold must be a finite score, but got threshold={t!r}; pass --threshold τ in label units.")
        for name in ("full_cost", "launch_cost", "kill_cost"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                flag = name.replace("_", "-")
                raise ValueError(f"{name} must be a positive cost, but got {name}={v!r}; pass --{flag} > 0 "
                                 "(in the unit of --step-cost, e.g. training steps).")
        if not (math.isfinite(self.grid_ratio) and self.grid_ratio > 1):
            raise ValueError(f"grid_ratio must exceed 1, but got grid_ratio={self.grid_ratio!r}; use e.g. 1.25.")
        s = self.setup_steps
        if not (isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s >= 0):
            raise ValueError(f"setup_steps must be a non-negative number of steps, but got setup_steps={s!r}; "
                             "pass e.g. 0 (no readout) or the readout's cooldown.")
        if (self.anchor_depth is None) != (self.anchor_ratio is None):
            raise ValueError(f"anchor_depth and anchor_ratio go together, but got anchor_depth={self.anchor_depth!r}, "
                             f"anchor_ratio={self.anchor_ratio!r}; pass both (anchor_from_predictors) or neither.")
        for name in ("anchor_depth", "anchor_ratio"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, but got {name}={v!r}; pass e.g. the values of "
                                 "anchor_from_predictors(predictor, static_predictor).")

    def costs(self, n: int, full_cost=None) -> tuple[np.ndarray, np.ndarray]:
        """Per-task (C_lb, C_kg): explicit costs, else the per-task ``full_cost``, else ``self.full_cost``."""
        full = self.full_cost if full_cost is None else full_cost
        need = [name for name in ("launch_cost", "kill_cost") if getattr(self, name) is None]
        if need and full is None:
            raise ValueError("the decision objective needs the cost of a full run, but got no --full-cost (and no "
                             "full_cost column); pass --full-cost C in the unit of --step-cost (e.g. the run's steps).")
        if full is not None:
            full = np.broadcast_to(np.asarray(full, dtype=float), (n,))
            if not np.all(np.isfinite(full) & (full > 0)):
                bad = full[~(np.isfinite(full) & (full > 0))][0]
                raise ValueError(f"full_cost must be positive for every task, but got full_cost={float(bad)!r}; fix it.")
        c_lb = np.full(n, float(self.launch_cost)) if self.launch_cost is not None else full.astype(float)
        c_kg = np.full(n, float(self.kill_cost)) if self.kill_cost is not None else full.astype(float)
        return c_lb, c_kg

    def to_dict(self) -> dict:
        return asdict(self)


def warn_cost_scale(c_lb, c_kg, step_cost: float, max_depth: float) -> str | None:
    """Warn (and return the message) when a decision costs less than the longest allowed probe.

    Not an error: it only means probes near ``c_max`` can never pay, which is odd but legal
    (e.g. a cheap run and a generous ``--max-depth``).
    """
    worst = float(np.max(np.maximum(c_lb, c_kg)))
    longest = step_cost * max_depth
    if worst < longest:
        msg = (f"the full-run cost ({worst:g}) is below the cost of the longest probe (step_cost x max_depth = "
               f"{longest:g}): probes that long can never pay; check that --full-cost and --step-cost share a unit")
        log.warning(msg)
        return msg
    return None


def anchor_from_predictors(predictor, static_predictor) -> tuple[float, float] | None:
    """``(anchor_depth, anchor_ratio)`` for :class:`DecisionSettings` from the two fitted predictors.

    The depth is the shallowest one the depth-aware predictor's interval scale was measured at; the
    ratio is its out-of-fold MSE there (``depth_scale_``) over the static-only predictor's out-of-fold
    MSE (``cv_rmse_``²): how much a probe that short was measured to add over the static descriptors
    (ratio ≥ 1: nothing). None when either is not available (a predictor without a depth scale).
    """
    table = getattr(predictor, "depth_scale_", None) or {}
    rmse = getattr(static_predictor, "cv_rmse_", None)
    if not table or rmse is None or not (math.isfinite(rmse) and rmse > 0):
        return None
    depth = min(table)
    if not (math.isfinite(table[depth]) and table[depth] > 0):
        return None
    return float(depth), float(table[depth] ** 2 / rmse**2)


# ------------------------------------------------------------------------------------- priors
def split_decision_columns(frame, keep=()):
    """Split a TASKS table into the risk planner's columns and the decision columns.

    The decision columns are ``prior_mean``, ``prior_var``, ``full_cost``, every ``hp_*`` column
    and ``keep`` (the features a static-only predictor needs beyond ``static_*``). Returns
    ``(risk_frame, decision_frame)``; the latter keeps ``task_id``.
    """
    extra = [c for c in frame.columns if c in (*PRIOR_COLUMNS, "full_cost") or c.startswith("hp_") or c in keep]
    extra = [c for c in extra if not c.startswith("static_") and c != "task_id"]
    risk = frame[[c for c in frame.columns if c not in extra]]
    dec = frame[["task_id", *[c for c in frame.columns if c.startswith("static_")], *extra]] if "task_id" in frame.columns else frame
    return risk, dec


def _per_task(frame, task_ids, column: str):
    """One value of ``column`` per task (first row of each task; must be constant within a task)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(frame[column]):
        raise ValueError(f"{column} must be numeric, but got booleans (True/False); write numbers.")
    values = pd.to_numeric(frame[column], errors="coerce")
    ids = frame["task_id"].astype(str)
    spread = values.groupby(ids).nunique(dropna=False)
    if (spread > 1).any():
        bad = spread[spread > 1].index[0]
        raise ValueError(f"{column} must be constant within a task, but task {bad!r} has several values; keep one per task.")
    first = values.groupby(ids).first()
    return first.reindex([str(t) for t in task_ids]).to_numpy(dtype=float)


def priors_from_table(frame, task_ids) -> tuple[np.ndarray, np.ndarray]:
    """(m0, S0) per task from TASKS columns ``prior_mean`` and ``prior_var`` (checked)."""
    missing = [c for c in PRIOR_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"the decision objective needs each task's static-only predictive, but TASKS lacks {missing}; add columns "
            "prior_mean and prior_var (plan-probe predict with the static-only predictor writes them as pred and "
            "pred_var) or pass --static-predictor DIR."
        )
    m0 = _per_task(frame, task_ids, "prior_mean")
    s0 = _per_task(frame, task_ids, "prior_var")
    if not np.all(np.isfinite(m0)):
        raise ValueError("prior_mean must be a finite score for every task, but got NaN or inf; fill those rows.")
    if not np.all(np.isfinite(s0) & (s0 > 0)):
        bad = s0[~(np.isfinite(s0) & (s0 > 0))][0]
        raise ValueError(f"prior_var must be a positive variance for every task, but got prior_var={float(bad)!r}; "
                         "pass the static-only predictor's variance (pred_var of plan-probe predict), > 0.")
    return m0, s0


def predictive_variance(predictor, X, scale=None) -> np.ndarray:
    r"""Predictive variance of a fitted ``ProbePredictor`` per row: :math:`\overline{e^2}\, s(x)^2`.

    :math:`\overline{e^2}` is the mean squared calibration score (out-of-fold residual divided by
    the row scale) and :math:`s(x)` the row's interval scale, so for the static-only predictor this
    is its out-of-fold mean squared error S₀, in label units².
    """
    scores = np.asarray(predictor.scores_, dtype=float)
    return float(np.mean(scores**2)) * predictor.row_scale(X, scale) ** 2


def priors_from_predictor(predictor, frame, task_ids, risk_model=None, seed: int = 0):
    """(m0, S0) per task from a static-only predictor (its prediction and :func:`predictive_variance`)."""
    import pandas as pd

    missing = [f for f in predictor.feature_names_ if f not in frame.columns]
    if missing:
        raise ValueError(f"the static predictor needs its features in TASKS, but {missing[:4]} are missing; "
                         "add them (static_*, hp_*) or pass prior_mean/prior_var columns instead.")
    if "depth" in predictor.feature_names_:
        raise ValueError("--static-predictor must be a static-only predictor (no 'depth' feature), but this one is "
                         "depth-aware; fit one with plan-probe fit-predictor --features static.")
    rows = frame.assign(task_id=frame["task_id"].astype(str)).drop_duplicates("task_id").set_index("task_id")
    X = rows.loc[[str(t) for t in task_ids], list(predictor.feature_names_)]
    X = X.apply(pd.to_numeric, errors="coerce")
    if not np.all(np.isfinite(X.to_numpy(dtype=float))):
        raise ValueError("the static predictor's features must be finite, but TASKS has NaN or inf in them; fill those rows.")
    scale = None
    if predictor.scale_mode_ == "risk":
        if risk_model is None:
            raise ValueError("this static predictor is calibrated with a risk model's scale, but none was given; pass --risk-model.")
        lacking = [f for f in risk_model.static_features_ if f not in rows.columns]
        if lacking:
            raise ValueError(f"the predictor's risk scale needs the risk model's static features, but TASKS lacks {lacking[:4]}; add them.")
        feats = rows.loc[[str(t) for t in task_ids], list(risk_model.static_features_)].reset_index(drop=True).assign(depth=1.0)
        scale = np.sqrt(np.asarray(risk_model.expected_risk(feats, depth_col="depth", seed=seed), dtype=float))
    X = X.reset_index(drop=True)
    return predictor.predict(X), predictive_variance(predictor, X, scale)


# --------------------------------------------------------------------------------------- plans
def _where(p: float, side: str) -> str:
    return "near τ" if 0.2 <= p <= 0.8 else f"{side} τ"


def _reason(r: dict, go_now: bool, tau: float, lam: float, c_min: int, setup: float = 0.0) -> str:
    """Why a task got its probe steps, in words (the report's per-candidate reason)."""
    from plan_probe.theory import probe_cost_steps

    p, c, c_opt = r["p_success_now"], int(r["probe_steps"]), int(r["c_opt"])
    cheapest = lam * float(probe_cost_steps(c_min, setup))
    incl = f"incl. {setup:g} readout steps" if setup > 0 else ""
    side = "above" if r["prior_mean"] >= tau else "below"
    now = "go" if go_now else "no-go"
    where = f"{_where(p, side)} (P(score ≥ τ) = {p:.2f})"
    if c > 0:
        text = (f"{where}: {c} steps can flip the decision (probability {r['p_flip']:.2f}); they cut the expected "
                f"loss from {r['loss_now']:.3g} to {r['loss_at_probe_steps']:.3g} for a probe cost of "
                f"{lam * float(probe_cost_steps(c, setup)):.3g}" + (f" ({incl})" if incl else ""))
        return text + (f"; the budget cut the probe from its optimum of {c_opt} steps" if c < c_opt else "")
    if c_opt > 0:
        return (f"{where}: a {c_opt}-step probe is worth {r['value_of_probe']:.3g} net, but the budget went to "
                f"candidates where a step is worth more; {now} without a probe")
    if r["loss_now"] <= cheapest:
        return (f"far {side} τ (P(score ≥ τ) = {p:.2f}): no probe needed, {now}; deciding now risks an expected loss "
                f"of {r['loss_now']:.3g}, less than the cheapest probe ({cheapest:.3g}" + (f", {incl})" if incl else ")"))
    if r["loss_now"] - r["loss_floor"] <= cheapest:
        return (f"{where}, but no probe resolves enough: even an endless free probe would only cut the expected loss "
                f"from {r['loss_now']:.3g} to {r['loss_floor']:.3g} (intrinsic risk); {now} without a probe")
    return f"{where}, but at every depth the probe costs more than the loss it avoids; {now} without a probe"


def decision_plan(task_ids, prior_mean, prior_var, l_int, k, alpha, settings, decision: DecisionSettings,
                  full_cost=None, *, n_jobs: int | None = None):
    """Decision-optimal probe lengths per task from priors and posterior draws (no risk model needed).

    Parameters
    ----------
    task_ids : array_like (n_tasks,)
    prior_mean, prior_var : array_like (n_tasks,)
        The static-only predictive N(m₀, S₀) of each task's final score.
    l_int, k, alpha : ndarray (n_tasks, n_draws)
        Posterior draws of the risk curve L(c) = L_int + K c^-α (label units²).
    settings : PlanSettings
        ``step_cost`` (λ), ``min_depth``, ``max_depth`` and ``budget`` (total probe steps or None).
    decision : DecisionSettings
        τ and the costs.
    full_cost : float or array_like (n_tasks,), optional
        Per-task full-run cost (overrides ``decision.full_cost``).

    Returns
    -------
    pandas.DataFrame
        ``task_id, c_opt, probe_steps, risk_at_c_opt`` and :data:`DECISION_COLUMNS`. ``c_opt`` is the unconstrained optimum; ``probe_steps`` the budget's allocation
        (equal to ``c_opt`` when no budget binds). ``risk_at_c_opt`` is the predictive variance
        after ``c_opt`` steps, E[min(L(c), S₀)] (S₀ at c = 0).
    """
    import pandas as pd

    from plan_probe.theory import allocate_decision_budget, decision_curves
    from plan_probe.theory._decision import _flip_probability

    task_ids = np.asarray(task_ids).astype(str)
    n = task_ids.size
    m0 = np.asarray(prior_mean, dtype=float).reshape(-1)
    s0 = np.asarray(prior_var, dtype=float).reshape(-1)
    if m0.size != n or s0.size != n:
        raise ValueError(f"prior_mean and prior_var need one value per task, but got {m0.size} and {s0.size} for {n} tasks; fix them.")
    if not np.all(np.isfinite(s0) & (s0 > 0)):
        raise ValueError("prior_var must be a positive variance for every task, but got values <= 0 or NaN; fix them.")
    c_lb, c_kg = decision.costs(n, full_cost)
    if decision.anchor_ratio is not None:
        from plan_probe.theory import anchor_risk_draws

        l_int, k = anchor_risk_draws(s0, l_int, k, alpha, decision.anchor_depth, decision.anchor_ratio)
    lam = float(settings.step_cost)
    c_lo, c_hi = settings.int_range
    curves = decision_curves(m0, s0, l_int, k, alpha, decision.threshold, c_lb, c_kg, lam, c_lo, c_hi,
                             setup_steps=decision.setup_steps, grid_ratio=decision.grid_ratio, n_jobs=n_jobs)
    steps = curves.c_opt if settings.budget is None else allocate_decision_budget(curves, settings.budget)
    rows = np.arange(n)
    at_steps = np.argmax(curves.depths == np.asarray(steps)[:, None], axis=1)  # every allocation is an evaluated depth
    loss_at_steps = curves.loss[rows, at_steps]
    p_flip = curves.p_flip.copy()
    moved = np.flatnonzero(steps != curves.c_opt)  # only a binding budget moves a task off its optimum
    if moved.size:
        u = (m0[moved] - decision.threshold) / np.sqrt(s0[moved])
        p_flip[moved] = _flip_probability(np.asarray(steps)[moved], u, s0[moved], np.atleast_2d(l_int)[moved],
                                          np.atleast_2d(k)[moved], np.atleast_2d(alpha)[moved], c_lb[moved], c_kg[moved],
                                          curves.go_now[moved])
    c = np.maximum(curves.c_opt, 1).astype(float)[:, None]
    post = np.minimum(l_int + k * np.exp(-alpha * np.log(c)), s0[:, None]).mean(axis=1)
    frame = pd.DataFrame({
        "task_id": task_ids,
        "c_opt": curves.c_opt.astype(np.int64),
        "probe_steps": np.asarray(steps, dtype=np.int64),
        "risk_at_c_opt": np.where(curves.c_opt > 0, post, s0),
        "prior_mean": m0,
        "prior_var": s0,
        "launch_cost": c_lb,
        "kill_cost": c_kg,
        "p_success_now": curves.p_success_now,
        "decision_now": np.where(steps > 0, "probe", np.where(curves.go_now, "go", "no-go")),
        "loss_now": curves.loss_now,
        "loss_at_c_opt": curves.loss_at_c_opt,
        "value_of_probe": curves.value_of_probe,
        "loss_at_probe_steps": loss_at_steps,
        "p_flip": p_flip,
        "loss_floor": curves.loss_floor,
    })
    frame["reason"] = [_reason(r, g, decision.threshold, lam, c_lo, decision.setup_steps)
                       for r, g in zip(frame.to_dict("records"), curves.go_now)]
    return frame


def compute_decision_plan(model, tasks_df, settings, decision: DecisionSettings, prior_mean, prior_var,
                          full_cost=None):
    """The decision plan of ``tasks_df``: the risk plan's columns (regimes stay a diagnosis) with
    ``c_opt``, ``probe_steps`` and ``risk_at_c_opt`` from the decision objective, plus
    :data:`DECISION_COLUMNS`. ``prior_mean``/``prior_var``/``full_cost`` follow the order of the
    tasks' first appearance in ``tasks_df``. Returns ``(plan, draws)``.
    """
    from plan_probe._plan import PLAN_COLUMNS, compute_plan

    plan, draws = compute_plan(model, tasks_df, replace(settings, budget=None))
    dec = decision_plan(draws["task_id"], prior_mean, prior_var, draws["l_int"], draws["k"], draws["alpha"], settings,
                        decision, full_cost)
    for col in ("c_opt", "probe_steps", "risk_at_c_opt"):
        plan[col] = dec[col].to_numpy()
    # at_bound follows the decision's c_opt; 0 (decide now, no probe) is a choice, not a probe limit
    c_opt, (c_lo, c_hi) = plan["c_opt"].to_numpy(), settings.int_range
    plan["at_bound"] = np.where((c_opt > 0) & (c_opt <= c_lo), "c_min", np.where(c_opt >= c_hi, "c_max", "none"))
    for col in DECISION_COLUMNS:
        plan[col] = dec[col].to_numpy()
    return plan[[*PLAN_COLUMNS, *DECISION_COLUMNS]], draws
