"""CLI commands of the risk area: ``fit-risk``, ``plan``, ``phase-diagram``.

Only click and the standard library at module level; numpy/JAX/pandas/matplotlib are imported
inside the commands so ``plan-probe --help`` stays instant. Every input is checked before any
output is written (a ``ValueError`` becomes one ``error:`` line and exit code 2).
"""

from __future__ import annotations

import json
import logging
import sys
import time

import click

from plan_probe._decision_cli import decision_options, prepare_decision

log = logging.getLogger(__name__)


@click.command("fit-risk")
@click.argument("obs", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="Where to write MODEL.json.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the inference (JAX key).")
@click.option("--method", default="auto", show_default=True, type=click.Choice(["auto", "nuts", "svi"]),
              help="NUTS, SVI, or auto (SVI above 600 tasks).")
@click.option("--draws", "num_samples", default=400, show_default=True, type=int, help="NUTS draws per chain.")
@click.option("--warmup", "num_warmup", default=400, show_default=True, type=int, help="NUTS warm-up steps per chain.")
@click.option("--chains", "num_chains", default=2, show_default=True, type=int, help="NUTS chains (run one after another).")
@click.option("--target-accept", default=0.85, show_default=True, type=float,
              help="NUTS target acceptance; raise it (e.g. 0.95) when the fit reports divergences.")
@click.option("--svi-steps", default=3000, show_default=True, type=int, help="SVI optimisation steps.")
@click.option("--keep-draws", default=400, show_default=True, type=int, help="Population draws kept in MODEL.json (thinned).")
@click.option("--variance-floor", default=1e-3, show_default=True, type=float,
              help="delta added to every likelihood term's variance, relative to the median risk observation; keeps "
                   "exactly repeated predictions (zero residual increments) from making the likelihood unbounded. 0: none.")
@click.option("--max-tree-depth", default=7, show_default=True, type=int, help="NUTS maximum tree depth.")
@click.option("--lkj-eta", default=2.0, show_default=True, type=float,
              help="LKJ prior concentration of the task correlation of (log L_int, log K, log alpha); larger: nearer 0.")
@click.option("--task-sd-prior", default="1,1,0.5", show_default=True,
              help="Half-normal prior scales of the task spread of (log L_int, log K, log alpha), comma-separated. "
                   "When chains disagree on alpha (flat residual curves), a smaller third scale (e.g. 1,1,0.2) "
                   "keeps them in one region (docs/theory.md §2).")
def fit_risk(obs, output, seed, method, num_samples, num_warmup, num_chains, target_accept, svi_steps, keep_draws,
             variance_floor, max_tree_depth, lkj_eta, task_sd_prior):
    """Fit the hierarchical risk model to the risk-observation table OBS (CSV or Parquet).

    OBS columns: task_id, depth, risk_obs, dof, static_*, optionally run_id and residual (rows of
    one run with dof 1 are one nested residual vector; residual is the signed label - prediction;
    docs/theory.md §2-3). Writes MODEL.json (population posterior draws, feature standardisation,
    label scale, settings, diagnostics, version, checksum) and prints a JSON summary with the
    convergence diagnostics. Warns on stderr, and sets diagnostics.ok = false, when max R-hat >
    1.05, min bulk ESS < 100 or any divergence (NUTS), or when the SVI loss is still moving.
    """
    from plan_probe.probes._io import read_table, table_format
    from plan_probe._risk_model import RiskFitSettings, RiskModel, parse_task_sd_prior
    from plan_probe._tables import validate_risk_observations

    if not str(output).lower().endswith(".json"):
        raise ValueError(f"the model file must end in .json, but got {output!r}; pass -o MODEL.json.")
    table_format(obs)
    settings = RiskFitSettings(method=method, num_samples=num_samples, num_warmup=num_warmup, num_chains=num_chains,
                               target_accept=target_accept, svi_steps=svi_steps, keep_draws=keep_draws,
                               variance_floor=variance_floor, max_tree_depth=max_tree_depth, lkj_eta=lkj_eta,
                               task_sd_prior=parse_task_sd_prior(task_sd_prior))
    frame = validate_risk_observations(read_table(obs))
    start = time.perf_counter()
    model = RiskModel(settings).fit(frame, seed=seed)
    elapsed = time.perf_counter() - start
    model.save(output)
    warning = model.convergence_warning(str(output))
    if warning:
        click.echo(f"warning: {warning}", err=True)
    summary = {"model": str(output), "method": model.method_, "n_tasks": model.n_tasks_, "n_obs": model.n_obs_,
               "seconds": round(elapsed, 2), "label_scale": model.label_scale_, "diagnostics": model.diagnostics_,
               "population": model.population_summary()}
    click.echo(json.dumps(summary, indent=2, sort_keys=True))


def _plan_options(f):
    options = [
        click.option("--step-cost", default=1.0, show_default=True, type=float, help="lambda: cost of one probe step (GPU-s, $, ...)."),
        click.option("--risk-weight", default=None, type=float,
                     help="gamma: squared-score units of risk one unit of cost is worth "
                          "[default: 1e-3 x the model's label scale S]."),
        click.option("--target-rmse", default=None, type=float,
                     help="epsilon: the RMSE you need (score units) [default: sqrt(S / 2)]."),
        click.option("--min-depth", default=10.0, show_default=True, type=float, help="c_min: shortest probe (steps)."),
        click.option("--max-depth", default=1000.0, show_default=True, type=float, help="c_max: longest probe (steps)."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


@click.command("plan")
@click.argument("tasks", type=click.Path(dir_okay=False))
@click.option("--risk-model", "risk_model", required=True, type=click.Path(dir_okay=False), help="MODEL.json from fit-risk.")
@click.option("-o", "--output", "output", default=None, type=click.Path(dir_okay=False), help="PLAN file (.csv or .parquet).")
@_plan_options
@click.option("--budget", default=None, type=float, help="Total probe steps over all tasks (equal-marginal-gain allocation).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the posterior draws.")
@click.option("--draws", "n_draws", default=256, show_default=True, type=int, help="Posterior draws per task.")
@click.option("--format", "fmt", default=None, type=click.Choice(["json", "table"]), help="Also print the rows to stdout.")
@decision_options
def plan(tasks, risk_model, output, step_cost, risk_weight, target_rmse, min_depth, max_depth, budget, seed, n_draws, fmt,
         **decision_opts):
    """Plan probe lengths for the tasks in TASKS (task_id, static_*, optional pilot rows).

    Writes PLAN with columns task_id, regime, p_static_sufficient, p_dynamic_critical,
    p_noise_dominant, l_int, k, alpha (posterior medians), c_opt, probe_steps, risk_at_c_opt
    (posterior mean), l_int_q10, l_int_q90, k_q10, k_q90, alpha_q10, alpha_q90 (80 % intervals)
    and at_bound (c_min / c_max / none). Without --risk-weight / --target-rmse the defaults are
    relative to the model's label scale S (docs/guide/planning.md). Warns on stderr (and in the
    summary's "warnings") when more than half of the tasks have c_opt at a probe limit, and when
    the model did not converge cleanly. With --objective decision the probe lengths minimise the
    expected go/no-go loss plus probe cost, and PLAN adds prior_mean, prior_var, launch_cost,
    kill_cost, p_success_now, decision_now, loss_now, loss_at_c_opt, value_of_probe,
    loss_at_probe_steps, p_flip, loss_floor, reason (docs/guide/decision.md).
    """
    from plan_probe.probes._io import read_table, table_format, write_table
    from plan_probe._plan import PlanSettings, bound_warning, compute_plan
    from plan_probe._risk_model import RiskModel
    from plan_probe._tables import validate_tasks

    if output is None and fmt is None:
        raise ValueError("plan needs somewhere to put the plan, but got neither -o nor --format; pass -o PLAN.csv or --format json.")
    if output is not None:
        table_format(output)
    table_format(tasks)
    settings = PlanSettings(step_cost=step_cost, risk_weight=risk_weight, target_rmse=target_rmse, min_depth=min_depth,
                            max_depth=max_depth, budget=budget, seed=seed, n_draws=n_draws)
    frame = read_table(tasks)
    decision = prepare_decision(decision_opts, frame)
    frame = frame if decision is None else decision.risk_frame
    task_rows, _ = validate_tasks(frame)
    if decision is None:  # the decision objective may leave tasks unprobed, so B < c_min x n is fine there
        settings.check_budget(len(task_rows))
    model = RiskModel.load(risk_model)
    validate_tasks(frame, model.static_features_)
    resolved = settings.resolve(model.label_scale_)
    start = time.perf_counter()
    if decision is None:
        result, draws = compute_plan(model, frame, settings)
    else:
        result, draws, warning = decision.plan(model, frame, settings, seed=seed)
    log.info("planned %d tasks in %.3f s", len(result), time.perf_counter() - start)
    # the bound warning explains c_opt by the risk objective; the decision objective explains its own (reason column)
    bounds = bound_warning(result, resolved) if decision is None else None
    warnings = [w for w in (model.convergence_warning(str(risk_model)), bounds) if w]
    low = draws["ess"] < 0.05 * settings.n_draws * 8
    if low.any():
        warnings.append(f"{int(low.sum())} task(s) have a low pilot-update ESS; their posterior is coarse.")
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    if output is not None:
        write_table(result, output)
    if fmt == "json":
        click.echo(result.to_json(orient="records", double_precision=10))
    elif fmt == "table":
        click.echo(result.to_string(index=False))
    else:
        counts = result["regime"].value_counts().to_dict()
        at_bound = {k: int(v) for k, v in result["at_bound"].value_counts().items() if k != "none"}
        summary = {"plan": str(output), "n_tasks": len(result), "regimes": counts,
                   "total_probe_steps": int(result["probe_steps"].sum()), "at_bound": at_bound,
                   "label_scale": model.label_scale_, "relative_defaults": settings.relative_keys(),
                   "settings": resolved.to_dict(), "warnings": warnings}
        if decision is not None:
            summary.update(decision.summary(result, warning))
        click.echo(json.dumps(summary, sort_keys=True))


@click.command("phase-diagram")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--risk-model", "risk_model", required=True, type=click.Path(dir_okay=False), help="MODEL.json from fit-risk.")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="Figure file (.png/.pdf/.svg).")
@click.option("--tasks", "tasks", default=None, type=click.Path(dir_okay=False),
              help="The TASKS table the plan came from: adds posterior intervals (and bands to risk curves).")
@click.option("--risk-curves", "curves_dir", default=None, type=click.Path(file_okay=False),
              help="Also write one risk-curve figure per task into this folder.")
@_plan_options
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the posterior draws (with --tasks).")
@click.option("--draws", "n_draws", default=256, show_default=True, type=int, help="Posterior draws per task (with --tasks).")
def phase_diagram(plan_path, risk_model, output, tasks, curves_dir, step_cost, risk_weight, target_rmse, min_depth, max_depth,
                  seed, n_draws):
    """Draw the tasks of PLAN on the (L_int, alpha) plane, coloured by regime, with the boundaries."""
    import os
    import re

    import numpy as np

    from plan_probe.probes._io import atomic_path, read_table
    from plan_probe._plan import PLAN_CORE_COLUMNS, PlanSettings
    from plan_probe._risk_model import RiskModel
    from plan_probe._tables import validate_tasks

    suffix = os.path.splitext(output)[1].lower()
    if suffix not in (".png", ".pdf", ".svg"):
        raise ValueError(f"the figure must end in .png, .pdf or .svg, but got {output!r}; change the extension.")
    settings = PlanSettings(step_cost=step_cost, risk_weight=risk_weight, target_rmse=target_rmse, min_depth=min_depth,
                            max_depth=max_depth, seed=seed, n_draws=n_draws)
    plan_df = read_table(plan_path)
    missing = [c for c in PLAN_CORE_COLUMNS if c not in plan_df.columns]
    if missing:
        raise ValueError(f"PLAN must have the plan columns {list(PLAN_CORE_COLUMNS)}, but {missing} are missing; pass a file written by plan.")
    model = RiskModel.load(risk_model)
    settings = settings.resolve(model.label_scale_)
    draws = None
    if tasks is not None:
        frame = read_table(tasks)
        validate_tasks(frame, model.static_features_)
        draws = model.posterior_task_draws(frame, n_draws=settings.n_draws, seed=settings.seed)
        order = {t: i for i, t in enumerate(draws["task_id"])}
        unknown = [t for t in plan_df["task_id"].astype(str) if t not in order]
        if unknown:
            raise ValueError(f"every PLAN task must be in TASKS, but {unknown[:3]} are not; pass the TASKS file used for the plan.")
        idx = np.array([order[t] for t in plan_df["task_id"].astype(str)])
        draws = {k: (v[idx] if k != "task_id" else v[idx]) for k, v in draws.items()}
    elif curves_dir is not None:
        log.warning("risk curves without --tasks show the posterior-mean curve only (no band)")

    from plan_probe._figures import subplots

    from plan_probe._plots_risk import plot_phase_diagram, plot_risk_curve

    fig, ax = subplots(figsize=(7, 5))
    plot_phase_diagram(ax, plan_df, settings, draws=draws)
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format=suffix[1:], dpi=130)
    written = [str(output)]
    if curves_dir is not None:
        os.makedirs(curves_dir, exist_ok=True)
        for i, row in enumerate(plan_df.itertuples(index=False)):
            fig, ax = subplots(figsize=(5, 3.5))
            task_draws = None if draws is None else {k: draws[k][i] for k in ("l_int", "k", "alpha")}
            plot_risk_curve(ax, row._asdict(), settings, draws=task_draws)
            fig.tight_layout()
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(row.task_id))
            path = os.path.join(curves_dir, f"risk_curve_{name}.png")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=110)
            written.append(path)
    click.echo(json.dumps({"figures": len(written), "phase_diagram": str(output), "risk_curves": curves_dir}))
    sys.stdout.flush()


COMMANDS: list = [fit_risk, plan, phase_diagram]
EXPERIMENT_COMMANDS: list = []
