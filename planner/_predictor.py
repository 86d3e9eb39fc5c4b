"""The shared LightGBM predictor (docs/theory.md §5): one regressor for every probe depth, conformal
intervals, P(score >= tau), grouped TreeSHAP, saved as LightGBM text plus a JSON sidecar.

Conformal calibration uses out-of-fold (OOF) residuals from an internal grouped K-fold at fit time
(CV+-style): every training row serves as a calibration point without giving up training data, and
the folds are grouped by run id so rows of one run at several depths never calibrate each other.
Residuals are normalised by a per-row scale: sqrt(L(c)) from a risk model when one is given,
otherwise (when ``depth`` is a feature) the root-mean-square OOF residual at that depth, because
the residual spread falls with depth; without either the scale is 1 (plain split conformal).
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

from plan_probe._meta import GROUPS, feature_group
from plan_probe.probes._formats import FileFormat
from plan_probe._validate import booster_from_text, check_predictor_sidecar

__all__ = ["PredictorConfig", "ProbePredictor", "FORMAT", "PREDICTOR_FORMAT", "group_folds", "TUNE_GRID", "FULL_TOP", "FULL_SEEDS"]

log = logging.getLogger(__name__)

FORMAT = "plan-probe/predictor"


def _predictor_v1_to_v2(side: dict) -> dict:
    """Schema 1 held one booster: ``model_file`` / ``model_sha256`` were strings."""
    return {**side, "model_files": [side.get("model_file")], "model_sha256": [side.get("model_sha256")]}


#: Schemas 1 and 2 are the layouts of plan-probe 0.1.0 ("plan-probe-predictor/1" and "/2").
PREDICTOR_FORMAT = FileFormat(FORMAT, 2, "refit it with plan-probe fit-predictor", migrations={1: _predictor_v1_to_v2},
                              legacy_names={"plan-probe-predictor/1": 1, "plan-probe-predictor/2": 2})
# Inner-CV grid of ``tune=True``: (num_leaves, n_estimators) at the configured learning rate.
TUNE_GRID = {"bagging": (True, False), "num_leaves": (4, 8), "n_estimators": (60, 140, 300, 600, 1000)}
_MIN_ROWS_PER_DEPTH = 20
# The tuned ("full") predictor of fit-predictor and evaluate averages the FULL_TOP best inner-CV
# candidates, each with FULL_SEEDS seeds.
FULL_TOP = 3
FULL_SEEDS = 5


@dataclass(frozen=True)
class PredictorConfig:
    """Settings of :class:`ProbePredictor`; defaults are TuneAhead's released configuration.

    ``subsample_freq=1`` actually enables bagging (TuneAhead set ``subsample`` without it, so its
    bagging never ran). ``tune`` picks (num_leaves, n_estimators) from :data:`TUNE_GRID` by grouped
    inner cross-validation on the training data only. The model averages ``n_top`` × ``n_seeds``
    boosters: the ``n_top`` best candidates of that search, each with seeds ``seed, seed+1, ...``
    (different row and column samples). On meta-datasets of a few hundred runs the search's
    choice and one booster's sampling are both visible parts of the error; averaging removes much
    of it. ``go_probability``: a run is "go" when P(score >= tau) reaches it.
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
    calibration_folds: int = 10
    depth_scale: bool = True
    tune: bool = False
    go_probability: float = 0.5
    n_top: int = 1
    n_seeds: int = 1

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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PredictorConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields - {"plan_probe_version"}
        if unknown:
            raise ValueError(f"predictor config keys must be known, but got {sorted(unknown)}; remove them.")
        return cls(**{k: v for k, v in data.items() if k in fields})


def group_folds(ids, k: int, seed: int) -> np.ndarray:
    """Fold index per row with all rows of one id in the same fold (ids shuffled by ``seed``)."""
    ids = np.asarray(ids).astype(str)
    uniq = np.unique(ids)
    if len(uniq) < k:
        raise ValueError(
            f"grouped folds need at least as many distinct ids as folds, but got {len(uniq)} ids for {k} folds; "
            "lower the number of folds or add runs."
        )
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = np.empty(len(uniq), dtype=int)
    fold_of[order] = np.arange(len(uniq)) % k
    return fold_of[np.searchsorted(uniq, ids)]


def _train(params: dict, X: np.ndarray, y: np.ndarray, n_estimators: int, names):
    import lightgbm as lgb

    data = lgb.Dataset(X, label=y, feature_name=list(names), free_raw_data=True, params={"verbose": -1})
    return lgb.train(params, data, num_boost_round=int(n_estimators))


def _as_frame(X, names=None):
    import pandas as pd

    if isinstance(X, pd.DataFrame):
        return X
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, but got shape {X.shape}; pass a table of features.")
    names = names or [f"f{i}" for i in range(X.shape[1])]
    return pd.DataFrame(X, columns=list(names))


class ProbePredictor:
    """One LightGBM regressor shared by all probe depths, with conformal intervals and grouped SHAP.

    Parameters
    ----------
    config : PredictorConfig, optional
        Settings (TuneAhead's configuration with bagging on by default).
    feature_groups : dict, optional
        Feature -> group; default from :func:`plan_probe._meta.feature_group`.

    Attributes
    ----------
    boosters_ : list of lightgbm.Booster
        ``config.n_top`` × ``config.n_seeds`` boosters whose predictions are averaged; ``members_``
        says which candidate and seed each one is.
    feature_names_, feature_groups_ : list, dict
    params_ : dict
        The LightGBM parameters used (after tuning), ``n_estimators_`` the number of trees.
    scores_ : ndarray
        Sorted signed OOF residuals divided by the row scale (the conformal calibration scores).
    scale_mode_ : str
        ``"risk"`` (external scale, e.g. sqrt(L(c)) of a risk model), ``"depth"`` or ``"none"``.
    depth_scale_ : dict
        Depth -> RMS OOF residual (``scale_mode_ == "depth"``).
    oof_pred_ : ndarray
        Out-of-fold predictions of the training rows; ``cv_rmse_`` their RMSE.
    """

    def __init__(self, config: PredictorConfig | None = None, feature_groups: dict | None = None):
        self.config = config
        self.feature_groups = feature_groups

    # ----------------------------------------------------------------------------------------- fit
    def fit(self, X, y, *, groups=None, scale=None, target_depth=None) -> "ProbePredictor":
        """Fit the shared regressor and its conformal calibration.

        Parameters
        ----------
        X : pandas.DataFrame or array (n, p)
            Features (``depth`` among them for a depth-aware model).
        y : array (n,)
            Label; a named pandas Series records its name.
        groups : array (n,), optional
            Run ids for the grouped calibration folds (default: every row its own group).
        scale : array (n,), optional
            Positive per-row scale (e.g. sqrt of a risk model's expected L(c)) for normalised scores.
        target_depth : float, optional
            With ``tune`` and a ``depth`` feature: the model will be used at this depth only, so the
            inner CV scores candidates on that depth's rows, and it may also choose to train on
            that depth's rows alone (scope ``"target"``) instead of every depth (``"all"``) when
            the other depths do not help there.
        """
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

        folds = group_folds(groups, cfg.calibration_folds, cfg.seed)
        base = cfg.lgbm_params()
        at_target = np.ones(len(ya), dtype=bool)
        scopes = ["all"]
        if target_depth is not None and "depth" in names:
            at_target = Xa[:, names.index("depth")] == float(target_depth)
            if not at_target.any():
                raise ValueError(f"target_depth must be a depth present in the data, but got {target_depth=}; pick a recorded depth.")
            if cfg.tune and not at_target.all():
                scopes.append("target")
        if cfg.tune:
            grid = [(bag, nl, ne) for bag in TUNE_GRID["bagging"] for nl in TUNE_GRID["num_leaves"] for ne in TUNE_GRID["n_estimators"]]
        else:
            grid = [(int(cfg.subsample_freq) > 0, int(cfg.num_leaves), int(cfg.n_estimators))]
        candidates = [(scope, *g) for scope in scopes for g in grid]
        oof = {c: np.full(len(ya), np.nan) for c in candidates}
        for scope in scopes:
            rows = at_target if scope == "target" else np.ones(len(ya), dtype=bool)
            for bag, nl in sorted({g[:2] for g in grid}):
                trees = [ne for (b, l, ne) in grid if (b, l) == (bag, nl)]
                params = self._candidate_params(base, (scope, bag, nl, None), cfg)
                for k in range(cfg.calibration_folds):
                    tr, te = (folds != k) & rows, (folds == k) & rows
                    if not te.any() or not tr.any():
                        continue
                    booster = _train(params, Xa[tr], ya[tr], max(trees), names)
                    for ne in trees:  # one fit serves every tree count (predict with fewer iterations)
                        oof[(scope, bag, nl, ne)][te] = booster.predict(Xa[te], num_iteration=ne)
        # candidates are scored where the model will be used (the target depth, or every row); ties
        # go to the shared model, bagging on, fewer trees, fewer leaves
        rmse = {c: float(np.sqrt(np.nanmean((ya[at_target] - p[at_target]) ** 2))) for c, p in oof.items()}
        ranked = sorted(candidates, key=lambda c: (rmse[c], c[0] != "all", not c[1], c[3], c[2]))
        self.cv_scores_ = {_candidate_name(c): rmse[c] for c in candidates}
        top = ranked[: int(cfg.n_top)]
        best = top[0]
        # one target-scoped member makes the whole ensemble a model of the target depth only
        self.scope_ = "target" if any(c[0] == "target" for c in top) else "all"
        self.params_ = self._candidate_params(base, best, cfg)
        self.n_estimators_ = best[3]
        self.members_ = [
            {"scope": c[0], "bagging": bool(c[1]), "num_leaves": int(c[2]), "n_estimators": int(c[3]), "seed": int(cfg.seed) + i}
            for c in top for i in range(int(cfg.n_seeds))
        ]
        train_rows = at_target if self.scope_ == "target" else np.ones(len(ya), dtype=bool)
        self.oof_pred_ = self._ensemble_oof(oof, base, Xa, ya, folds, at_target, names, cfg)
        self.cv_rmse_ = float(np.sqrt(np.nanmean((ya[at_target] - self.oof_pred_[at_target]) ** 2)))
        resid = ya - self.oof_pred_

        self.depth_scale_ = {}
        if ext_scale is not None:
            self.scale_mode_ = "risk"
            s = ext_scale
        elif cfg.depth_scale and "depth" in names and self.scope_ == "all":
            depth = Xa[:, names.index("depth")]
            levels, counts = np.unique(depth, return_counts=True)
            if len(levels) > 1 and counts.min() >= _MIN_ROWS_PER_DEPTH:
                self.scale_mode_ = "depth"
                self.depth_scale_ = {
                    float(d): max(float(np.sqrt(np.mean(resid[depth == d] ** 2))), 1e-12) for d in levels
                }
                s = self._depth_scale(depth)
            else:
                self.scale_mode_ = "none"
                s = np.ones_like(ya)
        else:
            self.scale_mode_ = "none"
            s = np.ones_like(ya)
        self.scores_ = np.sort((resid / s)[train_rows])
        self.boosters_ = []
        for member in self.members_:
            rows = at_target if member["scope"] == "target" else np.ones(len(ya), dtype=bool)
            params = self._member_params(base, member, cfg)
            self.boosters_.append(_train(params, Xa[rows], ya[rows], member["n_estimators"], names))
        # the training range of every feature, to flag rows the model can only extrapolate to
        self.feature_ranges_ = {n: [float(Xa[:, j].min()), float(Xa[:, j].max())] for j, n in enumerate(names)}
        self.label_stats_ = {
            "min": float(ya.min()),
            "max": float(ya.max()),
            "mean": float(ya.mean()),
            "std": float(ya.std()),
            "n": int(len(ya)),
        }
        return self

    # ------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _candidate_params(base: dict, cand: tuple, cfg: PredictorConfig) -> dict:
        _, bagging, leaves, _ = cand
        return {**base, "num_leaves": int(leaves), "bagging_freq": int(cfg.subsample_freq or 1) if bagging else 0}

    def _member_params(self, base: dict, member: dict, cfg: PredictorConfig) -> dict:
        cand = (member["scope"], member["bagging"], member["num_leaves"], member["n_estimators"])
        return {**self._candidate_params(base, cand, cfg), "seed": member["seed"]}

    def _ensemble_oof(self, oof: dict, base: dict, Xa, ya, folds, at_target, names, cfg) -> np.ndarray:
        """Out-of-fold predictions of the averaged members, on the calibration folds of the search.

        The conformal scores must come from the model that predicts, so members with a seed other
        than the search's are refitted on the same folds (the search's own fits are reused).
        """
        everywhere = np.ones(len(ya), dtype=bool)
        total = np.zeros(len(ya))
        for member in self.members_:
            cand = (member["scope"], member["bagging"], member["num_leaves"], member["n_estimators"])
            if member["seed"] == int(cfg.seed):
                total += oof[cand]
                continue
            rows = at_target if member["scope"] == "target" else everywhere
            scored = at_target if self.scope_ == "target" else everywhere
            pred = np.full(len(ya), np.nan)
            params = self._member_params(base, member, cfg)
            for k in range(cfg.calibration_folds):
                tr, te = (folds != k) & rows, (folds == k) & scored
                if te.any() and tr.any():
                    pred[te] = _train(params, Xa[tr], ya[tr], member["n_estimators"], names).predict(Xa[te])
            total += pred
        return total / len(self.members_)

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

    def _check_fitted(self):
        if not hasattr(self, "boosters_"):
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

    def _depth_scale(self, depth) -> np.ndarray:
        levels = np.array(sorted(self.depth_scale_))
        values = np.array([self.depth_scale_[d] for d in levels])
        return np.interp(np.log(np.asarray(depth, dtype=float)), np.log(levels), values)

    def row_scale(self, X, scale=None) -> np.ndarray:
        """Per-row interval scale for ``X`` (external ``scale`` required when calibrated with one)."""
        Xa = self._matrix(X)
        if self.scale_mode_ == "risk":
            if scale is None:
                raise ValueError(
                    "this predictor was calibrated with a risk model's scale, but none was given; pass --risk-model."
                )
            return self._check_scale(scale, Xa.shape[0])
        if self.scale_mode_ == "depth":
            return self._depth_scale(Xa[:, self.feature_names_.index("depth")])
        return np.ones(Xa.shape[0])

    # ---------------------------------------------------------------------------------- predicting
    def predict(self, X) -> np.ndarray:
        """Point predictions (label units): the mean of the boosters' predictions."""
        Xa = self._matrix(X)
        return np.mean([b.predict(Xa) for b in self.boosters_], axis=0)

    def conformal_quantile(self, coverage: float) -> float:
        """The ceil((n+1)·coverage)-th smallest absolute calibration score (split conformal)."""
        self._check_fitted()
        if not 0 < coverage < 1:
            raise ValueError(f"coverage must be in (0, 1), but got {coverage=}; pass e.g. 0.9.")
        abs_scores = np.sort(np.abs(self.scores_))
        n = abs_scores.size
        k = math.ceil((n + 1) * coverage)
        if k > n:
            raise ValueError(
                f"coverage needs at least {k} calibration scores, but the predictor has {n} (coverage={coverage}); "
                "lower --coverage or fit on more rows."
            )
        return float(abs_scores[k - 1])

    def predict_interval(self, X, coverage: float = 0.9, scale=None):
        """Point prediction and conformal interval ``(pred, lower, upper)`` at ``coverage``."""
        q = self.conformal_quantile(coverage)
        pred = self.predict(X)
        s = self.row_scale(X, scale)
        return pred, pred - q * s, pred + q * s

    def prob_at_least(self, X, threshold: float, scale=None) -> np.ndarray:
        """P(score >= threshold) from the conformal residual distribution.

        Share of calibration residuals r_j with pred + s·r_j >= threshold, with a +1/+2 (Laplace)
        correction so that a finite calibration set never claims certainty.
        """
        pred = self.predict(X)
        s = self.row_scale(X, scale)
        need = (threshold - pred) / s
        n = self.scores_.size
        count = n - np.searchsorted(self.scores_, need, side="left")
        return (count + 1.0) / (n + 2.0)

    def outside_range(self, X, *, margin: float = 0.1) -> list[list[str]]:
        """Per row, the features outside their training range widened by ``margin`` × its width.

        Trees predict a constant beyond the last split, so such rows are extrapolations whatever the
        interval says. Empty lists for a predictor saved without ranges.
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
        """Exact TreeSHAP (LightGBM ``pred_contrib``): ``(contributions (n, p), base value (n,))``.

        Contributions plus the base value equal the prediction exactly (local accuracy). SHAP
        values are linear in the model, so those of the seed average are the average of each
        booster's.
        """
        Xa = self._matrix(X)
        contrib = np.mean([b.predict(Xa, pred_contrib=True) for b in self.boosters_], axis=0)
        return contrib[:, :-1], contrib[:, -1]

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
    def _sidecar(self, model_shas: list) -> dict:
        import lightgbm

        return PREDICTOR_FORMAT.stamp({
            "lightgbm_version": lightgbm.__version__,
            "config": (self.config or PredictorConfig()).to_dict(),
            "params": self.params_,
            "n_estimators": self.n_estimators_,
            "scope": self.scope_,
            "members": self.members_,
            "cv_scores": self.cv_scores_,
            "cv_rmse": self.cv_rmse_,
            "feature_names": self.feature_names_,
            "feature_groups": self.feature_groups_,
            "label": {"name": self.label_name_, **self.label_stats_},
            "scale_mode": self.scale_mode_,
            "depth_scale": [[d, s] for d, s in sorted(self.depth_scale_.items())],
            "calibration_scores": [float(v) for v in self.scores_],
            "feature_ranges": self.feature_ranges_,
            "model_files": [name for name, _ in model_shas],
            "model_sha256": [sha for _, sha in model_shas],
        })

    def save(self, directory, extra: dict | None = None) -> Path:
        """Write ``model.txt`` (``model_<i>.txt`` per further member; LightGBM text) and ``predictor.json``."""
        from plan_probe.probes._io import atomic_path, write_json

        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model_shas = []
        for i, booster in enumerate(self.boosters_):
            name = "model.txt" if i == 0 else f"model_{i}.txt"
            text = booster.model_to_string()
            with atomic_path(directory / name) as tmp:
                tmp.write_text(text)
            model_shas.append((name, hashlib.sha256(text.encode()).hexdigest()))
        sidecar = self._sidecar(model_shas)
        if extra:
            sidecar["extra"] = extra
        write_json(sidecar, directory / "predictor.json")
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
        if not (isinstance(files, list) and isinstance(shas, list) and files and len(files) == len(shas)
                and all(isinstance(f, str) and re.fullmatch(r"model(_[0-9]+)?\.txt", f) for f in files)):
            raise ValueError(
                f"predictor.json must list model files named model.txt / model_<i>.txt with one checksum each, "
                f"but got model_files={files!r}; refit with plan-probe fit-predictor."
            )
        self.boosters_ = [booster_from_text(directory / f, _read_checked(directory / f, sha), side["feature_names"])
                          for f, sha in zip(files, shas)]
        self.feature_names_ = list(side["feature_names"])
        self.feature_groups_ = dict(side["feature_groups"])
        self.n_features_in_ = len(self.feature_names_)
        self.params_ = dict(side["params"])
        self.n_estimators_ = int(side["n_estimators"])
        self.scope_ = str(side.get("scope", "all"))
        self.members_ = list(side.get("members") or [{"scope": self.scope_, "n_estimators": self.n_estimators_}])
        self.cv_scores_ = dict(side["cv_scores"])
        self.cv_rmse_ = float(side["cv_rmse"])
        label = dict(side["label"])
        self.label_name_ = label.pop("name")
        self.label_stats_ = label
        self.scale_mode_ = side["scale_mode"]
        self.depth_scale_ = {float(d): float(s) for d, s in side["depth_scale"]}
        self.scores_ = np.asarray(side["calibration_scores"], dtype=float)
        self.extra_ = side.get("extra", {})
        self.feature_ranges_ = {str(k): [float(a), float(b)] for k, (a, b) in side.get("feature_ranges", {}).items()}
        return self

    def __repr__(self) -> str:
        return f"ProbePredictor(config={self.config!r})"


def _read_checked(path: Path, sha: str) -> str:
    if not path.is_file():
        raise ValueError(f"the model file must exist, but {str(path)!r} is missing; refit the predictor.")
    text = path.read_text()
    if hashlib.sha256(text.encode()).hexdigest() != sha:
        raise ValueError(f"the model checksum must match predictor.json, but {str(path)!r} differs; refit the predictor.")
    return text


def _candidate_name(c: tuple) -> str:
    scope, bagging, leaves, trees = c
    return f"scope={scope},bagging={'on' if bagging else 'off'},num_leaves={leaves},n_estimators={trees}"
