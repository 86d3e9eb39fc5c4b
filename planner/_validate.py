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
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"
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
    ``feature_std`` of length p, finite, ``feature_std > 0``; ``risk_scale`` finite and > 0; draws
    ``b`` (n, 3), ``B`` (n, 3, p), ``sigma_chol`` (n, 3, 3) with the same n >= 1, finite, and a
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
    scale = payload.get("risk_scale")
    if not (_is_number(scale) and math.isfinite(scale) and scale > 0):
        raise bad("risk_scale must be a positive finite number", repr(scale))
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


def check_predictor_sidecar(side: dict, source: str) -> None:
    """Check a predictor's ``predictor.json`` (after its schema check) for a usable layout and values.

    Fields present with the right types; feature names unique, each with a known group; a config
    of known settings; label name; scale mode; positive finite depth scales (present in depth
    mode); sorted finite calibration scores; finite feature ranges with lo <= hi.
    """
    from plan_probe._meta import GROUPS
    from plan_probe._predictor import PredictorConfig

    def bad(rule, got):
        return ValueError(f"predictor {source} {rule}, but got {got}; {_PRED_FIX}.")

    kinds = {"config": dict, "params": dict, "cv_scores": dict, "feature_names": list, "feature_groups": dict,
             "label": dict, "scale_mode": str, "depth_scale": list, "calibration_scores": list}
    for key, kind in kinds.items():
        if key not in side:
            raise bad(f"must have the field {key!r}", "no such field")
        if not isinstance(side[key], kind):
            raise bad(f"field {key!r} must be a {kind.__name__}", type(side[key]).__name__)
    for key, kind in (("feature_ranges", dict), ("extra", dict), ("members", list), ("scope", str)):
        if side.get(key) is not None and not isinstance(side[key], kind):
            raise bad(f"field {key!r} must be a {kind.__name__}", type(side[key]).__name__)
    n_est = side.get("n_estimators")
    if not (isinstance(n_est, int) and not isinstance(n_est, bool) and n_est >= 1):
        raise bad("n_estimators must be a positive integer", repr(n_est))
    cv = side.get("cv_rmse")
    if not (_is_number(cv) and math.isfinite(cv) and cv >= 0):
        raise bad("cv_rmse must be a finite number >= 0", repr(cv))
    names = side["feature_names"]
    if not names or not all(isinstance(f, str) and f for f in names) or len(set(names)) != len(names):
        raise bad("feature_names must be unique non-empty names (at least one)", repr(names[:5]))
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
    pairs = side["depth_scale"]
    if not all(isinstance(pr, list) and len(pr) == 2 for pr in pairs):
        raise bad("depth_scale must be [depth, scale] pairs", repr(pairs[:3]))
    if pairs:
        ds = _array(pairs, "depth_scale", (None, 2), bad)
        if np.any(ds <= 0):
            raise bad("depth_scale depths and scales must be positive", repr(pairs[:3]))
    if side["scale_mode"] == "depth" and not pairs:
        raise bad("depth_scale must be given in depth scale mode", "none")
    if side["scale_mode"] == "depth" and "depth" not in names:
        raise bad("a predictor in depth scale mode must have a 'depth' feature", f"features {names[:5]}")
    scores = _array(side["calibration_scores"], "calibration_scores", (None,), bad)
    if scores.size == 0:
        raise bad("calibration_scores must not be empty", "none")
    if np.any(np.diff(scores) < 0):
        raise bad("calibration_scores must be sorted ascending", "an unsorted list")
    for name, rng in (side.get("feature_ranges") or {}).items():
        if not (isinstance(rng, list) and len(rng) == 2 and all(_is_number(v) and math.isfinite(v) for v in rng)
                and rng[0] <= rng[1]):
            raise bad("feature_ranges must be finite [lo, hi] pairs with lo <= hi", f"{name}: {rng!r}")
    _check_settings(side["config"], PredictorConfig, bad, "config")
    try:
        PredictorConfig.from_dict(side["config"])
    except (TypeError, ValueError) as exc:
        raise bad("config must be valid settings", " ".join(str(exc).split())) from None


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
    (order included), is one contract ``ValueError``.
    """
    import lightgbm as lgb

    try:
        with _quiet_native_stderr():  # LightGBM's C++ core prints "[LightGBM] [Fatal] ..." itself before raising
            booster = lgb.Booster(model_str=text)
    except Exception as exc:  # LightGBMError and friends on an edited or foreign model file
        raise ValueError(f"a predictor model file must be a LightGBM text model, but {str(path)!r} could not be parsed "
                         f"({type(exc).__name__}); {_PRED_FIX}.") from None
    names = list(booster.feature_name())
    if names != list(feature_names):
        extra = sorted(set(names) - set(feature_names))[:3]
        missing = sorted(set(feature_names) - set(names))[:3]
        detail = f"{len(names)} features" + (f", not in predictor.json: {extra}" if extra else "") + \
            (f", missing: {missing}" if missing else "") + ("" if extra or missing else " in another order")
        raise ValueError(f"the features of {str(path)!r} must match predictor.json's feature_names, but got {detail}; "
                         f"{_PRED_FIX}.")
    return booster
