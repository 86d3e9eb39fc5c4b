"""``plan-probe benchmark``: planned probe budgets against fair baselines (only click and stdlib at import)."""

from __future__ import annotations

import json
import logging
import os

import click

log = logging.getLogger(__name__)


def _shares(value: str) -> tuple:
    try:
        return tuple(float(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--budget-share must be a number or a comma list of numbers, but got {value!r}; pass e.g. 0.4 or 0.2,0.4.") from None


def _check_out(path, what: str, suffixes: tuple) -> None:
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{what} must be in an existing folder, but got {path!r}; create {parent} first.")
    if os.path.isdir(path):
        raise ValueError(f"{what} must be a file path, but got the folder {path!r}; name a file.")
    if suffixes and not str(path).lower().endswith(suffixes):
        raise ValueError(f"{what} must end with {' or '.join(suffixes)}, but got {path!r}; rename it.")


def _table(result: dict) -> str:
    pol, paired = result["policies"], result["paired"]
    has_dl = any("decision_loss" in e for e in pol.values())
    head = f"{'policy':<16}{'rmse':>10}{'steps':>12}{'share':>8}" + (f"{'dec.loss':>10}" if has_dl else "") + "   planned - policy [90% CI]"
    lines = [head, "-" * len(head)]
    for name in result["settings"]["policy_order"]:
        e = pol[name]
        row = f"{name:<16}{e['rmse']:>10.4g}{e['steps']:>12.0f}{e['steps_share_of_fixed']:>8.2f}"
        if has_dl:
            row += f"{e.get('decision_loss', float('nan')):>10.3f}"
        if name in paired:
            p = paired[name]
            row += f"   {p['rmse_diff']:+.4g} [{p['ci90'][0]:+.4g}, {p['ci90'][1]:+.4g}]"
            if "decision_ci90" in p:
                row += f"   dec.loss {p['decision_loss_diff']:+.3f} [{p['decision_ci90'][0]:+.3f}, {p['decision_ci90'][1]:+.3f}]"
        lines.append(row)
    s = result["settings"]
    lines.append(f"{s['n_tasks']} held-out tasks ({s['n_runs']} runs), {s['folds']} folds, budget {s['budget_steps']:g} steps "
                 f"(share {s['budget_shares'][0]:g} of fixed {s['fixed_depth']:g}), depths {[int(d) if d == int(d) else d for d in s['depths']]}")
    return "\n".join(lines)


@click.command("benchmark")
@click.argument("meta", type=click.Path(dir_okay=False))
@click.option("--label", required=True, help="Label column (the run's final score).")
@click.option("--id", "id_col", default=None, help="Run id column (default dataset_name, run_id or task_id).")
@click.option("--task", "task_col", default=None, help="Task column for the grouped folds and the plan (default task_id, else the id).")
@click.option("--budget-share", "budget_share", default="0.4", show_default=True,
              help="Budget as a share of fixed-depth x held-out tasks; a comma list sweeps (the first is reported).")
@click.option("--fixed-depth", type=float, default=100.0, show_default=True, help="The fixed probe of the 'fixed' policy (steps).")
@click.option("--threshold", type=float, default=None, help="Go threshold τ (label units): adds decision_loss, false kills and launches.")
@click.option("--folds", type=int, default=5, show_default=True, help="Grouped folds over tasks.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the folds, fits, random policy and bootstrap.")
@click.option("--format", "fmt", type=click.Choice(["json", "table"]), default="json", show_default=True, help="What goes to stdout.")
@click.option("--figure", "figure", type=click.Path(dir_okay=False), default=None, help="PNG of RMSE against total steps per policy.")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), default=None, help="Also write the JSON result to this file.")
@click.option("--n-boot", type=int, default=1000, show_default=True, help="Paired bootstrap resamples over held-out tasks.")
@click.option("--risk-method", type=click.Choice(["auto", "nuts", "svi"]), default="auto", show_default=True,
              help="Inference of the per-fold risk model (auto: NUTS up to 600 tasks).")
@click.option("--risk-samples", type=click.IntRange(min=50), default=300, show_default=True,
              help="NUTS warmup and kept samples per chain (2 chains) of each fold's risk model.")
def benchmark(meta, label, id_col, task_col, budget_share, fixed_depth, threshold, folds, seed, fmt, figure, out, n_boot, risk_method,
              risk_samples):
    """Score the planned probe budget against fair baselines on held-out tasks, at equal total steps.

    Grouped K-fold over tasks; per fold the predictor and the risk model are fitted on the training
    tasks only, the held-out tasks are planned from their static features, and every policy
    (planned, uniform, uniform_fill, fixed_min, fixed, static_only, random, oracle; planned_decision
    with --threshold) is scored on the held-out runs.
    Prints {"policies", "paired", "settings"}: RMSE and steps per policy, and rmse(planned) - rmse(P)
    with a 90 % paired bootstrap interval over held-out tasks.
    """
    if not os.path.isfile(meta):
        raise ValueError(f"META must be an existing CSV or Parquet file, but got {meta!r}; check the path.")
    _check_out(out, "-o/--out", (".json",))
    _check_out(figure, "--figure", (".png",))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from plan_probe.experiments.benchmark._core import BenchSettings, load_bench, run_benchmark

    settings = BenchSettings(label=label, id_col=id_col, task_col=task_col, budget_shares=_shares(budget_share),
                             fixed_depth=fixed_depth, threshold=threshold, folds=folds, seed=seed, n_boot=n_boot,
                             risk_method=risk_method, risk_samples=risk_samples)
    data = load_bench(meta, settings)
    result = run_benchmark(data, settings)
    result["settings"]["meta"] = os.path.basename(meta)
    text = json.dumps(result, indent=2, sort_keys=False)
    if out is not None:
        from plan_probe.probes._io import write_json

        write_json(result, out)
    if figure is not None:
        from plan_probe._figures import subplots
        from plan_probe.experiments.benchmark._figure import plot_benchmark
        from plan_probe.probes._io import atomic_path

        fig, ax = subplots(figsize=(7, 5))
        plot_benchmark(ax, result, title=f"{os.path.basename(meta)}: RMSE vs total probe steps")
        fig.tight_layout()
        with atomic_path(figure) as tmp:
            fig.savefig(tmp, format="png", dpi=120, metadata={"Software": None})
    click.echo(text if fmt == "json" else _table(result))
