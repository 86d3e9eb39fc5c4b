"""CLI commands of this area. Import only click at module level; heavy imports go inside commands."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click


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

    Writes OUT/results.json (identity_max_z, envelope, regimes, decay_families, seed, settings,
    version), OUT/envelope.png, OUT/phase_diagram.png, OUT/fork_fits.png and OUT/decay_families.png;
    prints a summary JSON.
    """
    from plan_probe.theory import RegimeThresholds

    from plan_probe.experiments.synthetic._experiment import SyntheticSettings

    # validate everything before any work or output
    thresholds = RegimeThresholds(cost=cost, target_rmse=target_rmse, c_min=c_min, c_max=c_max)
    settings = SyntheticSettings(seed=seed, quick=quick, thresholds=thresholds)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out must be a folder, but got the file {str(out_dir)!r}; pass a folder path.")

    from plan_probe._figures import subplots

    from plan_probe.experiments.synthetic._experiment import (
        plot_decay_families,
        plot_envelope,
        plot_fork_fits,
        plot_phase_diagram,
        run_synthetic,
    )
    from plan_probe.probes._io import atomic_path, write_json

    start = time.perf_counter()
    results, data = run_synthetic(settings)
    log.info("synthetic experiment computed in %.1f s", time.perf_counter() - start)

    figures = {
        "envelope.png": lambda ax: plot_envelope(ax, data["curves"]),
        "phase_diagram.png": lambda ax: plot_phase_diagram(ax, data["regimes"], data["thresholds"]),
        "fork_fits.png": lambda ax: plot_fork_fits(ax, data["regimes"]),
        "decay_families.png": lambda ax: plot_decay_families(ax, data["families"]),
    }
    for name, draw in figures.items():
        fig, ax = subplots(figsize=(7, 5))
        draw(ax)
        fig.tight_layout()
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    write_json(results, out_dir / "results.json")
    summary = {
        "identity_max_z": results["identity_max_z"],
        "envelope": results["envelope"],
        "regimes": [{k: r[k] for k in ("family", "intended", "classified")} for r in results["regimes"]],
        "decay_families": [{k: f[k] for k in ("family", "rho", "bound", "alpha", "alpha_se", "alpha_exact_fit", "alpha_closed_form", "relation")}
                           for f in results["decay_families"]],
        "checks": results["checks"],
        "out": str(out_dir),
    }
    click.echo(json.dumps(summary, indent=2))



@click.command("planning")
@click.option("--n-train", type=click.IntRange(min=10), default=300, show_default=True, help="Tasks with risk observations (fit).")
@click.option("--n-test", type=click.IntRange(min=10), default=1000, show_default=True, help="Held-out tasks planned from static features only.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generator, the fit and the plan.")
@click.option("--method", type=click.Choice(["auto", "nuts", "svi"]), default="auto", show_default=True)
@click.option("--quick", is_flag=True, help="120 train / 400 test tasks, short NUTS.")
@click.option("--out", "out_file", type=click.Path(path_type=Path), default=None, help="Also write the JSON result here.")
def planning(n_train: int, n_test: int, seed: int, method: str, quick: bool, out_file: Path | None) -> None:
    """Check the planner on synthetic tasks: regime accuracy, objective vs oracle, budgeted risk (issue #3)."""
    import json

    from plan_probe.experiments.synthetic.planning_check import run_planning_check

    fit_settings = None
    if quick:
        from plan_probe._risk_model import RiskFitSettings

        n_train, n_test = 120, 400
        fit_settings = RiskFitSettings(method=method, num_warmup=250, num_samples=250)
    result = run_planning_check(n_train, n_test, seed=seed, method=method, fit_settings=fit_settings)
    if out_file is not None:
        from plan_probe.probes._io import write_json

        write_json(result, out_file)
    click.echo(json.dumps(result, indent=2, sort_keys=True))


@click.command("residual-coverage")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for results.json.")
@click.option("--quick", is_flag=True, help="3 replicate datasets and shorter chains (a few minutes on 2 cores).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic truth, residuals and fits.")
def residual_coverage(out_dir: Path, quick: bool, seed: int) -> None:
    """Coverage of the risk model's 80 % intervals of L(c) on synthetic nested residual vectors (issue #14).

    100 tasks x 5 depths per replicate dataset (20 replicates; 3 with --quick), residuals drawn as
    martingale vectors from known (L_int, K, alpha); fitted with the nested likelihood and with
    the old independent dof-1 treatment of the same residuals. Writes OUT/results.json with
    coverage_nested and coverage_independent (shares of task x depth intervals covering the true
    L(c) at depths 10, 50, 200) and per-method details; prints the same JSON.
    """
    import json

    from plan_probe.experiments.synthetic.residual_coverage import ResidualCoverageSettings, run_residual_coverage
    from plan_probe.probes._io import write_json

    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out must be a folder, but got the file {str(out_dir)!r}; pass a folder path.")
    settings = ResidualCoverageSettings.quick(seed) if quick else ResidualCoverageSettings(seed=seed)
    result = run_residual_coverage(settings)
    result["quick"] = bool(quick)
    write_json(result, out_dir / "results.json")
    click.echo(json.dumps(result, indent=2, sort_keys=True))


@click.command("decision")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for results.json and table.md.")
@click.option("--quick", is_flag=True, help="5 portfolios x 200 tasks x 16 outcomes, 3 depths (about a minute).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random stream (recorded in results.json).")
def decision(out_dir: Path, quick: bool, seed: int) -> None:
    """Realised decision loss + probe cost: decision objective vs the risk objective and fixed depths at
    the same total steps, on synthetic portfolios with known truth (docs/results/decision.md).

    Writes OUT/results.json and OUT/table.md; prints the table.
    """
    from plan_probe.experiments.synthetic.decision_check import (
        DecisionExperimentSettings,
        format_table,
        run_decision_experiment,
    )
    from plan_probe.probes._io import atomic_path, write_json

    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out must be a folder, but got the file {str(out_dir)!r}; pass a folder path.")
    settings = DecisionExperimentSettings.quick(seed) if quick else DecisionExperimentSettings(seed=seed)
    start = time.perf_counter()
    results = run_decision_experiment(settings)
    log.info("decision experiment computed in %.1f s", time.perf_counter() - start)
    table = format_table(results)
    write_json(results, out_dir / "results.json")
    with atomic_path(out_dir / "table.md") as tmp:
        tmp.write_text(table + "\n", encoding="utf-8")
    click.echo(table)
