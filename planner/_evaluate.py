"""Repeated grouped K-fold evaluation of the predictor against ablations and TuneAhead's recipe.

All models see IDENTICAL folds (grouped by the id column, so rows of one run never straddle train
and test) and are scored on the same evaluation rows: the rows at the evaluation depth (``--depth``,
default 100 when present, else the deepest probe) of the test fold.

Models
------
full
    :class:`ProbePredictor` with ``tune=True``: one depth-aware model on all depths of the training
    fold, (bagging, num_leaves, n_estimators, training scope) chosen by grouped inner CV on the
    training fold only; the ``FULL_TOP`` best candidates, each with ``FULL_SEEDS`` seeds, are averaged.
static_only / dynamic_only
    The default predictor (TuneAhead settings, bagging on) on static+hp features at the evaluation
    depth / on dynamic+hp+depth features over all depths.
tuneahead_recipe
    TuneAhead's recipe as released: the same LightGBM settings with bagging NOT enabled (subsample
    without bagging_freq), trained only on evaluation-depth rows, all features except depth.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from plan_probe._meta import MetaDataset, check_folds, select_features
from plan_probe._predictor import FULL_SEEDS, FULL_TOP, PredictorConfig, ProbePredictor, group_folds

__all__ = ["MODELS", "METRICS", "evaluate", "regression_metrics", "eval_depth"]

log = logging.getLogger(__name__)

MODELS = ("full", "static_only", "dynamic_only", "tuneahead_recipe")
METRICS = ("rmse", "r2", "pearson", "acc_at_1", "acc_at_2", "acc_at_3")
COVERAGES = (0.8, 0.9)


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


def evaluate(
    meta: MetaDataset,
    *,
    cv: int = 5,
    repeats: int = 5,
    seed: int = 0,
    scale: float = 1.0,
    depth: float | None = None,
) -> dict:
    """Repeated grouped K-fold CV of the four models on identical folds.

    Returns
    -------
    dict
        ``{model: {metric: mean, metric_se: standard error over folds, ...}}`` plus, for ``full``,
        ``coverage_80``/``coverage_90`` (held-out interval coverage) with standard errors, and a
        ``settings`` entry (cv, repeats, seed, scale, depth, rows, ids, folds). The standard error is
        std over the cv·repeats folds / sqrt(cv·repeats); folds of different repeats overlap, so it
        is a rough (optimistic) guide, not an exact one.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, but got {repeats=}; pass --repeats 1 or more.")
    if not scale > 0:
        raise ValueError(f"scale must be positive, but got {scale=}; pass e.g. --scale 100 for labels in [0, 1].")
    d_eval = eval_depth(meta, depth)
    ids = meta.ids
    check_folds(len(np.unique(ids)), cv)
    X = meta.X
    y = meta.y
    d = X["depth"].to_numpy(dtype=float) if meta.has_depth else None
    at_eval = np.ones(len(y), dtype=bool) if d is None else (d == d_eval)
    if len(np.unique(ids[at_eval])) < cv:
        raise ValueError(
            f"cross-validation needs at least as many ids at the evaluation depth as folds, but got "
            f"{len(np.unique(ids[at_eval]))} for cv={cv}; lower --cv or pick another --depth."
        )
    feats_all = list(meta.features)
    no_depth = [f for f in feats_all if f != "depth"]
    static_feats = [f for f in select_features(meta, "static")]
    try:
        dynamic_feats = list(select_features(meta, "dynamic"))
    except ValueError:
        dynamic_feats = []
    base = PredictorConfig(seed=seed)
    specs = {
        # name: (config, features, train on all depths?)
        "full": (PredictorConfig(seed=seed, tune=True, n_top=FULL_TOP, n_seeds=FULL_SEEDS), feats_all, True),
        "static_only": (base, static_feats, False),
        "dynamic_only": (base, dynamic_feats, True),
        "tuneahead_recipe": (PredictorConfig(seed=seed, subsample_freq=0), no_depth, False),
    }
    per_fold = {m: {k: [] for k in METRICS} for m in MODELS}
    cover = {c: [] for c in COVERAGES}
    for r in range(repeats):
        folds = group_folds(ids, cv, seed + 1000 * r)
        for k in range(cv):
            train, test = folds != k, (folds == k) & at_eval
            if not test.any():
                continue
            for name, (cfg, feats, all_depths) in specs.items():
                if not feats:
                    continue
                rows = train if all_depths else train & at_eval
                calib = min(cfg.calibration_folds, len(np.unique(ids[rows])))
                if calib < 2:
                    raise ValueError(
                        f"each training fold needs at least 2 distinct ids, but got {calib} (cv={cv}); lower --cv."
                    )
                if calib != cfg.calibration_folds:
                    cfg = dataclasses.replace(cfg, calibration_folds=calib)
                # the full model knows where it will be used: the evaluation depth (scored there by its inner CV)
                target = d_eval if (name == "full" and d is not None) else None
                model = ProbePredictor(cfg, meta.groups).fit(X.loc[rows, feats], y[rows], groups=ids[rows], target_depth=target)
                Xt = X.loc[test, feats]
                if name == "full":
                    for c in COVERAGES:
                        _, lo, hi = model.predict_interval(Xt, c)
                        cover[c].append(float(np.mean((y[test] >= lo) & (y[test] <= hi))))
                pred = model.predict(Xt)
                for key, value in regression_metrics(y[test], pred, scale).items():
                    per_fold[name][key].append(value)
            log.info("repeat %d fold %d done", r, k)
    n_folds = len(per_fold["full"]["rmse"])
    out = {}
    for name in MODELS:
        if not per_fold[name]["rmse"]:
            continue
        entry = {}
        for key in METRICS:
            entry[key], entry[f"{key}_se"] = _mean_se(per_fold[name][key])
        out[name] = entry
    for c in COVERAGES:
        tag = f"coverage_{int(round(c * 100))}"
        out["full"][tag], out["full"][f"{tag}_se"] = _mean_se(cover[c])
    out["settings"] = {
        "cv": cv,
        "repeats": repeats,
        "seed": seed,
        "scale": scale,
        "depth": d_eval,
        "rows": int(len(y)),
        "eval_rows": int(at_eval.sum()),
        "ids": int(len(np.unique(ids))),
        "folds": n_folds,
        "label": meta.label_col,
        "id": meta.id_col,
    }
    out["rmse_gain_vs_recipe"] = (
        1.0 - out["full"]["rmse"] / out["tuneahead_recipe"]["rmse"] if out.get("tuneahead_recipe") else None
    )
    return out


def _mean_se(values) -> tuple[float | None, float | None]:
    """Mean and standard error over folds; None (JSON null) where undefined."""
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if arr.size == 0:
        return None, None
    se = float(arr.std(ddof=1) / np.sqrt(arr.size)) if arr.size > 1 else None
    return float(arr.mean()), se
