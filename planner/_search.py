"""Model selection and CV+ fold models of the shared predictor.

The predictor's intervals are CV+ intervals (Barber, Candès, Ramdas & Tibshirani 2021): K fold
models μ₋ₖ, each the training algorithm applied to the runs outside calibration fold k, and
residuals R_i of μ₋ₖ₍ᵢ₎ on the runs of fold k(i). The guarantee needs one fixed algorithm for every
fold model, so anything learnt from data (which learners to blend, their tree counts, a per-depth
residual scale) must either be repeated inside each fold or be learnt from runs that are in no
calibration fold. Two designs:

* **Selection split** (tuned predictors, several candidates): the runs are split once (grouped,
  seeded) into a selection part S (``SELECTION_SHARE``) and a calibration part C. The blend h
  (candidates, tree counts, weights) and the depth scale are chosen by grouped
  ``SELECTION_FOLDS``-fold CV on S only. Then CV+ over C with h fixed: fold model k is h refitted on
  S ∪ (C \ F_k). Given S, the runs of C and a new run are exchangeable and A(C') = h(S ∪ C') is one
  symmetric algorithm, so the CV+ guarantee holds with n = |C|. The final model is h refitted on
  every run. The fold models differ only by a tenth of C, so the intervals are not inflated by
  fold-to-fold model changes (re-selecting inside every fold made CV+ over-cover by 3-4 points
  at 80 % in our checks).
* **Nested** (one candidate, e.g. TuneAhead's fixed configuration): CV+ over all runs; when a
  depth scale is needed, fold k's scale comes from its own inner CV on D \ F_k, using one fit per
  unordered pair of folds {j, k} on D \ (F_j ∪ F_k) (shared by fold models j and k).

Fits are independent, so they run in a process pool (``n_jobs``); each fit is single-threaded and
deterministic and results are re-keyed, so the outcome does not depend on ``n_jobs``.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass

import numpy as np

from plan_probe._learners import Family, fit_family, group_folds

__all__ = ["Candidate", "SearchResult", "WorkerPool", "search", "select_blend", "parallel_map", "available_cpus",
           "SELECTION_SHARE", "SELECTION_FOLDS"]

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- process pool
_WORKER_DATA: dict = {}


def _init_worker(data: dict) -> None:
    # one copy of the shared arrays per worker process, not one per task
    _WORKER_DATA.clear()
    _WORKER_DATA.update(data)
    from threadpoolctl import threadpool_limits

    # tiny fits: a threaded BLAS call on a 30 x 30 matrix costs ~50 ms of thread start-up on a loaded
    # machine instead of ~0.1 ms; parallelism comes from the processes (the limit lasts for the worker)
    threadpool_limits(limits=1)


def _call_in_worker(fn, task, portable):
    result = fn(_WORKER_DATA, *task)
    return portable(result) if portable is not None else result


def _portable_fit(result):
    """LightGBM boosters cross the process boundary as their model text (parsed only if chosen)."""
    preds, member = result
    if member is not None and member.get("booster") is not None and not isinstance(member["booster"], str):
        member = {**member, "booster": member["booster"].model_to_string()}
    return preds, member


class WorkerPool:
    """A process pool (spawned, one copy of ``data`` per worker) or, with ``n_jobs <= 1``, in-process calls.

    ``map(fn, tasks)`` returns ``[fn(data, *task) for task in tasks]`` in task order; ``fn`` (and
    ``portable``, applied to each result inside a worker before it is sent back) must be module-level
    functions. Use as a context manager so that one pool serves several rounds of work.
    """

    def __init__(self, data: dict, n_jobs: int = 1):
        self.data = data
        self.n_jobs = int(n_jobs)
        self._pool = None

    def __enter__(self) -> "WorkerPool":
        from threadpoolctl import threadpool_limits

        self._limits = threadpool_limits(limits=1)  # in-process calls: same one-thread BLAS as the workers
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        self._limits.restore_original_limits()

    def map(self, fn, tasks: list, portable=None) -> list:
        if self.n_jobs <= 1 or len(tasks) <= 1:
            return [fn(self.data, *task) for task in tasks]
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("spawn")  # no fork: LightGBM/OpenMP and JAX threads do not survive it
            self._pool = ProcessPoolExecutor(max_workers=self.n_jobs, mp_context=ctx, initializer=_init_worker,
                                             initargs=(self.data,))
        futures = [self._pool.submit(_call_in_worker, fn, task, portable) for task in tasks]
        return [f.result() for f in futures]


def parallel_map(fn, tasks: list, data: dict, n_jobs: int = 1, portable=None) -> list:
    """``[fn(data, *task) for task in tasks]`` in one :class:`WorkerPool` (results in task order)."""
    with WorkerPool(data, n_jobs) as pool:
        return pool.map(fn, tasks, portable)


# ------------------------------------------------------------------------------------- search
#: Share of the runs that select the blend (and the depth scale) in the selection-split design.
SELECTION_SHARE = 0.5
#: Folds of the grouped CV that selects the blend on the selection part.
SELECTION_FOLDS = 5


@dataclass(frozen=True)
class Candidate:
    family: Family
    scope: str  # "all" rows, or only the "target"-depth rows


@dataclass
class SearchResult:
    """Outcome of :func:`search`.

    ``blend``: ``[(candidate index, trees, weight)]``, the same for the final model and every fold
    model; ``members``: per blend entry, the final fitted members (one per seed) as JSON-able dicts;
    ``fold_members[k]``: the same for fold model k. ``calib_folds``: the CV+ fold of every row (-1:
    not a calibration row, i.e. in the selection part); ``fold_pred``: μ₋ₖ₍ᵢ₎(x_i) on calibration
    rows (NaN elsewhere and off the blend's scope). ``scale_pred[k]``: predictions whose residuals
    give fold k's interval scale (rows learnt without fold k; NaN elsewhere). ``oof_pred``: the fold
    predictions on calibration rows and the selection CV's out-of-fold blend on selection rows.
    ``cv_scores``: CV RMSE of every candidate and tree count.
    """

    blend: list
    members: list
    fold_members: list
    calib_folds: np.ndarray
    fold_pred: np.ndarray
    scale_pred: list
    oof_pred: np.ndarray
    cv_scores: dict
    design: str


def _fit_task(data: dict, cand: Candidate, train_rows: np.ndarray, predict_rows: list, seed: int, keep: bool):
    X, y, groups = data["X"], data["y"], data["groups"]
    preds, member = fit_family(cand.family, data["params"], X[train_rows], y[train_rows], groups[train_rows],
                               [X[r] for r in predict_rows], seed, keep, data.get("names"))
    if member is not None:
        member["seed"] = int(seed)
    return preds, member


def _run_fits(jobs: dict, pool: WorkerPool) -> dict:
    """Run ``{key: (candidate, train_rows, [predict_rows], seed, keep)}``; results by key."""
    keys = list(jobs)
    # longest fits first keeps every worker busy to the end; results are re-keyed, so order is free
    keys.sort(key=lambda k: -max(jobs[k][0].family.path) * len(jobs[k][1]))
    return dict(zip(keys, pool.map(_fit_task, [jobs[k] for k in keys], _portable_fit)))


def _rmse(y, p) -> float:
    return float(np.sqrt(np.mean((y - p) ** 2)))


def select_blend(oof: dict, cands: list, y: np.ndarray, mask: np.ndarray, n_top: int):
    """Tree count per candidate (min inner-CV RMSE on ``mask``; ties: fewer trees), then weights.

    ``oof[c][t]``: out-of-fold predictions of candidate index c with t trees (NaN off its rows).
    With ``n_top == 1`` the best candidate alone; otherwise non-negative least squares of y on the
    candidates' predictions, normalised to sum to 1 (a convex "super learner" blend, van der Laan
    et al. 2007), keeping the ``n_top`` largest weights and refitting. Returns
    ``([(c, t, w)], scores)`` with ``scores[(c, t)]`` the RMSE.
    """
    from scipy.optimize import nnls

    scores, best = {}, {}
    for c in range(len(cands)):
        for t in sorted(oof[c]):
            p = oof[c][t][mask]
            scores[(c, t)] = _rmse(y[mask], p) if np.all(np.isfinite(p)) else float("inf")
            if c not in best or scores[(c, t)] < scores[(c, best[c])]:
                best[c] = t
    order = sorted(best, key=lambda c: (scores[(c, best[c])], c))
    if n_top <= 1 or len(order) == 1 or not np.isfinite(scores[(order[0], best[order[0]])]):
        return [(order[0], best[order[0]], 1.0)], scores
    usable = [c for c in order if np.isfinite(scores[(c, best[c])])]

    def weights(chosen):
        P = np.column_stack([oof[c][best[c]][mask] for c in chosen])
        w, _ = nnls(P, y[mask])
        return w

    w = weights(usable)
    if w.sum() <= 0:
        return [(order[0], best[order[0]], 1.0)], scores
    kept = [c for _, c in sorted(zip(-w, usable), key=lambda z: (z[0], usable.index(z[1])))][:n_top]
    kept = [c for c in kept if w[usable.index(c)] > 0]
    kept = sorted(kept, key=usable.index)
    w = weights(kept)
    if w.sum() <= 0:
        return [(order[0], best[order[0]], 1.0)], scores
    w = w / w.sum()
    return [(c, best[c], float(wi)) for c, wi in zip(kept, w) if wi > 0], scores


def _cv_oof(cands, scope_rows, rows, folds, results, key, n) -> dict:
    """Out-of-fold predictions ``oof[c][t]`` over ``rows`` from fits keyed ``key(c, k)``."""
    oof = {c: {t: np.full(n, np.nan) for t in cands[c].family.path} for c in range(len(cands))}
    for c, cand in enumerate(cands):
        for k in np.unique(folds[rows]):
            idx = np.flatnonzero(rows & (folds == k) & scope_rows[cand.scope])
            for t, p in results[key(c, int(k))][0][0].items():
                oof[c][t][idx] = p
    return oof


def _blend_fits(blend, cands, scope_rows, train_sets: dict, predict_sets: dict, seeds, pool):
    """Fit every blend entry (every seed; ridge/mean once) on each named training set.

    Returns ``(members[name] = [[member per seed] per entry], preds[name] = blended predictions on
    predict_sets[name], NaN off the blend's scope)``.
    """
    jobs = {}
    for name, train in train_sets.items():
        for e, (c, t, _) in enumerate(blend):
            rows = scope_rows[cands[c].scope]
            for s in seeds if cands[c].family.kind not in ("mean", "ridge") else seeds[:1]:
                pred_rows = [np.flatnonzero(predict_sets[name] & rows)] if name in predict_sets else []
                jobs[(name, e, s)] = (cands[c], np.flatnonzero(train & rows), pred_rows, s, True)
    results = _run_fits(jobs, pool)
    n = len(pool.data["y"])
    members, preds = {}, {}
    for name in train_sets:
        members[name] = []
        total = np.zeros(n)
        ok = predict_sets.get(name, np.zeros(n, dtype=bool)).copy()
        for e, (c, t, w) in enumerate(blend):
            runs = [results[key] for key in sorted(k for k in results if k[:2] == (name, e))]
            members[name].append([_with_trees(r[1], t) for r in runs])
            if name in predict_sets:
                rows = scope_rows[cands[c].scope]
                idx = np.flatnonzero(predict_sets[name] & rows)
                total[idx] += w * np.mean([r[0][0][t] for r in runs], axis=0)
                ok &= rows
        if name in predict_sets:
            preds[name] = np.where(ok, total, np.nan)
    return members, preds


def search(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    cands: list,
    scope_rows: dict,
    scored: np.ndarray,
    params: dict,
    *,
    seed: int,
    n_top: int,
    n_seeds: int,
    calibration_folds: int,
    scale_fits: bool,
    n_jobs: int = 1,
    names=None,
) -> SearchResult:
    """Choose the blend and fit the final and CV+ fold models (see the module docstring).

    ``scope_rows[scope]``: rows a candidate of that scope trains and predicts on; ``scored``: rows
    on which candidates are compared and residuals calibrate (the target depth, or all rows).
    ``scale_fits``: also compute ``scale_pred`` (costs one fit per pair of folds without ``tune``).
    """
    n = len(y)
    data = {"X": X, "y": y, "groups": groups, "params": params, "names": names}
    seeds = [seed + s for s in range(int(n_seeds))]
    with WorkerPool(data, n_jobs) as pool:
        if len(cands) > 1:
            return _split_search(pool, cands, scope_rows, scored, seed, n_top, seeds, calibration_folds)
        return _nested_single(pool, cands, scope_rows, scored, seed, seeds, calibration_folds, scale_fits)


def _selection_split(groups: np.ndarray, scored: np.ndarray, seed: int) -> np.ndarray:
    """Rows of the selection part: a seeded share of the runs (grouped); at least 2 runs on each side."""
    uniq = np.unique(groups[scored])
    if len(uniq) < 4:
        raise ValueError(
            f"a tuned predictor needs at least 4 runs (2 to select the blend on, 2 to calibrate), but got "
            f"{len(uniq)}; pass --no-tune or add runs."
        )
    n_sel = min(max(int(round(SELECTION_SHARE * len(uniq))), 2), len(uniq) - 2)
    chosen = uniq[np.random.default_rng([seed, 7]).permutation(len(uniq))[:n_sel]]
    return np.isin(groups, chosen)


def _split_search(pool, cands, scope_rows, scored, seed, n_top, seeds, calibration_folds) -> SearchResult:
    y, groups = pool.data["y"], pool.data["groups"]
    n = len(y)
    sel = _selection_split(groups, scored, seed)
    k_sel = min(SELECTION_FOLDS, len(np.unique(groups[sel])))
    sel_folds = np.full(n, -1)
    sel_folds[sel] = group_folds(groups[sel], k_sel, seed)
    jobs = {}
    for c, cand in enumerate(cands):
        rows = scope_rows[cand.scope]
        for k in range(k_sel):
            jobs[(c, k)] = (cand, np.flatnonzero(sel & (sel_folds != k) & rows),
                            [np.flatnonzero(sel & (sel_folds == k) & rows)], seed, False)
    results = _run_fits(jobs, pool)
    oof = _cv_oof(cands, scope_rows, sel, sel_folds, results, lambda c, k: (c, k), n)
    blend, scores = select_blend(oof, cands, y, scored & sel, n_top)
    sel_oof = sum(w * oof[c][t] for c, t, w in blend)

    cal = ~sel
    k_cal = min(calibration_folds, len(np.unique(groups[cal & scored])))
    calib_folds = np.full(n, -1)
    calib_folds[cal] = group_folds(groups[cal], k_cal, seed + 1)
    members, fold_pred = _fit_on_folds(blend, cands, scope_rows, calib_folds, k_cal, seeds, pool)
    oof_pred = np.where(sel, sel_oof, fold_pred)
    return SearchResult(blend, members["final"], [members[k] for k in range(k_cal)], calib_folds, fold_pred,
                        [sel_oof] * k_cal, oof_pred, _labels(cands, scores), "selection split")


def _fit_on_folds(blend, cands, scope_rows, folds, n_folds, seeds, pool):
    """The blend fitted on every row ("final") and once per fold without it; fold k's rows predicted by fold k's fit.

    Rows with fold label -1 (outside every fold) keep a NaN fold prediction.
    """
    n = len(folds)
    train_sets = {"final": np.ones(n, dtype=bool)}
    predict_sets = {}
    for k in range(n_folds):
        train_sets[k] = folds != k
        predict_sets[k] = folds == k
    members, preds = _blend_fits(blend, cands, scope_rows, train_sets, predict_sets, seeds, pool)
    fold_pred = np.full(n, np.nan)
    for k in range(n_folds):
        fold_pred[folds == k] = preds[k][folds == k]
    return members, fold_pred


def _nested_single(pool, cands, scope_rows, scored, seed, seeds, calibration_folds, scale_fits):
    """One candidate: plain CV+ over every run; pair fits only for per-fold interval scales."""
    y, groups = pool.data["y"], pool.data["groups"]
    n = len(y)
    K = int(calibration_folds)
    folds = group_folds(groups, K, seed)
    cand = cands[0]
    rows = scope_rows[cand.scope]
    blend = [(0, max(cand.family.path), 1.0)]
    members, fold_pred = _fit_on_folds(blend, cands, scope_rows, folds, K, seeds, pool)
    scale_pred = []
    if scale_fits and K >= 3:
        jobs = {}
        for j, k in itertools.combinations(range(K), 2):
            out = (folds == j) | (folds == k)
            jobs[(j, k)] = (cand, np.flatnonzero(~out & rows), [np.flatnonzero(out & rows)], seed, False)
        results = _run_fits(jobs, pool)
        t = blend[0][1]
        for k in range(K):
            inner = np.full(n, np.nan)
            for j in range(K):
                if j != k:
                    pair = (min(j, k), max(j, k))
                    idx = np.flatnonzero(((folds == pair[0]) | (folds == pair[1])) & rows)
                    keep = folds[idx] == j
                    inner[idx[keep]] = results[pair][0][0][t][keep]
            scale_pred.append(inner)
    scores = {(0, blend[0][1]): _rmse(y[scored & np.isfinite(fold_pred)], fold_pred[scored & np.isfinite(fold_pred)])}
    return SearchResult(blend, members["final"], [members[k] for k in range(K)], folds, fold_pred, scale_pred,
                        fold_pred.copy(), _labels(cands, scores), "cv+")


def _labels(cands, scores) -> dict:
    return {cands[c].family.label(cands[c].scope, t): s for (c, t), s in scores.items()}


def _with_trees(member: dict, trees: int) -> dict:
    return {**member, "num_iteration": int(trees) if member.get("booster") is not None else None}
