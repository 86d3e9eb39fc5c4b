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
