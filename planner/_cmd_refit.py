"""CLI command ``plan-probe refit``: the three models from run histories and meta-datasets (docs/guide/live.md).

Only click and the standard library at module level.
"""

from __future__ import annotations

import json

import click


@click.command("refit")
@click.argument("inputs", metavar="HISTORY_OR_META...", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="MODELS_DIR to write (risk_model.json, predictor/, predictor_static/, refit.json).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every fit.")
@click.option("--tune/--no-tune", default=False, show_default=True,
              help="Tune the predictors' learners by grouped inner CV (slower) instead of TuneAhead's settings.")
@click.option("--method", default="auto", show_default=True, type=click.Choice(["auto", "nuts", "svi"]),
              help="Risk-model inference (auto: SVI above 600 tasks).")
@click.option("--draws", "num_samples", default=400, show_default=True, type=int, help="NUTS draws per chain.")
@click.option("--warmup", "num_warmup", default=400, show_default=True, type=int, help="NUTS warm-up steps per chain.")
@click.option("--chains", "num_chains", default=2, show_default=True, type=int, help="NUTS chains.")
@click.option("--svi-steps", default=3000, show_default=True, type=int, help="SVI optimisation steps.")
@click.option("--risk-features", default=None,
              help="Comma-separated static_* features of the risk model [default: those of static_n_examples, "
                   "static_duplicate_rate, static_ref_ppl_mean, static_output_diversity present].")
@click.option("--censored-warn", default=0.3, show_default=True, type=float,
              help="Warn when the censored (no_go) share of finished runs exceeds this.")
@click.option("--prediction-scale/--no-prediction-scale", default=False, show_default=True,
              help="Intervals whose width follows each predictor's own prediction (fit-predictor --prediction-scale).")
@click.option("--task-sd-prior", default="1,1,0.5", show_default=True,
              help="Risk model: half-normal prior scales of the task spread of (log L_int, log K, log alpha) (fit-risk "
                   "--task-sd-prior; the shipped LLM defaults use 1,1,0.2).")
@click.option("--lkj-eta", default=2.0, show_default=True, type=float,
              help="Risk model: LKJ concentration of the task correlation (the shipped LLM defaults use 4).")
def refit_cmd(inputs, out_dir, seed, tune, method, num_samples, num_warmup, num_chains, svi_steps, risk_features,
              censored_warn, prediction_scale, task_sd_prior, lkj_eta):
    """Fit the risk model and both predictors from history directories and built meta-datasets.

    Each HISTORY_OR_META is a history directory (PlanProbeCallback's history_dir), a build-meta
    output, a folder with meta.parquet (e.g. an earlier MODELS_DIR) or a meta table. Runs stopped
    as no_go are censored: counted, reported, left out of the labels. Prints a JSON summary; the
    MODELS_DIR works wherever "default" does (portfolio models = "DIR", the callback's models_dir).
    """
    from plan_probe._refit import RefitSettings, refit
    from plan_probe._risk_model import parse_task_sd_prior

    feats = None
    if risk_features is not None:
        feats = tuple(f.strip() for f in risk_features.split(",") if f.strip())
    settings = RefitSettings(seed=seed, tune=tune, method=method, num_samples=num_samples, num_warmup=num_warmup,
                             num_chains=num_chains, svi_steps=svi_steps, risk_features=feats, censored_warn=censored_warn,
                             prediction_scale=prediction_scale, task_sd_prior=parse_task_sd_prior(task_sd_prior),
                             lkj_eta=lkj_eta)
    summary = refit(inputs, out_dir, settings)
    click.echo(json.dumps(summary, indent=2, sort_keys=True, allow_nan=False))


COMMANDS = [refit_cmd]
