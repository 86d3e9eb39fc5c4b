"""Risk observations from a predictor's out-of-fold residuals (docs/theory.md §2-3).

A depth-aware predictor fitted on a run x depth meta-dataset predicts each run's final score at
every recorded probe depth. Its out-of-fold residuals e(c) = label - prediction(c) are the risk
the user bears when deciding after a probe of c steps. Predictions of one run at several depths
come from nested information sets, so the run's residuals form one *nested residual vector*: the
rows share the run's ``run_id`` and keep the signed ``residual``; the risk model turns them into
the deepest residual plus independent increments (:mod:`plan_probe._risk_likelihood`), instead of
counting k correlated squares as k independent observations.
"""

from __future__ import annotations

import numpy as np

__all__ = ["residual_observations"]


def residual_observations(meta, oof_pred, *, label: str = "label", task_col: str = "task_id",
                          run_col: str | None = "run_id", depth_col: str = "depth", static_features=None):
    """Turn out-of-fold predictions at several depths into nested residual risk observations.

    Parameters
    ----------
    meta : pandas.DataFrame
        One row per run x depth: ``task_col``, ``run_col``, ``depth_col``, ``label`` and the
        task's ``static_*`` features (constant within a task).
    oof_pred : array_like, shape (len(meta),)
        Out-of-fold predictions of ``label`` for the rows of ``meta``, in row order. They must be
        out-of-fold at the run level (every depth of a run held out together, e.g. folds grouped
        by run or task), or the residuals understate the risk.
    label, task_col, run_col, depth_col : str
        Column names. ``run_col=None`` makes every row its own run (an independent dof-1
        observation): only right when each run is predicted at one depth.
    static_features : list of str, optional
        The static columns to carry (default: every ``static_*`` column of ``meta``).

    Returns
    -------
    pandas.DataFrame
        The risk-observation table of docs/theory.md §3 with the nested-residual columns:
        ``task_id`` (str), ``run_id`` (str), ``depth`` (int), ``residual`` (label - prediction),
        ``risk_obs`` (= residual**2), ``dof`` (= 1.0), then the static features. Rows keep the order
        of ``meta``. Feed it to ``RiskModel.fit`` or ``plan-probe fit-risk``.

    Raises
    ------
    ValueError
        On a length mismatch, missing columns, non-finite labels or predictions, or a run
        repeated at one depth.
    """
    import pandas as pd

    pred = np.asarray(oof_pred, dtype=float).reshape(-1)
    if pred.shape[0] != len(meta):
        raise ValueError(f"oof_pred must have one prediction per meta row, but got {pred.shape[0]} for {len(meta)} rows; "
                         "pass the predictor's out-of-fold predictions in meta's row order.")
    need = [c for c in (task_col, depth_col, label, run_col) if c is not None and c not in meta.columns]
    if need:
        raise ValueError(f"meta must have columns {need}, but they are missing; pass the run x depth meta-dataset "
                         "(or run_col=None when every run has one depth).")
    truth = pd.to_numeric(meta[label], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(truth) | ~np.isfinite(pred)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"labels and predictions must be finite, but row {i + 1} has label={truth[i]!r}, "
                         f"prediction={pred[i]!r}; drop or fix that row.")
    statics = list(static_features) if static_features is not None else [c for c in meta.columns if str(c).startswith("static_")]
    residual = truth - pred
    run = meta[run_col].astype(str).to_numpy() if run_col is not None else np.arange(len(meta)).astype(str)
    obs = pd.DataFrame({
        "task_id": meta[task_col].astype(str).to_numpy(),
        "run_id": run,
        "depth": pd.to_numeric(meta[depth_col]).astype(int).to_numpy(),
        "residual": residual,
        "risk_obs": residual**2,
        "dof": 1.0,
    })
    if obs.duplicated(["run_id", "depth"]).any():
        row = obs.loc[obs.duplicated(["run_id", "depth"])].iloc[0]
        raise ValueError(f"each run must appear once per depth, but run {row['run_id']!r} has depth {row['depth']} twice; "
                         "deduplicate meta or pass the right run_col.")
    for col in statics:
        obs[col] = meta[col].to_numpy(dtype=float)
    return obs
