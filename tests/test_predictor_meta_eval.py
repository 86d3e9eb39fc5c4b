"""Meta-dataset loading (TuneAhead layout, prefixes), evaluation vs TuneAhead's recipe, screening."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from plan_probe.experiments.synthetic.meta_generator import TUNEAHEAD_RENAME, make_meta_dataset, make_tuneahead_layout
from plan_probe._evaluate import evaluate, regression_metrics
from plan_probe._meta import TUNEAHEAD_FEATURE_GROUPS, load_meta, select_features
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
    frame = make_tuneahead_layout(50, seed=0)
    path = tmp_path / "ta.csv"
    frame.to_csv(path, index=False)
    with caplog.at_level(logging.WARNING):
        meta = load_meta(path, label="overall_accuracy")
    assert not caplog.records  # every column is a known TuneAhead name
    assert meta.id_col == "dataset_name" and meta.label_col == "overall_accuracy" and not meta.has_depth
    expected = {new: {"static": "static", "dyn": "dynamic", "hp": "hyperparameter"}[old.split("_")[0]]
                for old, new in TUNEAHEAD_RENAME.items()}
    assert meta.groups == expected
    assert set(select_features(meta, "static")) == {c for c, g in expected.items() if g != "dynamic"}


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


def test_full_beats_tuneahead_recipe_on_synthetic():
    """full <= recipe RMSE on identical folds of the synthetic meta-dataset (300 runs, 3-fold)."""
    meta = load_meta(make_meta_dataset(300, seed=2), label="score")
    res = evaluate(meta, cv=3, repeats=1, seed=0)
    assert set(res) >= {"full", "static_only", "dynamic_only", "tuneahead_recipe"}
    for model in ("full", "static_only", "dynamic_only", "tuneahead_recipe"):
        for key in ("rmse", "r2", "pearson", "acc_at_1", "acc_at_2", "acc_at_3", "rmse_se"):
            assert res[model][key] is not None
    assert res["full"]["rmse"] <= res["tuneahead_recipe"]["rmse"]
    # The probe matters: the full model is far better than static features alone.
    assert res["full"]["rmse"] < res["static_only"]["rmse"]
    assert res["settings"]["depth"] == 100.0 and res["settings"]["folds"] == 3
    assert 0.0 <= res["full"]["coverage_90"] <= 1.0


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
