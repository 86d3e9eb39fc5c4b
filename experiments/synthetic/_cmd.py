"""CLI commands of this area. Import only click at module level; heavy imports go inside commands."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

COMMANDS: list = []

log = logging.getLogger(__name__)


@click.command("synthetic")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for results.json and the figures.")
@click.option("--quick", is_flag=True, help="Smaller Monte Carlo (well under 2 minutes on 2 cores).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random stream (recorded in results.json).")
@click.option("--cost", type=float, default=0.01, show_default=True, help="γλ: risk units one probe step is worth.")
@click.option("--target-rmse", type=float, default=3.0, show_default=True, help="ε: RMSE the user needs (score units).")
@click.option("--c-min", type=float, default=10.0, show_default=True, help="Shortest probe (steps).")
@click.option("--c-max", type=float, default=1000.0, show_default=True, help="Longest probe (steps).")
def synthetic(out_dir: Path, quick: bool, seed: int, cost: float, target_rmse: float, c_min: float, c_max: float) -> None:
    """Check the theory on the noisy quadratic model (exact moments vs Monte Carlo).

    Writes OUT/results.json (identity_max_z, envelope, regimes, seed, settings, version),
    OUT/envelope.png, OUT/phase_diagram.png and OUT/fork_fits.png; prints a summary JSON.
    """
    from theory import RegimeThresholds

    from experiments.synthetic._experiment import SyntheticSettings

    # validate everything before any work or output
    thresholds = RegimeThresholds(cost=cost, target_rmse=target_rmse, c_min=c_min, c_max=c_max)
    settings = SyntheticSettings(seed=seed, quick=quick, thresholds=thresholds)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out must be a folder, but got the file {str(out_dir)!r}; pass a folder path.")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.synthetic._experiment import plot_envelope, plot_fork_fits, plot_phase_diagram, run_synthetic
    from planner._io import atomic_path, write_json

    start = time.perf_counter()
    results, data = run_synthetic(settings)
    log.info("synthetic experiment computed in %.1f s", time.perf_counter() - start)

    figures = {
        "envelope.png": lambda ax: plot_envelope(ax, data["curves"]),
        "phase_diagram.png": lambda ax: plot_phase_diagram(ax, data["regimes"], data["thresholds"]),
        "fork_fits.png": lambda ax: plot_fork_fits(ax, data["regimes"]),
    }
    for name, draw in figures.items():
        fig, ax = plt.subplots(figsize=(7, 5))
        draw(ax)
        fig.tight_layout()
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
        plt.close(fig)
    write_json(results, out_dir / "results.json")
    summary = {
        "identity_max_z": results["identity_max_z"],
        "envelope": results["envelope"],
        "regimes": [{k: r[k] for k in ("family", "intended", "classified")} for r in results["regimes"]],
        "checks": results["checks"],
        "out": str(out_dir),
    }
    click.echo(json.dumps(summary, indent=2))


EXPERIMENT_COMMANDS: list = [synthetic]
