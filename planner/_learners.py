"""Learners of the shared predictor (docs/theory.md §5) and their exact SHAP values.

Four families (and the training mean, a baseline), each fitted on a row subset and predicted along a path (tree counts) from one fit:

``ridge``
    Standardised ridge regression; alpha chosen from :data:`ALPHAS` by grouped K-fold CV on the
    rows it is fitted on (so a ridge fit is self-tuning and nests inside any outer CV).
``gbdt``
    LightGBM gradient-boosted trees (TuneAhead's family).
``linear_tree``
    LightGBM with ``linear_tree=True`` (a ridge model in every leaf) on standardised features:
    piecewise-linear, so it extrapolates linearly where the data are linear.
``stack``
    A ridge fit plus LightGBM boosted from the ridge's predictions (``init_score``): the trees
    model only what the linear part leaves.

A fitted learner is a :class:`Member` (an optional linear part plus an optional booster, times a
blend weight). Its SHAP values are exact and sum to its prediction:

* linear part: ``coef_j / sd_j * (x_j - mean_j)`` with base ``intercept`` (the prediction at the
  training mean; the exact SHAP values of a linear model with independent features);
* ``gbdt`` and the trees of ``stack``: path-dependent TreeSHAP (LightGBM ``pred_contrib``);
* ``linear_tree`` (LightGBM has no TreeSHAP for linear leaves): exact baseline Shapley values
  (Sundararajan & Najmi 2020) with the training mean as the single reference, v(S) = f(x_S, x̄_¬S),
  computed leaf by leaf as products of single-feature factors (no sampling). For a linear model this
  is exactly ``coef × (x − mean)``, so the two definitions agree on the linear parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ALPHAS", "CLIP_MARGIN", "Family", "Member", "group_folds", "fit_ridge", "fit_family", "blend_predict",
           "blend_shap"]

#: Ridge penalties on standardised features (sum of squares, unscaled by n).
ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 29))
_RIDGE_FOLDS = 5
#: Inputs are clipped to each member's training range widened by this share of the range on each
#: side: a linear part extrapolates a little, never without bound (one feature 78 SDs outside its
#: training range, as in leave-task-out on the encoder tier, would otherwise dominate the
#: prediction). Trees are unaffected (their thresholds lie inside the range).
CLIP_MARGIN = 0.1
_KINDS = ("mean", "ridge", "gbdt", "linear_tree", "stack")


@dataclass(frozen=True)
class Family:
    """One candidate family of the search (a learner with fixed settings and a tree-count path).

    ``trees`` lists the tree counts scored from one fit (predictions with fewer iterations);
    ignored for ``ridge``.
    """

    kind: str
    num_leaves: int = 4
    min_child_samples: int = 20
    bagging: bool = True
    trees: tuple = (140,)
    linear_lambda: float = 1.0
    learning_rate: float | None = None  # None: the configuration's

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"a learner family must be one of {_KINDS}, but got kind={self.kind!r}; pick one of those.")

    @property
    def path(self) -> tuple:
        return (0,) if self.kind in ("mean", "ridge") else tuple(sorted(int(t) for t in self.trees))

    def label(self, scope: str, trees: int) -> str:
        if self.kind in ("mean", "ridge"):
            return f"scope={scope},kind={self.kind}"
        return (f"scope={scope},kind={self.kind},bagging={'on' if self.bagging else 'off'},num_leaves={self.num_leaves},"
                f"min_child_samples={self.min_child_samples},n_estimators={trees}")

    def lgbm_params(self, base: dict, seed: int) -> dict:
        params = {**base, "num_leaves": int(self.num_leaves), "min_data_in_leaf": int(self.min_child_samples),
                  "seed": int(seed)}
        if self.learning_rate is not None:
            params["learning_rate"] = float(self.learning_rate)
        params["bagging_freq"] = int(base.get("bagging_freq") or 1) if self.bagging else 0
        if self.kind == "linear_tree":
            params.update(linear_tree=True, linear_lambda=float(self.linear_lambda))
        return params


# ------------------------------------------------------------------------------------------ ridge
def _standardise(X: np.ndarray):
    mean = X.mean(axis=0)
    sd = X.std(axis=0)
    return mean, np.where(sd > 0, sd, 1.0)


def _ridge_path(Z: np.ndarray, yc: np.ndarray, alphas) -> np.ndarray:
    """Coefficients (len(alphas), p) of ridge on centred Z, yc: V diag(1 / (λ + α)) Vᵀ Zᵀyc, ZᵀZ = VΛVᵀ.

    The p × p eigendecomposition is cheaper than an SVD of Z when n >> p.
    """
    lam, V = np.linalg.eigh(Z.T @ Z)
    lam = np.clip(lam, 0.0, None)
    vty = V.T @ (Z.T @ yc)
    return np.stack([V @ (vty / (lam + a)) for a in alphas])


def group_folds(ids, k: int, seed: int) -> np.ndarray:
    """Fold index per row with all rows of one id in the same fold (ids shuffled by ``seed``)."""
    ids = np.asarray(ids).astype(str)
    uniq, inverse = np.unique(ids, return_inverse=True)
    if len(uniq) < k:
        raise ValueError(
            f"grouped folds need at least as many distinct ids as folds, but got {len(uniq)} ids for {k} folds; "
            "lower the number of folds or add runs."
        )
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = np.empty(len(uniq), dtype=int)
    fold_of[order] = np.arange(len(uniq)) % k
    return fold_of[inverse]


def fit_ridge(X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0, alphas=ALPHAS) -> dict:
    """Standardised ridge with alpha chosen by grouped K-fold CV on these rows (ties: larger alpha).

    Minimises Σ (y − b − zβ)² + α‖β‖² with z = (x − mean) / sd over the training rows; constant
    columns get β = 0. Returns the linear part ``{"mean", "scale", "coef", "intercept", "alpha"}``
    with prediction ``intercept + ((x − mean) / scale) · coef``.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    alphas = np.asarray(alphas, dtype=float)
    k = min(_RIDGE_FOLDS, len(np.unique(groups)))
    alpha = float(alphas[0]) if len(alphas) == 1 else 1.0
    if k >= 2 and len(alphas) > 1:
        folds = group_folds(groups, k, seed)
        sse = np.zeros(len(alphas))
        for f in range(k):
            tr, te = folds != f, folds == f
            mean, sd = _standardise(X[tr])
            coefs = _ridge_path((X[tr] - mean) / sd, y[tr] - y[tr].mean(), alphas)
            pred = y[tr].mean() + ((X[te] - mean) / sd) @ coefs.T
            sse += ((pred - y[te, None]) ** 2).sum(axis=0)
        best = sse.min()
        # the largest alpha within float noise of the best (the smoother model on ties)
        alpha = float(alphas[np.flatnonzero(sse <= best * (1 + 1e-12))].max())
    mean, sd = _standardise(X)
    coef = _ridge_path((X - mean) / sd, y - y.mean(), [alpha])[0]
    coef = np.where(X.std(axis=0) > 0, coef, 0.0)
    return {"mean": mean.tolist(), "scale": sd.tolist(), "coef": coef.tolist(), "intercept": float(y.mean()),
            "alpha": alpha}


def _linear_predict(lin: dict, X: np.ndarray) -> np.ndarray:
    return lin["intercept"] + ((X - np.asarray(lin["mean"])) / np.asarray(lin["scale"])) @ np.asarray(lin["coef"])


def _linear_shap(lin: dict, X: np.ndarray):
    contrib = (X - np.asarray(lin["mean"])) / np.asarray(lin["scale"]) * np.asarray(lin["coef"])
    return contrib, np.full(X.shape[0], float(lin["intercept"]))


# --------------------------------------------------------------------------------------- boosting
def _train_booster(params: dict, X, y, n_trees: int, init_score=None, names=None):
    import lightgbm as lgb

    data = lgb.Dataset(X, label=y, init_score=init_score, feature_name=list(names) if names else "auto",
                       free_raw_data=True, params={"verbose": -1})
    # keep_training_booster: skip LightGBM's model-text round trip at the end of train (~10 % of a fit)
    return lgb.train(params, data, num_boost_round=int(n_trees), keep_training_booster=True)


def _path_predict(booster, X: np.ndarray, path) -> dict:
    """Predictions at every tree count of ``path`` from one booster (increments, not re-summing)."""
    out, total, start = {}, np.zeros(X.shape[0]), 0
    for t in path:
        # LightGBM stops early when no leaf can split: then every longer path point is the whole model
        stop = min(int(t), booster.current_iteration())
        if stop > start:
            total = total + booster.predict(X, start_iteration=start, num_iteration=stop - start, num_threads=1)
            start = stop
        out[int(t)] = total.copy()
    return out


def fit_family(family: Family, base_params: dict, X, y, groups, predict_sets, seed: int, keep: bool = False,
               names=None):
    """Fit ``family`` on (X, y) and predict every matrix of ``predict_sets`` along its path.

    Returns ``(preds, member_json)``: ``preds[j][t]`` are the predictions for ``predict_sets[j]`` with
    ``t`` trees (``t = 0`` for ridge); ``member_json`` (only with ``keep``) is the unweighted member as
    saved, with the LightGBM booster (the largest tree count; trimmed at save; features named
    ``names``).
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    linear = std = booster = None
    lo, hi = X.min(axis=0), X.max(axis=0)
    clip = {"lo": (lo - CLIP_MARGIN * (hi - lo)).tolist(), "hi": (hi + CLIP_MARGIN * (hi - lo)).tolist()}
    if family.kind == "mean":
        linear = {"mean": [0.0] * X.shape[1], "scale": [1.0] * X.shape[1], "coef": [0.0] * X.shape[1],
                  "intercept": float(y.mean()), "alpha": None}
    if family.kind in ("ridge", "stack"):
        linear = fit_ridge(X, y, groups, seed)
    if family.kind not in ("mean", "ridge"):
        params = family.lgbm_params(base_params, seed)
        Xb = X
        init = None
        if family.kind == "linear_tree":
            mean, sd = _standardise(X)
            std = {"mean": mean.tolist(), "scale": sd.tolist()}
            Xb = (X - mean) / sd
        if linear is not None:
            init = _linear_predict(linear, X)
        booster = _train_booster(params, Xb, y, max(family.path), init, names)
    preds = []
    for P in predict_sets:
        P = _clip(clip, np.asarray(P, dtype=float))
        lin = _linear_predict(linear, P) if linear is not None else 0.0
        if booster is None:
            preds.append({0: lin + np.zeros(P.shape[0])})
            continue
        Pb = (P - np.asarray(std["mean"])) / np.asarray(std["scale"]) if std else P
        preds.append({t: lin + v for t, v in _path_predict(booster, Pb, family.path).items()})
    member = None
    if keep:
        member = {"kind": family.kind, "linear": linear, "standardise": std, "clip": clip, "booster": booster}
    return preds, member


def _clip(clip: dict | None, X: np.ndarray) -> np.ndarray:
    if not clip:
        return X
    return np.clip(X, np.asarray(clip["lo"]), np.asarray(clip["hi"]))


# ---------------------------------------------------------------------------------------- members
@dataclass
class Member:
    """One fitted learner of a blend: ``weight × (linear(z) + booster(standardise(z)))``, z = clip(x).

    ``clip`` bounds every input to the member's training range (± :data:`CLIP_MARGIN`; None for
    predictors of schema ≤ 2). ``num_iteration`` is the booster's tree count (None: all). ``info``
    records the family settings, scope and seed for the JSON sidecar.
    """

    kind: str
    weight: float
    linear: dict | None = None
    standardise: dict | None = None
    booster: object = None
    num_iteration: int | None = None
    info: dict = field(default_factory=dict)
    clip: dict | None = None
    _dump: dict | None = field(default=None, repr=False)

    def raw(self, X: np.ndarray) -> np.ndarray:
        X = _clip(self.clip, X)
        out = _linear_predict(self.linear, X) if self.linear is not None else np.zeros(X.shape[0])
        if self.booster is not None:
            out = out + self.booster.predict(self._tree_input(X), num_iteration=self.num_iteration, num_threads=1)
        return out

    def _tree_input(self, X):
        if not self.standardise:
            return X
        return (X - np.asarray(self.standardise["mean"])) / np.asarray(self.standardise["scale"])

    def shap(self, X: np.ndarray):
        """Exact SHAP ``(contrib (n, p), base (n,))`` of the unweighted member (see module docstring).

        Clipping acts on each feature alone, so the Shapley values of x ↦ f(clip(x)) are those of f
        at clip(x) (the reference, the training mean, lies inside the range).
        """
        X = _clip(self.clip, X)
        contrib = np.zeros(X.shape)
        base = np.zeros(X.shape[0])
        if self.linear is not None:
            c, b = _linear_shap(self.linear, X)
            contrib += c
            base += b
        if self.booster is not None:
            Xt = self._tree_input(X)
            if self.kind == "linear_tree":
                if self._dump is None:
                    self._dump = self.booster.dump_model(num_iteration=self.num_iteration)
                c, b = linear_tree_shap(self._dump, Xt, np.zeros(X.shape[1]))
            else:
                full = self.booster.predict(Xt, pred_contrib=True, num_iteration=self.num_iteration, num_threads=1)
                c, b = full[:, :-1], full[:, -1]
            contrib += c
            base += b
        return contrib, base


def blend_predict(members, X: np.ndarray) -> np.ndarray:
    return np.sum([m.weight * m.raw(X) for m in members], axis=0)


def blend_shap(members, X: np.ndarray):
    """Weighted sum of the members' exact SHAP values (SHAP is linear in the model)."""
    contrib = np.zeros(X.shape)
    base = np.zeros(X.shape[0])
    for m in members:
        c, b = m.shap(X)
        contrib += m.weight * c
        base += m.weight * b
    return contrib, base


# ------------------------------------------------------------------------------ linear-tree SHAP
_ZERO = 1e-35  # LightGBM's kZeroThreshold


def _goes_left(node: dict, x):
    """LightGBM's numerical decision for finite values (zero counts as missing under missing_type Zero)."""
    left = x <= node["threshold"]
    if node.get("missing_type") == "Zero":
        left = np.where(np.abs(x) <= _ZERO, bool(node.get("default_left", True)), left)
    return left


def _leaves(node: dict, path=()):
    if "left_child" not in node:  # a leaf; a tree that never split is one leaf without a leaf_index
        yield path, node
        return
    for child, side in (("left_child", True), ("right_child", False)):
        yield from _leaves(node[child], path + ((node, side),))


def _product_game_shapley(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Exact Shapley values of v(S) = Π_{k∈S} U_k Π_{k∉S} V_k (rows independent), shape (n, d).

    φ_i = (U_i − V_i) Σ_s s!(d−1−s)!/d! e_s, with e_s the coefficient of t^s in Π_{k≠i} (V_k + U_k t).
    """
    n, d = U.shape
    w = np.array([math.factorial(s) * math.factorial(d - 1 - s) / math.factorial(d) for s in range(d)])
    phi = np.empty((n, d))
    for i in range(d):
        poly = np.zeros((n, d))
        poly[:, 0] = 1.0
        for k in range(d):
            if k == i:
                continue
            poly[:, 1:] = poly[:, 1:] * V[:, k, None] + poly[:, :-1] * U[:, k, None]
            poly[:, 0] *= V[:, k]
        phi[:, i] = (U[:, i] - V[:, i]) * (poly @ w)
    return phi


def linear_tree_shap(dump: dict, X: np.ndarray, baseline: np.ndarray):
    """Exact baseline Shapley values of a LightGBM linear-tree model (``dump_model()`` output).

    Every leaf's output is ``1[x in leaf] · (const + Σ_j c_j x_j)``; each term is a product of
    one factor per feature (the leaf's split conditions on it, times x_j for the coefficient's
    feature), so its Shapley values for v(S) = f(x_S, baseline_¬S) have the closed form of
    :func:`_product_game_shapley`. Returns ``(contrib (n, p), base (n,))`` with
    ``contrib.sum(1) + base == f(x)`` and ``base == f(baseline)``.
    """
    n, p = X.shape
    contrib = np.zeros((n, p))
    base = 0.0
    for tree in dump["tree_info"]:
        for path, leaf in _leaves(tree["tree_structure"]):
            u_ind, v_ind = {}, {}
            for node, side in path:
                j = int(node["split_feature"])
                ux = _goes_left(node, X[:, j]) == side
                vx = bool(_goes_left(node, baseline[j]) == side)
                u_ind[j] = u_ind.get(j, np.ones(n, dtype=bool)) & ux
                v_ind[j] = v_ind.get(j, True) and vx
            const = float(leaf.get("leaf_const", leaf["leaf_value"]))
            terms = [(None, const)] + list(zip(leaf.get("leaf_features", []), leaf.get("leaf_coeff", [])))
            for feat, coef in terms:
                players = sorted(set(u_ind) | ({int(feat)} if feat is not None else set()))
                U = np.empty((n, len(players)))
                V = np.empty((n, len(players)))
                for col, j in enumerate(players):
                    U[:, col] = u_ind[j] if j in u_ind else 1.0
                    V[:, col] = float(v_ind[j]) if j in v_ind else 1.0
                    if feat is not None and j == int(feat):
                        U[:, col] *= X[:, j]
                        V[:, col] *= baseline[j]
                scale = coef if feat is not None else const
                if not players:
                    base += scale
                    continue
                base += scale * float(np.prod(V[0]))
                contrib[:, players] += scale * _product_game_shapley(U, V)
    return contrib, np.full(n, base)
