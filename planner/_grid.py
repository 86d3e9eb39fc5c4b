r"""Portfolio probe budgets on a grid of recorded depths (docs/theory.md §2, portfolio allocation).

A probe records its features at a fixed grid of depths :math:`d_1 < \dots < d_m` (e.g. 5, 10, 20,
50, 100), and a task can only be predicted from a depth that was recorded. Allocating a budget
:math:`B` of probe steps over :math:`N` tasks on that grid is a multiple-choice knapsack:

.. math:: \min_{j_1..j_N} \sum_i \mathbb E[L_i(d_{j_i})] \quad \text{s.t.} \quad \sum_i d_{j_i} \le B,

every task getting at least :math:`d_1`. :func:`allocate_on_grid` solves it greedily on each task's
lower convex hull of :math:`(d, \mathbb E[L_i(d)])` (the classic MCKP greedy: hull segments taken by
decreasing risk reduction per step while they fit), then spends what is left on the single
upgrades that lower the total most. Its total is within one segment's gain of the optimum of
the LP relaxation; the continuous allocator :func:`plan_probe._plan.allocate_budget` would instead
give depths between grid points that a prediction cannot use.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["expected_risk_on_grid", "allocate_on_grid"]


def expected_risk_on_grid(l_int, k, alpha, depths) -> np.ndarray:
    r"""Posterior expected :math:`L_i(d) = L_\mathrm{int} + K d^{-\alpha}` per task and grid depth.

    Parameters
    ----------
    l_int, k, alpha : ndarray (n_tasks, n_draws)
        Posterior draws (e.g. :meth:`plan_probe.RiskModel.posterior_task_draws`).
    depths : sequence of positive numbers (m,)

    Returns
    -------
    ndarray (n_tasks, m)
    """
    d = np.asarray(depths, dtype=float)
    if d.ndim != 1 or d.size == 0 or not np.all(d > 0):
        raise ValueError(f"depths must be a non-empty list of positive steps, but got {depths!r}; pass recorded depths.")
    l_int, k, alpha = (np.asarray(a, dtype=float) for a in (l_int, k, alpha))
    return l_int.mean(axis=1)[:, None] + np.einsum("td,tdm->tm", k, np.exp(-alpha[:, :, None] * np.log(d)[None, None, :])) / k.shape[1]


def _hull(cost: np.ndarray, risk: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of points (cost, risk) from the first point, risk decreasing."""
    hull = [0]
    for j in range(1, len(cost)):
        if risk[j] >= risk[hull[-1]]:
            continue  # no gain for more steps: never worth buying
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when the segment a->j is at least as steep (per step) as a->b
            if (risk[a] - risk[j]) * (cost[b] - cost[a]) >= (risk[a] - risk[b]) * (cost[j] - cost[a]):
                hull.pop()
            else:
                break
        hull.append(j)
    return hull


def allocate_on_grid(risk, depths, budget: float) -> np.ndarray:
    """Grid index per task minimising the total expected risk with total depth <= ``budget``.

    Parameters
    ----------
    risk : ndarray (n_tasks, m)
        Expected risk of each task at each grid depth (:func:`expected_risk_on_grid`).
    depths : sequence (m,), strictly increasing
    budget : float
        Total probe steps; at least ``depths[0] * n_tasks`` (every task gets the shallowest depth).

    Returns
    -------
    ndarray of int (n_tasks,)
        Index into ``depths`` of each task's depth.
    """
    r = np.asarray(risk, dtype=float)
    d = np.asarray(depths, dtype=float)
    if r.ndim != 2 or r.shape[1] != d.size:
        raise ValueError(f"risk must have one column per depth, but got shape {r.shape} for {d.size} depths; align them.")
    if np.any(np.diff(d) <= 0):
        raise ValueError(f"depths must be strictly increasing, but got {list(d)}; sort them and drop repeats.")
    if not np.all(np.isfinite(r)):
        raise ValueError("expected risks must be finite, but got NaN/inf; check the risk model's draws.")
    n = r.shape[0]
    if not np.isfinite(budget) or budget < d[0] * n:
        raise ValueError(
            f"budget must cover the shallowest depth for every task ({d[0]:g} x {n} = {d[0] * n:g} steps), "
            f"but got budget={budget:g}; raise the budget."
        )
    choice = np.zeros(n, dtype=np.int64)
    left = float(budget) - d[0] * n
    hulls = [_hull(d, r[i]) for i in range(n)]
    pos = np.zeros(n, dtype=np.int64)  # position of each task on its hull

    def segment(i):
        h = hulls[i]
        if pos[i] + 1 >= len(h):
            return None
        a, b = h[pos[i]], h[pos[i] + 1]
        return (r[i, a] - r[i, b]) / (d[b] - d[a]), b

    heap = []
    for i in range(n):
        seg = segment(i)
        if seg is not None:
            heap.append((-seg[0], i))
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        b = hulls[i][pos[i] + 1]
        step = d[b] - d[choice[i]]
        if step > left + 1e-9:
            continue  # this task's next hull step does not fit: it stays where it is
        left -= step
        choice[i] = b
        pos[i] += 1
        seg = segment(i)
        if seg is not None:
            heapq.heappush(heap, (-seg[0], i))
    # Spend the leftover on the single upgrades (any deeper grid depth that fits) with the largest gain.
    while left > 0:
        best, arg = 0.0, None
        for i in range(n):
            for j in range(choice[i] + 1, d.size):
                if d[j] - d[choice[i]] <= left + 1e-9 and r[i, choice[i]] - r[i, j] > best:
                    best, arg = r[i, choice[i]] - r[i, j], (i, j)
        if arg is None:
            break
        i, j = arg
        left -= d[j] - d[choice[i]]
        choice[i] = j
    return choice
