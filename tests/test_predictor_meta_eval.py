"""Meta-dataset loading (TuneAhead layout, prefixes), evaluation vs TuneAhead's recipe, screening."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from plan_probe.experiments.synthetic.meta_generator import make_meta_dataset, make_tuneahead_layout
from plan_probe._evaluate import MODELS, evaluate, regression_metrics
from plan_probe._meta import TUNEAHEAD_FEATURE_GROUPS, load_meta, select_features
from plan_probe._predictor import PredictorConfig, ProbePredictor
from plan_probe._screen import screen

# The 33 feature columns of TuneAhead's released meta-dataset sample and model sidecar
# (data/metadataset_sample.csv, models/model_TuneAhead_Full.meta.json) with the groups of its
# feature pipeline; learning_rate/batch_size are its hyperparameters.
TUNEAHEAD_COLUMNS = {
    "static": [
        "dataset_num_items", "dataset_total_chars", "approximate_duplicates", "avg_input_length",
        "avg_output_length", "base_model_perplexity", "base_perplexity_std", "embedding_outlier_ratio",
        "input_length_std", "input_ttr", "io_length_ratio", "io_similarity", "output_length_std",
        "output_ngram_repetition", "output_ttr", "reference_perplexity", "reference_perplexity_std",
        "semantic_consistency", "semantic_diversity", "special_char_ratio", "vocab_complexity",
    ],
    "dynamic": [
        "avg_activation_sparsity", "avg_grad_norm", "avg_grad_sparsity", "avg_param_change",
        "catastrophic_forgetting", "gradient_consistency", "initial_loss", "landscape_flatness",
        "loss_decay_rate", "loss_stability",
    ],
    "hyperparameter": ["learning_rate", "batch_size"],
}


def test_tuneahead_released_columns_all_mapped():
    for group, cols in TUNEAHEAD_COLUMNS.items():
        for col in cols:
            assert TUNEAHEAD_FEATURE_GROUPS[col] == group, col


def test_tuneahead_layout_loads_unchanged(tmp_path, caplog):
    frame = make_tuneahead_layout(60, seed=0)
    path = tmp_path / "ta.csv"
    frame.to_csv(path, index=False)
    with caplog.at_level(logging.WARNING):
        meta = load_meta(path, label="overall_accuracy")
    assert not caplog.records  # every column is a known TuneAhead name
    assert meta.id_col == "dataset_name" and meta.label_col == "overall_accuracy" and not meta.has_depth
    expected = {col: group for group, cols in TUNEAHEAD_COLUMNS.items() for col in cols}
    assert meta.groups == expected  # exactly TuneAhead's 33 released feature columns
    assert set(select_features(meta, "static")) == {c for c, g in expected.items() if g != "dynamic"}


def test_tuneahead_generator_450_runs_mmlu_like_and_reproducible(tmp_path):
    """The generator's default TuneAhead table: 450 runs, datasets shared by 3 runs, accuracy-like labels,
    a linear signal (ridge far better than the mean) and a non-linear one (learning-rate collapse)."""
    from plan_probe.experiments.synthetic.meta_generator import _main

    assert _main([str(tmp_path / "a.csv"), "--tuneahead"]) == 0
    frame = pd.read_csv(tmp_path / "a.csv")
    assert frame.shape == (450, 35) and frame["dataset_name"].nunique() == 150
    acc = frame["overall_accuracy"]
    assert 0.25 < acc.min() and acc.max() < 0.65 and 0.015 < acc.std() < 0.05
    pd.testing.assert_frame_equal(frame, make_tuneahead_layout(450, seed=0), check_dtype=False)
    # the top learning rates lose accuracy far beyond a linear trend in log(lr): a collapse
    by_lr = frame.groupby("learning_rate")["overall_accuracy"].mean()
    assert by_lr.iloc[-1] < by_lr.iloc[-3] - 0.02


def test_prefixed_layout_and_unknown_columns_warn(caplog):
    frame = make_meta_dataset(20, seed=0, depths=(10, 100))
    frame["mystery"] = 1.0
    frame["note"] = "text"  # non-numeric columns are ignored
    with caplog.at_level(logging.WARNING):
        meta = load_meta(frame, label="score")
    assert meta.id_col == "run_id" and meta.groups["depth"] == "depth"
    assert meta.groups["mystery"] == "other" and "mystery" in caplog.text
    assert "note" not in meta.features
    assert meta.groups["hp_lora_rank"] == "hyperparameter" and meta.groups["dyn_3"] == "dynamic"


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda f: f.drop(columns=["score"]), "label column must exist"),
        (lambda f: f.assign(score="x"), "label must be numeric"),
        (lambda f: f.assign(score=5.0), "label must vary"),
        (lambda f: f.assign(static_0=np.where(np.arange(len(f)) < 3, np.nan, f["static_0"])), "'static_0' has 3"),
        (lambda f: f.assign(dyn_1=np.inf), "'dyn_1' has"),
        (lambda f: f.drop(columns=["run_id"]), "needs an id column"),
    ],
)
def test_bad_meta_inputs(mutate, match):
    frame = make_meta_dataset(10, seed=0, depths=(100,))
    with pytest.raises(ValueError, match=match):
        load_meta(mutate(frame), label="score")


def test_regression_metrics_known_values():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.5, 2.0, 2.0, 6.0])  # errors 0.5, 0, -1, 2
    m = regression_metrics(y, pred, scale=1.0)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1 + 4) / 4))
    assert m["r2"] == pytest.approx(1 - 5.25 / 5.0)
    assert m["pearson"] == pytest.approx(np.corrcoef(y, pred)[0, 1])
    assert (m["acc_at_1"], m["acc_at_2"], m["acc_at_3"]) == (0.75, 1.0, 1.0)
    assert regression_metrics(y / 100, pred / 100, scale=100)["acc_at_1"] == 0.75


def test_evaluate_all_models_paired_differences_and_coverage_on_synthetic():
    """Every model on identical folds of a synthetic meta-dataset (300 runs x 6 depths, 3-fold): full beats
    TuneAhead's recipe and static features alone (the probe matters here), paired differences are the
    fold-wise differences, and each model's CV+ coverage is within a binomial tolerance of nominal."""
    meta = load_meta(make_meta_dataset(300, seed=2), label="score")
    res = evaluate(meta, cv=3, repeats=1, seed=0)
    assert set(MODELS) <= set(res)
    for model in MODELS:
        for key in ("rmse", "r2", "pearson", "acc_at_1", "acc_at_2", "acc_at_3", "rmse_se", "coverage_80",
                    "coverage_90", "width_80", "width_90"):
            assert res[model][key] is not None, (model, key)
        assert res[model]["width_80"] < res[model]["width_90"]
    assert res["full"]["rmse"] <= res["tuneahead_recipe"]["rmse"]
    assert res["full"]["rmse"] < res["static_only"]["rmse"]
    assert res["full"]["rmse"] < res["full_no_dynamic"]["rmse"]
    paired = res["paired"]["full_no_dynamic"]
    assert paired["rmse_diff"] == pytest.approx(res["full"]["rmse"] - res["full_no_dynamic"]["rmse"])
    assert paired["rmse_diff_se_corrected"] > paired["rmse_diff_se"] > 0
    assert res["settings"]["depth"] == 100.0 and res["settings"]["folds"] == 3
    # the pooled skill against the mean: exactly 0 for the mean model, high for full, near its per-fold R²
    assert res["mean"]["r2_vs_mean"] == 0.0
    assert 0.5 < res["full"]["r2_vs_mean"] <= 1.0 and res["full"]["r2_vs_mean_se"] > 0
    assert abs(res["full"]["r2_vs_mean"] - res["full"]["r2"]) < 0.05
    # 300 held-out runs per model: binomial SD sqrt(p(1-p)/300) = 2.3 pts (p=0.8), 1.7 pts (p=0.9); the
    # calibration sets (~100-200 runs) add about as much; 3 combined SDs.
    for model in ("full", "ridge", "tuneahead_recipe", "mean"):
        for nominal in (0.8, 0.9):
            cov = res[model][f"coverage_{int(nominal * 100)}"]
            tol = 3 * np.sqrt(2 * nominal * (1 - nominal) / 300)
            assert abs(cov - nominal) <= tol, (model, nominal, cov)


def test_cv_plus_coverage_on_data_with_known_noise():
    """Held-out coverage of the CV+ intervals over 20 independent training sets (150 runs each, fresh
    test runs): y = x0 + 0.5·x1 + sin(2·x2) + N(0, 0.5²). CV+ guarantees >= 1 − 2α and is ≈ 1 − α in
    practice; the average over 20 x 400 test points has SD about 0.8 pts (test binomial 0.3 pts,
    calibration-set spread sqrt(p(1-p)/150)/sqrt(20) = 0.7 pts), so ±3 pts is ~4 SD: an interval
    built from in-sample residuals or with a wrong rank fails it."""
    cover = {0.8: [], 0.9: []}
    for r in range(20):
        rng = np.random.default_rng(100 + r)

        def make(n):
            X = rng.normal(size=(n, 6))
            return X, X[:, 0] + 0.5 * X[:, 1] + np.sin(2 * X[:, 2]) + 0.5 * rng.standard_normal(n)

        X, y = make(150)
        Xt, yt = make(400)
        model = ProbePredictor(PredictorConfig(seed=r)).fit(X, y)
        for nominal in cover:
            _, lo, hi = model.predict_interval(Xt, nominal)
            cover[nominal].append(np.mean((yt >= lo) & (yt <= hi)))
    for nominal, values in cover.items():
        assert abs(np.mean(values) - nominal) <= 0.03, (nominal, np.mean(values))


def test_group_by_holds_out_whole_groups_and_must_be_constant_within_ids():
    frame = make_tuneahead_layout(90, seed=1)
    frame["family"] = [f"fam{int(name[2:]) % 6}" for name in frame["dataset_name"]]
    meta = load_meta(frame, label="overall_accuracy")
    res = evaluate(meta, cv=3, repeats=1, seed=0, scale=100, group_by="family")
    assert res["settings"]["group_by"] == "family" and res["settings"]["groups"] == 6
    assert res["full"]["rmse"] is not None
    frame.loc[frame.index[0], "family"] = "odd"  # one run of ds0000 in another family
    with pytest.raises(ValueError, match="constant within each id"):
        evaluate(load_meta(frame, label="overall_accuracy"), cv=3, repeats=1, group_by="family")
    with pytest.raises(ValueError, match="--group-by must name a column"):
        evaluate(meta, cv=3, repeats=1, group_by="nope")


def test_out_of_fold_predictions_table_agrees_with_the_pooled_skill():
    """With one repeat every evaluation row is predicted once: the table's mean column is the training
    fold's label mean, and 1 − SSE(full) / SSE(mean) over the table is exactly ``r2_vs_mean``."""
    from plan_probe._learners import group_folds

    frame = make_tuneahead_layout(60, seed=4)
    frame["family"] = [f"fam{int(name[2:]) % 12}" for name in frame["dataset_name"]]
    meta = load_meta(frame, label="overall_accuracy")
    res = evaluate(meta, cv=3, repeats=1, seed=5, scale=100, group_by="family", predictions=True)
    table = res.pop("predictions")
    assert list(table.columns[:4]) == [meta.id_col, "family", "overall_accuracy", "repeats"]
    assert set(res["settings"]["models"]) <= set(table.columns) and len(table) == res["settings"]["eval_rows"]
    assert (table["repeats"] == 1).all() and table[meta.id_col].tolist() == meta.ids.tolist()
    folds = group_folds(meta.frame["family"].astype(str).to_numpy(), 3, 5)
    y = table["overall_accuracy"].to_numpy()
    assert table["mean"].to_numpy() == pytest.approx([y[folds != folds[i]].mean() for i in range(len(y))])
    skill = 1 - np.sum((y - table["full"]) ** 2) / np.sum((y - table["mean"]) ** 2)
    assert skill == pytest.approx(res["full"]["r2_vs_mean"], rel=1e-12)
    assert evaluate(meta, cv=3, repeats=1, seed=5, scale=100, group_by="family") == res  # the table changes nothing else
    with pytest.raises(ValueError, match=r"not model names, but got \['mean'\]"):
        evaluate(load_meta(frame.rename(columns={"family": "mean"}), label="overall_accuracy"), cv=3, repeats=1,
                 group_by="mean", predictions=True)


def test_coverage_by_third_counts_by_hand():
    from plan_probe._evaluate import _coverage_by_third

    y = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    pred = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0])  # thirds of 2: bottom rows 6, 5; top rows 0, 1
    lo, hi = y - 1.0, y + np.array([3.0, -0.5, 1.0, 1.0, 1.0, 2.0, -2.0])
    out = _coverage_by_third(y, pred, lo, hi)
    assert out == {"coverage_90_bottom": 0.5, "coverage_90_top": 0.5, "width_90_top": 2.25}
    assert np.isnan(_coverage_by_third(y[:2], pred[:2], lo[:2], hi[:2])["coverage_90_top"])


def test_evaluate_with_prediction_scale_keeps_the_predictions_and_reports_coverage_by_third():
    frame = make_tuneahead_layout(60, seed=4)
    meta = load_meta(frame, label="overall_accuracy")
    plain = evaluate(meta, cv=3, repeats=1, seed=5, scale=100, predictions=True)
    scaled = evaluate(meta, cv=3, repeats=1, seed=5, scale=100, predictions=True, prediction_scale=True)
    assert plain["settings"]["prediction_scale"] is False and scaled["settings"]["prediction_scale"] is True
    pd.testing.assert_frame_equal(plain.pop("predictions"), scaled.pop("predictions"))
    for model in ("full", "ridge", "mean"):
        assert scaled[model]["rmse"] == plain[model]["rmse"]
        for key in ("coverage_90_bottom", "coverage_90_top", "width_90_top"):
            assert 0 <= plain[model][key] and 0 <= scaled[model][key], (model, key)
    assert scaled["mean"]["width_90"] == plain["mean"]["width_90"]  # a constant has constant predictions: g = 1


def test_screen_matches_hand_computed_example():
    frame = pd.DataFrame({"score": [60, 50, 70, 40, 58], "pred": [62, 56, 50, 30, 57]})
    out = screen(frame, label="score", threshold=55, full_cost=100, probe_cost=10)
    # Launched: rows 0, 1, 4. Successes (>= 55): rows 0, 2, 4. Cost 5*10 + 3*100 = 350 vs 500.
    assert out["runs_launched"] == 3
    assert out["true_successes"] == 3 and out["successes_retained"] == 2
    assert out["successes_retained_share"] == pytest.approx(2 / 3)
    assert out["false_kills"] == 1 and out["false_launches"] == 1
    assert out["compute_saved"] == pytest.approx(150.0)
    assert out["compute_saved_share"] == pytest.approx(0.3)
    go = frame.assign(go=[True, False, True, False, False], threshold=55.0)
    out = screen(go, label="score", threshold=55, full_cost=100, probe_cost=10, rule="go")
    assert out["runs_launched"] == 2 and out["false_kills"] == 1 and out["compute_saved"] == pytest.approx(250.0)
    with pytest.raises(ValueError, match="same threshold"):
        screen(go, label="score", threshold=60, full_cost=100, probe_cost=10, rule="go")


@pytest.mark.slow  # two spawned workers each import LightGBM; the fit-level twin runs by default
def test_evaluate_gives_the_same_result_with_one_or_two_processes():
    meta = load_meta(make_tuneahead_layout(60, seed=3), label="overall_accuracy")
    one = evaluate(meta, cv=3, repeats=1, seed=1, scale=100, n_jobs=1)
    two = evaluate(meta, cv=3, repeats=1, seed=1, scale=100, n_jobs=2)
    assert one == two


def test_pooled_skill_against_the_mean_by_hand():
    """r2_vs_mean pools the held-out squared errors of every fold (averaged over repeats) before the
    ratio; hand-computed on 4 groups x 1 row, 2 folds, 2 repeats. Its SE is the leave-one-group-out
    jackknife of the ratio (checked against the textbook formula)."""
    from plan_probe._evaluate import _skill_vs_mean

    groups = np.array(["a", "b", "c", "d"])
    def fold(rows, full, mean):
        return {"test_rows": np.array(rows), "full": {"sq_err": np.array(full, float)}, "mean": {"sq_err": np.array(mean, float)}}
    # repeat 1: folds {a, b}, {c, d}; repeat 2: folds {a, c}, {b, d}
    per_fold = [fold([0, 1], [1, 4], [4, 16]), fold([2, 3], [0, 9], [9, 9]),
                fold([0, 2], [3, 2], [4, 9]), fold([1, 3], [4, 1], [16, 9])]
    got = _skill_vs_mean(per_fold, groups, {"full": None, "mean": None})
    model = np.array([1 + 3, 4 + 4, 0 + 2, 9 + 1], float)   # per group, summed over the 2 repeats
    base = np.array([4 + 4, 16 + 16, 9 + 9, 9 + 9], float)
    assert got["full"]["r2_vs_mean"] == pytest.approx(1 - model.sum() / base.sum())
    assert got["mean"]["r2_vs_mean"] == 0.0
    loo = np.array([1 - (model.sum() - model[i]) / (base.sum() - base[i]) for i in range(4)])
    assert got["full"]["r2_vs_mean_se"] == pytest.approx(np.sqrt(3 / 4 * np.sum((loo - loo.mean()) ** 2)))

