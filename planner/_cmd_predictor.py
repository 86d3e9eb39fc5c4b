"""CLI commands of the shared predictor: ``fit-predictor``, ``predict``, ``evaluate``, ``screen``.

Only click and the standard library at module level; numpy, pandas, LightGBM, shap and matplotlib
are imported inside the commands so ``plan-probe --help`` stays instant. Every check runs before any
output is written.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import click

log = logging.getLogger(__name__)


def _risk_scale(path, frame):
    """sqrt of the risk model's posterior mean L_i(c) per row (duck-typed ``RiskModel``)."""
    import numpy as np

    try:
        from plan_probe._risk_model import RiskModel
    except ImportError:
        raise ValueError(
            "a risk model needs plan_probe._risk_model, but it is not available in this install; drop --risk-model."
        ) from None
    if "depth" not in frame.columns:
        raise ValueError("a risk model scale needs a depth column, but the meta-dataset has none; drop --risk-model.")
    model = RiskModel.load(path)
    risk = np.asarray(model.expected_risk(frame, depth_col="depth"), dtype=float).reshape(-1)
    if risk.shape[0] != len(frame) or not np.all(np.isfinite(risk)) or np.any(risk <= 0):
        raise ValueError(
            f"the risk model must give a positive finite L(c) per row, but got {risk.shape[0]} values for "
            f"{len(frame)} rows; check that the table carries the risk model's static_* columns."
        )
    return np.sqrt(risk)


def _emit(obj, fmt: str, output) -> None:
    from plan_probe.probes._io import write_json

    if output:
        write_json(obj, output)
    if fmt == "json":
        click.echo(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False))
    else:
        click.echo(_table(obj))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(obj: dict) -> str:
    """Plain-text rendering: evaluate results as model x metric and paired-difference tables, else key: value."""
    from plan_probe._evaluate import INTERVAL_METRICS, METRICS, MODELS

    if all(m in obj for m in ("full", "tuneahead_recipe")):
        cols = list(METRICS) + ["r2_vs_mean"] + list(INTERVAL_METRICS)
        lines = ["model".ljust(18) + "".join(c.rjust(24) for c in cols)]
        for m in MODELS:
            if m not in obj:
                continue
            cells = []
            for c in cols:
                v, se = obj[m].get(c), obj[m].get(f"{c}_se")
                cells.append((" " + f"{_fmt(v)} ± {_fmt(se)}" if v is not None else "-").rjust(24))
            lines.append(m.ljust(18) + "".join(cells))
        lines.append("")
        lines.append("full − X".ljust(18) + "".join(c.rjust(22) for c in ("rmse_diff ± se", "se_corrected", "rmse_ratio",
                                                                          "r2_diff ± se")))
        for m, entry in obj.get("paired", {}).items():
            lines.append(m.ljust(18) + f"{_fmt(entry['rmse_diff'])} ± {_fmt(entry['rmse_diff_se'])}".rjust(22)
                         + _fmt(entry["rmse_diff_se_corrected"]).rjust(22) + _fmt(entry["rmse_ratio"]).rjust(22)
                         + f"{_fmt(entry['r2_diff'])} ± {_fmt(entry['r2_diff_se'])}".rjust(22))
        lines.append(f"rmse_gain_vs_recipe: {_fmt(obj.get('rmse_gain_vs_recipe'))}")
        lines.append("settings: " + json.dumps(obj["settings"], sort_keys=True))
        return "\n".join(lines)
    return "\n".join(f"{k}: {_fmt(v)}" for k, v in obj.items())


def _jobs(value):
    from plan_probe._search import available_cpus

    if value is not None and value < 1:
        raise ValueError(f"jobs must be at least 1, but got jobs={value}; pass --jobs 1 or more.")
    return value or available_cpus()


_PRED_SCALE_HELP = ("Widen or narrow each interval with the model's own prediction (errors that grow or shrink with the "
                    "predicted score, e.g. collapsing runs); off: one width per depth.")
_JOBS_HELP = "Processes for independent fits (default: every CPU this process may use); results do not depend on it."


@click.command("fit-predictor")
@click.argument("meta", type=click.Path(dir_okay=False))
@click.option("--label", required=True, help="Label column (final score).")
@click.option("--id", "id_col", default=None, help="Id column (default dataset_name, run_id or task_id).")
@click.option("--features", type=click.Choice(["all", "static", "dynamic"]), default="all", show_default=True,
              help="Feature subset: static = static+hp, dynamic = dynamic+hp+depth.")
@click.option("--risk-model", type=click.Path(dir_okay=False), default=None,
              help="Risk model JSON; conformal scores are normalised by its sqrt(L(c)).")
@click.option("--tune/--no-tune", default=True, show_default=True,
              help="Blend ridge, LightGBM, linear-tree and ridge+boosted-residual learners chosen by grouped "
                   "inner CV (off: TuneAhead's LightGBM settings exactly).")
@click.option("--top", "n_top", type=int, default=None,
              help="Most learners in the blend [default: 3 with --tune, 1 without].")
@click.option("--seeds", "n_seeds", type=int, default=None,
              help="Seeds averaged per LightGBM learner: SEED, SEED+1, ... [default: 1].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--prediction-scale/--no-prediction-scale", default=False, show_default=True, help=_PRED_SCALE_HELP)
@click.option("--jobs", type=int, default=None, help=_JOBS_HELP)
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
def fit_predictor_cmd(meta, label, id_col, features, risk_model, tune, n_top, n_seeds, seed, prediction_scale, jobs,
                      out_dir):
    """Fit the shared depth-aware predictor on META with CV+ intervals and save it to a directory."""
    from plan_probe._meta import check_folds, load_meta, select_features
    from plan_probe._predictor import FULL_SEEDS, FULL_TOP, PredictorConfig, ProbePredictor

    for name, value in (("top", n_top), ("seeds", n_seeds)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, but got {name}={value}; pass --{name} 1 or more.")
    if prediction_scale and risk_model:
        raise ValueError("--prediction-scale needs the model's own scale, but got --risk-model too; "
                         "drop one of them.")
    n_jobs = _jobs(jobs)
    data = load_meta(meta, label=label, id_col=id_col)
    config = PredictorConfig(seed=seed, tune=tune, n_top=n_top or (FULL_TOP if tune else 1),
                             n_seeds=n_seeds or (FULL_SEEDS if tune else 1), prediction_scale=prediction_scale)
    check_folds(len(set(data.ids)), config.calibration_folds, "distinct ids (calibration folds)")
    feats = list(select_features(data, features))
    scale = _risk_scale(risk_model, data.frame) if risk_model else None
    model = ProbePredictor(config, data.groups, n_jobs=n_jobs).fit(data.frame[feats], data.frame[data.label_col], groups=data.ids,
                                                    scale=scale)
    extra = {"id": data.id_col, "features_option": features, "seed": seed,
             "risk_model": str(risk_model) if risk_model else None}
    model.save(out_dir, extra=extra)
    summary = {
        "predictor": str(Path(out_dir)),
        "rows": len(data.frame),
        "ids": len(set(data.ids)),
        "features": len(feats),
        "groups": {g: sum(1 for f in feats if data.groups[f] == g) for g in sorted(set(data.groups[f] for f in feats))},
        "n_estimators": model.n_estimators_,
        "num_leaves": model.params_["num_leaves"],
        "cv_rmse": model.cv_rmse_,
        "scale_mode": model.scale_mode_,
        "prediction_scale": model.prediction_scale_ or None,
        "seed": seed,
        "members": len(model.blend_),
        "blend": model.blend_summary(),
        "interval_method": model.calibration_method_,
    }
    click.echo(json.dumps(summary, indent=2, sort_keys=True))


@click.command("predict")
@click.argument("meta", type=click.Path(dir_okay=False))
@click.option("--predictor", "predictor_dir", required=True, type=click.Path(file_okay=False),
              help="Directory written by fit-predictor.")
@click.option("-o", "--output", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Prediction table (.csv or .parquet).")
@click.option("--coverage", type=float, default=0.9, show_default=True, help="Nominal interval coverage.")
@click.option("--threshold", type=float, default=None, help="Go threshold tau (label units): adds p_success and go.")
@click.option("--go-probability", type=float, default=0.5, show_default=True,
              help="A run is 'go' when P(score >= tau) reaches this.")
@click.option("--risk-model", type=click.Path(dir_okay=False), default=None,
              help="Risk model JSON (required when the predictor was fitted with one).")
@click.option("--figures", type=click.Path(file_okay=False), default=None, help="Directory for PNG figures.")
def predict_cmd(meta, predictor_dir, out_path, coverage, threshold, go_probability, risk_model, figures):
    """Predict final scores with conformal intervals, P(score >= tau), go/no-go and grouped SHAP."""
    import numpy as np

    from plan_probe.probes._io import table_format, write_table
    from plan_probe._meta import load_meta
    from plan_probe._predictor import ProbePredictor

    table_format(out_path)
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), but got {coverage=}; pass e.g. --coverage 0.9.")
    if not 0 < go_probability < 1:
        raise ValueError(f"go probability must be in (0, 1), but got {go_probability=}; pass e.g. 0.5.")
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, but got {threshold=}; pass a score.")
    model = ProbePredictor.load(predictor_dir)
    id_col = model.extra_.get("id")
    data = load_meta(meta, label=model.label_name_, id_col=id_col, require_label=False, min_rows=1)
    trained = set(model.feature_names_)
    missing = sorted(trained - set(data.features))
    extra = sorted(set(data.features) - trained)
    if missing or extra:
        raise ValueError(
            f"feature columns must match training, but {len(missing)} are missing {missing[:4]} and {len(extra)} are "
            f"new {extra[:4]}; pass a table with exactly the training features or refit the predictor."
        )
    if model.scale_mode_ == "risk" and not risk_model:
        raise ValueError("this predictor was calibrated with a risk model, but --risk-model is missing; pass it.")
    if risk_model and model.scale_mode_ != "risk":  # silently ignoring it would hide a mix-up of files
        raise ValueError(f"--risk-model applies only to a predictor calibrated with a risk model, but got one calibrated "
                         f"without (scale mode {model.scale_mode_!r}); drop --risk-model or refit with it.")
    scale = _risk_scale(risk_model, data.frame) if (risk_model and model.scale_mode_ == "risk") else None
    X = data.frame[model.feature_names_]
    pred, lower, upper = model.predict_interval(X, coverage, scale)
    out = data.frame[[data.id_col]].copy()
    if "depth" in data.frame.columns:
        out["depth"] = data.frame["depth"]
    if data.label_col is not None:
        out[data.label_col] = data.frame[data.label_col]
    out["pred"] = pred
    out["lower"] = lower
    out["upper"] = upper
    # the predictive variance (mean squared calibration residual x row scale^2): with a static-only
    # predictor, pred and pred_var are the prior_mean and prior_var of plan --objective decision
    from plan_probe._decision_plan import predictive_variance

    out["pred_var"] = predictive_variance(model, X, scale)
    out["coverage"] = coverage
    if threshold is not None:
        p = model.prob_at_least(X, threshold, scale)
        out["threshold"] = threshold
        out["p_success"] = p
        out["go"] = p >= go_probability
    expl = model.explain(X)
    for col in expl.columns:
        out[col] = expl[col].to_numpy()
    outside = model.outside_range(X)
    out["outside_range"] = [";".join(names) for names in outside]
    n_out = sum(1 for names in outside if names)
    if n_out:
        first = next(names for names in outside if names)
        log.warning("%d of %d rows have features outside the predictor's training range (e.g. %s): their "
                    "predictions are extrapolations; see the outside_range column.", n_out, len(outside), ", ".join(first[:3]))

    figs = {}
    if figures:
        figs = _predict_figures(model, X, data, pred, lower, upper, scale)
    write_table(out, out_path)
    if figures:
        from plan_probe.probes._io import atomic_path

        Path(figures).mkdir(parents=True, exist_ok=True)
        for name, fig in figs.items():
            with atomic_path(Path(figures) / f"{name}.png") as tmp:
                fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    summary = {"rows": len(out), "output": str(out_path), "coverage": coverage, "mean_pred": float(np.mean(pred))}
    if threshold is not None:
        summary.update({"threshold": threshold, "go": int(out["go"].sum())})
    if figs:
        summary["figures"] = sorted(f"{n}.png" for n in figs)
    click.echo(json.dumps(summary, indent=2, sort_keys=True))


def _predict_figures(model, X, data, pred, lower, upper, scale) -> dict:
    from plan_probe._figures import subplots
    import numpy as np

    from plan_probe._plots_predictor import (coverage_curve, plot_calibration, plot_pred_vs_true, plot_shap_summary,
                                          plot_waterfall)

    figs = {}
    if data.label_col is not None and np.all(np.isfinite(data.frame[data.label_col].to_numpy(dtype=float))):
        y = data.frame[data.label_col].to_numpy(dtype=float)
        fig, ax = subplots(figsize=(5, 5))
        plot_pred_vs_true(ax, y, pred, lower, upper, label=data.label_col)
        figs["pred_vs_true"] = fig
        nominal, empirical = coverage_curve(model, X, y, scale=scale)
        fig, ax = subplots(figsize=(5, 5))
        plot_calibration(ax, nominal, empirical, n=len(y))
        figs["calibration"] = fig
    contrib, base = model.shap_values(X)
    fig, ax = subplots(figsize=(7, 5))
    plot_shap_summary(ax, contrib, X.to_numpy(dtype=float), model.feature_names_)
    figs["shap_summary"] = fig
    worst = int(np.argmin(pred))
    fig, ax = subplots(figsize=(7, 5))
    plot_waterfall(ax, contrib[worst], float(base[worst]), model.feature_names_,
                   title=f"why {data.ids[worst]} is predicted lowest")
    figs["waterfall_lowest"] = fig
    return figs


@click.command("evaluate")
@click.argument("meta", type=click.Path(dir_okay=False))
@click.option("--label", required=True, help="Label column.")
@click.option("--id", "id_col", default=None, help="Id column (default dataset_name, run_id or task_id).")
@click.option("--cv", type=int, default=5, show_default=True, help="Folds (grouped by id).")
@click.option("--repeats", type=int, default=5, show_default=True, help="Repeats with reshuffled folds.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Multiply errors by this for Acc@k (e.g. 100 for labels in [0, 1]).")
@click.option("--depth", type=float, default=None, help="Evaluation depth (default 100 if present, else deepest).")
@click.option("--group-by", "group_by", default=None,
              help="Group the folds by this column instead of the id (e.g. a dataset family: leave-family-out).")
@click.option("--jobs", type=int, default=None, help=_JOBS_HELP)
@click.option("--format", "fmt", type=click.Choice(["json", "table"]), default="json", show_default=True)
@click.option("-o", "--output", "out_path", type=click.Path(dir_okay=False), default=None, help="Also write JSON here.")
@click.option("--predictions", "predictions_path", type=click.Path(dir_okay=False), default=None,
              help="Also write every run's out-of-fold prediction per model (mean over repeats) here (.csv or .parquet).")
@click.option("--prediction-scale/--no-prediction-scale", default=False, show_default=True,
              help="Fit every model's intervals with --prediction-scale of fit-predictor (point predictions unchanged).")
def evaluate_cmd(meta, label, id_col, cv, repeats, seed, scale, depth, group_by, jobs, fmt, out_path, predictions_path,
                 prediction_scale):
    """Repeated grouped K-fold: the full predictor vs ridge, tuned and released TuneAhead recipes, ablations
    and the mean, on identical folds, with paired differences and CV+ interval coverage."""
    from plan_probe._evaluate import evaluate
    from plan_probe._meta import check_folds, load_meta
    from plan_probe.probes._io import table_format, write_table

    n_jobs = _jobs(jobs)
    if predictions_path is not None:
        table_format(predictions_path)  # an unknown extension fails now, not after the evaluation
    data = load_meta(meta, label=label, id_col=id_col)
    if group_by is None:
        check_folds(len(set(data.ids)), cv)
    result = evaluate(data, cv=cv, repeats=repeats, seed=seed, scale=scale, depth=depth, group_by=group_by,
                      n_jobs=n_jobs, predictions=predictions_path is not None, prediction_scale=prediction_scale)
    if predictions_path is not None:
        write_table(result.pop("predictions"), predictions_path)
    _emit(result, fmt, out_path)


@click.command("screen")
@click.argument("pred", type=click.Path(dir_okay=False))
@click.option("--label", required=True, help="True final score column.")
@click.option("--threshold", type=float, required=True, help="Success threshold tau (label units).")
@click.option("--full-cost", type=float, required=True, help="Cost of one full run.")
@click.option("--probe-cost", type=float, required=True, help="Cost of one probe.")
@click.option("--rule", type=click.Choice(["point", "go"]), default="point", show_default=True,
              help="Launch when pred >= tau (point) or when the go column is true (go).")
@click.option("--depth", type=float, default=None, help="Use the rows of this probe depth (tables with several).")
@click.option("--format", "fmt", type=click.Choice(["json", "table"]), default="json", show_default=True)
@click.option("-o", "--output", "out_path", type=click.Path(dir_okay=False), default=None, help="Also write JSON here.")
def screen_cmd(pred, label, threshold, full_cost, probe_cost, rule, depth, fmt, out_path):
    """TuneAhead Table 4 accounting: runs launched, compute saved, successes retained, false kills."""
    from plan_probe.probes._io import read_table
    from plan_probe._screen import screen

    frame = read_table(pred)
    if depth is not None:
        if "depth" not in frame.columns:
            raise ValueError(f"--depth needs a depth column, but {pred!r} has none (got {depth=}); drop --depth.")
        frame = frame[frame["depth"].astype(float) == float(depth)]
        if frame.empty:
            raise ValueError(f"--depth must match rows of the table, but no row has depth {depth:g}; pick a listed depth.")
    id_col = next((c for c in ("dataset_name", "run_id", "task_id") if c in frame.columns), None)
    if id_col is not None and frame[id_col].duplicated().any():
        raise ValueError(
            f"screen needs one row per run, but {id_col!r} repeats (several depths?); pass --depth D to pick one."
        )
    if frame.empty:
        raise ValueError(f"the prediction table must have rows, but {pred!r} is empty; pass a predict output.")
    result = screen(frame, label=label, threshold=threshold, full_cost=full_cost, probe_cost=probe_cost, rule=rule)
    if depth is not None:
        result["depth"] = depth
    _emit(result, fmt, out_path)


COMMANDS: list = [fit_predictor_cmd, predict_cmd, evaluate_cmd, screen_cmd]
EXPERIMENT_COMMANDS: list = []
