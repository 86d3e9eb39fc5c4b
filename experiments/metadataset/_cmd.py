"""CLI commands of this area: ``plan-probe build-meta`` and ``plan-probe experiment real``.

Only click and the standard library at module level; numpy, JAX, torch and matplotlib are
imported inside the commands so ``plan-probe --help`` stays instant.
"""

from __future__ import annotations

import json
import logging
import os

import click

log = logging.getLogger(__name__)


@click.command("build-meta")
@click.argument("spec_path", metavar="SPEC.toml", type=click.Path(dir_okay=False))
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False), help="Output folder (records, cache, Parquet tables).")
@click.option("--retry-failed", is_flag=True, help="Run again the runs recorded as failed (finished ok/diverged runs are always kept).")
@click.option("--limit", type=int, default=None, help="Execute at most this many pending runs in this call.")
@click.option("--cache", "cache", type=click.Path(file_okay=False), default=None, help="Embedding cache folder (default OUT/cache).")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Run the runs in this process or as Ray tasks (records are written here either way).")
@click.option("--ray-address", default=None, help="Address of an existing Ray cluster (with --backend ray).")
@click.option("--max-retries", type=click.IntRange(min=0), default=0, show_default=True,
              help="Retries of a run whose worker raised or died, before it is recorded as failed.")
def build_meta(spec_path, out, retry_failed, limit, cache, no_progress, backend, ray_address, max_retries):
    """Build a meta-dataset from real fine-tuning runs described by SPEC.toml (resumable).

    One JSON record per run lands in OUT/records as soon as the run ends; kill the command at any
    time and rerun it: finished runs are skipped. At the end OUT/meta.parquet (run x probe depth:
    static_*, dyn_*, hp_*, label) and OUT/risk_obs.parquet (task_id, depth, risk_obs, dof, static_*)
    are assembled. A JSON summary goes to stdout.
    """
    from plan_probe.experiments.metadataset._spec import load_spec

    from plan_probe.probes._executor import check_backend

    check_backend(backend, ray_address)
    if _spec_tier(spec_path) == "llm":
        summary = _build_llm(spec_path, out, backend, ray_address, max_retries, limit)
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    spec = load_spec(spec_path)
    if limit is not None and limit < 0:
        raise ValueError(f"--limit must be non-negative, but got {limit=}; pass 0 or more.")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out must be a folder, but got {out!r} which is a file; pick another path.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from plan_probe.experiments.metadataset._build import build

    summary = build(spec, out, retry_failed=retry_failed, limit=limit, progress=not no_progress,
                    cache_dir=cache, backend=backend, ray_address=ray_address, max_retries=max_retries)
    click.echo(json.dumps(summary, indent=2, sort_keys=True))


def _spec_tier(spec_path) -> str | None:
    """The spec's ``tier`` (read before full validation, to pick the builder)."""
    from plan_probe.probes._io import read_toml

    try:
        return read_toml(spec_path, what="spec file").get("tier")
    except ValueError:
        return None  # load_spec reports the problem with its own clear message


def _build_llm(spec_path, out, backend, ray_address, max_retries, limit):
    """The LLM tier: runs, the base model's score, static descriptors of the runs' datasets, then the
    tables (all resumable).

    The runs stage can also be sharded over processes or machines with
    ``python -m plan_probe.experiments.llm_tier runs SPEC --out DIR --shard i/m``.
    """
    from pathlib import Path

    from plan_probe.experiments.llm_tier import assemble, load_llm_spec, run_base, run_runs, run_static

    if limit is not None:
        raise ValueError(f"--limit is for the encoder tier, but got {limit=} for tier llm; leave it out.")
    spec = load_llm_spec(spec_path)
    out = Path(out)
    runs = run_runs(spec, out, backend=backend, ray_address=ray_address, max_retries=max_retries)
    base = run_base(spec, out)
    statics = run_static(spec, out, recorded_only=True)
    return {"out": str(out), "tier": "llm", "executed": runs, "base_computed": base, "static_computed": statics, **assemble(spec, out)}


@click.command("real")
@click.option("--meta", "meta", required=True, type=click.Path(file_okay=False),
              help="A build-meta output folder (or any folder with risk_obs.parquet).")
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False), help="Folder for figures and results.json.")
@click.option("--n-boot", type=int, default=200, show_default=True, help="Bootstrap resamples over prefixes for the alpha intervals.")
@click.option("--level", type=float, default=0.9, show_default=True, help="Interval level.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--cost", type=float, default=0.01, show_default=True, help="gamma*lambda, risk cost per probe step (pp^2).")
@click.option("--target-rmse", type=float, default=3.0, show_default=True, help="epsilon, in pp.")
@click.option("--c-min", type=float, default=10.0, show_default=True)
@click.option("--c-max", type=float, default=1000.0, show_default=True)
def real(meta, out, n_boot, level, seed, cost, target_rmse, c_min, c_max):
    """Fit V(c) = L_int + K c^-alpha per task on real fork variances; draw the decay and phase figures."""
    from pathlib import Path

    if n_boot < 10:
        raise ValueError(f"--n-boot must be at least 10, but got {n_boot=}; pass 10 or more.")
    if not 0.5 <= level < 1.0:
        raise ValueError(f"--level must be in [0.5, 1), but got {level=}; pass e.g. 0.9.")
    from plan_probe.theory import RegimeThresholds

    thresholds = RegimeThresholds(cost=cost, target_rmse=target_rmse, c_min=c_min, c_max=c_max)
    risk_path = Path(meta) / "risk_obs.parquet"
    if not risk_path.is_file():
        raise ValueError(f"--meta must hold risk_obs.parquet, but got {meta!r} without it; run plan-probe build-meta first.")
    from plan_probe.probes._io import read_table

    risk = read_table(risk_path)
    from plan_probe.experiments.metadataset._real import check_risk_table, run_real

    check_risk_table(risk)
    results = run_real(risk, Path(out), thresholds=thresholds, n_boot=n_boot, level=level, seed=seed)
    click.echo(json.dumps(results["summary"], indent=2, sort_keys=True))
