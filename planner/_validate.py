"""Content validation of the model files plan-probe loads: risk models and predictors.

A checksum guards against corruption, not against nonsense: a file edited and re-checksummed (a
feature standard deviation of 0, NaN in the draws, a feature list that disagrees with the LightGBM
model) would load and give NaN plans or silently wrong intervals. These checks run on every load,
after the format/schema check and the checksum, and raise one contract ``ValueError``
(docs/reference/errors.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import sys
from pathlib import Path

import numpy as np

__all__ = ["check_risk_model_payload", "check_predictor_sidecar", "booster_from_text"]

_RISK_FIX = "refit it with plan-probe fit-risk"
_PRED_FIX = "refit it with plan-probe fit-predictor"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _array(value, what: str, shape: tuple, bad) -> np.ndarray:
    """``value`` as a finite float array of ``shape`` (``None`` entries match any size)."""
    try:
        if _contains_bool(value):
            raise TypeError("booleans")
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise bad(f"{what} must be a numeric array", "a ragged or non-numeric value") from None
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise bad(f"{what} must have shape {want}", f"shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise bad(f"{what} must be finite", f"{int((~np.isfinite(arr)).sum())} NaN/inf value(s)")
    return arr


def _contains_bool(value) -> bool:
    """True when a (nested) JSON list holds ``true``/``false`` (np.asarray would read them as 1/0)."""
    if isinstance(value, bool):
        return True
    return isinstance(value, list) and any(_contains_bool(v) for v in value)


def _check_settings(settings: dict, cls, bad, what: str) -> None:
    """Every key of ``settings`` is a field of dataclass ``cls`` with a value of the default's type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in settings.items():
        if key == "plan_probe_version":
            continue
        if key not in fields:
            raise bad(f"{what} keys must be known settings", f"unknown {key!r}")
        default = fields[key].default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = _is_number(value) and math.isfinite(value) and (isinstance(value, int) or isinstance(default, float))
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            raise bad(f"{what} {key} must be a {type(default).__name__}", f"{key}={value!r}")


# --------------------------------------------------------------------------------- risk model
def check_risk_model_payload(payload: dict, source: str) -> None:
    """Check a risk-model document (after its checksum) for a layout and values the planner can use.

    Fields present with the right types; ``static_features`` unique names; ``feature_mean`` and
    ``feature_std`` of length p, finite, ``feature_std > 0``; ``risk_scale`` and ``label_scale``
    finite and > 0; ``diagnostics.ok`` a boolean; draws ``b`` (n, 3), ``B`` (n, 3, p), ``sigma_chol`` (n, 3, 3) with the same n >= 1, finite, and a
    Cholesky factor with a positive diagonal; known fit settings of the right types.
    """
    from plan_probe._risk_model import RiskFitSettings

    def bad(rule, got):
        return ValueError(f"risk model {source} {rule}, but got {got}; {_RISK_FIX}.")

    kinds = {"static_features": list, "feature_mean": list, "feature_std": list, "settings": dict, "method": str,
             "diagnostics": dict, "draws": dict}
    for key, kind in kinds.items():
        if key not in payload:
            raise bad(f"must have the field {key!r}", "no such field")
        if not isinstance(payload[key], kind):
            raise bad(f"field {key!r} must be a {kind.__name__}", type(payload[key]).__name__)
    for key in ("seed", "n_tasks", "n_obs"):
        value = payload.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise bad(f"field {key!r} must be a non-negative integer", repr(value))
    for key in ("risk_scale", "label_scale"):
        scale = payload.get(key)
        if not (_is_number(scale) and math.isfinite(scale) and scale > 0):
            raise bad(f"{key} must be a positive finite number", repr(scale))
    diagnostics = payload["diagnostics"]
    if not isinstance(diagnostics.get("ok", True), bool):
        raise bad("diagnostics.ok must be true or false", repr(diagnostics.get("ok")))
    problems = diagnostics.get("problems", [])
    if not (isinstance(problems, list) and all(isinstance(x, str) for x in problems)):
        raise bad("diagnostics.problems must be a list of strings", repr(problems)[:80])
    feats = payload["static_features"]
    if not all(isinstance(f, str) and f for f in feats) or len(set(feats)) != len(feats):
        raise bad("static_features must be unique non-empty names", repr(feats[:5]))
    p = len(feats)
    _array(payload["feature_mean"], "feature_mean", (p,), bad)
    std = _array(payload["feature_std"], "feature_std", (p,), bad)
    if np.any(std <= 0):
        j = int(np.flatnonzero(std <= 0)[0])
        raise bad("every feature_std must be positive", f"feature_std={std[j]:g} for {feats[j]!r}")
    draws = payload["draws"]
    for key in ("b", "B", "sigma_chol"):
        if key not in draws:
            raise bad(f"draws must have {key!r}", f"keys {sorted(draws)}")
    b = _array(draws["b"], "draws['b']", (None, 3), bad)
    n = b.shape[0]
    if n < 1:
        raise bad("must hold at least one posterior draw", "0")
    _array(draws["B"], "draws['B']", (n, 3, p), bad)
    chol = _array(draws["sigma_chol"], "draws['sigma_chol']", (n, 3, 3), bad)
    diag = np.diagonal(chol, axis1=1, axis2=2)
    if np.any(diag <= 0):
        raise bad("draws['sigma_chol'] must be Cholesky factors with a positive diagonal",
                  f"a diagonal entry of {diag[diag <= 0][0]:g}")
    _check_settings(payload["settings"], RiskFitSettings, bad, "settings")
    if not payload["method"]:
        raise bad("method must name the inference method", repr(payload["method"]))


# --------------------------------------------------------------------------------- predictor
_SCALE_MODES = ("none", "depth", "risk")


def _check_vector_dict(value, what: str, keys: tuple, p: int, bad, positive: tuple = ()) -> None:
    """``value`` is None or a dict whose ``keys`` are finite vectors of length p (``positive`` ones > 0)."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise bad(f"{what} must be an object or null", type(value).__name__)
    for key in keys:
        if key not in value:
            raise bad(f"{what} must have {key!r}", f"keys {sorted(value)}")
        arr = _array(value[key], f"{what}.{key}", (p,), bad)
        if key in positive and np.any(arr <= 0):
            raise bad(f"{what}.{key} must be positive", "a value <= 0")


def _check_member(doc, where: str, p: int, files: list, bad) -> None:
    """One blend member of a schema-3 sidecar: kind, finite weight, linear part, booster file, clip."""
    if not isinstance(doc, dict):
        raise bad(f"{where} must be an object", type(doc).__name__)
    if not (isinstance(doc.get("kind"), str) and doc["kind"]):
        raise bad(f"{where}.kind must name the learner", repr(doc.get("kind")))
    weight = doc.get("weight")
    if not (_is_number(weight) and math.isfinite(weight)):
        raise bad(f"{where}.weight must be a finite number", repr(weight))
    _check_vector_dict(doc.get("linear"), f"{where}.linear", ("mean", "scale", "coef"), p, bad, positive=("scale",))
    linear = doc.get("linear")
    if linear is not None and not (_is_number(linear.get("intercept")) and math.isfinite(linear["intercept"])):
        raise bad(f"{where}.linear.intercept must be a finite number", repr(linear.get("intercept")))
    _check_vector_dict(doc.get("standardise"), f"{where}.standardise", ("mean", "scale"), p, bad, positive=("scale",))
    clip = doc.get("clip")
    _check_vector_dict(clip, f"{where}.clip", ("lo", "hi"), p, bad)
    if clip is not None and np.any(np.asarray(clip["lo"], dtype=float) > np.asarray(clip["hi"], dtype=float)):
        raise bad(f"{where}.clip must have lo <= hi", "lo > hi")
    name = doc.get("model_file")
    if name is not None and name not in files:
        raise bad(f"{where}.model_file must be listed in model_files", repr(name))
    if name is None and linear is None:
        raise bad(f"{where} must have a linear part or a model file", "neither")
    n_iter = doc.get("num_iteration")
    if n_iter is not None and not (isinstance(n_iter, int) and not isinstance(n_iter, bool) and n_iter >= 1):
        raise bad(f"{where}.num_iteration must be a positive integer or null", repr(n_iter))


def check_predictor_sidecar(side: dict, source: str) -> None:
    """Check a predictor's ``predictor.json`` (after its schema check and migration) for usable content.

    Fields present with the right types; feature names unique, each with a known group; a config
    of known settings; a label name; the scale mode (depth mode: positive depth scales and a
    ``depth`` feature); the prediction scales (``{}`` or increasing knots with positive factors; one
    per fold model or none); every blend member and CV+ fold member (finite weight, linear parts and
    standardisation of the feature count with positive scales, clip ranges with lo <= hi, a listed
    model file); finite calibration scores, each with an existing fold; finite feature ranges.
    """
    from plan_probe._meta import GROUPS
    from plan_probe._predictor import PredictorConfig

    def bad(rule, got):
        return ValueError(f"predictor {source} {rule}, but got {got}; {_PRED_FIX}.")

    kinds = {"config": dict, "params": dict, "cv_scores": dict, "feature_names": list, "feature_groups": dict,
             "label": dict, "scale_mode": str, "depth_scale": list, "members": list, "cv_plus": dict}
    for key, kind in kinds.items():
        if key not in side:
            raise bad(f"must have the field {key!r}", "no such field")
        if not isinstance(side[key], kind):
            raise bad(f"field {key!r} must be a {kind.__name__}", type(side[key]).__name__)
    for key, kind in (("feature_ranges", dict), ("extra", dict), ("scope", str)):
        if side.get(key) is not None and not isinstance(side[key], kind):
            raise bad(f"field {key!r} must be a {kind.__name__}", type(side[key]).__name__)
    n_est = side.get("n_estimators")
    if not (isinstance(n_est, int) and not isinstance(n_est, bool) and n_est >= 0):
        raise bad("n_estimators must be a non-negative integer", repr(n_est))
    cv = side.get("cv_rmse")
    if not (_is_number(cv) and math.isfinite(cv) and cv >= 0):
        raise bad("cv_rmse must be a finite number >= 0", repr(cv))
    names = side["feature_names"]
    if not names or not all(isinstance(f, str) and f for f in names) or len(set(names)) != len(names):
        raise bad("feature_names must be unique non-empty names (at least one)", repr(names[:5]))
    p = len(names)
    groups = side["feature_groups"]
    missing = [f for f in names if groups.get(f) not in GROUPS]
    if missing:
        raise bad(f"feature_groups must give every feature one of {list(GROUPS)}",
                  f"{missing[:3]} without a valid group")
    label = side["label"]
    if not (isinstance(label.get("name"), str) and label["name"]):
        raise bad("label must have a name", repr(label.get("name")))
    if side["scale_mode"] not in _SCALE_MODES:
        raise bad(f"scale_mode must be one of {list(_SCALE_MODES)}", repr(side["scale_mode"]))
    _check_depth_table(side["depth_scale"], "depth_scale", bad)
    if side["scale_mode"] == "depth" and not side["depth_scale"]:
        raise bad("depth_scale must be given in depth scale mode", "none")
    if side["scale_mode"] == "depth" and "depth" not in names:
        raise bad("a predictor in depth scale mode must have a 'depth' feature", f"features {names[:5]}")
    files, shas = side.get("model_files"), side.get("model_sha256")
    if not (isinstance(files, list) and isinstance(shas, list) and len(files) == len(shas)
            and all(isinstance(f, str) and re.fullmatch(r"model(_[0-9]+)?\.txt", f) for f in files)):
        raise ValueError(f"predictor.json must list model files named model.txt / model_<i>.txt with one checksum each, "
                         f"but got model_files={files!r}; {_PRED_FIX}.")
    if not side["members"]:
        raise bad("members must list at least one learner", "none")
    for i, doc in enumerate(side["members"]):
        _check_member(doc, f"members[{i}]", p, files, bad)
    cvp = side["cv_plus"]
    for key, kind in (("method", str), ("folds", list), ("scores", list), ("score_folds", list)):
        if not isinstance(cvp.get(key), kind):
            raise bad(f"cv_plus.{key} must be a {kind.__name__}", type(cvp.get(key)).__name__)
    for k, fold in enumerate(cvp["folds"]):
        if not isinstance(fold, list) or not fold:
            raise bad(f"cv_plus.folds[{k}] must list the fold's learners", repr(fold)[:40])
        for i, doc in enumerate(fold):
            _check_member(doc, f"cv_plus.folds[{k}][{i}]", p, files, bad)
    for k, table in enumerate(cvp.get("fold_depth_scale") or []):
        _check_depth_table(table, f"cv_plus.fold_depth_scale[{k}]", bad)
    _check_prediction_scale(side.get("prediction_scale"), "prediction_scale", bad)
    fold_pred_scale = cvp.get("fold_prediction_scale")
    if not isinstance(fold_pred_scale, list) or (fold_pred_scale and len(fold_pred_scale) != len(cvp["folds"])):
        raise bad("cv_plus.fold_prediction_scale must be a list with one entry per fold model (or empty)",
                  repr(fold_pred_scale)[:60])
    for k, table in enumerate(fold_pred_scale):
        _check_prediction_scale(table, f"cv_plus.fold_prediction_scale[{k}]", bad)
    scores = _array(cvp["scores"], "cv_plus.scores", (None,), bad)
    if scores.size == 0:
        raise bad("cv_plus.scores must not be empty", "none")
    folds = cvp["score_folds"]
    if len(folds) != scores.size or not all(isinstance(k, int) and not isinstance(k, bool) for k in folds):
        raise bad("cv_plus.score_folds must give one integer fold per score", f"{len(folds)} for {scores.size} scores")
    if folds and (min(folds) < -1 or max(folds) >= len(cvp["folds"])):
        raise bad("every calibration score's fold must be -1 (the final model) or a listed fold",
                  f"folds {min(folds)}..{max(folds)} for {len(cvp['folds'])} fold models")
    for name, rng in (side.get("feature_ranges") or {}).items():
        if not (isinstance(rng, list) and len(rng) == 2 and all(_is_number(v) and math.isfinite(v) for v in rng)
                and rng[0] <= rng[1]):
            raise bad("feature_ranges must be finite [lo, hi] pairs with lo <= hi", f"{name}: {rng!r}")
    _check_settings(side["config"], PredictorConfig, bad, "config")
    try:
        PredictorConfig.from_dict(side["config"])
    except (TypeError, ValueError) as exc:
        raise bad("config must be valid settings", " ".join(str(exc).split())) from None


def _check_prediction_scale(table, what: str, bad) -> None:
    """``{}`` (off) or ``{knots, factors}``: lists of one length >= 2, knots finite and increasing, factors > 0."""
    if table == {}:
        return
    if not (isinstance(table, dict) and set(table) == {"knots", "factors"}):
        raise bad(f"{what} must be {{}} or have exactly 'knots' and 'factors'", repr(table)[:80])
    knots, factors = _array([table["knots"], table["factors"]], f"{what} knots and factors", (2, None), bad)
    if not (knots.size >= 2 and np.all(np.diff(knots) > 0) and np.all(factors > 0)):
        raise bad(f"{what} must have increasing knots and positive factors (2 or more)", repr(table)[:80])


def _check_depth_table(pairs, what: str, bad) -> None:
    if not isinstance(pairs, list) or not all(isinstance(pr, list) and len(pr) == 2 for pr in pairs):
        raise bad(f"{what} must be [depth, scale] pairs", repr(pairs)[:60])
    if pairs:
        ds = _array(pairs, what, (None, 2), bad)
        if np.any(ds <= 0):
            raise bad(f"{what} depths and scales must be positive", repr(pairs[:3]))


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence file descriptor 2 for a native call whose failure is reported as an exception anyway."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def booster_from_text(path: Path, text: str, feature_names: list):
    """A LightGBM booster from model text, checked against the sidecar's feature list.

    A model file whose text LightGBM cannot parse, or whose features differ from ``feature_names``
    (order included; a model fitted without names must have as many features), is one contract
    ``ValueError``.
    """
    import lightgbm as lgb

    try:
        with _quiet_native_stderr():  # LightGBM's C++ core prints "[LightGBM] [Fatal] ..." itself before raising
            booster = lgb.Booster(model_str=text)
    except Exception as exc:  # LightGBMError and friends on an edited or foreign model file
        raise ValueError(f"a predictor model file must be a LightGBM text model, but {str(path)!r} could not be parsed "
                         f"({type(exc).__name__}); {_PRED_FIX}.") from None
    names = list(booster.feature_name())
    auto = [f"Column_{i}" for i in range(len(names))]  # LightGBM's names for a model fitted without names
    if names != list(feature_names) and not (names == auto and len(names) == len(feature_names)):
        extra = sorted(set(names) - set(feature_names))[:3]
        missing = sorted(set(feature_names) - set(names))[:3]
        detail = f"{len(names)} features" + (f", not in predictor.json: {extra}" if extra else "") + \
            (f", missing: {missing}" if missing else "") + ("" if extra or missing else " in another order")
        raise ValueError(f"the features of {str(path)!r} must match predictor.json's feature_names, but got {detail}; "
                         f"{_PRED_FIX}.")
    return booster
