"""``plan-probe experiment fleet`` (issue #21). Imports only click at module level."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

log = logging.getLogger(__name__)


@click.command("fleet")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for results.json, table.md and fleet.png.")
@click.option("--quick", is_flag=True, help="2 fleets of 200 runs, 300 training runs (a few minutes on 2 cores).")
@click.option("--fleets", "n_fleets", type=click.IntRange(min=1), default=5, show_default=True,
              help="Fleets of 200 candidate runs (ignored with --quick).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random stream (recorded in results.json).")
def fleet(out_dir: Path, quick: bool, n_fleets: int, seed: int) -> None:
    """Run everything vs plan-probe live vs TuneAhead's 100-step probe vs Optuna's pruners at matched
    compute on synthetic fleets of 200 candidate runs with known final scores (docs/results/fleet.md).

    Writes OUT/results.json, OUT/table.md and OUT/fleet.png (one panel per suite); prints the table.
    """
    from plan_probe.experiments.synthetic.fleet import FleetSettings

    settings = FleetSettings.quick(seed) if quick else FleetSettings(n_fleets=n_fleets, seed=seed)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out must be a folder, but got the file {str(out_dir)!r}; pass a folder path.")
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ValueError("the fleet experiment runs Optuna's pruners, but got no optuna installed; "
                         "pip install 'plan-probe[optuna]'.") from None

    from plan_probe._figures import subplots
    from plan_probe.experiments.synthetic.fleet import format_table, plot_fleet, run_fleet_experiment
    from plan_probe.probes._io import atomic_path, write_json

    start, cpu = time.perf_counter(), time.process_time()
    results = run_fleet_experiment(settings)
    results["timing"] = {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(time.process_time() - cpu, 1)}
    log.info("fleet experiment computed in %.1f s (%.1f s CPU)", results["timing"]["wall_s"], results["timing"]["cpu_s"])
    table = format_table(results)
    suites = [s["name"] for s in results["settings"]["suites"]]
    fig, axes = subplots(1, len(suites), figsize=(6.5 * len(suites), 5), squeeze=False)
    for ax, suite in zip(axes[0], suites):
        plot_fleet(ax, results, suite)
    fig.tight_layout()
    write_json(results, out_dir / "results.json")
    with atomic_path(out_dir / "table.md") as tmp:
        tmp.write_text(table + "\n", encoding="utf-8")
    with atomic_path(out_dir / "fleet.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    click.echo(table)
    click.echo(json.dumps({"out": str(out_dir), **results["timing"]}), err=True)
