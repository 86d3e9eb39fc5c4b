r"""The probe plan: regimes, budget-optimal probe lengths and portfolio budgets (DESIGN.md Sec. 1-2).

For each task, from posterior draws of :math:`(L_\mathrm{int}, K, \alpha)`:

* regime probabilities by the Sec. 1 rule applied per draw (:func:`theory.regime_probabilities`),
  ``regime`` the most probable;
* ``c_opt``: the integer minimiser over :math:`[c_\min, c_\max]` of the posterior expected objective
  :math:`\mathbb E[L_\mathrm{int} + K c^{-\alpha}] + \gamma\lambda c` (continuous solve of
  :math:`\mathbb E[\alpha K c^{-\alpha-1}] = \gamma\lambda`, then the better of floor and ceiling);
* ``probe_steps`` = ``c_opt`` for Dynamic-Critical tasks, 0 otherwise;
* with a budget B: :math:`c_i \in [c_\min, c_\max]`, :math:`\sum c_i \le B`, minimising
  :math:`\sum_i \mathbb E[L_i(c_i)]` by equal marginal gains
  :math:`\mathbb E[\alpha_i K_i c_i^{-\alpha_i-1}] = \mu`, with :math:`\mu` found by a bracketed
  (Illinois) search, integer rounding down and a greedy top-up of the leftover steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from planner._version import __version__

__all__ = ["PlanSettings", "PLAN_COLUMNS", "compute_plan", "plan_from_draws", "allocate_budget", "expected_gain_depth"]

PLAN_COLUMNS = (
    "task_id", "regime", "p_static_sufficient", "p_dynamic_critical", "p_noise_dominant",
    "l_int", "k", "alpha", "c_opt", "probe_steps", "risk_at_c_opt",
)


@dataclass(frozen=True)
class PlanSettings:
    """Planning settings (validated; round-trip through JSON with the plan-probe version).

    step_cost : lambda, what one probe step costs (GPU-seconds, dollars, ...).
    risk_weight : gamma, squared-score units of risk one unit of cost is worth.
    target_rmse : epsilon, the prediction RMSE the user needs (score units).
    min_depth, max_depth : c_min, c_max, the probe length limits in steps.
    budget : total probe steps over the portfolio, or None for per-task optima.
    seed : seed of the posterior draws.  n_draws : posterior draws per task.
    """

    step_cost: float = 1.0
    risk_weight: float = 0.01
    target_rmse: float = 3.0
    min_depth: float = 10.0
    max_depth: float = 1000.0
    budget: float | None = None
    seed: int = 0
    n_draws: int = 256

    def __post_init__(self):
        for name in ("step_cost", "risk_weight", "target_rmse", "min_depth", "max_depth"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
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
            raise ValueError(f"n_draws must be >= 1, but got {self.n_draws=}; pass a positive number.")

    @property
    def cost(self) -> float:
        """gamma * lambda: the risk-equivalent cost of one probe step."""
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
        return {"plan_probe_version": __version__, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "PlanSettings":
        d = dict(d)
        version = d.pop("plan_probe_version", None)
        if version != __version__:
            raise ValueError(f"plan settings must come from plan-probe {__version__}, but got version {version!r}; recreate them.")
        return cls(**d)


def expected_gain_depth(log_ak, ap1, log_mu, u_lo: float, u_hi: float, u0=None, *, tol: float = 1e-10, max_iter: int = 100):
    r"""Per task, the log depth u where :math:`\log \mathbb E[\alpha K e^{-(\alpha+1)u}] = \log\mu`, clipped.

    ``log_ak`` = log(alpha K) and ``ap1`` = alpha + 1, shape (n_tasks, n_draws); ``log_mu`` scalar or
    (n_tasks,). The left side :math:`\varphi(u)` is convex and decreasing, so Newton's method never
    overshoots once left of the root; a warm start ``u0`` right of the root lands left of it in one
    step. (A local solver rather than :func:`theory.depth_for_marginal_gain` for the warm start the
    budget search needs.)
    """
    n, d = log_ak.shape
    log_mu = np.broadcast_to(np.asarray(log_mu, dtype=float), (n,))
    log_d = np.log(d)

    def phi_and_slope(rows, u):
        z = log_ak[rows] - ap1[rows] * u[:, None]
        zmax = z.max(axis=1, keepdims=True)
        w = np.exp(z - zmax)
        sw = w.sum(axis=1)
        return np.log(sw) + zmax[:, 0] - log_d, (w * ap1[rows]).sum(axis=1) / sw

    u = np.full(n, u_lo) if u0 is None else np.clip(np.asarray(u0, dtype=float), u_lo, u_hi).copy()
    rows = np.arange(n)
    for _ in range(max_iter):
        if rows.size == 0:
            break
        phi, slope = phi_and_slope(rows, u[rows])
        step = (phi - log_mu[rows]) / slope
        new = np.clip(u[rows] + step, u_lo, u_hi)
        moved = np.abs(new - u[rows])
        u[rows] = new
        rows = rows[moved > tol]
    return u


def _expected_decay(k, alpha, c):
    """E over draws of K c^-alpha, for per-task depths c (n_tasks,)."""
    return (k * np.exp(-alpha * np.log(np.asarray(c, dtype=float))[:, None])).mean(axis=1)


def _regime_probabilities(l_int, log_ak, ap1, settings: "PlanSettings"):
    """Shares of draws per regime, the DESIGN.md Sec. 1 rule of :func:`theory.classify_regimes`
    written in log space on the precomputed log(alpha K) and alpha+1 (one pass, for the 2 s plan
    target); tests check it equals :func:`theory.regime_probabilities`."""
    noise = l_int >= settings.target_rmse**2
    # c* <= c_min  <=>  log(alpha K / cost) / (alpha + 1) <= log c_min
    static = ~noise & ((log_ak - math.log(settings.cost)) / ap1 <= math.log(settings.min_depth))
    return np.stack([static.mean(axis=1), (~noise & ~static).mean(axis=1), noise.mean(axis=1)], axis=1)


def allocate_budget(k, alpha, budget: float, c_min: int, c_max: int, *, max_iter: int = 100):
    """Integer probe lengths c_i in [c_min, c_max] with sum <= budget minimising sum E[L_i(c_i)].

    Equal marginal gains: find mu with sum_i c_i(mu) ~ budget (Illinois search on log mu, the
    sum is decreasing in mu), round down, then give the leftover steps one at a time to the tasks
    whose next step lowers E[L_i] most (exact greedy). Returns an int array.
    """
    n = k.shape[0]
    if budget < c_min * n:
        raise ValueError(f"budget must be at least c_min x n_tasks = {c_min * n}, but got budget={budget:g}; raise it.")
    if budget >= c_max * n:
        return np.full(n, c_max, dtype=np.int64)
    log_ak, ap1 = np.log(alpha) + np.log(k), alpha + 1.0
    u_lo, u_hi = math.log(c_min), math.log(c_max)

    def lmg(u):  # log expected marginal gain at log depth u, per task
        z = log_ak - ap1 * u
        zmax = z.max(axis=1)
        return np.log(np.exp(z - zmax[:, None]).sum(axis=1)) + zmax - np.log(z.shape[1])

    t_hi, t_lo = float(lmg(u_lo).max()), float(lmg(u_hi).min())  # every task at c_min / at c_max
    state = {"u": None}

    def total(t):
        state["u"] = expected_gain_depth(log_ak, ap1, t, u_lo, u_hi, state["u"])
        return np.floor(np.exp(state["u"]) + 1e-9).clip(c_min, c_max)

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


def plan_from_draws(task_ids, l_int, k, alpha, settings: PlanSettings):
    """The plan table (columns :data:`PLAN_COLUMNS`) from per-task posterior draws (n_tasks, n_draws)."""
    import pandas as pd

    from theory import REGIMES

    c_lo, c_hi = settings.int_range
    settings.check_budget(len(task_ids))
    log_ak, ap1 = np.log(alpha) + np.log(k), alpha + 1.0
    probs = _regime_probabilities(l_int, log_ak, ap1, settings)
    regime_idx = np.argmax(probs, axis=1)
    u = expected_gain_depth(log_ak, ap1, math.log(settings.cost), math.log(c_lo), math.log(c_hi))
    c_cont = np.exp(u)
    cand = np.stack([np.floor(c_cont), np.ceil(c_cont)]).clip(c_lo, c_hi)
    obj = np.stack([_expected_decay(k, alpha, c) + settings.cost * c for c in cand])
    c_opt = np.where(obj[1] < obj[0], cand[1], cand[0]).astype(np.int64)  # ties: the shorter probe
    risk = l_int.mean(axis=1) + _expected_decay(k, alpha, c_opt)
    if settings.budget is not None:
        steps = allocate_budget(k, alpha, settings.budget, c_lo, c_hi)
    else:
        steps = np.where(regime_idx == REGIMES.index("dynamic_critical"), c_opt, 0).astype(np.int64)
    return pd.DataFrame(
        {
            "task_id": np.asarray(task_ids).astype(str),
            "regime": np.asarray(REGIMES)[regime_idx],
            "p_static_sufficient": probs[:, 0],
            "p_dynamic_critical": probs[:, 1],
            "p_noise_dominant": probs[:, 2],
            "l_int": l_int.mean(axis=1),
            "k": k.mean(axis=1),
            "alpha": alpha.mean(axis=1),
            "c_opt": c_opt,
            "probe_steps": steps,
            "risk_at_c_opt": risk,
        },
        columns=list(PLAN_COLUMNS),
    )


def compute_plan(model, tasks_df, settings: PlanSettings = PlanSettings()):
    """Plan every task of ``tasks_df`` with a fitted :class:`planner.RiskModel`; returns (plan, draws)."""
    from planner._tables import validate_tasks

    tasks, _ = validate_tasks(tasks_df, model.static_features_)
    settings.check_budget(len(tasks))
    draws = model.posterior_task_draws(tasks_df, n_draws=settings.n_draws, seed=settings.seed)
    plan = plan_from_draws(draws["task_id"], draws["l_int"], draws["k"], draws["alpha"], settings)
    return plan, draws
