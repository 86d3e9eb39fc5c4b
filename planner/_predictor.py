"""The shared predictor (docs/theory.md §5): one regressor for every probe depth, CV+ intervals,
P(score >= tau), exact grouped SHAP, saved as LightGBM text plus a JSON sidecar (no pickle).

Model. Without ``tune`` the model is TuneAhead's LightGBM configuration (bagging actually on).
With ``tune`` it is a convex blend of learners chosen by grouped inner cross-validation on the
training rows only (:mod:`plan_probe._search`): a standardised ridge, LightGBM trees, LightGBM
linear trees and a ridge + boosted-residual stack (:mod:`plan_probe._learners`), so the model is
linear where the data are linear and non-linear where they are not.

Intervals: CV+ (Barber, Candès, Ramdas & Tibshirani 2021, "Predictive inference with the
jackknife+", Ann. Statist. 49(1), §3.4). The runs are split into K grouped folds; the fold model
μ₋ₖ is the *whole* training algorithm (search and blend included) applied to the runs outside fold
k, and R_i = |y_i − μ₋ₖ₍ᵢ₎(x_i)| / s₋ₖ₍ᵢ₎(x_i) is its normalised residual on run i. At x the interval is

    [ q⁻_α{ μ₋ₖ₍ᵢ₎(x) − s₋ₖ₍ᵢ₎(x) R_i },  q⁺_α{ μ₋ₖ₍ᵢ₎(x) + s₋ₖ₍ᵢ₎(x) R_i } ]

with q⁻ the ⌊α(n+1)⌋-th smallest and q⁺ the ⌈(1−α)(n+1)⌉-th smallest of the n values. Guarantee
(their Theorem 4): for a new run exchangeable with the n training runs, P(y ∈ interval) ≥ 1 − 2α −
√(2/n) in the worst case, and ≈ 1 − α in practice (slightly above: fold models train on (K−1)/K of
the data). The guarantee needs one calibration row per run, which holds when every run has one
row or the model is used at one ``target_depth`` (calibrated on that depth's rows). With several
depths per run pooled, scores are normalised by a per-fold depth scale and the guarantee is
approximate. Because every fold model repeats the selection, the selection's optimism does not
enter the residuals. ``P(score >= tau)`` comes from the same CV+ values with signed residuals:
(1 + #{i: μ₋ₖ₍ᵢ₎(x) + s₋ₖ₍ᵢ₎(x) r_i ≥ τ}) / (n + 2).

Scale s: sqrt(L(c)) from a risk model when one is given (normalised scores, fixed in advance);
otherwise, with several depths pooled, the root-mean-square of the fold model's own inner
out-of-fold residuals at each depth (fitted within D \\ F_k, so it is part of the fold's algorithm);
otherwise 1. With ``prediction_scale`` (not with a risk model's scale) s is further multiplied by
g₋ₖ(μ₋ₖ(x)), a function of the fold model's own prediction learnt from the same inner out-of-fold
residuals r: split them into thirds by prediction; third j has median prediction m_j and factor
ρ_j = RMS(u in third j) / RMS(u), u = |r| / s_depth (kept in [1/4, 4]); g is linear between the
(m_j, ρ_j) and constant beyond m_1 and m_3, so it never extrapolates. Runs predicted where the model
errs more get wider intervals (locally weighted conformal scores, Lei, G'Sell, Rinaldo, Tibshirani &
Wasserman 2018, "Distribution-free predictive inference for regression", JASA 113(523), §5.2). g is
part of fold k's algorithm, so the CV+ guarantee is unchanged; what it changes is where the width goes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plan_probe._learners import Family, Member, blend_predict, blend_shap, group_folds
from plan_probe._meta import GROUPS, feature_group
from plan_probe.probes._formats import FileFormat
from plan_probe._validate import booster_from_text, check_predictor_sidecar

__all__ = ["PredictorConfig", "ProbePredictor", "FORMAT", "PREDICTOR_FORMAT", "group_folds", "SEARCH_SPACES",
           "FULL_TOP", "FULL_SEEDS"]

log = logging.getLogger(__name__)

FORMAT = "plan-probe/predictor"


def _predictor_v1_to_v2(side: dict) -> dict:
    """Schema 1 held one booster: ``model_file`` / ``model_sha256`` were strings."""
    return {**side, "model_files": [side.get("model_file")], "model_sha256": [side.get("model_sha256")]}


def _predictor_v2_to_v3(side: dict) -> dict:
    """Schema 2: LightGBM boosters averaged, calibrated on the refitted model's OOF residuals.

    Schema 3 describes every member (kind, weight, linear part, booster file) and the CV+ fold
    models. A schema-2 predictor keeps its intervals exactly: no fold models (``folds`` empty), every
    calibration score refers to the final model (fold -1), i.e. the refitted model ± a quantile of
    its residuals, as before.
    """
    side = dict(side)
    files = list(side.get("model_files") or [])
    old = list(side.get("members") or [{"scope": side.get("scope", "all"), "n_estimators": side.get("n_estimators")}])
    if len(old) != len(files):
        old = [dict(old[0]) for _ in files]
    side["members"] = [
        {"kind": "gbdt", "weight": 1.0 / max(len(files), 1), "model_file": f, "num_iteration": None, "linear": None,
         "standardise": None, "clip": None, **{k: v for k, v in m.items() if k != "kind"}}
        for m, f in zip(old, files)
    ]
    scores = list(side.pop("calibration_scores", []))
    side["cv_plus"] = {"method": "oof-split (schema 2: no coverage guarantee)", "folds": [], "fold_depth_scale": [],
                       "scores": scores, "score_folds": [-1] * len(scores)}
    return side


def _predictor_v3_to_v4(side: dict) -> dict:
    """Schema 3 had no prediction scale: its intervals are those of schema 4 with the scale off."""
    side = dict(side)
    side.setdefault("prediction_scale", {})
    side["cv_plus"] = {**side.get("cv_plus", {}), "fold_prediction_scale": []}
    return side


#: Schemas 1 and 2 are the layouts of plan-probe 0.1.0 ("plan-probe-predictor/1" and "/2").
PREDICTOR_FORMAT = FileFormat(FORMAT, 4, "refit it with plan-probe fit-predictor",
                              migrations={1: _predictor_v1_to_v2, 2: _predictor_v2_to_v3, 3: _predictor_v3_to_v4},
                              legacy_names={"plan-probe-predictor/1": 1, "plan-probe-predictor/2": 2})

_GBDT_TREES = (25, 50, 100, 200, 350, 500)
_SHORT = (10, 25, 50, 100, 200)
_RECIPE_TREES = (60, 140, 300, 600)
#: Candidate families of ``tune=True`` by ``PredictorConfig.search``; each family's tree count is
#: chosen from its path by the inner CV (one fit per path). The searched boosters use learning
#: rate 0.1 (half the trees of TuneAhead's 0.05 for the same fit); the recipe keeps 0.05.
SEARCH_SPACES = {
    "full": (
        Family("ridge"),
        Family("stack", min_child_samples=10, trees=_SHORT, learning_rate=0.1),
        Family("gbdt", min_child_samples=5, trees=_GBDT_TREES, learning_rate=0.1),
        Family("gbdt", min_child_samples=20, trees=_GBDT_TREES, learning_rate=0.1),
        Family("linear_tree", min_child_samples=20, trees=_SHORT, learning_rate=0.1),
    ),
    # TuneAhead's family (4 leaves, learning rate 0.05, bagging off as released) with
    # min_child_samples and the tree count tuned
    "recipe": tuple(Family("gbdt", bagging=False, min_child_samples=m, trees=_RECIPE_TREES) for m in (5, 10, 20)),
    "ridge": (Family("ridge"),),
    "mean": (Family("mean"),),
}
_MIN_ROWS_PER_DEPTH = 20
# The tuned ("full") predictor of fit-predictor and evaluate blends at most FULL_TOP members,
# each averaged over FULL_SEEDS seeds.
FULL_TOP = 3
FULL_SEEDS = 1


@dataclass(frozen=True)
class PredictorConfig:
    """Settings of :class:`ProbePredictor`; defaults are TuneAhead's released configuration.

    ``subsample_freq=1`` actually enables bagging (TuneAhead set ``subsample`` without it, so its
    bagging never ran). ``tune`` searches the families of ``SEARCH_SPACES[search]`` by grouped
    inner CV on the training data only and blends at most ``n_top`` of them (``n_top = 1``: the best
    one); each LightGBM member is averaged over ``n_seeds`` seeds ``seed, seed+1, ...``.
    ``calibration_folds`` is K of the grouped CV+ folds (and of the nested search).
    ``go_probability``: a run is "go" when P(score >= tau) reaches it. ``prediction_scale``: widen or
    narrow each run's interval with the model's own prediction (module docstring, "Scale s"), for
    labels whose errors grow or shrink with the predicted score (e.g. runs that collapse).
    """

    learning_rate: float = 0.05
    num_leaves: int = 4
    n_estimators: int = 140
    subsample: float = 0.6
    subsample_freq: int = 1
    colsample_bytree: float = 0.6
    min_child_samples: int = 20
    reg_lambda: float = 1.0
    seed: int = 0
    calibration_folds: int = 5
    depth_scale: bool = True
    tune: bool = False
    go_probability: float = 0.5
    n_top: int = 1
    n_seeds: int = 1
    search: str = "full"
    prediction_scale: bool = False

    def __post_init__(self):
        checks = [
            ("learning_rate", 0 < self.learning_rate <= 1, "pass a value in (0, 1]"),
            ("num_leaves", int(self.num_leaves) >= 2, "pass 2 or more"),
            ("n_estimators", int(self.n_estimators) >= 1, "pass 1 or more"),
            ("subsample", 0 < self.subsample <= 1, "pass a value in (0, 1]"),
            ("subsample_freq", int(self.subsample_freq) >= 0, "pass 0 (off) or more"),
            ("colsample_bytree", 0 < self.colsample_bytree <= 1, "pass a value in (0, 1]"),
            ("min_child_samples", int(self.min_child_samples) >= 1, "pass 1 or more"),
            ("reg_lambda", self.reg_lambda >= 0, "pass a value >= 0"),
            ("calibration_folds", int(self.calibration_folds) >= 2, "pass 2 or more"),
            ("go_probability", 0 < self.go_probability < 1, "pass a value in (0, 1)"),
            ("n_top", int(self.n_top) >= 1, "pass 1 or more"),
            ("n_seeds", int(self.n_seeds) >= 1, "pass 1 or more"),
            ("search", self.search in SEARCH_SPACES, f"pick one of {sorted(SEARCH_SPACES)}"),
        ]
        for name, ok, fix in checks:
            if not ok:
                raise ValueError(f"{name} is out of range, but got {name}={getattr(self, name)!r}; {fix}.")

    def lgbm_params(self, **override) -> dict:
        """LightGBM ``train`` parameters (single thread and ``deterministic`` for byte-identical models)."""
        params = {
            "objective": "regression",
            "learning_rate": self.learning_rate,
            "num_leaves": int(self.num_leaves),
            "bagging_fraction": self.subsample,
            "bagging_freq": int(self.subsample_freq),
            "feature_fraction": self.colsample_bytree,
            "min_data_in_leaf": int(self.min_child_samples),
            "lambda_l2": self.reg_lambda,
            "seed": int(self.seed),
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": 1,
            "verbose": -1,
            "feature_pre_filter": False,
        }
        params.update(override)
        return params

    def families(self) -> tuple:
        """The candidate families: the search space with ``tune``, else TuneAhead's single model."""
        if self.tune:
            return SEARCH_SPACES[self.search]
        return (Family("gbdt", num_leaves=int(self.num_leaves), min_child_samples=int(self.min_child_samples),
                       bagging=int(self.subsample_freq) > 0, trees=(int(self.n_estimators),)),)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PredictorConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields - {"plan_probe_version"}
        if unknown:
            raise ValueError(f"predictor config keys must be known, but got {sorted(unknown)}; remove them.")
        return cls(**{k: v for k, v in data.items() if k in fields})


def _as_frame(X, names=None):
    import pandas as pd

    if isinstance(X, pd.DataFrame):
        return X
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, but got shape {X.shape}; pass a table of features.")
    names = names or [f"f{i}" for i in range(X.shape[1])]
    return pd.DataFrame(X, columns=list(names))


def _members_from(entries: list, blend: list, cands: list) -> list:
    """Member objects of a blend: each entry's weight split evenly over its seeds."""
    import lightgbm as lgb

    out = []
    for (c, t, w), runs in zip(blend, entries):
        fam, scope = cands[c].family, cands[c].scope
        for run in runs:
            booster = run.get("booster")
            if isinstance(booster, str):
                booster = lgb.Booster(model_str=booster)
            info = {"scope": scope, "seed": run.get("seed"), **_family_info(fam, t)}
            if run.get("linear") and run["linear"].get("alpha") is not None:
                info["alpha"] = run["linear"]["alpha"]
            out.append(Member(fam.kind, w / len(runs), run.get("linear"), run.get("standardise"), booster,
                              run.get("num_iteration"), info, run.get("clip")))
    return out


def _family_info(fam: Family, trees: int) -> dict:
    if fam.kind in ("mean", "ridge"):
        return {"kind": fam.kind}
    info = {"kind": fam.kind, "bagging": bool(fam.bagging), "num_leaves": int(fam.num_leaves),
            "min_child_samples": int(fam.min_child_samples), "n_estimators": int(trees)}
    if fam.learning_rate is not None:
        info["learning_rate"] = float(fam.learning_rate)
    return info


def _rank(n: int, coverage: float) -> tuple[int, int]:
    """CV+ ranks (⌊α(n+1)⌋, ⌈(1−α)(n+1)⌉) with α = 1 − coverage (rounded against float noise)."""
    lo = math.floor(round((1.0 - coverage) * (n + 1), 9))
    hi = math.ceil(round(coverage * (n + 1), 9))
    return lo, hi


def _remove_stale_model_files(directory: Path, keep: set[str]) -> None:
    """Delete ``model.txt`` / ``model_<i>.txt`` files a previous save left that the new sidecar does not name.

    A refit with fewer boosters into the same folder would otherwise ship dead booster files beside
    the live ones (harmless on load, since predictor.json names its files, but misleading).
    """
    for path in directory.glob("model*.txt"):
        if re.fullmatch(r"model(_\d+)?\.txt", path.name) and path.name not in keep:
            path.unlink()


class ProbePredictor:
    """The shared predictor of every probe depth, with CV+ intervals and exact grouped SHAP.

    Parameters
    ----------
    config : PredictorConfig, optional
        Settings (TuneAhead's configuration with bagging on by default).
    feature_groups : dict, optional
        Feature -> group; default from :func:`plan_probe._meta.feature_group`.
    n_jobs : int
        Processes for the independent fits of :meth:`fit` (the result does not depend on it).

    Attributes
    ----------
    blend_ : list of Member
        The final model: ``sum(weight × member(x))``; ``members_`` describes each (kind, scope,
        weight, seed, settings) and ``boosters_`` lists the LightGBM boosters among them.
    fold_models_ : list of list of Member
        The CV+ fold models (the training algorithm on the runs outside each fold).
    scores_, score_folds_ : ndarray
        Signed normalised calibration residuals r_i = (y_i − μ₋ₖ₍ᵢ₎(x_i)) / s₋ₖ₍ᵢ₎(x_i) and their
        fold k(i) (-1: the final model, for predictors migrated from schema 2).
    scale_mode_ : str
        ``"risk"`` (external scale, e.g. sqrt(L(c)) of a risk model), ``"depth"`` or ``"none"``.
    fold_depth_scale_ : list of dict
        Per fold, depth -> RMS inner OOF residual (``scale_mode_ == "depth"``); ``depth_scale_`` the
        same from the nested OOF residuals of all rows.
    fold_prediction_scale_ : list of dict
        Per fold, the prediction scale ``{knots, factors}`` (``{}``: g = 1; the list is empty unless
        ``config.prediction_scale``); ``prediction_scale_`` the same from the nested OOF residuals
        of all rows (``{}`` when off).
    oof_pred_ : ndarray
        μ₋ₖ₍ᵢ₎(x_i), the nested out-of-fold predictions (NaN off the calibration rows' scope);
        ``cv_rmse_`` their RMSE on the scored rows. ``cv_scores_``: inner-CV RMSE of every candidate.
    """

    def __init__(self, config: PredictorConfig | None = None, feature_groups: dict | None = None, n_jobs: int = 1):
        self.config = config
        self.feature_groups = feature_groups
        self.n_jobs = n_jobs

    # ----------------------------------------------------------------------------------------- fit
    def fit(self, X, y, *, groups=None, scale=None, target_depth=None) -> "ProbePredictor":
        """Fit the model, its CV+ fold models and calibration.

        Parameters
        ----------
        X : pandas.DataFrame or array (n, p)
            Features (``depth`` among them for a depth-aware model).
        y : array (n,)
            Label; a named pandas Series records its name.
        groups : array (n,), optional
            Run ids: folds never split a run (default: every row its own run).
        scale : array (n,), optional
            Positive per-row scale (e.g. sqrt of a risk model's expected L(c)) for normalised scores.
        target_depth : float, optional
            With a ``depth`` feature: the model will be used at this depth only, so candidates are
            scored and the intervals calibrated on that depth's rows; with ``tune`` a candidate may
            also train on those rows alone (scope ``"target"``) instead of every depth (``"all"``).
        """
        from plan_probe._search import Candidate, search

        cfg = self.config or PredictorConfig()
        frame = _as_frame(X)
        names = [str(c) for c in frame.columns]
        Xa = frame.to_numpy(dtype=float)
        ya = np.asarray(y, dtype=float)
        if Xa.shape[0] != ya.shape[0]:
            raise ValueError(f"X and y must have the same rows, but got {Xa.shape[0]} and {ya.shape[0]}; align them.")
        if not np.all(np.isfinite(Xa)) or not np.all(np.isfinite(ya)):
            raise ValueError("features and label must be finite, but got NaN/inf; clean the meta-dataset.")
        groups = np.arange(len(ya)).astype(str) if groups is None else np.asarray(groups).astype(str)
        ext_scale = self._check_scale(scale, len(ya))
        fg = self.feature_groups or {}
        self.feature_names_ = names
        self.feature_groups_ = {n: fg.get(n, feature_group(n)) for n in names}
        self.label_name_ = getattr(y, "name", None)
        self.n_features_in_ = len(names)

        at_target = np.ones(len(ya), dtype=bool)
        scopes = ["all"]
        if target_depth is not None and "depth" in names:
            at_target = Xa[:, names.index("depth")] == float(target_depth)
            if not at_target.any():
                raise ValueError(f"target_depth must be a depth present in the data, but got {target_depth=}; pick a recorded depth.")
            if cfg.tune and not at_target.all():
                scopes.append("target")
        cands = [Candidate(f, s) for s in scopes for f in cfg.families()]
        self.scale_mode_ = self._scale_mode(ext_scale, Xa, names, target_depth is not None, cfg)
        wants_pred_scale = bool(cfg.prediction_scale) and self.scale_mode_ != "risk"
        res = search(Xa, ya, groups, cands, {"all": np.ones(len(ya), dtype=bool), "target": at_target}, at_target,
                     cfg.lgbm_params(), seed=int(cfg.seed), n_top=int(cfg.n_top), n_seeds=int(cfg.n_seeds),
                     calibration_folds=int(cfg.calibration_folds),
                     scale_fits=self.scale_mode_ == "depth" or wants_pred_scale, n_jobs=int(self.n_jobs), names=names)
        blend = res.blend
        self.blend_ = _members_from(res.members, blend, cands)
        self.fold_models_ = [_members_from(fm, blend, cands) for fm in res.fold_members]
        self.cv_scores_ = res.cv_scores
        self.oof_pred_ = res.oof_pred
        self.scope_ = "target" if any(cands[c].scope == "target" for c, _, _ in blend) else "all"
        self._describe_members()

        # per-fold depth scale from residuals learnt without that fold (part of its algorithm)
        self.fold_depth_scale_, self.depth_scale_ = [], {}
        if self.scale_mode_ == "depth" and res.scale_pred:
            depth = Xa[:, names.index("depth")]
            self.fold_depth_scale_ = [_depth_rms(ya - p, depth) for p in res.scale_pred]
            self.depth_scale_ = _depth_rms(ya - self.oof_pred_, depth)
        elif self.scale_mode_ == "depth":
            self.scale_mode_ = "none"
        self._fit_prediction_scale(Xa, ya, res.scale_pred if wants_pred_scale else [], at_target)
        calib = (res.calib_folds >= 0) & at_target & np.isfinite(res.fold_pred)
        folds = res.calib_folds[calib]
        s = self._fold_scales(Xa[calib], ext_scale[calib] if ext_scale is not None else None, folds,
                              res.fold_pred[calib])
        self.cv_rmse_ = float(np.sqrt(np.mean((ya[calib] - res.fold_pred[calib]) ** 2)))
        scores = (ya[calib] - res.fold_pred[calib]) / s
        order = np.argsort(scores, kind="stable")
        self.scores_ = scores[order]
        self.score_folds_ = folds[order]
        self.calibration_method_ = f"cv+ ({res.design})"
        self.feature_ranges_ = {n: [float(Xa[:, j].min()), float(Xa[:, j].max())] for j, n in enumerate(names)}
        self.label_stats_ = {"min": float(ya.min()), "max": float(ya.max()), "mean": float(ya.mean()),
                             "std": float(ya.std()), "n": int(len(ya))}
        return self

    # ------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _scale_mode(ext_scale, Xa, names, has_target: bool, cfg) -> str:
        if ext_scale is not None:
            return "risk"
        if not cfg.depth_scale or "depth" not in names or has_target:
            return "none"
        levels, counts = np.unique(Xa[:, names.index("depth")], return_counts=True)
        return "depth" if len(levels) > 1 and counts.min() >= _MIN_ROWS_PER_DEPTH else "none"

    def _describe_members(self) -> None:
        self.members_ = [{**m.info, "weight": float(m.weight)} for m in self.blend_]
        self.boosters_ = [m.booster for m in self.blend_ if m.booster is not None]
        trees = sorted((m for m in self.blend_ if m.booster is not None), key=lambda m: -m.weight)
        cfg = self.config or PredictorConfig()
        if trees:
            info = trees[0].info
            self.params_ = cfg.lgbm_params(num_leaves=info.get("num_leaves", cfg.num_leaves),
                                           min_data_in_leaf=info.get("min_child_samples", cfg.min_child_samples),
                                           bagging_freq=int(cfg.subsample_freq or 1) if info.get("bagging", True) else 0)
            self.n_estimators_ = int(info.get("n_estimators") or trees[0].booster.current_iteration())
        else:
            self.params_ = cfg.lgbm_params()
            self.n_estimators_ = 0

    def _fit_prediction_scale(self, Xa, ya, scale_pred, scored) -> None:
        """g₋ₖ of every fold from its inner OOF residuals, and the final model's from the nested OOF ones.

        Only ``scored`` rows count (those of the target depth when the model is used at one depth).
        """
        self.fold_prediction_scale_, self.prediction_scale_ = [], {}
        if not scale_pred:
            return
        for k, pred in enumerate(scale_pred):
            pred = np.where(scored, pred, np.nan)
            self.fold_prediction_scale_.append(_fit_prediction_scale(pred, ya - pred, self._depth_base(Xa, k)))
        oof = np.where(scored, self.oof_pred_, np.nan)
        self.prediction_scale_ = _fit_prediction_scale(oof, ya - oof, self._depth_base(Xa, -1))

    def _depth_base(self, Xa, k: int) -> np.ndarray:
        """The depth part of the scale of fold k (-1: the final model) at every row of ``Xa``."""
        if self.scale_mode_ != "depth":
            return np.ones(Xa.shape[0])
        return _interp_depth(self._depth_table(k), Xa[:, self.feature_names_.index("depth")])

    def _fold_scales(self, Xa, ext, folds, mu) -> np.ndarray:
        """Scale of each calibration row under its own fold's algorithm (``mu``: that fold's predictions)."""
        if self.scale_mode_ == "risk":
            return ext
        out = np.ones(Xa.shape[0])
        for k in np.unique(folds):
            sel = folds == k
            out[sel] = self._scale_at(Xa[sel], None, int(k), mu[sel])
        return out

    def _depth_table(self, k: int) -> dict:
        return self.depth_scale_ if k < 0 or not self.fold_depth_scale_ else self.fold_depth_scale_[k]

    def _prediction_table(self, k: int) -> dict:
        return self.prediction_scale_ if k < 0 or not self.fold_prediction_scale_ else self.fold_prediction_scale_[k]

    @staticmethod
    def _check_scale(scale, n):
        if scale is None:
            return None
        s = np.asarray(scale, dtype=float).reshape(-1)
        if s.shape[0] != n or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError(
                f"the interval scale must be positive and finite with one value per row ({n}), but got "
                f"{s.shape[0]} values, min {np.nanmin(s) if s.size else float('nan'):g}; check the risk model."
            )
        return s

    def blend_summary(self) -> list:
        """``{kind, scope, weight}`` of each blend member (what ``fit-predictor`` and ``llm_defaults`` print)."""
        return [{k: m[k] for k in ("kind", "scope", "weight") if k in m} for m in self.members_]

    def _check_fitted(self):
        if not hasattr(self, "blend_"):
            raise ValueError("the predictor must be fitted first, but it is not; call fit or load.")

    def _matrix(self, X) -> np.ndarray:
        self._check_fitted()
        frame = _as_frame(X, self.feature_names_)
        missing = [c for c in self.feature_names_ if c not in frame.columns]
        if missing:
            raise ValueError(
                f"feature columns must match training, but {len(missing)} are missing: {missing[:5]}; "
                "pass a table with the training feature columns."
            )
        Xa = frame.loc[:, self.feature_names_].to_numpy(dtype=float)
        if not np.all(np.isfinite(Xa)):
            raise ValueError("feature values must be finite, but got NaN/inf; clean the table before predicting.")
        return Xa

    def row_scale(self, X, scale=None) -> np.ndarray:
        """Per-row interval scale for ``X`` under the final model (external ``scale`` when calibrated with one)."""
        Xa = self._matrix(X)
        return self._scale_at(Xa, scale, -1, blend_predict(self.blend_, Xa))

    def _scale_at(self, Xa, scale, k: int, mu) -> np.ndarray:
        """s₋ₖ(x) at the rows of ``Xa``, where ``mu`` holds fold k's predictions there (k = -1: the final model)."""
        if self.scale_mode_ == "risk":
            if scale is None:
                raise ValueError(
                    "this predictor was calibrated with a risk model's scale, but none was given; pass --risk-model."
                )
            return self._check_scale(scale, Xa.shape[0])
        base = self._depth_base(Xa, k)
        table = self._prediction_table(k)
        return base * _prediction_multiplier(table, mu) if table else base

    # ---------------------------------------------------------------------------------- predicting
    def predict(self, X) -> np.ndarray:
        """Point predictions (label units) of the final model (the weighted blend)."""
        return blend_predict(self.blend_, self._matrix(X))

    def _cv_plus_parts(self, X, scale):
        """Point prediction, and per calibration fold: μ₋ₖ(x) and s₋ₖ(x) (fold -1: the final model)."""
        Xa = self._matrix(X)
        pred = blend_predict(self.blend_, Xa)
        mus, scales = {}, {}
        for k in np.unique(self.score_folds_):
            k = int(k)
            mus[k] = pred if k < 0 else blend_predict(self.fold_models_[k], Xa)
            scales[k] = self._scale_at(Xa, scale, k, mus[k])
        return pred, mus, scales

    def _values(self, mus, scales, rows, signed: bool, sign: float) -> np.ndarray:
        """Matrix (len(rows), n) of μ₋ₖ₍ᵢ₎(x) + sign · s₋ₖ₍ᵢ₎(x) · r_i (|r_i| unless ``signed``)."""
        r = self.scores_ if signed else np.abs(self.scores_)
        out = np.empty((len(rows), r.size))
        for k in mus:
            sel = self.score_folds_ == k
            out[:, sel] = mus[k][rows, None] + sign * scales[k][rows, None] * r[None, sel]
        return out

    def conformal_quantile(self, coverage: float) -> float:
        """The ⌈coverage·(n+1)⌉-th smallest |calibration score| (raises when there are too few scores)."""
        self._check_fitted()
        if not 0 < coverage < 1:
            raise ValueError(f"coverage must be in (0, 1), but got {coverage=}; pass e.g. 0.9.")
        n = self.scores_.size
        lo, hi = _rank(n, coverage)
        if hi > n or lo < 1:
            need = max(hi, math.ceil(1.0 / (1.0 - coverage)) - 1)
            raise ValueError(
                f"coverage needs at least {need} calibration scores, but the predictor has {n} (coverage={coverage}); "
                "lower --coverage or fit on more rows."
            )
        return float(np.sort(np.abs(self.scores_))[hi - 1])

    def predict_interval(self, X, coverage: float = 0.9, scale=None):
        """Point prediction and the CV+ interval ``(pred, lower, upper)`` at ``coverage``."""
        self.conformal_quantile(coverage)  # validates coverage against the number of scores
        lo_rank, hi_rank = _rank(self.scores_.size, coverage)
        pred, mus, scales = self._cv_plus_parts(X, scale)
        lower, upper = np.empty(len(pred)), np.empty(len(pred))
        for rows in _chunks(len(pred), self.scores_.size):
            low = self._values(mus, scales, rows, False, -1.0)
            high = self._values(mus, scales, rows, False, 1.0)
            lower[rows] = np.partition(low, lo_rank - 1, axis=1)[:, lo_rank - 1]
            upper[rows] = np.partition(high, hi_rank - 1, axis=1)[:, hi_rank - 1]
        return pred, lower, upper

    def prob_at_least(self, X, threshold: float, scale=None) -> np.ndarray:
        """P(score >= threshold) from the CV+ predictive distribution.

        (1 + #{i: μ₋ₖ₍ᵢ₎(x) + s₋ₖ₍ᵢ₎(x)·r_i ≥ threshold}) / (n + 2) with signed residuals r_i: the
        share of the same values that form the intervals, with a +1/+2 (Laplace) correction so that
        a finite calibration set never claims certainty.
        """
        pred, mus, scales = self._cv_plus_parts(X, scale)
        n = self.scores_.size
        out = np.empty(len(pred))
        for rows in _chunks(len(pred), n):
            vals = self._values(mus, scales, rows, True, 1.0)
            out[rows] = ((vals >= threshold).sum(axis=1) + 1.0) / (n + 2.0)
        return out

    def outside_range(self, X, *, margin: float = 0.1) -> list[list[str]]:
        """Per row, the features outside their training range widened by ``margin`` × its width.

        Tree members predict a constant beyond the last split and linear members extrapolate, so
        such rows are extrapolations whatever the interval says. Empty lists for a predictor saved
        without ranges.
        """
        Xa = self._matrix(X)
        out = [[] for _ in range(Xa.shape[0])]
        for j, name in enumerate(self.feature_names_):
            if name not in self.feature_ranges_:
                continue
            lo, hi = self.feature_ranges_[name]
            pad = margin * (hi - lo)
            for i in np.flatnonzero((Xa[:, j] < lo - pad) | (Xa[:, j] > hi + pad)):
                out[i].append(name)
        return out

    def shap_values(self, X):
        """Exact SHAP ``(contributions (n, p), base value (n,))`` of the final model.

        TreeSHAP (LightGBM ``pred_contrib``) for tree members, coef × (x − mean) for linear parts,
        exact baseline Shapley values for linear-tree members (:mod:`plan_probe._learners`); the
        blend's values are the weighted sum (SHAP is linear in the model), so contributions plus
        the base value equal the prediction exactly (local accuracy).
        """
        return blend_shap(self.blend_, self._matrix(X))

    def explain(self, X, top: int = 3):
        """SHAP contributions summed by group plus the ``top`` features pushing the prediction down.

        Returns a DataFrame with ``shap_base``, ``shap_<group>`` for every group present and
        ``down_1..down_top`` (feature names, empty when fewer features push down) with
        ``down_<k>_value``.
        """
        import pandas as pd

        contrib, base = self.shap_values(X)
        out = {"shap_base": base}
        for group in GROUPS:
            cols = [i for i, f in enumerate(self.feature_names_) if self.feature_groups_[f] == group]
            if cols:
                out[f"shap_{group}"] = contrib[:, cols].sum(axis=1)
        order = np.argsort(contrib, axis=1, kind="stable")
        names = np.array(self.feature_names_, dtype=object)
        for k in range(top):
            idx = order[:, k] if k < contrib.shape[1] else np.zeros(len(base), dtype=int)
            val = contrib[np.arange(len(base)), idx]
            neg = (val < 0) & (k < contrib.shape[1])
            out[f"down_{k + 1}"] = np.where(neg, names[idx], "")
            out[f"down_{k + 1}_value"] = np.where(neg, val, 0.0)
        return pd.DataFrame(out)

    # ---------------------------------------------------------------------------------- save/load
    def save(self, directory, extra: dict | None = None) -> Path:
        """Write every booster as LightGBM text (``model.txt``, ``model_<i>.txt``) and ``predictor.json``."""
        import lightgbm

        from plan_probe.probes._io import atomic_path, write_json

        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files: list = []

        def member_json(m: Member) -> dict:
            doc = {"kind": m.kind, "weight": float(m.weight), "linear": m.linear, "standardise": m.standardise,
                   "clip": m.clip, "num_iteration": None, "model_file": None,
                   **{k: v for k, v in m.info.items() if k != "kind"}}
            if m.booster is not None:
                name = "model.txt" if not files else f"model_{len(files)}.txt"
                text = m.booster.model_to_string(num_iteration=m.num_iteration)
                with atomic_path(directory / name) as tmp:
                    tmp.write_text(text)
                files.append((name, hashlib.sha256(text.encode()).hexdigest()))
                doc["model_file"] = name
            return doc

        members = [member_json(m) for m in self.blend_]
        folds = [[member_json(m) for m in fold] for fold in self.fold_models_]
        sidecar = PREDICTOR_FORMAT.stamp({
            "lightgbm_version": lightgbm.__version__,
            "config": (self.config or PredictorConfig()).to_dict(),
            "params": self.params_,
            "n_estimators": self.n_estimators_,
            "scope": self.scope_,
            "members": members,
            "cv_plus": {
                "method": self.calibration_method_,
                "folds": folds,
                "fold_depth_scale": [_depth_json(d) for d in self.fold_depth_scale_],
                "fold_prediction_scale": [dict(t) for t in self.fold_prediction_scale_],
                "scores": [float(v) for v in self.scores_],
                "score_folds": [int(k) for k in self.score_folds_],
            },
            "cv_scores": self.cv_scores_,
            "cv_rmse": self.cv_rmse_,
            "feature_names": self.feature_names_,
            "feature_groups": self.feature_groups_,
            "label": {"name": self.label_name_, **self.label_stats_},
            "scale_mode": self.scale_mode_,
            "depth_scale": _depth_json(self.depth_scale_),
            "prediction_scale": dict(self.prediction_scale_),
            "feature_ranges": self.feature_ranges_,
            "model_files": [name for name, _ in files],
            "model_sha256": [sha for _, sha in files],
        })
        if extra:
            sidecar["extra"] = extra
        write_json(sidecar, directory / "predictor.json")
        _remove_stale_model_files(directory, {name for name, _ in files})
        return directory

    @classmethod
    def load(cls, directory) -> "ProbePredictor":
        """Load a saved predictor, checking its format and schema and the model checksums (no pickle)."""
        from plan_probe.probes._io import read_json

        directory = Path(directory)
        side_path = directory / "predictor.json"
        if not side_path.is_file():
            raise ValueError(
                f"a predictor directory must contain predictor.json, but {str(directory)!r} does not; "
                "pass the -o directory of plan-probe fit-predictor."
            )
        side = PREDICTOR_FORMAT.read(read_json(side_path), str(side_path))
        check_predictor_sidecar(side, str(side_path))
        self = cls(PredictorConfig.from_dict(side["config"]), dict(side["feature_groups"]))
        files, shas = side.get("model_files"), side.get("model_sha256")
        if not (isinstance(files, list) and isinstance(shas, list) and len(files) == len(shas)
                and all(isinstance(f, str) and re.fullmatch(r"model(_[0-9]+)?\.txt", f) for f in files)):
            raise ValueError(
                f"predictor.json must list model files named model.txt / model_<i>.txt with one checksum each, "
                f"but got model_files={files!r}; refit with plan-probe fit-predictor."
            )
        boosters = {f: booster_from_text(directory / f, _read_checked(directory / f, sha), side["feature_names"])
                    for f, sha in zip(files, shas)}

        def member(doc: dict) -> Member:
            name = doc.get("model_file")
            if name is not None and name not in boosters:
                raise ValueError(f"every member's model file must be listed in model_files, but got {name!r}; "
                                 "refit with plan-probe fit-predictor.")
            info = {k: v for k, v in doc.items()
                    if k not in ("weight", "linear", "standardise", "clip", "num_iteration", "model_file")}
            return Member(str(doc["kind"]), float(doc["weight"]), doc.get("linear"), doc.get("standardise"),
                          boosters.get(name) if name else None, None, info, doc.get("clip"))

        cvp = side["cv_plus"]
        self.blend_ = [member(d) for d in side["members"]]
        if not self.blend_:
            raise ValueError("predictor.json must list at least one member, but lists none; refit with plan-probe fit-predictor.")
        self.fold_models_ = [[member(d) for d in fold] for fold in cvp["folds"]]
        self.fold_depth_scale_ = [{float(d): float(s) for d, s in table} for table in cvp.get("fold_depth_scale", [])]
        self.fold_prediction_scale_ = [_prediction_table_from(t) for t in cvp["fold_prediction_scale"]]
        self.scores_ = np.asarray(cvp["scores"], dtype=float)
        self.score_folds_ = np.asarray(cvp["score_folds"], dtype=int)
        if self.score_folds_.size and self.score_folds_.max() >= len(self.fold_models_):
            raise ValueError("every calibration score's fold must have a fold model, but some do not; refit the predictor.")
        self.calibration_method_ = str(cvp["method"])
        self.feature_names_ = list(side["feature_names"])
        self.feature_groups_ = dict(side["feature_groups"])
        self.n_features_in_ = len(self.feature_names_)
        self.scope_ = str(side.get("scope", "all"))
        self._describe_members()
        self.params_ = dict(side["params"])
        self.n_estimators_ = int(side["n_estimators"])
        self.cv_scores_ = dict(side["cv_scores"])
        self.cv_rmse_ = float(side["cv_rmse"])
        label = dict(side["label"])
        self.label_name_ = label.pop("name")
        self.label_stats_ = label
        self.scale_mode_ = side["scale_mode"]
        self.depth_scale_ = {float(d): float(s) for d, s in side["depth_scale"]}
        self.prediction_scale_ = _prediction_table_from(side["prediction_scale"])
        self.extra_ = side.get("extra", {})
        self.feature_ranges_ = {str(k): [float(a), float(b)] for k, (a, b) in side.get("feature_ranges", {}).items()}
        return self

    def __repr__(self) -> str:
        return f"ProbePredictor(config={self.config!r})"


def _depth_rms(resid: np.ndarray, depth: np.ndarray) -> dict:
    ok = np.isfinite(resid)
    return {float(d): max(float(np.sqrt(np.mean(resid[ok & (depth == d)] ** 2))), 1e-12)
            for d in np.unique(depth[ok])}


#: the prediction scale compares the RMS residual within this many equal parts of the predictions
_PRED_SCALE_PARTS = 3
#: fewer inner out-of-fold residuals than this: no prediction scale (g = 1)
_PRED_SCALE_MIN_ROWS = 30
#: a part's factor is kept within [1 / 4, 4]: no interval collapses to a point or explodes
_PRED_SCALE_CLIP = (0.25, 4.0)


def _fit_prediction_scale(pred: np.ndarray, resid: np.ndarray, base: np.ndarray) -> dict:
    """Knots and factors of g: per third of the predictions, its median prediction and RMS(u) / RMS(u).

    u = |r| / base over the finite rows. Returns ``{"knots": [m_1, m_2, m_3], "factors": [ρ_1, ρ_2, ρ_3]}``,
    or ``{}`` (g = 1) with fewer than ``_PRED_SCALE_MIN_ROWS`` rows or knots that are not increasing.
    """
    ok = np.isfinite(pred) & np.isfinite(resid)
    p, u = pred[ok], np.abs(resid[ok]) / base[ok]
    total = float(np.sqrt(np.mean(u**2))) if p.size else 0.0
    if p.size < _PRED_SCALE_MIN_ROWS or not total > 0:
        return {}
    parts = np.array_split(np.argsort(p, kind="stable"), _PRED_SCALE_PARTS)
    knots = [float(np.median(p[part])) for part in parts]
    if not np.all(np.diff(knots) > 0):
        return {}
    factors = [float(np.clip(np.sqrt(np.mean(u[part] ** 2)) / total, *_PRED_SCALE_CLIP)) for part in parts]
    return {"knots": knots, "factors": factors}


def _prediction_multiplier(table: dict, mu) -> np.ndarray:
    """g(μ): linear between the knots, constant beyond the outer ones."""
    return np.interp(np.asarray(mu, dtype=float), table["knots"], table["factors"])


def _prediction_table_from(doc) -> dict:
    return {"knots": [float(v) for v in doc["knots"]], "factors": [float(v) for v in doc["factors"]]} if doc else {}


def _depth_json(table: dict) -> list:
    return [[d, s] for d, s in sorted(table.items())]


def _interp_depth(table: dict, depth) -> np.ndarray:
    levels = np.array(sorted(table))
    values = np.array([table[d] for d in levels])
    return np.interp(np.log(np.asarray(depth, dtype=float)), np.log(levels), values)


def _chunks(m: int, n: int, budget: int = 4_000_000):
    step = max(1, budget // max(n, 1))
    for start in range(0, m, step):
        yield np.arange(start, min(m, start + step))


def _read_checked(path: Path, sha: str) -> str:
    if not path.is_file():
        raise ValueError(f"the model file must exist, but {str(path)!r} is missing; refit the predictor.")
    text = path.read_text()
    if hashlib.sha256(text.encode()).hexdigest() != sha:
        raise ValueError(f"the model checksum must match predictor.json, but {str(path)!r} differs; refit the predictor.")
    return text
