r"""Probe-budget policies on the recorded depth grid, and the hindsight oracle.

Every policy returns one allocation (probe steps) per held-out task; a task is then predicted at
the deepest recorded depth within its allocation (the static-only predictor below the shallowest
depth). With a budget :math:`B` (``budget_share`` × ``fixed_depth`` × tasks):

* ``planned``: the tool's risk model, restricted to the grid (:func:`plan_probe._grid.allocate_on_grid`
  on the posterior expected :math:`L_i(d)` of each held-out task, from its static features only);
* ``planned_decision`` (with a threshold τ): the same budget allocated on the grid by the posterior
  expected *decision* loss (equal launch and kill costs: the probability of landing on the wrong
  side of τ; :func:`plan_probe.theory.expected_decision_loss`, prior from the static-only predictor);
* ``uniform``: every task the deepest grid depth :math:`d` with :math:`d \cdot N \le B`;
* ``fixed_min``: every task the shallowest grid depth;
* ``fixed``: every task ``fixed_depth`` (TuneAhead's protocol; over budget by design);
* ``static_only``: no probe;
* ``random``: a random grid allocation with the same floor and (nearly) the same total;
* ``uniform_fill``: ``uniform``, then the leftover budget lifts randomly chosen tasks to the next
  grid depth (as even as the grid allows at the same total as ``planned``: the fairest rival that
  uses no task information; on a coarse grid ``uniform`` alone can leave much of the budget unused);
* ``oracle``: the allocation minimising the realised squared error within the budget (exact dynamic
  programme over the grid; a bound, not a policy).
"""

from __future__ import annotations

import math
from functools import reduce

import numpy as np

__all__ = ["uniform_depth", "uniform_fill_allocation", "random_allocation", "oracle_allocation", "POLICIES", "BOUND_POLICIES"]

#: Policy names in report order (``planned_decision`` only with a threshold).
POLICIES = ("planned", "planned_decision", "uniform", "uniform_fill", "fixed_min", "fixed", "static_only", "random", "oracle")
#: Not policies a user could run: bounds, reported for scale.
BOUND_POLICIES = ("oracle",)


def uniform_depth(grid, budget: float, n_tasks: int) -> float:
    """The deepest grid depth that every task can get within the budget."""
    fits = [d for d in grid if d * n_tasks <= budget + 1e-9]
    return float(max(fits)) if fits else float(grid[0])


def uniform_fill_allocation(grid, budget: float, n_tasks: int, rng: np.random.Generator) -> np.ndarray:
    """Every task the uniform depth; then tasks in random order move up one grid depth while it fits."""
    grid = np.asarray(grid, dtype=float)
    base = uniform_depth(grid, budget, n_tasks)
    out = np.full(n_tasks, base)
    pos = int(np.searchsorted(grid, base))
    if pos + 1 >= grid.size:
        return out
    step = grid[pos + 1] - base
    left = budget - base * n_tasks
    for i in rng.permutation(n_tasks):
        if step > left + 1e-9:
            break
        out[i] = grid[pos + 1]
        left -= step
    return out


def random_allocation(grid, budget: float, n_tasks: int, rng: np.random.Generator) -> np.ndarray:
    """A random grid allocation: tasks in random order each draw a depth uniformly among those that
    still leave the shallowest depth for every later task; the leftover goes to random upgrades."""
    grid = np.asarray(grid, dtype=float)
    out = np.full(n_tasks, grid[0])
    left = budget - grid[0] * n_tasks
    for i in rng.permutation(n_tasks):
        options = grid[grid - grid[0] <= left + 1e-9]
        out[i] = rng.choice(options)
        left -= out[i] - grid[0]
    while True:  # random single upgrades while any fits
        pos = np.searchsorted(grid, out)
        nxt = np.where(pos + 1 < grid.size, grid[np.minimum(pos + 1, grid.size - 1)], np.inf)
        can = np.flatnonzero(nxt - out <= left + 1e-9)
        if can.size == 0:
            return out
        i = rng.choice(can)
        left -= nxt[i] - out[i]
        out[i] = nxt[i]


def oracle_allocation(loss, grid, budget: float, *, max_units: int = 200_000) -> np.ndarray:
    """Grid depth per task minimising ``sum_i loss[i, j_i]`` with ``sum_i grid[j_i] <= budget``.

    Exact dynamic programme in units of the greatest common divisor of the (integer) grid depths;
    when that table would exceed ``max_units`` budget units, the depths are rounded to a coarser
    unit (the answer is then within that rounding of exact).
    """
    loss = np.asarray(loss, dtype=float)
    grid = np.asarray(grid, dtype=float)
    n, m = loss.shape
    max_units = max(100, min(max_units, 50_000_000 // max(n, 1)))  # the choice table is n x units bytes
    ints = np.round(grid).astype(np.int64)
    unit = reduce(math.gcd, [int(x) for x in ints]) if np.allclose(grid, ints) else 1
    units = max(1, int(math.ceil(budget / unit / max_units)))
    unit *= units
    cost = np.ceil(grid / unit - 1e-9).astype(np.int64)
    cap = int(math.floor(budget / unit + 1e-9))
    if cost[0] * n > cap:
        return np.full(n, grid[0])
    inf = np.inf
    best = np.full(cap + 1, inf)
    best[0] = 0.0
    pick = np.zeros((n, cap + 1), dtype=np.int8)
    for i in range(n):
        new = np.full(cap + 1, inf)
        for j in range(m):
            shifted = np.full(cap + 1, inf)
            if cost[j] <= cap:
                shifted[cost[j]:] = best[: cap + 1 - cost[j]] + loss[i, j]
            better = shifted < new
            new[better] = shifted[better]
            pick[i, better] = j
        best = new
    b = int(np.argmin(best))
    out = np.empty(n)
    for i in range(n - 1, -1, -1):
        j = int(pick[i, b])
        out[i] = grid[j]
        b -= cost[j]
    return out
