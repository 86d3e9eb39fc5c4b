"""The resumable builder: one JSON record per run, then the Parquet tables.

Layout of ``OUT``::

    OUT/spec.toml            copy of the spec that was built
    OUT/records/<key>.json   one record per run (key: hash of the canonical task config + seed)
    OUT/cache/emb-*.npz      embedding cache
    OUT/meta.parquet         one row per run x probe depth (predictor meta-dataset)
    OUT/risk_obs.parquet     one row per run x fork depth (docs/theory.md §3 risk observations, with the recipe's hp_*)

Every file is written atomically (temporary file + rename), so a build killed at any moment leaves
only finished records behind; a rerun skips them and redoes the rest.
"""

from __future__ import annotations

import functools
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from plan_probe.experiments.metadataset._spec import BuildSpec, TaskConfig, canonical_json, config_hash
from plan_probe.probes._formats import META_RUN_RECORD
from plan_probe.probes._io import atomic_path, read_json, write_json, write_table
from plan_probe.probes._version import package_versions

__all__ = ["RUNNERS", "make_runner", "run_job", "build", "run_key", "run_seed", "assemble_tables", "load_records"]

log = logging.getLogger(__name__)


def _encoder_runner(cache_dir):
    from plan_probe.experiments.metadataset._encoder import EncoderRunner

    return EncoderRunner(cache_dir)


def _heads_runner(cache_dir):
    from plan_probe.experiments.metadataset._heads import HeadsRunner

    return HeadsRunner(cache_dir)


#: Runner factories keyed by the spec's ``tier``. A runner has ``run(task, prefix_index, seed) -> dict``
#: returning ``status`` ("ok" or "diverged"), ``label``, ``static``, ``hp``, ``dyn`` {depth: {dyn_*}}
#: and ``forks`` {depth: [final scores]}; raising marks the run ``failed``. A runner may also have
#: ``prepare(tasks) -> dict``, called once before the runs (shared caches such as embeddings).
RUNNERS = {"encoder": _encoder_runner, "heads": _heads_runner}


def make_runner(tier: str, cache_dir):
    if tier not in RUNNERS:
        raise ValueError(f"tier must be one of {sorted(RUNNERS)}, but got {tier=}; fix the spec's tier.")
    return RUNNERS[tier](cache_dir)


def run_seed(task: TaskConfig, prefix_index: int) -> int:
    """The prefix seed of a run: derived from the task config (incl. the spec seed) and its index."""
    return int(config_hash({"task": task.to_dict(), "prefix": prefix_index}), 16) % (2**31 - 1)


def run_key(task: TaskConfig, prefix_index: int) -> str:
    """The record key: a hash of the canonical task config and the run's seed."""
    return config_hash({"task": task.to_dict(), "prefix": prefix_index, "seed": run_seed(task, prefix_index)}, n=24)


def _versions() -> dict:
    return {**package_versions("numpy", "jax", "jaxlib", "torch", "transformers"), "python": platform.python_version()}


def load_records(out: str | Path) -> list[dict]:
    """All records under ``OUT/records``, sorted by key."""
    folder = Path(out) / "records"
    if not folder.is_dir():
        return []
    return [META_RUN_RECORD.read(read_json(p), str(p)) for p in sorted(folder.glob("*.json"))]


@functools.lru_cache(maxsize=4)
def _cached_runner(tier: str, cache_dir: str):
    """One runner per process (it holds the embedding model and caches), local or on a Ray worker."""
    return make_runner(tier, Path(cache_dir))


def run_job(tier: str, cache_dir: str, task: TaskConfig, prefix_index: int, seed: int) -> tuple[dict, float]:
    """One run as a self-contained job: ``(result, wall seconds)``; raising marks the run failed."""
    t0 = time.perf_counter()
    result = _cached_runner(tier, cache_dir).run(task, prefix_index, seed)
    return result, time.perf_counter() - t0


def build(spec: BuildSpec, out: str | Path, *, retry_failed: bool = False, limit: int | None = None,
          progress: bool = True, cache_dir: str | Path | None = None, backend: str = "local",
          ray_address: str | None = None, max_retries: int = 0,
          before_write: Callable[[int], None] | None = None) -> dict:
    """Run every pending run of ``spec`` into ``out`` and assemble the tables.

    Finished records (``ok``, ``diverged``; also ``failed`` unless ``retry_failed``) are skipped.
    ``limit`` caps the number of runs executed in this call (the tables are still assembled).
    ``cache_dir`` holds the embedding cache (default ``out/cache``). ``backend`` runs the runs in
    this process (``local``) or as Ray tasks (``ray``, at ``ray_address`` or a local instance);
    either way this driver writes every record. A run that raises is retried ``max_retries``
    times, then recorded ``failed``. ``before_write(n)`` is called when a run has finished
    computing, just before its record is written, with the number of records this call has
    written so far (the worst moment for a kill, which tests use). Returns a summary dict.
    """
    from tqdm import tqdm

    from plan_probe.probes._executor import Job, check_backend, execute

    check_backend(backend, ray_address)

    out = Path(out)
    records = out / "records"
    records.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "spec.toml") as tmp:
        tmp.write_text(spec.source_text)
    todo, skipped = [], 0
    for task, p in spec.runs():
        path = records / f"{run_key(task, p)}.json"
        if path.is_file():
            status = read_json(path).get("status")
            if status != "failed" or not retry_failed:
                skipped += 1
                continue
        todo.append((task, p, path))
    if limit is not None:
        todo = todo[:limit]
    log.info("%d runs to do, %d finished runs skipped", len(todo), skipped)
    cache = str(Path(cache_dir) if cache_dir else out / "cache")
    prepared = {}
    runner = _cached_runner(spec.tier, cache)
    if todo and hasattr(runner, "prepare"):
        t0 = time.process_time()
        prepared = {**runner.prepare([t for t, _, _ in todo]), "cpu_seconds": round(time.process_time() - t0, 1)}
        log.info("prepared: %s", prepared)
    versions = _versions()
    counts = {"ok": 0, "diverged": 0, "failed": 0}
    by_key = {path.stem: (task, p, path) for task, p, path in todo}
    jobs = [Job(path.stem, run_job, (spec.tier, cache, task, p, run_seed(task, p))) for task, p, path in todo]
    outcomes = execute(jobs, backend=backend, ray_address=ray_address, max_retries=max_retries)
    for i, outcome in enumerate(tqdm(outcomes, total=len(jobs), desc="build-meta runs", unit="run", file=sys.stderr,
                                     disable=not progress)):
        task, p, path = by_key[outcome.key]
        if outcome.ok:
            result, wall = outcome.value
            error = result.pop("error", None)
            status = result.pop("status", "ok")
        else:  # a failing run is recorded and the build goes on
            log.warning("run %s prefix %d failed: %s", task.task_id, p, outcome.error)
            result, status, error, wall = {}, "failed", outcome.error, 0.0
        if before_write is not None:
            before_write(i)
        record = META_RUN_RECORD.stamp({
            "key": path.stem,
            "run_id": f"{task.task_id}--p{p}",
            "task_id": task.task_id,
            "prefix": p,
            "seed": run_seed(task, p),
            "tier": task.tier,
            "config": task.to_dict(),
            "status": status,
            "error": error,
            "wall_time_s": round(wall, 3),
            "versions": versions,
            "result": result,
        })
        write_json(record, path)
        counts[status] += 1
    tables = assemble_tables(out)
    return {"out": str(out), "runs_total": skipped + len(todo) if limit is None else None, "skipped": skipped,
            "executed": counts, "backend": backend, "prepared": prepared, "cpu_seconds": round(_cpu_seconds(), 1), **tables}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system), in seconds."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def assemble_tables(out: str | Path) -> dict:
    """Write ``meta.parquet`` and ``risk_obs.parquet`` from the ``ok`` records, atomically."""
    import pandas as pd

    out = Path(out)
    recs = load_records(out)
    meta_rows, risk_rows = [], []
    status_counts: dict[str, int] = {}
    for r in recs:
        status_counts[r["status"]] = status_counts.get(r["status"], 0) + 1
        if r["status"] != "ok":
            continue
        res = r["result"]
        base = {"run_id": r["run_id"], "task_id": r["task_id"]}
        for depth, dyn in sorted(res["dyn"].items(), key=lambda kv: int(kv[0])):
            meta_rows.append({**base, "depth": int(depth), **res["static"], **dyn, **res["hp"], "label": res["label"]})
        # the recipe rides along (the decay-law check needs rho, t0 and the horizon of every fork task)
        forks = res.get("forks") or {}
        if forks:  # a live run history has neither forks nor a build config
            recipe = {**res["hp"], "hp_lr_t0": float(r["config"]["hparams"].get("lr_t0", 10.0))}
        for depth, scores in sorted(forks.items(), key=lambda kv: int(kv[0])):
            s = np.asarray(scores, dtype=float)
            risk_rows.append({"task_id": r["task_id"], "depth": int(depth), "risk_obs": float(s.var(ddof=1)),
                              "dof": float(len(s) - 1), "run_id": r["run_id"], **res["static"], **recipe})
    meta = pd.DataFrame(meta_rows)
    risk = pd.DataFrame(risk_rows)
    if len(meta):
        meta = meta.sort_values(["task_id", "run_id", "depth"], kind="stable").reset_index(drop=True)
    if len(risk):  # records without forks (e.g. a live run history) give no risk rows
        risk = risk.sort_values(["task_id", "run_id", "depth"], kind="stable").reset_index(drop=True)
    write_table(meta, out / "meta.parquet")
    write_table(risk, out / "risk_obs.parquet")
    return {"records": status_counts, "meta_rows": len(meta), "risk_rows": len(risk),
            "meta": str(out / "meta.parquet"), "risk_obs": str(out / "risk_obs.parquet")}


def record_for_comparison(record: dict) -> str:
    """A record without its wall time: what must be identical between two builds of one spec."""
    return canonical_json({k: v for k, v in record.items() if k != "wall_time_s"})
