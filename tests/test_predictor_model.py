"""ProbePredictor: estimator contract, save/load without pickle, exact SHAP identity, conformal coverage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from plan_probe.experiments.synthetic.meta_generator import make_meta_dataset
from plan_probe._meta import load_meta
from plan_probe._predictor import FORMAT, PredictorConfig, ProbePredictor, group_folds


@pytest.fixture(scope="module")
def train_meta():
    return load_meta(make_meta_dataset(300, seed=0), label="score")


@pytest.fixture(scope="module")
def fitted(train_meta):
    m = train_meta
    return ProbePredictor(PredictorConfig(seed=3), m.groups).fit(m.X, m.frame["score"], groups=m.ids)


def test_contract_fit_returns_self_and_learned_attributes(train_meta):
    cfg = PredictorConfig(seed=1)
    model = ProbePredictor(cfg)
    assert model.config is cfg and not hasattr(model, "boosters_")  # __init__ only stores settings
    out = model.fit(train_meta.X, train_meta.frame["score"], groups=train_meta.ids)
    assert out is model
    for attr in ("boosters_", "feature_names_", "feature_groups_", "scores_", "oof_pred_", "cv_rmse_", "n_features_in_"):
        assert hasattr(model, attr)
    assert model.n_features_in_ == len(train_meta.features)
    assert model.label_name_ == "score"
    # TuneAhead's settings with bagging actually on.
    assert model.params_["bagging_freq"] == 1 and model.params_["bagging_fraction"] == 0.6
    assert model.n_estimators_ == 140 and model.params_["num_leaves"] == 4
    # One score per training row; out-of-fold residuals have the model's CV RMSE.
    assert model.scores_.size == len(train_meta.frame)
    resid = train_meta.y - model.oof_pred_
    assert np.sqrt(np.mean(resid**2)) == pytest.approx(model.cv_rmse_, rel=1e-12)


def test_config_json_round_trip_and_validation():
    cfg = PredictorConfig(learning_rate=0.1, seed=9, tune=True)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert PredictorConfig.from_dict(data) == cfg
    with pytest.raises(ValueError, match="num_leaves"):
        PredictorConfig(num_leaves=1)
    with pytest.raises(ValueError, match="keys must be known"):
        PredictorConfig.from_dict({"bogus": 1})


def test_save_load_identical_predictions_without_pickle(fitted, train_meta, tmp_path):
    fitted.save(tmp_path / "p")
    files = sorted(p.name for p in (tmp_path / "p").iterdir())
    # the final model and one booster per CV+ fold model, LightGBM text only
    n_boosters = 1 + len(fitted.fold_models_)
    assert files == sorted(["predictor.json", "model.txt", *[f"model_{i}.txt" for i in range(1, n_boosters)]])
    assert (tmp_path / "p" / "model.txt").read_text().startswith("tree")  # LightGBM text format
    side = json.loads((tmp_path / "p" / "predictor.json").read_text())
    assert side["format"] == FORMAT and side["feature_groups"]["dyn_0"] == "dynamic"
    loaded = ProbePredictor.load(tmp_path / "p")
    X = train_meta.X.iloc[:200]
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    for a, b in zip(loaded.predict_interval(X, 0.8), fitted.predict_interval(X, 0.8)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.prob_at_least(X, 55.0), fitted.prob_at_least(X, 55.0))


def test_save_into_an_older_predictor_folder_removes_its_dead_booster_files(fitted, train_meta, tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    n_boosters = 1 + len(fitted.fold_models_)
    # what a previous fit with more boosters left there, plus a file that is not ours
    (folder / f"model_{n_boosters + 3}.txt").write_text("tree\nstale")
    (folder / "model_notes.txt").write_text("kept: not a booster name")
    fitted.save(folder)
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(["predictor.json", "model.txt", "model_notes.txt", *[f"model_{i}.txt" for i in range(1, n_boosters)]])
    X = train_meta.X.iloc[:50]
    np.testing.assert_array_equal(ProbePredictor.load(folder).predict(X), fitted.predict(X))


def test_same_seed_gives_byte_identical_model(train_meta, tmp_path):
    m = train_meta
    for name in ("a", "b"):
        ProbePredictor(PredictorConfig(seed=5)).fit(m.X, m.frame["score"], groups=m.ids).save(tmp_path / name)
    assert (tmp_path / "a" / "model.txt").read_bytes() == (tmp_path / "b" / "model.txt").read_bytes()
    assert (tmp_path / "a" / "predictor.json").read_bytes() == (tmp_path / "b" / "predictor.json").read_bytes()


def test_load_accepts_other_package_version_rejects_newer_schema_and_tampered_model(fitted, tmp_path):
    fitted.save(tmp_path / "p")
    side_path = tmp_path / "p" / "predictor.json"
    side = json.loads(side_path.read_text())
    assert side["format"] == "plan-probe/predictor" and side["schema_version"] == 4
    side["plan_probe_version"] = "0.0.1-other"
    side_path.write_text(json.dumps(side))
    np.testing.assert_array_equal(ProbePredictor.load(tmp_path / "p").scores_, fitted.scores_)
    side["schema_version"] = 5
    side_path.write_text(json.dumps(side))
    with pytest.raises(ValueError, match="schema_version"):
        ProbePredictor.load(tmp_path / "p")
    fitted.save(tmp_path / "q")
    with open(tmp_path / "q" / "model.txt", "a") as fh:
        fh.write("\n")
    with pytest.raises(ValueError, match="checksum"):
        ProbePredictor.load(tmp_path / "q")


def test_shap_groups_plus_base_equal_prediction_exactly(fitted, train_meta):
    X = train_meta.X.iloc[:300]
    expl = fitted.explain(X)
    groups = [c for c in expl.columns if c.startswith("shap_") and c != "shap_base"]
    assert set(groups) == {"shap_static", "shap_dynamic", "shap_hyperparameter", "shap_depth"}
    total = expl["shap_base"].to_numpy() + expl[groups].to_numpy().sum(axis=1)
    # TreeSHAP local accuracy is an exact identity; only float summation order differs (1e-9 pp).
    np.testing.assert_allclose(total, fitted.predict(X), rtol=0, atol=1e-9)
    contrib, _ = fitted.shap_values(X)
    row = int(np.argmin(contrib.min(axis=1)))
    assert expl.loc[row, "down_1"] == fitted.feature_names_[int(np.argmin(contrib[row]))]
    assert expl.loc[row, "down_1_value"] == pytest.approx(contrib[row].min())
    assert (expl["down_1_value"] <= expl["down_2_value"]).all()


def test_conformal_coverage_on_held_out_runs(train_meta):
    """Coverage on 2,000 fresh runs (one row each at depth 100) within 3 points of nominal.

    Monte Carlo: the test-set SE is sqrt(p(1-p)/n) = 0.0067 (p=0.9) and 0.0089 (p=0.8) for
    n=2000; the calibration set (300 runs) adds a spread of about sqrt(p(1-p)/300) = 0.017-0.023,
    so 3 points is about 1.5 SD of the combined error with a fixed seed (deterministic test).
    """
    m = train_meta
    model = ProbePredictor(PredictorConfig(seed=0)).fit(m.X, m.frame["score"], groups=m.ids)
    test = load_meta(make_meta_dataset(2000, seed=11, depths=(100,)), label="score")
    y = test.y
    for nominal in (0.8, 0.9):
        _, lo, hi = model.predict_interval(test.X, nominal)
        cov = np.mean((y >= lo) & (y <= hi))
        assert abs(cov - nominal) <= 0.03, (nominal, cov)
    # P(score >= tau) is calibrated too: mean predicted probability ~ observed success rate.
    p = model.prob_at_least(test.X, 55.0)
    assert abs(p.mean() - np.mean(y >= 55.0)) <= 0.03


def test_risk_scaled_conformal_covers_each_noise_stratum():
    """Normalised scores with the true per-row scale cover both a quiet and a noisy stratum.

    y = 3·x0 + s·e with s = 1 (static_1 < 0) or 4 (static_1 >= 0); a stand-in risk model gives
    sqrt(L) = s. Plain conformal over-covers the quiet and under-covers the noisy stratum;
    normalised conformal covers each within 3 points (n ~ 2,000 per stratum: SE 0.007).
    """

    class StandInRisk:
        def expected_risk(self, frame, depth_col="depth"):
            return np.where(frame["static_1"].to_numpy() >= 0, 16.0, 1.0)

    rng = np.random.default_rng(0)

    def make(n):
        x = rng.normal(size=(n, 3))
        frame = pd.DataFrame({"static_0": x[:, 0], "static_1": x[:, 1], "static_2": x[:, 2], "depth": 100})
        s = np.sqrt(StandInRisk().expected_risk(frame))
        return frame, 3 * x[:, 0] + s * rng.standard_normal(n), s

    X, y, s = make(2000)
    Xt, yt, st = make(4000)
    scaled = ProbePredictor(PredictorConfig(seed=0)).fit(X, y, scale=s)
    plain = ProbePredictor(PredictorConfig(seed=0, depth_scale=False)).fit(X, y)
    assert scaled.scale_mode_ == "risk" and plain.scale_mode_ == "none"
    with pytest.raises(ValueError, match="risk model"):
        scaled.predict_interval(Xt, 0.9)
    noisy = st > 1
    _, lo, hi = scaled.predict_interval(Xt, 0.9, scale=st)
    inside = (yt >= lo) & (yt <= hi)
    assert abs(inside[noisy].mean() - 0.9) <= 0.03 and abs(inside[~noisy].mean() - 0.9) <= 0.03
    _, lo, hi = plain.predict_interval(Xt, 0.9)
    inside = (yt >= lo) & (yt <= hi)
    assert inside[noisy].mean() < 0.85 and inside[~noisy].mean() > 0.95


def _heteroscedastic(rng, n):
    """y = 3·x0 + s·e with s = exp(0.6·x0): the error grows with the predicted score (known truth)."""
    x = rng.normal(size=(n, 3))
    frame = pd.DataFrame({"static_0": x[:, 0], "static_1": x[:, 1], "static_2": x[:, 2], "depth": 100})
    return frame, 3 * x[:, 0] + np.exp(0.6 * x[:, 0]) * rng.standard_normal(n)


def test_prediction_scale_covers_low_and_high_predictions_alike():
    """With errors that grow with the score, the prediction scale fixes the conditional coverage.

    Known truth: s(x) = exp(0.6·x0) and μ = 3·x0, so the RMS error in the thirds of μ relative to
    the overall RMS is 0.39, 0.71, 1.53 (a 2,000,000-draw simulation). The fitted factors come from
    each fold's 800 inner out-of-fold residuals, which also carry the trees' own error (largest at
    both ends of x0): each within 0.2 of the truth, and increasing.
    Plain CV+ over-covers the low third (quiet) and under-covers the high third (noisy): 0.99, 0.97,
    0.77 on 6,000 fresh runs (2,000 per third: SE 0.007; the 1,000 calibration runs add about 0.01).
    With the scale every third is within 5 points of 90 % (0.94, 0.92, 0.91: g is one factor per
    third, so the quietest runs stay a little over-covered) and the quiet third's interval is narrower.
    """
    rng = np.random.default_rng(1)
    X, y = _heteroscedastic(rng, 1000)
    Xt, yt = _heteroscedastic(rng, 6000)
    plain = ProbePredictor(PredictorConfig(seed=0)).fit(X, y)
    scaled = ProbePredictor(PredictorConfig(seed=0, prediction_scale=True)).fit(X, y)
    assert plain.prediction_scale_ == {} and plain.fold_prediction_scale_ == []
    factors = np.array([t["factors"] for t in scaled.fold_prediction_scale_])
    assert factors.shape == (5, 3) and np.all(np.diff(factors, axis=1) > 0), factors
    np.testing.assert_allclose(factors, np.tile([0.39, 0.71, 1.53], (5, 1)), atol=0.2)
    np.testing.assert_allclose(scaled.predict(Xt), plain.predict(Xt))  # point predictions unchanged
    thirds = np.array_split(np.argsort(plain.predict(Xt)), 3)
    low, high = thirds[0], thirds[-1]
    for model, worst in ((plain, (0.07, 1.0)), (scaled, (0.0, 0.05))):
        _, lo, hi = model.predict_interval(Xt, 0.9)
        inside = (yt >= lo) & (yt <= hi)
        off = max(abs(inside[part].mean() - 0.9) for part in thirds)
        assert worst[0] < off <= worst[1], (model.config.prediction_scale, [inside[p].mean() for p in thirds])
    _, lo, hi = scaled.predict_interval(Xt, 0.9)
    assert np.median((hi - lo)[low]) < 0.6 * np.median((hi - lo)[high])
    # the decision planner's prior variance follows the same scale (final model's table)
    s = scaled.row_scale(Xt)
    assert np.median(s[low]) < np.median(s[high])


def test_prediction_scale_is_flat_on_homoscedastic_errors_and_round_trips(tmp_path):
    """Constant noise: every factor within 0.15 of 1 (a third's RMS of 267 of 800 residuals has a relative
    SE of about 4 %), the intervals within 10 % of plain CV+'s; save/load keeps the intervals exactly."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1000, 3))
    X = pd.DataFrame({"static_0": x[:, 0], "static_1": x[:, 1], "static_2": x[:, 2], "depth": 100})
    y = pd.Series(3 * x[:, 0] + rng.standard_normal(1000), name="score")
    scaled = ProbePredictor(PredictorConfig(seed=0, prediction_scale=True)).fit(X, y)
    plain = ProbePredictor(PredictorConfig(seed=0)).fit(X, y)
    factors = np.array([t["factors"] for t in scaled.fold_prediction_scale_])
    assert factors.shape == (5, 3) and np.all(np.abs(factors - 1) < 0.15), factors
    w_scaled = np.subtract(*scaled.predict_interval(X, 0.9)[:0:-1])
    w_plain = np.subtract(*plain.predict_interval(X, 0.9)[:0:-1])
    assert abs(np.median(w_scaled) / np.median(w_plain) - 1) < 0.1
    scaled.save(tmp_path / "p")
    back = ProbePredictor.load(tmp_path / "p")
    assert back.prediction_scale_ == scaled.prediction_scale_
    for a, b in zip(back.predict_interval(X, 0.9), scaled.predict_interval(X, 0.9)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.prob_at_least(X, 1.0), scaled.prob_at_least(X, 1.0))


def test_schema_3_predictor_loads_without_prediction_scale_and_bad_tables_fail(fitted, train_meta, tmp_path):
    fitted.save(tmp_path / "p")
    side_path = tmp_path / "p" / "predictor.json"
    side = json.loads(side_path.read_text())
    old = dict(side, schema_version=3)
    old.pop("prediction_scale")
    old["cv_plus"] = {k: v for k, v in side["cv_plus"].items() if k != "fold_prediction_scale"}
    side_path.write_text(json.dumps(old))
    back = ProbePredictor.load(tmp_path / "p")
    assert back.prediction_scale_ == {} and back.fold_prediction_scale_ == []
    X = train_meta.X.iloc[:50]
    for a, b in zip(back.predict_interval(X, 0.9), fitted.predict_interval(X, 0.9)):
        np.testing.assert_array_equal(a, b)
    for bad in ({"knots": [0.0, 1.0]}, {"knots": [1.0, 0.0], "factors": [1.0, 1.0]},
                {"knots": [0.0, 1.0], "factors": [1.0, 0.0]}, {"knots": [0.0], "factors": [1.0]},
                {"knots": [0.0, float("nan")], "factors": [1.0, 1.0]}):
        side_path.write_text(json.dumps(dict(side, prediction_scale=bad)).replace("NaN", "null"))
        with pytest.raises(ValueError, match="prediction_scale"):
            ProbePredictor.load(tmp_path / "p")


def test_group_folds_keep_ids_together():
    ids = np.repeat([f"r{i}" for i in range(20)], 3)
    folds = group_folds(ids, 4, seed=0)
    for i in np.unique(ids):
        assert len(set(folds[ids == i])) == 1
    assert sorted(np.bincount(folds)) == [15, 15, 15, 15]
    with pytest.raises(ValueError, match="distinct ids"):
        group_folds(ids[:6], 4, seed=0)


def test_target_depth_scores_candidates_where_the_model_is_used():
    """With target_depth, the selection CV scores every (scope, family, trees) candidate on that depth's
    rows only, may train on those rows alone, and CV+ calibrates on that depth; an absent depth is an error."""
    from plan_probe._predictor import SEARCH_SPACES

    rng = np.random.default_rng(0)
    n_runs, depths = 120, (10, 100)
    latent = rng.normal(size=n_runs)
    static = rng.normal(size=n_runs)
    rows = []
    for d in depths:
        # the dynamic feature reveals the run's latent deviation only at depth 100
        dyn = latent + rng.normal(scale=3.0 if d == 10 else 0.1, size=n_runs)
        rows.append(pd.DataFrame({"depth": float(d), "static_x": static, "dyn_z": dyn, "run": np.arange(n_runs)}))
    frame = pd.concat(rows, ignore_index=True)
    y = 2.0 * frame["static_x"] + 5.0 * np.tile(latent, len(depths)) + rng.normal(scale=0.2, size=len(frame))
    cfg = PredictorConfig(tune=True, n_top=2)
    model = ProbePredictor(cfg).fit(frame[["depth", "static_x", "dyn_z"]], y, groups=frame["run"], target_depth=100)
    n_paths = sum(len(f.path) for f in SEARCH_SPACES["full"])
    assert len(model.cv_scores_) == 2 * n_paths  # scopes "all" and "target"
    assert {k.split(",")[0] for k in model.cv_scores_} == {"scope=all", "scope=target"}
    assert model.scope_ in ("all", "target")
    # calibration rows are depth-100 rows of the calibration part only; cv_rmse_ is their RMSE
    at_100 = (frame["depth"] == 100).to_numpy()
    assert 0 < model.scores_.size < at_100.sum()  # the selection part is not a calibration part
    assert np.isfinite(model.oof_pred_[at_100]).all()
    assert 0.1 < model.cv_rmse_ < 2.0  # the probe reveals the latent at depth 100 (label sd ~5.4)
    with pytest.raises(ValueError, match="target_depth must be a depth present"):
        ProbePredictor(cfg).fit(frame[["depth", "static_x", "dyn_z"]], y, groups=frame["run"], target_depth=50)


def test_seed_ensemble_averages_boosters_and_round_trips(train_meta, tmp_path):
    """n_seeds boosters differ only by seed; predict and SHAP are their exact averages (SHAP is linear
    in the model), OOF predictions come from the same average, and save/load keeps every booster."""
    m = train_meta
    model = ProbePredictor(PredictorConfig(seed=2, n_seeds=3), m.groups).fit(m.X, m.frame["score"], groups=m.ids)
    assert len(model.boosters_) == 3
    X = m.X.iloc[:150]
    each = [b.predict(model._matrix(X)) for b in model.boosters_]
    assert not np.allclose(each[0], each[1])  # different row/column samples
    np.testing.assert_allclose(model.predict(X), np.mean(each, axis=0), rtol=0, atol=1e-12)
    contrib, base = model.shap_values(X)
    np.testing.assert_allclose(contrib.sum(axis=1) + base, model.predict(X), rtol=0, atol=1e-9)
    resid = m.y - model.oof_pred_
    assert np.sqrt(np.mean(resid**2)) == pytest.approx(model.cv_rmse_, rel=1e-12)
    single = ProbePredictor(PredictorConfig(seed=2), m.groups).fit(m.X, m.frame["score"], groups=m.ids)
    np.testing.assert_array_equal(single.predict(X), each[0])  # seed 2 is the ensemble's first member
    model.save(tmp_path / "e")
    assert len(list((tmp_path / "e").glob("model*.txt"))) == 3 * (1 + len(model.fold_models_))
    loaded = ProbePredictor.load(tmp_path / "e")
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    with open(tmp_path / "e" / "model_2.txt", "a") as fh:
        fh.write("\n")
    with pytest.raises(ValueError, match="checksum"):
        ProbePredictor.load(tmp_path / "e")
    side_path = tmp_path / "e" / "predictor.json"
    side = json.loads(side_path.read_text())
    side["model_files"][1] = "../elsewhere.txt"
    side_path.write_text(json.dumps(side))
    with pytest.raises(ValueError, match="model files named"):
        ProbePredictor.load(tmp_path / "e")
    with pytest.raises(ValueError, match="n_seeds"):
        PredictorConfig(n_seeds=0)


def test_tuned_blend_members_weights_and_exact_shap(train_meta, tmp_path):
    """With tune and n_top=3 the model is a convex blend of at most 3 learners (weights sum to 1),
    predict is the weighted sum of the members, SHAP columns plus base equal the prediction exactly,
    and save/load round-trips every member (ridge coefficients in JSON, boosters as LightGBM text)."""
    m = train_meta
    small = m.frame[m.frame["depth"].isin([20, 100])]
    model = ProbePredictor(PredictorConfig(seed=0, tune=True, n_top=3), m.groups)
    model.fit(small[list(m.features)], small["score"], groups=small[m.id_col], target_depth=100)
    assert 1 <= len(model.blend_) <= 3
    assert sum(mb["weight"] for mb in model.members_) == pytest.approx(1.0)
    X = small[list(m.features)].iloc[:60]
    Xa = model._matrix(X)
    np.testing.assert_allclose(model.predict(X), sum(mb.weight * mb.raw(Xa) for mb in model.blend_), atol=1e-12)
    expl = model.explain(X)
    groups = [c for c in expl.columns if c.startswith("shap_") and c != "shap_base"]
    np.testing.assert_allclose(expl["shap_base"] + expl[groups].sum(axis=1), model.predict(X), rtol=0, atol=1e-8)
    model.save(tmp_path / "t")
    side = json.loads((tmp_path / "t" / "predictor.json").read_text())
    assert side["cv_plus"]["method"].startswith("cv+") and len(side["cv_plus"]["folds"]) == len(model.fold_models_)
    loaded = ProbePredictor.load(tmp_path / "t")
    np.testing.assert_allclose(loaded.predict(X), model.predict(X), rtol=0, atol=1e-9)
    for a, b in zip(loaded.predict_interval(X, 0.8), model.predict_interval(X, 0.8)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    np.testing.assert_allclose(loaded.shap_values(X)[0], model.shap_values(X)[0], rtol=0, atol=1e-9)


def test_outside_range_flags_extrapolated_rows_and_survives_save(fitted, train_meta, tmp_path):
    X = train_meta.X.iloc[:3].copy()
    lo, hi = fitted.feature_ranges_["dyn_0"]
    X.iloc[1, X.columns.get_loc("dyn_0")] = hi + 0.5 * (hi - lo)  # beyond the 10 % margin
    X.iloc[2, X.columns.get_loc("dyn_0")] = hi + 0.05 * (hi - lo)  # inside the margin
    assert fitted.outside_range(X) == [[], ["dyn_0"], []]
    fitted.save(tmp_path / "r")
    assert ProbePredictor.load(tmp_path / "r").outside_range(X) == [[], ["dyn_0"], []]
