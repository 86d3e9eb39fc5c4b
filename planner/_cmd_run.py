"""CLI command ``plan-probe run``. Import only click/stdlib at module level; heavy imports go inside."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

log = logging.getLogger(__name__)


@click.command("run")
@click.argument("portfolio", type=click.Path())
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(),
              help="Output directory (created; rerunning into it resumes).")
@click.option("--backend", default="local", show_default=True, help="Where probes run: local or ray.")
@click.option("--ray-address", default=None, help="Address of an existing Ray cluster (with --backend ray), e.g. auto.")
@click.option("--ray-num-cpus", type=int, default=None,
              help="CPUs of the local Ray instance started when no --ray-address is given.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="Results summary on stdout.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
def run_cmd(portfolio, out_dir, backend, ray_address, ray_num_cpus, fmt, progress):
    """Run a PORTFOLIO: static descriptors, plan, probes at the planned depths, predictions, report.

    Writes DIR/plan.csv, DIR/predictions.csv, DIR/report.md (+ PNG figures), DIR/summary.json and
    the resumable records DIR/data/, DIR/static/, DIR/probes/. Kill it at any moment and rerun:
    finished work is reused.
    """
    from plan_probe._report import format_summary
    from plan_probe._run import RunSettings, prepare_run, run_portfolio

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output must be a directory, but {out_dir!r} is a file; pass a folder path.")
    settings = RunSettings(backend=backend, ray_address=ray_address, ray_num_cpus=ray_num_cpus, progress=progress)
    prepared = prepare_run(portfolio, settings, out)  # every input checked before anything is written
    warning = prepared.risk_model.convergence_warning(str(prepared.risk_model_path))
    if warning:
        click.echo(f"warning: {warning}", err=True)
    start = time.perf_counter()
    summary = run_portfolio(prepared, out, settings)
    elapsed = time.perf_counter() - start
    log.info("run finished in %.1f s", elapsed)
    if fmt == "json":
        click.echo(json.dumps({**summary, "output": str(out), "wall_time_s": round(elapsed, 1)}, indent=2, sort_keys=True))
    else:
        click.echo(format_summary(summary))
        click.echo(f"report: {out / 'report.md'} ({elapsed:.0f} s)")


COMMANDS: list = [run_cmd]
EXPERIMENT_COMMANDS: list = []
