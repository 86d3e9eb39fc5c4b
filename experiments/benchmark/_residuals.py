"""Risk observations from a predictor's out-of-fold residuals (docs/theory.md §2, "Which risk to observe").

One row per training row (run x depth): ``task_id``, ``depth``, ``risk_obs`` = e², ``dof`` = 1, the
signed residual ``residual`` = y − ŷ_oof and the ``run_id`` that groups one run's residuals at its
nested depths. With ``run_id`` present, a risk model with the nested-residual likelihood (issue
#14) treats each run's rows as one residual vector with Cov(e(c_i), e(c_j)) = L(max(c_i, c_j));
an older risk model ignores the extra columns and counts them as independent dof-1 observations.
"""

from __future__ import annotations

import numpy as np

__all__ = ["residual_risk_observations"]


def residual_risk_observations(meta, oof_pred, *, label: str = "label", task_col: str = "task_id",
                               run_col: str = "run_id", static_cols=None):
    """Signed out-of-fold residuals as risk observations, with the tasks' static features.

    Parameters
    ----------
    meta : pandas.DataFrame
        Rows run x depth with ``depth``, the label, the task and run columns.
    oof_pred : array (n_rows,)
        Out-of-fold predictions of those rows (grouped by task, so a task never predicts itself).
    static_cols : list of str, optional
        Task-level features for the risk model (default: the ``static_*`` columns); they are averaged
        within a task and written as ``static_*`` columns (a name without that prefix gets it).
    """
    import pandas as pd

    statics = [c for c in meta.columns if str(c).startswith("static_")] if static_cols is None else list(static_cols)
    resid = meta[label].to_numpy(dtype=float) - np.asarray(oof_pred, dtype=float)
    obs = pd.DataFrame({
        "task_id": meta[task_col].astype(str).to_numpy(),
        "depth": meta["depth"].astype(int).to_numpy(),
        "risk_obs": resid**2,
        "dof": 1.0,
        "run_id": meta[run_col].astype(str).to_numpy(),
        "residual": resid,
    })
    if statics:
        means = meta[statics].astype(float).groupby(obs["task_id"].to_numpy()).transform("mean")
        for col in statics:
            obs[col if col.startswith("static_") else f"static_{col}"] = means[col].to_numpy()
    return obs
