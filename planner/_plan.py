r"""The probe plan: regimes, budget-optimal probe lengths and portfolio budgets (docs/theory.md §1-2).

For each task, from posterior draws of :math:`(L_\mathrm{int}, K, \alpha)`:

* regime probabilities by the Sec. 1 rule applied per draw (:func:`theory.regime_probabilities`),
  ``regime`` the most probable;
* ``c_opt``: the integer minimiser over :math:`[c_\min, c_\max]` of the posterior expected objective
  :math:`\mathbb E[L_\mathrm{int} + K c^{-\alpha}] + \gamma\lambda c` (continuous solve of
  :math:`\mathbb E[\alpha K c^{-\alpha-1}] = \gamma\lambda`, then the better of floor and ceiling);
* ``probe_steps`` = ``c_opt`` for every task except Static-Sufficient ones (0): the regime is a
  diagnosis, the depth comes from the objective (a Noise-Dominant task cannot reach the target
  RMSE, but a probe that removes more risk than it costs still pays);
* ``l_int``, ``k``, ``alpha``: posterior medians with 80 % intervals (``_q10``, ``_q90``), robust to
  the heavy right tails of log-normal posteriors; ``risk_at_c_opt`` is the posterior mean of
  :math:`L(c_\mathrm{opt})`;
* ``at_bound``: ``c_min`` / ``c_max`` when ``c_opt`` sits at a probe limit (see :func:`bound_warning`);
* with a budget B: :math:`c_i \in [c_\min, c_\max]`, :math:`\sum c_i \le B`, minimising
  :math:`\sum_i \mathbb E[L_i(c_i)]` by equal marginal gains
  :math:`\mathbb E[\alpha_i K_i c_i^{-\alpha_i-1}] = \mu`, with :math:`\mu` found by a bracketed
  (Illinois) search, integer rounding down and a greedy top-up of the leftover steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from plan_probe.probes._formats import PLAN_SETTINGS

__all__ = ["PlanSettings", "PLAN_COLUMNS", "PLAN_CORE_COLUMNS", "RELATIVE_RISK_WEIGHT", "RELATIVE_TARGET_RISK",
           "compute_plan", "plan_from_draws", "allocate_budget", "bound_warning"]

#: The columns every plan has had since the first release (docs/theory.md §3).
PLAN_CORE_COLUMNS = (
    "task_id", "regime", "p_static_sufficient", "p_dynamic_critical", "p_noise_dominant",
    "l_int", "k", "alpha", "c_opt", "probe_steps", "risk_at_c_opt",
)
#: The plan table: the core columns, then the 80 % intervals of the medians and the bound flag.
PLAN_COLUMNS = PLAN_CORE_COLUMNS + (
    "l_int_q10", "l_int_q90", "k_q10", "k_q90", "alpha_q10", "alpha_q90", "at_bound",
)
#: Default gamma when not given: gamma = RELATIVE_RISK_WEIGHT * S per unit of cost (S: the model's label scale).
RELATIVE_RISK_WEIGHT = 1e-3
#: Default epsilon when not given: epsilon^2 = RELATIVE_TARGET_RISK * S.
RELATIVE_TARGET_RISK = 0.5
#: Share of tasks with c_opt at a probe limit above which ``plan`` warns.
BOUND_SHARE_WARN = 0.5


@dataclass(frozen=True)
class PlanSettings:
    """Planning settings (validated; round-trip through JSON with the plan-probe version).

    step_cost : lambda, what one probe step costs (GPU-seconds, dollars, ...).
    risk_weight : gamma, squared-score units of risk one unit of cost is worth; None (the
        default): relative to the risk model's label scale S, gamma = 1e-3 S.
    target_rmse : epsilon, the prediction RMSE the user needs (score units); None (the default):
        epsilon = sqrt(S / 2).

    Explicit values are in label units and used as given. :meth:`resolve` turns the relative
    defaults into numbers for a model's S (docs/guide/planning.md gives the rule and why).
    min_depth, max_depth : c_min, c_max, the probe length limits in steps.
    budget : total probe steps over the portfolio, or None for per-task optima.
    seed : seed of the posterior draws.  n_draws : posterior draws per task.
    """

    step_cost: float = 1.0
    risk_weight: float | None = None
    target_rmse: float | None = None
    min_depth: float = 10.0
    max_depth: float = 1000.0
    budget: float | None = None
    seed: int = 0
    n_draws: int = 256

    def __post_init__(self):
        for name in ("step_cost", "risk_weight", "target_rmse", "min_depth", "max_depth"):
            v = getattr(self, name)
            if v is None and name in ("risk_weight", "target_rmse"):
                continue  # relative default, resolved against the model's label scale
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, but got {name}={v!r}; pass a value > 0.")
        if self.min_depth > self.max_depth:
            raise ValueError(
                f"min_depth must not exceed max_depth, but got min_depth={self.min_depth:g} > max_depth={self.max_depth:g}; swap them."
            )
        if math.ceil(self.min_depth) > math.floor(self.max_depth):
            raise ValueError(f"[min_depth, max_depth] must contain a whole number of steps, but got [{self.min_depth:g}, {self.max_depth:g}]; widen it.")
        if self.budget is not None and not (math.isfinite(self.budget) and self.budget > 0):
            raise ValueError(f"budget must be a positive number of steps, but got budget={self.budget!r}; pass B > 0.")
        if int(self.n_draws) < 1:
            raise ValueError(f"n_draws must be >= 1, but got n_draws={self.n_draws}; pass a positive number (--draws).")

    @property
    def resolved(self) -> bool:
        """True when gamma and epsilon are numbers (given, or filled in by :meth:`resolve`)."""
        return self.risk_weight is not None and self.target_rmse is not None

    def resolve(self, label_scale: float) -> "PlanSettings":
        r"""These settings with the relative defaults filled in for a model of label scale S.

        .. math:: \gamma = 10^{-3} S \text{ (per unit of cost)}, \qquad \varepsilon = \sqrt{S/2}

        Given values are kept. So with every default, :math:`\gamma\lambda = 10^{-3} S` per step
        and the Noise-Dominant boundary is :math:`L_\mathrm{int} = S/2`; rescaling the label by a
        factor a scales S, the risk draws, :math:`\gamma\lambda` and :math:`\varepsilon^2` by
        :math:`a^2` and leaves regimes and depths unchanged.
        """
        if not (isinstance(label_scale, (int, float)) and math.isfinite(label_scale) and label_scale > 0):
            raise ValueError(f"label_scale must be a positive number, but got {label_scale!r}; refit the risk model.")
        return replace(
            self,
            risk_weight=RELATIVE_RISK_WEIGHT * label_scale if self.risk_weight is None else self.risk_weight,
            target_rmse=math.sqrt(RELATIVE_TARGET_RISK * label_scale) if self.target_rmse is None else self.target_rmse,
        )

    def relative_keys(self) -> list[str]:
        """The settings left to their relative defaults (``risk_weight``, ``target_rmse``)."""
        return [k for k in ("risk_weight", "target_rmse") if getattr(self, k) is None]

    def _require_resolved(self):
        if not self.resolved:
            raise ValueError(
                f"plan settings must be resolved against a risk model's label scale, but {self.relative_keys()} are "
                "relative defaults; call settings.resolve(model.label_scale_) or pass explicit values."
            )

    @property
    def cost(self) -> float:
        """gamma * lambda: the risk-equivalent cost of one probe step (resolved settings only)."""
        self._require_resolved()
        return self.step_cost * self.risk_weight

    @property
    def int_range(self) -> tuple[int, int]:
        return math.ceil(self.min_depth), math.floor(self.max_depth)

    def check_budget(self, n_tasks: int) -> None:
        """Every task needs at least c_min steps, so B >= ceil(c_min) * n_tasks."""
        if self.budget is not None and self.budget < self.int_range[0] * n_tasks:
            need = self.int_range[0] * n_tasks
            raise ValueError(
                f"budget must cover min_depth for every task ({self.int_range[0]} x {n_tasks} tasks = {need} steps), "
                f"but got budget={self.budget:g}; raise --budget to at least {need} or lower --min-depth."
            )

    def to_dict(self) -> dict:
        return PLAN_SETTINGS.stamp(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "PlanSettings":
        """Read settings written by :meth:`to_dict` (schema 1 files always hold explicit gamma and epsilon)."""
        if isinstance(d, dict) and "format" not in d and "plan_probe_version" in d:  # schema 1 had no format
            d = {**d, "format": PLAN_SETTINGS.name, "schema_version": 1}
        d = PLAN_SETTINGS.read(d, "plan settings")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _expected_decay(k, alpha, c):
    """E over draws of K c^-alpha, for per-task depths c (n_tasks,)."""
    return (k * np.exp(-alpha * np.log(np.asarray(c, dtype=float))[:, None])).mean(axis=1)


def allocate_budget(k, alpha, budget: float, c_min: int, c_max: int, *, max_iter: int = 100):
    """Integer probe lengths c_i in [c_min, c_max] with sum <= budget minimising sum E[L_i(c_i)].

    Equal marginal gains: find mu with sum_i c_i(mu) ~ budget (Illinois search on log mu, the
    sum is decreasing in mu), round down, then give the leftover steps one at a time to the tasks
    whose next step lowers E[L_i] most (exact greedy). Returns an int array.
    """
    from plan_probe.theory import depth_for_marginal_gain, log_expected_marginal_gain

    n = k.shape[0]
    if budget < c_min * n:
        raise ValueError(f"budget must be at least c_min x n_tasks = {c_min * n}, but got budget={budget:g}; raise it.")
    if budget >= c_max * n:
        return np.full(n, c_max, dtype=np.int64)
    # every task at c_min / at c_max: the bracket of log mu
    t_hi = float(log_expected_marginal_gain(k, alpha, c_min).max())
    t_lo = float(log_expected_marginal_gain(k, alpha, c_max).min())
    state = {"c": None}

    def total(t):  # warm start from the previous solution: the search moves mu a little each time
        state["c"] = depth_for_marginal_gain(k, alpha, math.exp(t), c_min, c_max, c_start=state["c"])
        return np.floor(state["c"] + 1e-9).clip(c_min, c_max)

    f = lambda c: math.log(c.sum()) - math.log(budget)  # noqa: E731
    a, b = t_lo - 1e-9, t_hi + 1e-9
    fa, fb = f(np.full(n, float(c_max))), f(np.full(n, float(c_min)))
    best = np.full(n, float(c_min))
    side = 0
    for _ in range(max_iter):
        t = (a * fb - b * fa) / (fb - fa) if fb != fa else 0.5 * (a + b)
        if not (min(a, b) < t < max(a, b)):
            t = 0.5 * (a + b)
        c = total(t)
        ft = f(c)
        if ft <= 0:
            best = c if c.sum() > best.sum() else best
            if budget - c.sum() < n:
                break
            b, fb = t, ft
            if side == -1:
                fa *= 0.5  # Illinois: halve the stale end's value so the bracket shrinks from both sides
            side = -1
        else:
            a, fa = t, ft
            if side == 1:
                fb *= 0.5
            side = 1
    c = best.astype(np.int64)
    left = int(budget - c.sum())
    if left > 0:
        # Exact greedy top-up (optimal for a separable convex integer problem started below the
        # optimum): each leftover step goes to the task whose next step lowers E[L_i] most.
        import heapq

        def gain(i, ci):
            return float((k[i] * (ci ** -alpha[i] - (ci + 1.0) ** -alpha[i])).mean())

        cf = c.astype(float)
        g = _expected_decay(k, alpha, cf) - _expected_decay(k, alpha, cf + 1.0)
        heap = [(-g[i], i) for i in np.flatnonzero(c < c_max)]
        heapq.heapify(heap)
        while left > 0 and heap:
            _, i = heapq.heappop(heap)
            c[i] += 1
            left -= 1
            if c[i] < c_max:
                heapq.heappush(heap, (-gain(i, float(c[i])), i))
    return c


def _quantiles(x, name: str) -> dict:
    """Posterior median and 80 % interval columns of one parameter."""
    q10, q50, q90 = np.quantile(x, [0.1, 0.5, 0.9], axis=1)
    return {name: q50, f"{name}_q10": q10, f"{name}_q90": q90}


def plan_from_draws(task_ids, l_int, k, alpha, settings: PlanSettings, *, label_scale: float | None = None):
    """The plan table (columns :data:`PLAN_COLUMNS`) from per-task posterior draws (n_tasks, n_draws).

    ``settings`` with relative defaults need the ``label_scale`` S they refer to.
    """
    import pandas as pd

    from plan_probe.theory import REGIMES, RegimeThresholds, expected_optimal_depth, regime_probabilities

    if not settings.resolved:
        if label_scale is None:
            settings._require_resolved()
        settings = settings.resolve(label_scale)
    c_lo, c_hi = settings.int_range
    settings.check_budget(len(task_ids))
    thresholds = RegimeThresholds(cost=settings.cost, target_rmse=settings.target_rmse,
                                  c_min=settings.min_depth, c_max=settings.max_depth)
    probs = regime_probabilities(l_int, k, alpha, thresholds)
    regime_idx = np.argmax(probs, axis=1)
    c_opt = expected_optimal_depth(k, alpha, settings.cost, c_lo, c_hi, integer=True)
    risk = l_int.mean(axis=1) + _expected_decay(k, alpha, c_opt)
    if settings.budget is not None:
        steps = allocate_budget(k, alpha, settings.budget, c_lo, c_hi)
    else:
        # the regime is a diagnosis; only Static-Sufficient tasks skip the probe (docs/theory.md §1)
        steps = np.where(regime_idx == REGIMES.index("static_sufficient"), 0, c_opt).astype(np.int64)
    at_bound = np.where(c_opt <= c_lo, "c_min", np.where(c_opt >= c_hi, "c_max", "none"))
    cols = {
        "task_id": np.asarray(task_ids).astype(str),
        "regime": np.asarray(REGIMES)[regime_idx],
        "p_static_sufficient": probs[:, 0],
        "p_dynamic_critical": probs[:, 1],
        "p_noise_dominant": probs[:, 2],
        **_quantiles(l_int, "l_int"),
        **_quantiles(k, "k"),
        **_quantiles(alpha, "alpha"),
        "c_opt": c_opt,
        "probe_steps": steps,
        "risk_at_c_opt": risk,
        "at_bound": at_bound,
    }
    return pd.DataFrame(cols, columns=list(PLAN_COLUMNS))


def bound_warning(plan, settings: PlanSettings) -> str | None:
    """A warning when more than half of the tasks have ``c_opt`` at ``c_min`` or ``c_max``, with the reason.

    At c_min: one more step removes less expected risk than it costs (gamma*lambda) from the
    start, i.e. probing gains little against its cost. At c_max: the expected risk still falls
    faster than the cost at the longest probe allowed. Returns None below the threshold.
    """
    n = len(plan)
    if n == 0:
        return None
    lo, hi = int((plan["at_bound"] == "c_min").sum()), int((plan["at_bound"] == "c_max").sum())
    if lo + hi <= BOUND_SHARE_WARN * n:
        return None
    c_lo, c_hi = settings.int_range
    cost = f"gamma*lambda = {settings.cost:.4g}" if settings.resolved else "the cost per step"
    reasons = []
    if lo:
        reasons.append(f"{lo} at c_min = {c_lo}: one more probe step removes less expected risk than it costs ({cost}); "
                       "probing gains little here, lower --risk-weight/--step-cost to probe deeper or lower --min-depth")
    if hi:
        reasons.append(f"{hi} at c_max = {c_hi}: the expected risk still falls faster than {cost} at the longest probe; "
                       "raise --max-depth, or raise the cost if long probes are not worth it")
    return f"{lo + hi} of {n} tasks have c_opt at a probe limit ({'; '.join(reasons)})."


def compute_plan(model, tasks_df, settings: PlanSettings = PlanSettings()):
    """Plan every task of ``tasks_df`` with a fitted :class:`plan_probe.RiskModel`; returns (plan, draws).

    Relative defaults in ``settings`` are resolved against ``model.label_scale_``
    (``settings.resolve(model.label_scale_)`` gives the numbers used).
    """
    from plan_probe._tables import validate_tasks

    tasks, _ = validate_tasks(tasks_df, model.static_features_)
    settings = settings.resolve(model.label_scale_)
    settings.check_budget(len(tasks))
    draws = model.posterior_task_draws(tasks_df, n_draws=settings.n_draws, seed=settings.seed)
    plan = plan_from_draws(draws["task_id"], draws["l_int"], draws["k"], draws["alpha"], settings)
    return plan, draws
