r"""The run history: one JSON per run, the same record shape as ``build-meta``'s runs (docs/guide/live.md).

A history directory has ``build-meta``'s layout, ``HISTORY/records/<run_id>.json``, and every record is
a ``plan-probe/meta-run-record`` document (:data:`plan_probe.probes._formats.META_RUN_RECORD`)::

    {"format": "plan-probe/meta-run-record", "schema_version": 1, "plan_probe_version": ...,
     "key", "run_id", "task_id", "prefix": 0, "seed", "tier": "live", "config": {...},
     "status": "ok" | "censored" | "diverged" | "running" | "no_outcome" | "failed",
     "error": str | None, "wall_time_s", "versions",
     "result": {"static": {...}, "hp": {...}, "dyn": {"<depth>": {dyn_*: ...}}, "label": float | None,
                "forks": {}, "decisions": [LiveDecision.to_json(), ...], "decision": {...} | None,
                "outcome": {...} | None}}

so a history is read exactly like a built meta-dataset (``status == "ok"`` rows become meta-dataset
rows). **Censoring**: a run stopped as ``no_go`` never reaches its final score; it is recorded with
``status = "censored"`` and ``label = None`` and is excluded from every label. The runs that remain
are the ones the live rule let finish, so a refit sees the population *after* selection: runs that
looked doomed early are under-represented, the predictors' training distribution shifts towards
healthy-looking runs, and their intervals are calibrated on that shifted population (the bias
grows with the censored share). :func:`read_runs` counts the censored runs and
``plan-probe refit`` reports the count and warns above a share (default 0.3).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

__all__ = ["STATUSES", "live_record", "record_path", "read_runs", "write_record"]

log = logging.getLogger(__name__)

STATUSES = ("ok", "censored", "diverged", "running", "no_outcome", "failed")


def _clean(value):
    """JSON-safe value: non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _clean(value.item())
    return value


def live_record(*, run_id: str, task_id: str, seed: int, config: dict, status: str, error: str | None,
                wall_time_s: float, static: dict, hp: dict, dyn: dict, label: float | None, decisions: list,
                decision: dict | None, outcome: dict | None, versions: dict | None = None) -> dict:
    """A history record (stamped ``plan-probe/meta-run-record``) of one live run."""
    from plan_probe.probes._formats import META_RUN_RECORD

    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, but got {status=!r}; use one of those.")
    return META_RUN_RECORD.stamp(_clean({
        "key": run_id, "run_id": run_id, "task_id": task_id, "prefix": 0, "seed": int(seed), "tier": "live",
        "config": config, "status": status, "error": error, "wall_time_s": round(float(wall_time_s), 3),
        "versions": versions if versions is not None else _versions(),
        "result": {"static": static, "hp": hp, "dyn": {str(int(d)): row for d, row in sorted(dyn.items())},
                   "label": label, "forks": {}, "decisions": decisions, "decision": decision, "outcome": outcome},
    }))


def _versions() -> dict:
    import platform

    from plan_probe.probes._version import package_versions

    return {**package_versions("numpy", "torch", "transformers", "peft"), "python": platform.python_version()}


def record_path(history_dir, run_id: str) -> Path:
    """``HISTORY/records/<run_id>.json``."""
    return Path(history_dir) / "records" / f"{run_id}.json"


def write_record(record: dict, history_dir) -> Path:
    """Write ``record`` atomically into ``history_dir`` (creating ``records/``)."""
    from plan_probe.probes._io import write_json

    path = record_path(history_dir, record["run_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(record, path)


# ------------------------------------------------------------------------------------ reading
def _record_files(path: Path) -> list[Path] | None:
    if (path / "records").is_dir():
        return sorted((path / "records").glob("*.json"))
    files = sorted(path.glob("*.json"))
    return files if files and not (path / "meta.parquet").is_file() else None


def _rows_of_record(rec: dict) -> list[dict]:
    res = rec.get("result") or {}
    base = {"run_id": str(rec["run_id"]), "task_id": str(rec.get("task_id", rec["run_id"]))}
    static, hp, label = res.get("static") or {}, res.get("hp") or {}, res.get("label")
    return [{**base, "depth": int(depth), **static, **{k: (math.nan if v is None else v) for k, v in dyn.items()},
             **hp, "label": float(label)}
            for depth, dyn in sorted((res.get("dyn") or {}).items(), key=lambda kv: int(kv[0]))]


def read_runs(paths) -> tuple:
    """Meta-dataset rows (run × depth) from any mix of history directories and built meta-datasets.

    Each path is a directory with ``records/*.json`` (a history or a ``build-meta`` output), a
    folder of record JSON files, a directory with ``meta.parquet`` (e.g. the shipped defaults), or
    a meta table file (``.parquet``/``.csv``). Only records with ``status == "ok"`` and a label give
    rows; the others are counted.

    Returns
    -------
    (pandas.DataFrame, dict)
        The rows (``run_id, task_id, depth, static_*, dyn_*, hp_*, label``; run ids prefixed by
        the source's index when two sources share one) and a summary ``{"sources": [...],
        "status": {status: count}, "runs": n_labelled, "censored": n, "censored_share": share}``.
    """
    import pandas as pd

    from plan_probe.probes._formats import META_RUN_RECORD
    from plan_probe.probes._io import read_json, read_table

    frames, status, sources = [], {}, []
    for i, raw in enumerate(paths):
        path = Path(raw)
        if not path.exists():
            raise ValueError(f"HISTORY_OR_META must be a history directory, a build-meta output or a meta table, but "
                             f"got {str(raw)!r}, which does not exist; fix the path.")
        if path.is_file():
            frame, kind = read_table(path), "table"
        else:
            files = _record_files(path)
            if files is not None:
                rows = []
                for f in files:
                    rec = META_RUN_RECORD.read(read_json(f), str(f))
                    if not isinstance(rec.get("run_id"), str) or not isinstance(rec.get("result", {}), dict):
                        raise ValueError(f"every record must be a run record with a run_id, but {str(f)!r} is not; "
                                         "pass a history directory or a build-meta output.")
                    st = str(rec.get("status"))
                    label = (rec.get("result") or {}).get("label")
                    if st == "ok" and label is None:
                        st = "no_outcome"
                    status[st] = status.get(st, 0) + 1
                    if st == "ok":
                        rows.extend(_rows_of_record(rec))
                frame, kind = pd.DataFrame(rows), "records"
            elif (path / "meta.parquet").is_file():
                frame, kind = read_table(path / "meta.parquet"), "meta"
            else:
                raise ValueError(f"HISTORY_OR_META must hold records/*.json or meta.parquet, but {str(raw)!r} has "
                                 "neither; pass a history directory (PlanProbeCallback's history_dir) or a build-meta output.")
        if kind != "records" and len(frame):
            status["ok"] = status.get("ok", 0) + int(frame["run_id"].nunique()) if "run_id" in frame.columns else 0
        sources.append({"path": str(raw), "kind": kind, "rows": int(len(frame))})
        if len(frame):
            frames.append(frame.assign(_source=i))
    if not frames:
        raise ValueError("refit needs labelled runs, but the inputs hold none (runs with status 'ok' and a label); "
                         f"got statuses {status}; finish some runs with metric_for_outcome set.")
    meta = pd.concat(frames, ignore_index=True, sort=False)
    for col in ("run_id", "depth", "label"):
        if col not in meta.columns:
            raise ValueError(f"every meta table must have a {col!r} column, but it is missing; pass a build-meta table.")
    meta["run_id"] = meta["run_id"].astype(str)
    if "task_id" not in meta.columns:
        meta["task_id"] = meta["run_id"]
    meta["task_id"] = meta["task_id"].astype(str).where(meta["task_id"].notna(), meta["run_id"])
    clash = meta.groupby("run_id")["_source"].nunique()
    if (clash > 1).any():  # the same run id in two sources: keep both, distinguishable
        meta["run_id"] = meta["_source"].astype(str) + ":" + meta["run_id"]
    meta = meta.drop(columns="_source")
    censored = status.get("censored", 0)
    finished = status.get("ok", 0) + censored
    summary = {"sources": sources, "status": dict(sorted(status.items())), "runs": int(meta["run_id"].nunique()),
               "rows": int(len(meta)), "censored": censored,
               "censored_share": round(censored / finished, 4) if finished else 0.0}
    return meta, summary
