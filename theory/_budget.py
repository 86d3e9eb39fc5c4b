"""Budget-optimal probe length (Thm. 6.1 of the risk-decomposition paper)."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from plan_probe.theory._validate import as_float_array, check_depth_range, check_nonnegative, check_positive

__all__ = [
    "risk_curve",
    "probe_objective",
    "optimal_probe_length",
    "expected_optimal_depth",
    "depth_for_marginal_gain",
    "log_expected_marginal_gain",
    "efficiency_frontier",
]


def risk_curve(c, l_int, k, alpha):
    r"""Risk after a probe of ``c`` steps under the decay envelope.

    .. math:: L(c) = L_\mathrm{int} + K c^{-\alpha}

    (Prop. 4.1 with the power-law envelope of Prop. 5.1, risk-decomposition paper, eq. for
    :math:`V_\mathrm{opt}(c) \approx K c^{-\alpha}`.) Arrays broadcast.
    """
    c = check_positive("c", c)
    l_int = check_nonnegative("l_int", l_int)
    k = check_nonnegative("k", k)
    alpha = check_positive("alpha", alpha)
    return l_int + k * c ** (-alpha)


def probe_objective(c, l_int, k, alpha, cost):
    r"""Budgeted objective of a probe of length ``c`` (Thm. 6.1).

    .. math:: J(c) = L_\mathrm{int} + K c^{-\alpha} + \gamma\lambda\, c

    ``cost`` is :math:`\gamma\lambda`, the risk-equivalent cost of one probe step (the fixed cost
    :math:`\gamma C_s` is a constant and is left out). Arrays broadcast.
    """
    cost = check_positive("cost", cost)
    return risk_curve(c, l_int, k, alpha) + cost * np.asarray(c, dtype=float)


def optimal_probe_length(k, alpha, cost, c_min: float | None = None, c_max: float | None = None):
    r"""Budget-optimal probe length, the stationary point of :math:`J(c)` (Thm. 6.1).

    .. math:: c^\ast = \left(\frac{\alpha K}{\gamma\lambda}\right)^{1/(\alpha+1)}

    from :math:`|\mathrm dV_\mathrm{opt}/\mathrm dc| = \alpha K c^{-\alpha-1} = \gamma\lambda`.
    It does not depend on :math:`L_\mathrm{int}`; :math:`J` is convex in ``c`` so :math:`c^\ast`
    is unique, and clipping to ``[c_min, c_max]`` (when given) gives the constrained optimum.
    Arrays broadcast.
    """
    k = check_positive("k", k)
    alpha = check_positive("alpha", alpha)
    cost = check_positive("cost", cost)
    c_star = np.exp((np.log(alpha) + np.log(k) - np.log(cost)) / (alpha + 1.0))
    if c_min is not None or c_max is not None:
        lo, hi = check_depth_range(c_min if c_min is not None else 1e-300, c_max if c_max is not None else np.inf)
        c_star = np.clip(c_star, lo, hi)
    return c_star


def log_expected_marginal_gain(k, alpha, c):
    r"""Per task, the log posterior expected marginal gain of one more probe step at depth ``c``.

    .. math:: \log \mathbb E\left[\alpha K c^{-(\alpha+1)}\right]
              = \log \mathbb E\left[-\mathrm d V_\mathrm{opt}/\mathrm dc\right]

    (the slope of the decay envelope, Prop. 5.1 / Thm. 6.1), computed in log space over the draws
    (rows are tasks, columns draws); ``c`` is a scalar or one depth per task.
    """
    k = np.atleast_2d(check_positive("k", k))
    alpha = np.atleast_2d(check_positive("alpha", alpha))
    log_c = np.broadcast_to(np.log(check_positive("c", c)), (k.shape[0],))
    return logsumexp(np.log(alpha) + np.log(k) - (alpha + 1.0) * log_c[:, None], axis=1) - np.log(k.shape[1])


def depth_for_marginal_gain(k, alpha, target, c_min: float, c_max: float, *, c_start=None, max_iter: int = 60):
    r"""Depth where the posterior expected marginal gain equals ``target``, per task.

    Solves, for each row (task) of the draw arrays,

    .. math:: \mathbb E\left[\alpha K c^{-(\alpha+1)}\right] = \mu

    clipped to ``[c_min, c_max]``. With :math:`\mu = \gamma\lambda` this is the minimiser of the
    posterior expected objective :math:`\mathbb E[L_\mathrm{int} + K c^{-\alpha}] + \gamma\lambda c`
    (Thm. 6.1 averaged over the posterior); with a common :math:`\mu` across tasks it is the
    equal-marginal-gain allocation of a portfolio budget.

    In :math:`u = \log c`, :math:`\varphi(u) = \log \mathbb E[\exp(\log\alpha K - (\alpha+1)u)]` is
    convex and decreasing, so Newton's method started left of the root converges monotonically, and
    a start right of the root lands left of it after one step: any ``c_start`` (a warm start, e.g.
    the previous solution of a budget search over ``target``) converges.

    Parameters
    ----------
    k, alpha : array_like, shape (n_tasks, n_draws) or (n_draws,)
        Posterior draws.
    target : float or array_like, shape (n_tasks,)
        The marginal gain :math:`\mu` (> 0).
    c_start : array_like, shape (n_tasks,), optional
        Starting depths (default ``c_min``).
    """
    k = np.atleast_2d(check_positive("k", k))
    alpha = np.atleast_2d(check_positive("alpha", alpha))
    target = check_positive("target", target)
    lo, hi = check_depth_range(c_min, c_max)
    log_t = np.broadcast_to(np.log(target), (k.shape[0],)).astype(float)
    log_ak = np.log(alpha) + np.log(k)
    n_draws = k.shape[1]

    def phi(u, rows=slice(None)):
        return logsumexp(log_ak[rows] - (alpha[rows] + 1.0) * u[:, None], axis=1) - np.log(n_draws)

    u_lo, u_hi = np.log(lo), np.log(hi)
    at_lo = phi(np.full(k.shape[0], u_lo)) <= log_t  # marginal gain already below the target at c_min
    at_hi = phi(np.full(k.shape[0], u_hi)) >= log_t  # still above the target at c_max
    active = ~(at_lo | at_hi)
    u = np.full(k.shape[0], u_lo) if c_start is None else np.clip(np.log(np.asarray(c_start, dtype=float)), u_lo, u_hi)
    for _ in range(max_iter):
        if not active.any():
            break
        ua = u[active]
        z = log_ak[active] - (alpha[active] + 1.0) * ua[:, None]
        w = np.exp(z - z.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        slope = (w * (alpha[active] + 1.0)).sum(axis=1)  # -phi'(u)
        step = (phi(ua, active) - log_t[active]) / slope
        u[active] = np.clip(ua + step, u_lo, u_hi)
        still = np.abs(step) > 1e-12
        idx = np.flatnonzero(active)
        active[idx[~still]] = False
    u = np.where(at_lo, u_lo, np.where(at_hi, u_hi, u))
    return np.exp(u)


def expected_optimal_depth(k, alpha, cost, c_min: float, c_max: float, *, integer: bool = False):
    r"""Minimiser over ``[c_min, c_max]`` of the posterior expected objective.

    .. math:: c_\mathrm{opt} = \arg\min_c\; \mathbb E[L_\mathrm{int} + K c^{-\alpha}] + \gamma\lambda c

    Not the plug-in of posterior means: the expectation is over the draws (rows are tasks,
    columns draws). See :func:`depth_for_marginal_gain`. With ``integer=True`` the result is the
    better of the floor and ceiling of the continuous minimiser within ``[ceil(c_min), floor(c_max)]``
    (the objective is convex, so one of them is the integer optimum; ties go to the shorter probe).
    """
    c = depth_for_marginal_gain(k, alpha, cost, c_min, c_max)
    if not integer:
        return c
    k, alpha = np.atleast_2d(k), np.atleast_2d(alpha)
    lo, hi = np.ceil(c_min), np.floor(c_max)
    cand = np.stack([np.floor(c), np.ceil(c)]).clip(lo, hi)
    obj = [(k * cand_i[:, None] ** -alpha).mean(axis=1) + cost * cand_i for cand_i in cand]
    return np.where(obj[1] < obj[0], cand[1], cand[0]).astype(np.int64)


def efficiency_frontier(c, l_int, k, alpha):
    r"""The risk-cost frontier of probing: for each depth, its probe cost and its risk.

    .. math:: \{(c,\; L_\mathrm{int} + K c^{-\alpha})\}

    Every point is Pareto-efficient because :math:`L(c)` is strictly decreasing (Prop. 4.1's
    :math:`V_\mathrm{opt}` is non-increasing); the budget-optimal :math:`c^\ast` is the point where
    the frontier's slope equals :math:`-\gamma\lambda`. Returns ``(cost_steps, risk)`` arrays.
    """
    c = as_float_array("c", c)
    return c, risk_curve(c, l_int, k, alpha)
