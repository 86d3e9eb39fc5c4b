"""The gain-share summary that `python -m plan_probe.experiments.llm_defaults` prints."""

import json

import numpy as np
import pandas as pd
import pytest

from plan_probe.experiments.llm_defaults import gain_share_by_group
from plan_probe._predictor import PredictorConfig, ProbePredictor


def test_gain_share_goes_to_the_group_that_carries_the_label():
    """The label is a function of one static column alone (the others are independent noise), so
    almost all split gain lands on the static group; the shares are a partition of 1 (3-decimal
    rounding: within 0.002)."""
    rng = np.random.default_rng(0)
    n = 300
    X = pd.DataFrame({"static_n_examples": rng.uniform(0, 1, n), "dyn_loss_decay": rng.uniform(0, 1, n),
                      "hp_lr": rng.uniform(0, 1, n)})
    y = pd.Series(50 + 20 * X["static_n_examples"], name="label")
    predictor = ProbePredictor(PredictorConfig(seed=0)).fit(X, y, groups=np.arange(n) // 3)
    shares = gain_share_by_group(predictor)
    assert set(shares) == {"static", "dynamic", "hyperparameter"}
    assert sum(shares.values()) == pytest.approx(1.0, abs=2e-3)
    assert shares["static"] > 0.95


def test_llm_defaults_refuses_too_few_runs(tmp_path, capsys):
    """--min-runs: fewer ok runs in meta.parquet than asked is an error (exit 2) and writes nothing."""
    import pandas as pd

    from plan_probe.experiments.llm_defaults import main

    build = tmp_path / "build"
    build.mkdir()
    pd.DataFrame({"run_id": ["a", "a", "b", "c"], "depth": [5, 10, 5, 5], "label": [1.0, 1.0, 2.0, 3.0]}).to_parquet(build / "meta.parquet")
    assert main([str(build), str(tmp_path / "dest"), "--min-runs", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--min-runs=4" in err and "but got 3" in err
    assert not (tmp_path / "dest").exists()


def test_llm_defaults_refuses_readouts_without_their_reference_and_ships_it_with_them(tmp_path, capsys):
    """A table with dyn_ref_loss needs BUILD/reference.jsonl (the examples it was measured on): refused
    before any fit without it; shipped into the readout variant's folder with it."""
    import pandas as pd

    from plan_probe.experiments.llm_defaults import _ship_reference, main

    build, dest = tmp_path / "build", tmp_path / "dest"
    build.mkdir()
    meta = pd.DataFrame({"run_id": ["a", "b", "c"], "depth": [5, 5, 5], "label": [1.0, 2.0, 3.0], "dyn_ref_loss": [0.3, 0.2, 0.1]})
    meta.to_parquet(build / "meta.parquet")
    assert main([str(build), str(dest), "--min-runs", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the table has the readout, so BUILD must hold the reference.jsonl") and err.count("\n") == 1
    assert not dest.exists()
    (build / "reference.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    _ship_reference(build, dest / "readout")
    assert (dest / "readout" / "reference.jsonl").read_text() == (build / "reference.jsonl").read_text()


def _synthetic_tier(build, n_runs: int = 36, seed: int = 0) -> None:
    """A built tier (meta.parquet, runs.parquet) of ``n_runs`` runs at depths 5 and 20 whose label is a line
    in one static column plus a run effect (SD 15) that only the readout sees (sharper at depth 20)."""
    rng = np.random.default_rng(seed)
    runs = pd.DataFrame({"run_id": [f"r{k:02d}" for k in range(n_runs)],
                         "static_n_examples": rng.choice([40.0, 500.0, 2000.0], n_runs),
                         "static_duplicate_rate": rng.uniform(0, 0.8, n_runs),
                         "static_ref_ppl_mean": rng.uniform(3, 6, n_runs),
                         "static_output_diversity": rng.uniform(0.01, 0.3, n_runs),
                         "hp_lr": rng.choice([1e-4, 3e-4], n_runs)})
    signal = rng.normal(0, 1, n_runs)
    runs["label"] = 30.0 - 20.0 * runs["static_duplicate_rate"] + 15.0 * signal + rng.normal(0, 2, n_runs)
    runs["label_se"] = 2.0
    rows = []
    for depth in (5, 20):
        part = runs.drop(columns="label_se").assign(task_id=runs["run_id"], depth=depth, dyn_train_loss=rng.normal(1, 0.1, n_runs))
        part["dyn_ref_loss"] = -signal + rng.normal(0, 0.1 if depth == 20 else 0.3, n_runs)
        part["dyn_ref_choice"] = part["dyn_ref_loss"] / 2
        rows.append(part)
    build.mkdir(parents=True, exist_ok=True)
    pd.concat(rows, ignore_index=True).to_parquet(build / "meta.parquet")
    runs[["run_id", "label_se"]].to_parquet(build / "runs.parquet")


@pytest.mark.slow  # about 55 s of tuned fits and two SVI risk models
def test_llm_defaults_ship_a_readout_variant_beside_the_plain_defaults(tmp_path, capsys):
    """With the readout in the table: the plain predictor and risk model in DEST never see it (the live
    callback and portfolios without a reference use them); DEST/readout/ holds the predictor and risk
    model fitted with it and the reference it was measured on. A refit on a table without the readout
    removes the stale variant."""
    from plan_probe.experiments.llm_defaults import main
    from plan_probe._risk_model import RiskModel

    build, dest = tmp_path / "build", tmp_path / "dest"
    _synthetic_tier(build)
    (build / "reference.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    quick = ["--min-runs", "30", "--risk-method", "svi"]
    assert main([str(build), str(dest), *quick]) == 0
    summary = json.loads(capsys.readouterr().out)
    plain = ProbePredictor.load(dest / "predictor")
    with_readout = ProbePredictor.load(dest / "readout" / "predictor")
    assert not {"dyn_ref_loss", "dyn_ref_choice"} & set(plain.feature_names_)
    assert {"dyn_ref_loss", "dyn_ref_choice", "dyn_train_loss", "depth"} <= set(with_readout.feature_names_)
    assert (dest / "readout" / "reference.jsonl").read_text() == (build / "reference.jsonl").read_text()
    assert not (dest / "reference.jsonl").exists()
    RiskModel.load(dest / "risk_model.json"), RiskModel.load(dest / "readout" / "risk_model.json")
    # the run effect is most of the label's variance and only the readout sees it: the variant's CV error is smaller
    assert summary["readout"]["cv_rmse_full"] < 0.6 * summary["cv_rmse_full"]
    meta = pd.read_parquet(build / "meta.parquet")
    meta.drop(columns=["dyn_ref_loss", "dyn_ref_choice"]).to_parquet(build / "meta.parquet")
    assert main([str(build), str(dest), *quick]) == 0
    assert not (dest / "readout").exists() and (dest / "predictor" / "predictor.json").is_file()


def test_llm_defaults_refuses_a_bad_sampler_setting_before_fitting(tmp_path, capsys):
    """--target-accept outside [0.5, 1): one error line, exit 2, nothing read or written."""
    from plan_probe.experiments.llm_defaults import main

    assert main([str(tmp_path / "no-build"), str(tmp_path / "dest"), "--target-accept", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: target_accept must be in [0.5, 1)") and "1.5" in err and err.count("\n") == 1
    assert not (tmp_path / "dest").exists()


def test_default_baseline_reads_the_base_score_of_the_spec_label(tmp_path):
    """base.json + spec.toml of a defaults folder -> the base model's score in the label's units."""
    from plan_probe._defaults import default_baseline

    assert default_baseline(tmp_path) is None  # a tier without a recorded base score
    (tmp_path / "spec.toml").write_text('name = "t"\n[protocol]\nlabel_metric = "brier_skill"\n')
    (tmp_path / "base.json").write_text(json.dumps({"metrics": {"accuracy": 60.5, "brier_skill": 4.87, "brier_skill_se": 1.68}}))
    got = default_baseline(tmp_path)
    assert got["score"] == 4.87 and got["se"] == 1.68 and got["label_metric"] == "brier_skill"
    (tmp_path / "spec.toml").write_text('name = "t"\n[protocol]\nlabel_metric = "log_score"\n')
    assert default_baseline(tmp_path) is None  # the base score was not computed in the label's metric


def _synthetic_runs(n_runs: int = 40, seed: int = 0):
    """One row per run whose label is a line in one static column (noise SD 3, label SD about 20)."""
    rng = np.random.default_rng(seed)
    runs = pd.DataFrame({"run_id": [f"r{k:02d}" for k in range(n_runs)],
                         "static_n_examples": rng.choice([40.0, 150.0, 500.0, 2000.0], n_runs),
                         "static_duplicate_rate": rng.uniform(0, 0.8, n_runs),
                         "static_majority": rng.uniform(0.4, 1.0, n_runs),
                         "hp_lr": rng.choice([3e-5, 1e-4, 3e-4, 1e-3], n_runs)})
    runs["label"] = 50.0 - 120.0 * (runs["static_majority"] - 0.4) + rng.normal(0, 3, n_runs)
    runs["label_se"] = 2.0
    return runs


def test_llm_defaults_ship_the_tuned_static_predictor_evaluate_measures():
    """The shipped static-only predictor is the tuned blend of `fit-predictor` / `evaluate`'s "full".
    TuneAhead's untuned recipe (min_child_samples 20) cannot split 40 run rows: it predicts the label
    mean (in-sample SD of its predictions < 5 % of the label SD). On 40 runs whose label is a line in
    one static column, the tuned fit tracks the label (Pearson r > 0.9) and its grouped-CV RMSE is
    under half the label SD."""
    from plan_probe.experiments.llm_defaults import fit_static_predictor

    runs = _synthetic_runs()
    cols = ["static_n_examples", "static_duplicate_rate", "static_majority", "hp_lr"]
    recipe = ProbePredictor(PredictorConfig(seed=0)).fit(runs[cols], runs["label"], groups=runs["run_id"].to_numpy())
    assert np.std(recipe.predict(runs[cols])) < 0.05 * runs["label"].std()  # the rival this change replaces
    static = fit_static_predictor(runs, seed=0)
    assert static.config.tune and static.feature_names_ == cols
    assert np.corrcoef(static.predict(runs[cols]), runs["label"])[0, 1] > 0.9
    assert static.cv_rmse_ < 0.5 * runs["label"].std()
