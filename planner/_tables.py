"""Validation of the risk-observation and TASKS tables (docs/theory.md §3).

Both tables may carry nested residual vectors (docs/theory.md §2, "Nested residuals"): rows with a
``run_id`` and ``dof`` 1 are the squared out-of-fold residuals of one run at several depths. The
optional ``residual`` column holds the signed residual e(c) (``risk_obs`` = residual²), which the
nested likelihood needs for the increments e(c_i) - e(c_{i+1}); a nested run without signs is
marginalised over the unknown signs (see :mod:`plan_probe._risk_likelihood`).

Every check raises one ``ValueError`` naming the rule, the offending value and the fix, so the
CLI can print it as one line before any output is written. Reusable by other commands (e.g. the
predictor's risk-scaled residuals).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "OBS_COLUMNS",
    "NESTED_COLUMNS",
    "PILOT_COLUMNS",
    "static_columns",
    "validate_risk_observations",
    "validate_tasks",
    "task_static_matrix",
]

OBS_COLUMNS = ("task_id", "depth", "risk_obs", "dof")
#: Optional columns of a risk-observation (or pilot) table: the run a residual belongs to and its sign.
NESTED_COLUMNS = ("run_id", "residual")
PILOT_COLUMNS = ("depth", "risk_obs", "dof")
#: Relative tolerance of residual**2 against risk_obs when a row carries both.
_RESIDUAL_RTOL = 1e-4


def static_columns(frame) -> list[str]:
    """The ``static_*`` columns of ``frame``, in table order."""
    return [c for c in frame.columns if str(c).startswith("static_")]


def _first_bad(frame, mask, col):
    i = int(np.flatnonzero(np.asarray(mask))[0])
    row = frame.iloc[i]
    tid = row["task_id"] if "task_id" in frame.columns else "?"
    value = row[col].item() if hasattr(row[col], "item") else row[col]  # numpy scalars shown as plain numbers
    return f"row {i + 1} (task_id={tid!r}, {col}={value!r})"


def _numeric(frame, col: str, *, what: str):
    import pandas as pd

    if pd.api.types.is_bool_dtype(frame[col]):
        raise ValueError(f"{what} column {col!r} must be numeric, but got booleans (True/False); write numbers.")
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
    if "risk_obs" not in frame.columns and "residual" in frame.columns:
        frame = frame.assign(risk_obs=_numeric(frame, "residual", what=what) ** 2)
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


def _check_nested(frame, out):
    """Validate the optional ``run_id`` / ``residual`` columns of ``frame`` into ``out`` (in place).

    * ``residual``: finite where given (NaN = sign unknown); where ``risk_obs`` is also given the
      two must agree (risk_obs = residual**2, relative tolerance 1e-4).
    * ``run_id``: empty = an independent observation. A run belongs to one task; the rows of a run
      with ``dof`` 1 (its nested residual vector) must have distinct depths.
    """
    import pandas as pd

    if "residual" in frame.columns:
        if pd.api.types.is_bool_dtype(frame["residual"]):
            raise ValueError("residual must be a signed number, but got booleans (True/False); write the residual "
                             "label - prediction.")
        res = pd.to_numeric(frame["residual"], errors="coerce").astype(float).to_numpy()
        raw_missing = frame["residual"].isna().to_numpy()
        bad = np.isnan(res) & ~raw_missing
        if bad.any() or np.isinf(res).any():
            mask = bad | np.isinf(res)
            raise ValueError(f"residual must be a finite number or empty, but got {_first_bad(frame, mask, 'residual')}; "
                             "write the signed residual label - prediction, or leave it empty when the sign is unknown.")
        given = ~np.isnan(res)
        risk = out["risk_obs"].to_numpy(dtype=float)
        off = given & (np.abs(res**2 - risk) > _RESIDUAL_RTOL * np.maximum(risk, res**2) + 1e-300)
        if off.any():
            raise ValueError(f"risk_obs must equal residual**2 where both are given, but got {_first_bad(frame, off, 'residual')} "
                             f"with risk_obs={float(risk[np.flatnonzero(off)[0]])!r}; recompute risk_obs from the residual.")
        out["residual"] = res
    if "run_id" in frame.columns:
        out["run_id"] = [str(r) if pd.notna(r) and str(r) != "" else None for r in frame["run_id"]]
        has = out["run_id"].notna()
        if has.any():
            per_run = out.loc[has].groupby("run_id")["task_id"].nunique()
            if (per_run > 1).any():
                rid = per_run.index[per_run > 1][0]
                tasks = sorted(out.loc[out["run_id"] == rid, "task_id"].unique())[:3]
                raise ValueError(f"a run_id must belong to one task, but run_id={rid!r} appears with task_id {tasks}; "
                                 "give each run its own run_id.")
            nested = has & (out["dof"] == 1.0)
            dup = out.loc[nested].duplicated(["run_id", "depth"], keep=False)
            if dup.any():
                i = int(dup.to_numpy().nonzero()[0][0])
                row = out.loc[nested].iloc[i]
                raise ValueError(f"a run's residuals must be at distinct depths, but run_id={row['run_id']!r} has depth "
                                 f"{int(row['depth'])} twice; keep one residual per run and depth.")
    return out


def validate_risk_observations(frame):
    """Check and normalise a risk-observation table; return a clean copy.

    Columns: ``task_id`` (str), ``depth`` (int >= 1), ``risk_obs`` (float >= 0), ``dof``
    (float > 0) and numeric ``static_*`` features constant within a task; optionally ``run_id``
    (rows of one run with dof 1 form a nested residual vector, docs/theory.md §2) and
    ``residual`` (the signed residual, risk_obs = residual**2; with it ``risk_obs`` may be
    omitted). Other columns are dropped.
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame) or len(frame) == 0:
        raise ValueError("risk observations must be a non-empty table, but got no rows; pass at least one observation.")
    if "risk_obs" not in frame.columns and "residual" in frame.columns:
        frame = frame.assign(risk_obs=pd.to_numeric(frame["residual"], errors="coerce") ** 2)
    missing = [c for c in OBS_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"risk observations must have columns {list(OBS_COLUMNS)}, but {missing} are missing; "
            "add them (see docs/theory.md §3)."
        )
    statics = static_columns(frame)
    out = pd.DataFrame({"task_id": _check_task_ids(frame)})
    out["depth"], out["risk_obs"], out["dof"] = _check_pilot_values(frame, what="risk observation")
    _check_nested(frame, out)
    for col in statics:
        out[col] = _numeric(frame, col, what="static feature")
    _check_static_constant(out, statics)
    return out.reset_index(drop=True)


def validate_tasks(frame, static_features: list[str] | None = None):
    """Check a TASKS table; return ``(tasks, pilots)``.

    ``tasks`` has one row per task (first-appearance order): ``task_id`` plus the static
    features. ``pilots`` holds the rows carrying pilot observations (``task_id, depth, risk_obs,
    dof`` and, when TASKS has them, ``run_id`` / ``residual``: a nested residual vector as in
    :func:`validate_risk_observations`), possibly empty. Columns other than ``task_id``,
    ``static_*``, the three pilot columns and ``run_id`` / ``residual`` are rejected; with
    ``static_features`` given, the table's static set must equal it.
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame) or len(frame) == 0:
        raise ValueError("TASKS must be a non-empty table, but got no rows; pass at least one task.")
    if "task_id" not in frame.columns:
        raise ValueError("TASKS must have a 'task_id' column, but it is missing; add one id per task.")
    statics = static_columns(frame)
    allowed = {"task_id", *PILOT_COLUMNS, *NESTED_COLUMNS, *statics}
    unknown = [c for c in frame.columns if c not in allowed]
    if unknown:
        raise ValueError(
            f"TASKS may only have task_id, static_* and pilot columns {list(PILOT_COLUMNS + NESTED_COLUMNS)}, but got unknown column(s) "
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
            _check_nested(sub.reset_index(drop=True), pilots)
    return tasks, pilots


def task_static_matrix(frame, static_features: list[str]):
    """One row per task (first-appearance order): ``(task_ids, X)`` with X of shape (n_tasks, p)."""
    first = frame.drop_duplicates("task_id", keep="first")
    x = first[list(static_features)].to_numpy(dtype=float) if static_features else np.zeros((len(first), 0))
    return first["task_id"].astype(str).to_numpy(), x
