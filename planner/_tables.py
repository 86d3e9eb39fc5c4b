"""Validation of the risk-observation and TASKS tables (docs/theory.md §3).

Every check raises one ``ValueError`` naming the rule, the offending value and the fix, so the
CLI can print it as one line before any output is written. Reusable by other commands (e.g. the
predictor's risk-scaled residuals).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "OBS_COLUMNS",
    "PILOT_COLUMNS",
    "static_columns",
    "validate_risk_observations",
    "validate_tasks",
    "task_static_matrix",
]

OBS_COLUMNS = ("task_id", "depth", "risk_obs", "dof")
PILOT_COLUMNS = ("depth", "risk_obs", "dof")


def static_columns(frame) -> list[str]:
    """The ``static_*`` columns of ``frame``, in table order."""
    return [c for c in frame.columns if str(c).startswith("static_")]


def _first_bad(frame, mask, col):
    i = int(np.flatnonzero(np.asarray(mask))[0])
    row = frame.iloc[i]
    tid = row["task_id"] if "task_id" in frame.columns else "?"
    return f"row {i + 1} (task_id={tid!r}, {col}={row[col]!r})"


def _numeric(frame, col: str, *, what: str):
    import pandas as pd

    values = pd.to_numeric(frame[col], errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        raise ValueError(
            f"{what} column {col!r} must be numeric and not NaN, but got {_first_bad(frame, bad, col)}; "
            "fill or drop that row."
        )
    values = values.astype(float)
    if not np.all(np.isfinite(values.to_numpy())):
        raise ValueError(
            f"{what} column {col!r} must be finite, but got {_first_bad(frame, ~np.isfinite(values.to_numpy()), col)}; "
            "replace infinite values."
        )
    return values


def _check_task_ids(frame):
    if frame["task_id"].isna().any():
        raise ValueError(
            f"task_id must not be empty, but got {_first_bad(frame, frame['task_id'].isna(), 'task_id')}; give every row a task_id."
        )
    return frame["task_id"].astype(str)


def _check_static_constant(frame, statics: list[str]):
    """A task's static features describe the task, so they must not change between its rows."""
    if not statics:
        return
    grouped = frame.groupby("task_id", sort=False)[statics]
    spread = grouped.max() - grouped.min()
    bad = spread > 1e-9 * (1.0 + frame[statics].abs().max())
    if bad.to_numpy().any():
        tid, col = next((t, c) for t in bad.index for c in statics if bad.loc[t, c])
        vals = sorted(set(frame.loc[frame["task_id"] == tid, col].tolist()))[:3]
        raise ValueError(
            f"static features must be constant within a task, but task_id={tid!r} has {col} values {vals}; "
            "give each task one value per static feature."
        )


def _check_pilot_values(frame, *, what: str):
    depth = _numeric(frame, "depth", what=what)
    if (depth <= 0).any():
        raise ValueError(f"depth must be >= 1, but got {_first_bad(frame, depth <= 0, 'depth')}; use probe depths in steps.")
    if (depth != np.round(depth)).any():
        raise ValueError(
            f"depth must be a whole number of steps, but got {_first_bad(frame, depth != np.round(depth), 'depth')}; round it."
        )
    risk = _numeric(frame, "risk_obs", what=what)
    if (risk < 0).any():
        raise ValueError(
            f"risk_obs must be >= 0 (a variance or squared error), but got {_first_bad(frame, risk < 0, 'risk_obs')}; "
            "fix the sign or drop that row."
        )
    dof = _numeric(frame, "dof", what=what)
    if (dof <= 0).any():
        raise ValueError(
            f"dof must be > 0, but got {_first_bad(frame, dof <= 0, 'dof')}; use n-1 for a variance over n forks, 1 for a squared residual."
        )
    return depth.astype(int), risk, dof


def validate_risk_observations(frame):
    """Check and normalise a risk-observation table; return a clean copy.

    Columns: ``task_id`` (str), ``depth`` (int >= 1), ``risk_obs`` (float >= 0), ``dof``
    (float > 0) and numeric ``static_*`` features constant within a task. Other columns are
    dropped.
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame) or len(frame) == 0:
        raise ValueError("risk observations must be a non-empty table, but got no rows; pass at least one observation.")
    missing = [c for c in OBS_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"risk observations must have columns {list(OBS_COLUMNS)}, but {missing} are missing; "
            "add them (see docs/theory.md §3)."
        )
    statics = static_columns(frame)
    out = pd.DataFrame({"task_id": _check_task_ids(frame)})
    out["depth"], out["risk_obs"], out["dof"] = _check_pilot_values(frame, what="risk observation")
    for col in statics:
        out[col] = _numeric(frame, col, what="static feature")
    _check_static_constant(out, statics)
    return out.reset_index(drop=True)


def validate_tasks(frame, static_features: list[str] | None = None):
    """Check a TASKS table; return ``(tasks, pilots)``.

    ``tasks`` has one row per task (first-appearance order): ``task_id`` plus the static
    features. ``pilots`` holds the rows carrying pilot observations (``task_id, depth, risk_obs,
    dof``), possibly empty. Columns other than ``task_id``, ``static_*`` and the three pilot
    columns are rejected; with ``static_features`` given, the table's static set must equal it.
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame) or len(frame) == 0:
        raise ValueError("TASKS must be a non-empty table, but got no rows; pass at least one task.")
    if "task_id" not in frame.columns:
        raise ValueError("TASKS must have a 'task_id' column, but it is missing; add one id per task.")
    statics = static_columns(frame)
    allowed = {"task_id", *PILOT_COLUMNS, *statics}
    unknown = [c for c in frame.columns if c not in allowed]
    if unknown:
        raise ValueError(
            f"TASKS may only have task_id, static_* and pilot columns {list(PILOT_COLUMNS)}, but got unknown column(s) "
            f"{unknown}; drop them or rename features with a 'static_' prefix."
        )
    if static_features is not None and sorted(statics) != sorted(static_features):
        extra = sorted(set(statics) - set(static_features))
        lacking = sorted(set(static_features) - set(statics))
        raise ValueError(
            f"TASKS static features must match the risk model's, but TASKS lacks {lacking} and has extra {extra}; "
            "use the same static_* columns the model was fitted on."
        )
    present = [c for c in PILOT_COLUMNS if c in frame.columns]
    if present and len(present) != len(PILOT_COLUMNS):
        raise ValueError(
            f"pilot observations need all of {list(PILOT_COLUMNS)}, but TASKS has only {present}; add the missing columns or drop them."
        )
    clean = pd.DataFrame({"task_id": _check_task_ids(frame)})
    order = list(static_features) if static_features is not None else statics
    for col in order:
        clean[col] = _numeric(frame, col, what="static feature")
    _check_static_constant(clean, order)
    tasks = clean.drop_duplicates("task_id", keep="first").reset_index(drop=True)
    pilots = pd.DataFrame({"task_id": pd.Series(dtype=str), "depth": pd.Series(dtype=int),
                           "risk_obs": pd.Series(dtype=float), "dof": pd.Series(dtype=float)})
    if present:
        raw = frame[list(PILOT_COLUMNS)]
        n_missing = raw.isna().sum(axis=1).to_numpy()
        partial = (n_missing > 0) & (n_missing < len(PILOT_COLUMNS))
        if partial.any():
            i = int(np.flatnonzero(partial)[0])
            raise ValueError(
                f"a pilot row needs depth, risk_obs and dof together, but row {i + 1} (task_id={clean['task_id'].iloc[i]!r}) "
                "has only some of them; fill all three or leave all three empty."
            )
        has = n_missing == 0
        if has.any():
            sub = frame.loc[has].copy()
            sub["task_id"] = clean.loc[has, "task_id"]
            depth, risk, dof = _check_pilot_values(sub, what="pilot observation")
            pilots = pd.DataFrame({"task_id": sub["task_id"].to_numpy(), "depth": depth.to_numpy(),
                                   "risk_obs": risk.to_numpy(), "dof": dof.to_numpy()})
    return tasks, pilots


def task_static_matrix(frame, static_features: list[str]):
    """One row per task (first-appearance order): ``(task_ids, X)`` with X of shape (n_tasks, p)."""
    first = frame.drop_duplicates("task_id", keep="first")
    x = first[list(static_features)].to_numpy(dtype=float) if static_features else np.zeros((len(first), 0))
    return first["task_id"].astype(str).to_numpy(), x
