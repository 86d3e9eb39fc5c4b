"""Repeated grouped K-fold evaluation of the predictor against baselines and ablations.

All models see IDENTICAL folds (grouped by the id column, or by ``group_by``, so rows of one run
or group never straddle train and test) and are scored on the same evaluation rows: the rows at
the evaluation depth (``--depth``, default 100 when present, else the deepest probe) of the test
fold. Every model's intervals are CV+ intervals of that model (see :mod:`plan_probe._predictor`),
calibrated on its training fold only.

Models
------
full
    :class:`ProbePredictor` with ``tune=True``: a blend of ridge, LightGBM, linear-tree and
    ridge + boosted-residual learners chosen by grouped inner CV on the training fold only, on all
    depths of the training fold (or the evaluation depth's rows alone, if the inner CV prefers).
full_no_dynamic
    The same pipeline without the ``dyn_*`` (dynamic, probe) features: ``full − full_no_dynamic``
    is what the probe adds.
ridge
    Standardised ridge regression (alpha by grouped inner CV) on the evaluation-depth rows, all
    features except depth.
recipe_tuned
    TuneAhead's model family (LightGBM, 4 leaves, bagging off) with min_child_samples ∈ {5, 10, 20}
    and the tree count chosen by the same nested inner CV as ``full``; evaluation-depth rows.
tuneahead_recipe
    TuneAhead's recipe as released: learning rate 0.05, 4 leaves, 140 trees, min_child_samples 20,
    subsample without bagging_freq (so no bagging), trained only on evaluation-depth rows, all
    features except depth.
static_only / dynamic_only
    The default predictor (TuneAhead settings, bagging on) on static+hp features at the evaluation
    depth / on dynamic+hp+depth features over all depths.
mean
    The training fold's mean label.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from plan_probe._meta import MetaDataset, check_folds, select_features
from plan_probe._predictor import FULL_SEEDS, FULL_TOP, PredictorConfig, ProbePredictor, group_folds

__all__ = ["MODELS", "METRICS", "INTERVAL_METRICS", "evaluate", "regression_metrics", "eval_depth"]

log = logging.getLogger(__name__)

MODELS = ("full", "full_no_dynamic", "ridge", "recipe_tuned", "tuneahead_recipe", "static_only", "dynamic_only",
          "mean")
METRICS = ("rmse", "r2", "pearson", "acc_at_1", "acc_at_2", "acc_at_3")
COVERAGES = (0.8, 0.9)
INTERVAL_METRICS = ("coverage_80", "coverage_90", "width_80", "width_90",
                    "coverage_90_bottom", "coverage_90_top", "width_90_top")
_PAIRED = ("rmse", "r2")


def regression_metrics(y, pred, scale: float = 1.0) -> dict:
    """RMSE (label units), R², Pearson r and Acc@k (share with |error|·scale <= k, k = 1, 2, 3)."""
    y = np.asarray(y, dtype=float)
    pred = np.asarray(pred, dtype=float)
    err = pred - y
    sst = float(np.sum((y - y.mean()) ** 2))
    out = {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "r2": float(1.0 - np.sum(err**2) / sst) if sst > 0 else float("nan"),
        "pearson": float(np.corrcoef(y, pred)[0, 1]) if np.std(y) > 0 and np.std(pred) > 0 else float("nan"),
    }
    for k in (1, 2, 3):
        out[f"acc_at_{k}"] = float(np.mean(np.abs(err) * scale <= k + 1e-9))
    return out


def eval_depth(meta: MetaDataset, depth: float | None) -> float | None:
    """Evaluation depth: the one given (must exist), else 100 when present, else the deepest."""
    if not meta.has_depth:
        if depth is not None:
            raise ValueError(f"--depth needs a depth column, but the meta-dataset has none (got {depth=}); drop --depth.")
        return None
    levels = np.unique(meta.frame["depth"].to_numpy(dtype=float))
    if depth is not None:
        if float(depth) not in set(levels.tolist()):
            raise ValueError(
                f"the evaluation depth must be one of the table's depths, but got {depth=}; pick one of "
                f"{[int(v) if v.is_integer() else v for v in levels]}."
            )
        return float(depth)
    return 100.0 if 100.0 in set(levels.tolist()) else float(levels.max())


@dataclass(frozen=True)
class _Spec:
    config: PredictorConfig
    features: tuple
    all_depths: bool  # train on every depth (else only the evaluation depth's rows)


def _specs(meta: MetaDataset, seed: int, prediction_scale: bool = False) -> dict:
    feats_all = tuple(meta.features)
    no_depth = tuple(f for f in feats_all if f != "depth")
    no_dynamic = tuple(f for f in feats_all if meta.groups[f] != "dynamic")
    static_feats = tuple(select_features(meta, "static")) if any(meta.groups[f] == "static" for f in feats_all) else ()
    try:
        dynamic_feats = tuple(select_features(meta, "dynamic"))
    except ValueError:
        dynamic_feats = ()
    tuned = PredictorConfig(seed=seed, tune=True, n_top=FULL_TOP, n_seeds=FULL_SEEDS)
    base = PredictorConfig(seed=seed)
    specs = {
        "full": _Spec(tuned, feats_all, True),
        "full_no_dynamic": _Spec(tuned, no_dynamic, True),
        "ridge": _Spec(PredictorConfig(seed=seed, tune=True, search="ridge"), no_depth, False),
        "recipe_tuned": _Spec(PredictorConfig(seed=seed, tune=True, search="recipe", n_top=1, subsample_freq=0),
                              no_depth, False),
        "tuneahead_recipe": _Spec(PredictorConfig(seed=seed, subsample_freq=0), no_depth, False),
        "static_only": _Spec(base, static_feats, False),
        "dynamic_only": _Spec(base, dynamic_feats, True),
        "mean": _Spec(PredictorConfig(seed=seed, tune=True, search="mean"), no_depth, False),
    }
    if not dynamic_feats or len(no_dynamic) == len(feats_all) or not [f for f in no_dynamic if f != "depth"]:
        specs.pop("full_no_dynamic")
    if prediction_scale:
        specs = {name: dataclasses.replace(spec, config=dataclasses.replace(spec.config, prediction_scale=True))
                 for name, spec in specs.items()}
    return {name: spec for name, spec in specs.items() if [f for f in spec.features if f != "depth"]}


def _fold_task(data: dict, r: int, k: int) -> dict:
    """Train every model on one outer training fold and score it on the fold's evaluation rows."""
    import pandas as pd

    X = pd.DataFrame(data["X"], columns=data["columns"])
    y, groups, at_eval, d_eval = data["y"], data["groups"], data["at_eval"], data["d_eval"]
    folds = data["folds"][r]
    train, test = folds != k, (folds == k) & at_eval
    out = {}
    for name, spec in data["specs"].items():
        rows = train if spec.all_depths else train & at_eval
        cfg = spec.config
        n_groups = len(np.unique(groups[rows]))
        calib = min(cfg.calibration_folds, n_groups)
        need = 4 if cfg.tune and cfg.search not in ("mean", "ridge") else 2
        if n_groups < need:
            raise ValueError(f"each training fold needs at least {need} distinct ids (groups), but got {n_groups} "
                             f"(cv={int(folds.max()) + 1}); lower --cv or add runs.")
        if calib != cfg.calibration_folds:
            cfg = dataclasses.replace(cfg, calibration_folds=calib)
        feats = list(spec.features)
        target = d_eval if (spec.all_depths and d_eval is not None) else None
        model = ProbePredictor(cfg, data["feature_groups"]).fit(X.loc[rows, feats], y[rows], groups=groups[rows],
                                                                 target_depth=target)
        Xt = X.loc[test, feats]
        pred = model.predict(Xt)
        entry = regression_metrics(y[test], pred, data["scale"])
        entry["sq_err"] = (y[test] - pred) ** 2  # for the pooled skill against the mean (not a fold metric)
        entry["pred"] = pred  # for the out-of-fold predictions table (not a fold metric)
        bounds = {c: model.predict_interval(Xt, c)[1:] for c in COVERAGES}
        for c, (lo, hi) in bounds.items():
            tag = int(round(c * 100))
            entry[f"coverage_{tag}"] = float(np.mean((y[test] >= lo) & (y[test] <= hi)))
            entry[f"width_{tag}"] = float(np.mean(hi - lo))
        entry.update(_coverage_by_third(y[test], pred, *bounds[0.9]))
        out[name] = entry
    out["test_rows"] = np.flatnonzero(test)
    log.info("repeat %d fold %d done", r, k)
    return out


def _coverage_by_third(y, pred, lo, hi) -> dict:
    """90 % coverage among the third of test rows predicted lowest and highest, and the width there.

    Conformal coverage is marginal: a constant-width interval can over-cover where the model errs
    little and under-cover where it errs much, which the overall coverage averages away.
    """
    order = np.argsort(pred, kind="stable")
    third = len(order) // 3
    if third == 0:
        return {"coverage_90_bottom": float("nan"), "coverage_90_top": float("nan"), "width_90_top": float("nan")}
    inside = (y >= lo) & (y <= hi)
    bottom, top = order[:third], order[-third:]
    return {"coverage_90_bottom": float(np.mean(inside[bottom])), "coverage_90_top": float(np.mean(inside[top])),
            "width_90_top": float(np.mean(hi[top] - lo[top]))}


def evaluate(
    meta: MetaDataset,
    *,
    cv: int = 5,
    repeats: int = 5,
    seed: int = 0,
    scale: float = 1.0,
    depth: float | None = None,
    group_by: str | None = None,
    n_jobs: int = 1,
    predictions: bool = False,
    prediction_scale: bool = False,
) -> dict:
    """Repeated grouped K-fold CV of every model of :data:`MODELS` on identical folds.

    Parameters
    ----------
    group_by : str, optional
        A column of ``meta.frame`` whose values group the folds (and the inner CV) instead of the
        id: all runs of a group are held out together (e.g. leave-family-out). It must be constant
        within each id.
    n_jobs : int
        Processes for the outer folds (results do not depend on it).
    predictions : bool
        Also return ``"predictions"``: a DataFrame with one row per evaluation row (the id, the
        group, the label, ``repeats``) and every model's out-of-fold prediction averaged over the
        repeats (column = model name), so a model can be compared with any other score of the same
        runs, pair by pair.
    prediction_scale : bool
        Fit every model with ``PredictorConfig.prediction_scale`` (intervals widened or narrowed by
        the model's own prediction); point predictions are unchanged.

    Returns
    -------
    dict
        ``{model: {metric: mean over folds, metric_se: its standard error, ...}}`` with the
        metrics of :data:`METRICS` and :data:`INTERVAL_METRICS`, and ``r2_vs_mean`` /
        ``r2_vs_mean_se`` (pooled out-of-fold skill against the mean model, see :func:`_skill_vs_mean`); ``paired``: for every model X,
        ``full − X`` per fold for RMSE and R² (``rmse_diff``, ``rmse_diff_se``,
        ``rmse_diff_se_corrected``, ``rmse_ratio``, ``r2_diff``, ...); ``settings``; and
        ``rmse_gain_vs_recipe``. ``_se`` is the std over the cv·repeats folds / sqrt(cv·repeats):
        folds of different repeats share rows, so it is optimistic; ``_se_corrected`` is the
        Nadeau–Bengio (2003) corrected resampled SE sqrt((1/J + n_test/n_train)·var).
    """
    from plan_probe._search import parallel_map

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, but got {repeats=}; pass --repeats 1 or more.")
    if not scale > 0:
        raise ValueError(f"scale must be positive, but got {scale=}; pass e.g. --scale 100 for labels in [0, 1].")
    d_eval = eval_depth(meta, depth)
    groups = _fold_groups(meta, group_by)
    check_folds(len(np.unique(groups)), cv, "distinct ids" if group_by is None else f"distinct {group_by!r} groups")
    X = meta.X
    y = meta.y
    d = X["depth"].to_numpy(dtype=float) if meta.has_depth else None
    at_eval = np.ones(len(y), dtype=bool) if d is None else (d == d_eval)
    if len(np.unique(groups[at_eval])) < cv:
        raise ValueError(
            f"cross-validation needs at least as many ids at the evaluation depth as folds, but got "
            f"{len(np.unique(groups[at_eval]))} for cv={cv}; lower --cv or pick another --depth."
        )
    specs = _specs(meta, seed, prediction_scale)
    if predictions:
        _check_table_names(meta, specs, group_by)
    data = {
        "X": X.to_numpy(dtype=float), "columns": list(X.columns), "y": y, "groups": groups, "at_eval": at_eval,
        "d_eval": d_eval, "scale": scale, "specs": specs, "feature_groups": dict(meta.groups),
        "folds": [group_folds(groups, cv, seed + 1000 * r) for r in range(repeats)],
    }
    tasks = [(r, k) for r in range(repeats) for k in range(cv) if ((data["folds"][r] == k) & at_eval).any()]
    per_fold = parallel_map(_fold_task, tasks, data, n_jobs)
    out = {name: _summary([f[name] for f in per_fold]) for name in specs}
    for name, skill in _skill_vs_mean(per_fold, groups, specs).items():
        out[name].update(skill)
    out["paired"] = _paired(per_fold, specs, cv)
    out["settings"] = {
        "cv": cv,
        "repeats": repeats,
        "seed": seed,
        "scale": scale,
        "depth": d_eval,
        "rows": int(len(y)),
        "eval_rows": int(at_eval.sum()),
        "ids": int(len(np.unique(meta.ids))),
        "groups": int(len(np.unique(groups))),
        "group_by": group_by or meta.id_col,
        "folds": len(per_fold),
        "label": meta.label_col,
        "id": meta.id_col,
        "models": list(specs),
        "interval_method": "cv+ (Barber et al. 2021) over grouped folds; tuned models choose their blend on a "
                           "selection split first",
        "calibration_folds": PredictorConfig().calibration_folds,
        "prediction_scale": bool(prediction_scale),
    }
    if predictions:
        out["predictions"] = _out_of_fold_table(per_fold, meta, groups, specs, group_by)
    out["rmse_gain_vs_recipe"] = (
        1.0 - out["full"]["rmse"] / out["tuneahead_recipe"]["rmse"] if out.get("tuneahead_recipe") else None
    )
    return out


def _check_table_names(meta: MetaDataset, specs: dict, group_by: str | None) -> None:
    """The predictions table names its model columns after the models: no data column may share a name."""
    taken = {meta.id_col, meta.label_col, "depth", "repeats"} | ({group_by.strip().lower()} if group_by else set())
    clash = sorted(taken & set(specs))
    if clash:
        raise ValueError(f"the predictions table needs id, label and group columns that are not model names, but got "
                         f"{clash}; rename those columns of the meta-dataset.")


def _sum_over_folds(per_fold: list, n: int, specs: dict, key: str) -> tuple[np.ndarray, dict]:
    """Per evaluation row: how many folds held it out, and each model's per-row ``key`` summed over those folds."""
    counts = np.zeros(n)
    sums = {name: np.zeros(n) for name in specs}
    for fold in per_fold:
        np.add.at(counts, fold["test_rows"], 1.0)
        for name in specs:
            np.add.at(sums[name], fold["test_rows"], fold[name][key])
    return counts, sums


def _out_of_fold_table(per_fold: list, meta: MetaDataset, groups: np.ndarray, specs: dict, group_by: str | None):
    """Every evaluation row's out-of-fold prediction per model, averaged over the repeats that held it out."""
    import pandas as pd

    counts, sums = _sum_over_folds(per_fold, len(groups), specs, "pred")
    held = counts > 0
    table = {meta.id_col: meta.ids[held]}
    if group_by is not None:
        table[group_by.strip().lower()] = groups[held]
    if meta.has_depth:
        table["depth"] = meta.X["depth"].to_numpy(dtype=float)[held]
    table[meta.label_col] = np.asarray(meta.y, dtype=float)[held]
    table["repeats"] = counts[held].astype(int)
    for name in specs:
        table[name] = sums[name][held] / counts[held]
    return pd.DataFrame(table)


def _fold_groups(meta: MetaDataset, group_by: str | None) -> np.ndarray:
    ids = meta.ids
    if group_by is None:
        return ids
    col = group_by.strip().lower()
    if col not in meta.frame.columns:
        raise ValueError(f"--group-by must name a column of the meta-dataset, but got {group_by!r}; "
                         f"pick one of {list(meta.frame.columns)[:8]}.")
    values = meta.frame[col].astype(str).to_numpy()
    per_id = {}
    for i, v in zip(ids, values):
        if per_id.setdefault(i, v) != v:
            raise ValueError(f"--group-by must be constant within each id, but {meta.id_col}={i!r} has several "
                             f"{col!r} values; group by a coarser column.")
    return values


def _summary(entries: list) -> dict:
    out = {}
    for key in METRICS + INTERVAL_METRICS:
        out[key], out[f"{key}_se"] = _mean_se([e[key] for e in entries])
    return out


def _skill_vs_mean(per_fold: list, groups: np.ndarray, specs: dict) -> dict:
    r"""Pooled out-of-fold skill against the mean predictor, with a jackknife SE over groups.

    .. math:: R^2_{\text{vs mean}} = 1 - \frac{\sum_i (y_i - \hat y_i)^2}{\sum_i (y_i - \bar y_{-i})^2}

    over every evaluation row i, each predicted by the fold that held it out (the mean model's
    :math:`\bar y_{-i}` is its training fold's mean), with each row's squared errors averaged over
    the repeats. Unlike the mean of per-fold R² (``r2``), a handful of test rows per fold does not
    bias it down. The SE is the leave-one-group-out jackknife of the ratio (the groups are the
    folds' independent units).
    """
    if "mean" not in specs:
        return {}
    counts, sse = _sum_over_folds(per_fold, len(groups), specs, "sq_err")
    held = counts > 0
    labels, inverse = np.unique(groups[held], return_inverse=True)
    per_group = {name: np.bincount(inverse, weights=v[held], minlength=len(labels)) for name, v in sse.items()}
    base = per_group["mean"]
    out = {}
    for name in specs:
        model = per_group[name]
        skill = 1.0 - model.sum() / base.sum() if base.sum() > 0 else float("nan")
        out[name] = {"r2_vs_mean": float(skill), "r2_vs_mean_se": _jackknife_ratio_se(model, base)}
    return out


def _jackknife_ratio_se(model: np.ndarray, base: np.ndarray) -> float | None:
    """Jackknife SE of 1 - sum(model)/sum(base), leaving out one group at a time."""
    n = model.size
    if n < 3:
        return None
    rest_base = base.sum() - base
    if np.any(rest_base <= 0):
        return None
    loo = 1.0 - (model.sum() - model) / rest_base
    return float(np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))


def _paired(per_fold: list, specs: dict, cv: int) -> dict:
    """``full − X`` per fold for every model X, with naive and corrected standard errors."""
    out = {}
    for name in specs:
        if name == "full":
            continue
        entry = {}
        for key in _PAIRED:
            diff = [f["full"][key] - f[name][key] for f in per_fold]
            entry[f"{key}_diff"], entry[f"{key}_diff_se"] = _mean_se(diff)
            entry[f"{key}_diff_se_corrected"] = _corrected_se(diff, cv)
        full = np.mean([f["full"]["rmse"] for f in per_fold])
        other = np.mean([f[name]["rmse"] for f in per_fold])
        entry["rmse_ratio"] = float(full / other) if other > 0 else None
        out[name] = entry
    return out


def _corrected_se(values, cv: int) -> float | None:
    """Nadeau & Bengio (2003): Var ≈ (1/J + n_test/n_train)·s² for J resampled train/test splits."""
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if arr.size < 2:
        return None
    return float(np.sqrt((1.0 / arr.size + 1.0 / (cv - 1)) * arr.var(ddof=1)))


def _mean_se(values) -> tuple[float | None, float | None]:
    """Mean and standard error over folds; None (JSON null) where undefined."""
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if arr.size == 0:
        return None, None
    se = float(arr.std(ddof=1) / np.sqrt(arr.size)) if arr.size > 1 else None
    return float(arr.mean()), se
