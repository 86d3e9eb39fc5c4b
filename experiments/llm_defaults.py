"""Fit the shipped LLM-tier defaults from a built LLM-tier meta-dataset.

Writes into ``DEST`` (``planner/defaults/llm`` for the package):

* ``meta.parquet``: run x depth rows (static_*, hp_*, dyn_*, depth, label);
* ``meta_runs.parquet``: one row per run (static_*, hp_*, label, and the label's evaluation SE
  ``label_se``, which is not a feature);
* ``predictor/``: the shared depth-aware predictor (all features but the probe readout), LightGBM text + JSON;
* ``predictor_static/``: static + hyperparameter features only (for candidates planned at 0 steps);
* ``risk_obs.parquet``: the full predictor's out-of-fold residuals, one nested residual vector per
  run (``run_id``, signed ``residual``, ``risk_obs`` = residual², dof 1; docs/theory.md §2,
  "Nested residuals", :func:`plan_probe._residuals.residual_observations`) with the risk features below;
* ``risk_model.json``: the Bayesian risk model fitted on them (NUTS; ``--risk-method svi`` for a quick look).
* ``spec.toml`` and ``base.json`` (the base model's own score) when the build folder has them;
* ``readout/`` when the table has the readout (``dyn_ref_loss``, ``dyn_ref_choice``): ``predictor/``,
  ``risk_obs.parquet`` and ``risk_model.json`` as above but fitted with it, and ``reference.jsonl``, the
  examples it was measured on (``llm_readout``). A portfolio with a ``reference`` uses them; the plain
  ones stay for portfolios without one and for the live callback, which records no readout.

``--risk-only`` refits only ``risk_obs.parquet`` and ``risk_model.json``: the full predictor is
cross-fitted in memory for its out-of-fold predictions (same settings and seed as the shipped one),
and nothing else in DEST is touched.

The risk model's task features are chosen a priori (not from the data) among the static
descriptors a user's candidate always has: dataset size, duplicate rate, reference NLL of the
base model and output diversity. With a few dozen tasks, fewer features keep the population
regression identifiable.

Run as ``python -m plan_probe.experiments.llm_defaults BUILD_DIR DEST [--seed 0] [--risk-only] [--risk-method nuts|svi] [--warmup N --draws N --chains N --target-accept P --max-tree-depth D --lkj-eta E --task-sd-prior L,K,A] [--min-runs N]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

RISK_FEATURES = ("static_n_examples", "static_duplicate_rate", "static_ref_ppl_mean", "static_output_diversity")


def gain_share_by_group(predictor) -> dict:
    """Share of the fitted predictor's total split gain (summed over its boosters) per feature group.

    Empty when the blend holds no LightGBM member (e.g. the tuned search picked ridge alone).
    """
    totals: dict = {}
    for booster in predictor.boosters_:
        for name, gain in zip(booster.feature_name(), booster.feature_importance("gain")):
            group = predictor.feature_groups_[name]
            totals[group] = totals.get(group, 0.0) + float(gain)
    whole = sum(totals.values()) or 1.0
    return {group: round(gain / whole, 3) for group, gain in sorted(totals.items())}


def _columns(table, prefix: str) -> list:
    return [c for c in table.columns if c.startswith(prefix)]


def _tuned_config(seed: int):
    """The tuned blend that ``fit-predictor`` ships and ``evaluate`` measures as "full".

    Not TuneAhead's untuned recipe: at min_child_samples 20 it cannot split a few dozen run rows,
    so a static-only fit on a tier of that size predicted the label mean. With the prediction
    scale (``evaluate --prediction-scale``): on this tier the errors grow as the predicted score
    falls (collapsing runs), so one width per depth under-covered the runs predicted lowest and
    over-covered, with needlessly wide intervals, the ones predicted highest (tier README).
    """
    from plan_probe._predictor import FULL_SEEDS, FULL_TOP, PredictorConfig

    return PredictorConfig(seed=seed, tune=True, n_top=FULL_TOP, n_seeds=FULL_SEEDS, prediction_scale=True)


def fit_full_predictor(meta, *, seed: int = 0):
    """The depth-aware predictor on every run x depth row (depth, static, hp and dyn features), folds grouped by run."""
    from plan_probe._predictor import ProbePredictor

    cols = ["depth", *_columns(meta, "static_"), *_columns(meta, "hp_"), *_columns(meta, "dyn_")]
    return ProbePredictor(_tuned_config(seed)).fit(meta[cols], meta["label"].rename("label"), groups=meta["run_id"].to_numpy())


def fit_static_predictor(runs, *, seed: int = 0):
    """The static-only predictor (static + hp features, one row per run) for candidates planned at 0 steps."""
    from plan_probe._predictor import ProbePredictor

    cols = [*_columns(runs, "static_"), *_columns(runs, "hp_")]
    return ProbePredictor(_tuned_config(seed)).fit(runs[cols], runs["label"].rename("label"), groups=runs["run_id"].to_numpy())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plan_probe.experiments.llm_defaults", description=__doc__.split("\n\n")[0])
    parser.add_argument("build_dir")
    parser.add_argument("dest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-runs", type=int, default=1,
                        help="refuse to fit on fewer ok runs than this (the v3 tier: 120, issue #19)")
    parser.add_argument("--risk-only", action="store_true", help="refit only risk_obs.parquet and risk_model.json")
    parser.add_argument("--risk-method", choices=("nuts", "svi"), default="nuts",
                        help="how the risk model is fitted (NUTS: the shipped defaults; SVI: a quick look)")
    parser.add_argument("--warmup", type=int, default=400, help="NUTS warm-up steps per chain")
    parser.add_argument("--draws", type=int, default=400, help="NUTS draws per chain")
    parser.add_argument("--chains", type=int, default=2, help="NUTS chains")
    parser.add_argument("--target-accept", type=float, default=0.85,
                        help="NUTS target acceptance probability (smaller steps near 1: fewer divergences)")
    parser.add_argument("--max-tree-depth", type=int, default=7, help="NUTS maximum tree depth")
    parser.add_argument("--lkj-eta", type=float, default=2.0, help="LKJ concentration of the task correlation")
    parser.add_argument("--task-sd-prior", default="1,1,0.5",
                        help="half-normal prior scales of the task spread of (log L_int, log K, log alpha)")
    args = parser.parse_args(argv)

    from plan_probe.probes._io import read_table, write_table
    from plan_probe._risk_model import RiskFitSettings, parse_task_sd_prior

    try:  # validated before any fitting, so a bad sampler setting costs nothing
        fit_settings = RiskFitSettings(method=args.risk_method, num_warmup=args.warmup, num_samples=args.draws,
                                       num_chains=args.chains, target_accept=args.target_accept,
                                       max_tree_depth=args.max_tree_depth, lkj_eta=args.lkj_eta,
                                       task_sd_prior=parse_task_sd_prior(args.task_sd_prior))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    build, dest = Path(args.build_dir), Path(args.dest)
    meta = read_table(build / "meta.parquet")
    n_runs = int(meta["run_id"].nunique())
    if n_runs < args.min_runs:
        print(f"error: the defaults need at least --min-runs={args.min_runs} ok runs, but got {n_runs} in {build / 'meta.parquet'}; "
              "build more runs (python -m plan_probe.experiments.llm_tier runs ...) and assemble again.", file=sys.stderr)
        return 2
    missing = _missing_reference(meta, build)
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    statics, hps = _columns(meta, "static_"), _columns(meta, "hp_")
    label_se = read_table(build / "runs.parquet").set_index("run_id")["label_se"]
    runs = meta.sort_values("depth").groupby("run_id", sort=True).tail(1)[["run_id", *statics, *hps, "label"]]
    runs = runs.sort_values("run_id").reset_index(drop=True)
    runs["label_se"] = label_se.loc[runs["run_id"]].to_numpy(dtype=float)
    if not args.risk_only:
        write_table(meta, dest / "meta.parquet")
        write_table(runs.reset_index(drop=True), dest / "meta_runs.parquet")

    from plan_probe._defaults import READOUT_DIR
    from plan_probe.probes import READOUT_COLUMNS

    plain = meta.drop(columns=[c for c in READOUT_COLUMNS if c in meta.columns])
    full, risk = _fit_depth_aware(plain, dest, args, fit_settings)
    summary = {"runs": int(runs.shape[0]), "rows": int(meta.shape[0]), "cv_rmse_full": full.cv_rmse_,
               "label_sd": float(runs["label"].std(ddof=1)), "mean_label_se": float(runs["label_se"].mean()),
               "risk_diagnostics": risk.diagnostics_, "label_scale": risk.label_scale_}
    if not args.risk_only:
        static = fit_static_predictor(runs, seed=args.seed)
        static.save(dest / "predictor_static",
                    extra={"id": "run_id", "features_option": "static", "seed": args.seed, "risk_model": None})
        summary.update(cv_rmse_static=static.cv_rmse_, gain_share_full=gain_share_by_group(full),
                       blend_full=full.blend_summary(), blend_static=static.blend_summary())
        for name in ("spec.toml", "base.json"):  # the design, and the base model's own score (the no-fine-tuning baseline)
            if (build / name).is_file():
                shutil.copyfile(build / name, dest / name)
    if _has_readout(meta):
        full_r, risk_r = _fit_depth_aware(meta, dest / READOUT_DIR, args, fit_settings)
        summary["readout"] = {"cv_rmse_full": full_r.cv_rmse_, "risk_diagnostics": risk_r.diagnostics_}
        if not args.risk_only:
            summary["readout"]["gain_share_full"] = gain_share_by_group(full_r)
            _ship_reference(build, dest / READOUT_DIR)
    elif not args.risk_only:  # a stale variant would pair a reference and predictors with a table that lacks them
        shutil.rmtree(dest / READOUT_DIR, ignore_errors=True)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def _fit_depth_aware(meta, dest: Path, args, fit_settings):
    """Fit the depth-aware predictor on ``meta`` and the risk model on its nested residuals, into ``dest``.

    With ``--risk-only`` the predictor is only cross-fitted in memory (nothing but the risk files is written).
    """
    from plan_probe._residuals import residual_observations
    from plan_probe._risk_model import RiskModel
    from plan_probe.probes._io import write_table

    dest.mkdir(parents=True, exist_ok=True)
    full = fit_full_predictor(meta, seed=args.seed)
    if not args.risk_only:
        full.save(dest / "predictor", extra={"id": "run_id", "features_option": "all", "seed": args.seed, "risk_model": None})
    obs = residual_observations(meta, full.oof_pred_, static_features=RISK_FEATURES)
    write_table(obs, dest / "risk_obs.parquet")
    risk = RiskModel(fit_settings).fit(obs, seed=args.seed)
    risk.save(dest / "risk_model.json")
    return full, risk


def _has_readout(meta) -> bool:
    from plan_probe.probes import READOUT_COLUMNS

    return any(c in meta.columns for c in READOUT_COLUMNS)


def _missing_reference(meta, build: Path) -> str | None:
    """The error when the table has the readout but BUILD lacks the reference it was measured on."""
    from plan_probe.experiments.llm_readout import REFERENCE

    if _has_readout(meta) and not (build / REFERENCE).is_file():
        return (f"the table has the readout, so BUILD must hold the {REFERENCE} it was measured on, but "
                f"{str(build / REFERENCE)!r} is missing; run python -m plan_probe.experiments.llm_readout reference SPEC --out BUILD.")
    return None


def _ship_reference(build: Path, dest: Path) -> None:
    """Ship the readout's reference examples beside the predictor that uses the readout."""
    from plan_probe.experiments.llm_readout import REFERENCE

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(build / REFERENCE, dest / REFERENCE)


if __name__ == "__main__":
    sys.exit(main())
