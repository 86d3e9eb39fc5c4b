"""CLI of the predictor: happy path and every bad input (exit 2, one line, no output written)."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from plan_probe.experiments.synthetic.meta_generator import make_meta_dataset
from plan_probe.cli import main


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("pp")
    make_meta_dataset(120, seed=0, depths=(10, 100)).to_csv(root / "train.csv", index=False)
    make_meta_dataset(40, seed=5, depths=(10, 100)).to_csv(root / "test.csv", index=False)
    return root


@pytest.fixture(scope="module")
def predictor_dir(tables):
    out = tables / "pred_dir"
    res = CliRunner().invoke(main, ["fit-predictor", str(tables / "train.csv"), "--label", "score", "--no-tune",
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["groups"] == {"depth": 1, "dynamic": 6, "hyperparameter": 3, "static": 8}
    return out


def _bad(args, output):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert not output.exists()
    return lines[0]


def test_fit_predict_screen_happy_path(tables, predictor_dir, tmp_path):
    pred = tmp_path / "pred.csv"
    figs = tmp_path / "figs"
    res = CliRunner().invoke(main, ["predict", str(tables / "test.csv"), "--predictor", str(predictor_dir),
                                    "-o", str(pred), "--coverage", "0.8", "--threshold", "55", "--figures", str(figs)])
    assert res.exit_code == 0, res.output
    out = pd.read_csv(pred)
    assert len(out) == 80
    assert {"run_id", "depth", "score", "pred", "lower", "upper", "p_success", "go", "shap_static", "shap_dynamic",
            "shap_hyperparameter", "down_1", "down_2", "down_3"} <= set(out.columns)
    assert (out["lower"] <= out["pred"]).all() and (out["pred"] <= out["upper"]).all()
    assert (out["go"] == (out["p_success"] >= 0.5)).all()
    assert sorted(p.name for p in figs.iterdir()) == ["calibration.png", "pred_vs_true.png", "shap_summary.png",
                                                       "waterfall_lowest.png"]
    res = CliRunner().invoke(main, ["screen", str(pred), "--label", "score", "--threshold", "55", "--full-cost", "10",
                                    "--probe-cost", "1", "--depth", "100"])
    assert res.exit_code == 0, res.output
    acc = json.loads(res.stdout)
    launched = int((out[out.depth == 100]["pred"] >= 55).sum())
    assert acc["runs"] == 40 and acc["runs_launched"] == launched
    assert acc["compute_saved"] == pytest.approx(40 * 10 - (40 * 1 + launched * 10))


def test_evaluate_json_keys(tables):
    res = CliRunner().invoke(main, ["evaluate", str(tables / "train.csv"), "--label", "score", "--cv", "2",
                                    "--repeats", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for model in ("full", "static_only", "dynamic_only", "tuneahead_recipe"):
        assert {"rmse", "rmse_se", "r2", "pearson", "acc_at_1", "acc_at_2", "acc_at_3"} <= set(out[model])
    assert {"coverage_80", "coverage_90"} <= set(out["full"])


def test_evaluate_writes_out_of_fold_predictions(tables, tmp_path):
    src = tables / "train.csv"
    preds = tmp_path / "oof.csv"
    res = CliRunner().invoke(main, ["evaluate", str(src), "--label", "score", "--cv", "2", "--repeats", "2",
                                    "--predictions", str(preds)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert "predictions" not in out
    table = pd.read_csv(preds)
    assert set(out["settings"]["models"]) <= set(table.columns) and len(table) == out["settings"]["eval_rows"]
    assert (table["repeats"] == 2).all() and np.isfinite(table[out["settings"]["models"]].to_numpy()).all()
    # bad paths: an unknown extension and the input itself are refused before anything runs
    assert "table files must end in .csv or .parquet" in _bad(
        ["evaluate", str(src), "--label", "score", "--cv", "2", "--predictions", str(tmp_path / "oof.txt")],
        tmp_path / "oof.txt")
    before = src.read_bytes()
    line = _bad(["evaluate", str(src), "--label", "score", "--cv", "2", "--predictions", str(src)], tmp_path / "none")
    assert "--predictions" in line and src.read_bytes() == before


@pytest.mark.parametrize(
    "mutate, args_extra, match",
    [
        (lambda f: f, ["--label", "nope"], "label column must exist"),
        (lambda f: f.assign(score="bad"), ["--label", "score"], "label must be numeric"),
        (lambda f: f.assign(score=1.0), ["--label", "score"], "label must vary"),
        (lambda f: f.assign(static_2=np.nan), ["--label", "score"], "'static_2' has"),
        (lambda f: f[f.run_id.isin(["run0000", "run0001", "run0002"])], ["--label", "score"], "as many distinct ids"),
    ],
)
def test_bad_input_fit_and_evaluate(tables, tmp_path, mutate, args_extra, match):
    frame = mutate(pd.read_csv(tables / "train.csv"))
    src = tmp_path / "bad.csv"
    frame.to_csv(src, index=False)
    line = _bad(["fit-predictor", str(src), *args_extra, "-o", str(tmp_path / "out")], tmp_path / "out")
    assert match in line
    json_out = tmp_path / "eval.json"
    line = _bad(["evaluate", str(src), *args_extra, "--cv", "5", "-o", str(json_out)], json_out)
    assert match in line


def test_bad_predict_inputs(tables, predictor_dir, tmp_path):
    out = tmp_path / "pred.csv"
    test = pd.read_csv(tables / "test.csv")
    # Feature columns that differ from training: one missing, one new.
    test.drop(columns=["dyn_2"]).to_csv(tmp_path / "missing.csv", index=False)
    assert "missing ['dyn_2']" in _bad(["predict", str(tmp_path / "missing.csv"), "--predictor", str(predictor_dir),
                                         "-o", str(out)], out)
    test.assign(static_99=1.0).to_csv(tmp_path / "new.csv", index=False)
    assert "new ['static_99']" in _bad(["predict", str(tmp_path / "new.csv"), "--predictor", str(predictor_dir),
                                        "-o", str(out)], out)
    test.assign(dyn_0=np.inf).to_csv(tmp_path / "inf.csv", index=False)
    assert "'dyn_0' has" in _bad(["predict", str(tmp_path / "inf.csv"), "--predictor", str(predictor_dir),
                                  "-o", str(out)], out)
    # A predictor directory of a newer schema than this plan-probe reads.
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.txt").write_text((predictor_dir / "model.txt").read_text())
    side = json.loads((predictor_dir / "predictor.json").read_text())
    side["schema_version"] = 99
    (other / "predictor.json").write_text(json.dumps(side))
    assert "schema_version" in _bad(["predict", str(tables / "test.csv"), "--predictor", str(other),
                                         "-o", str(out)], out)
    assert "predictor.json" in _bad(["predict", str(tables / "test.csv"), "--predictor", str(tmp_path),
                                     "-o", str(out)], out)
    assert "coverage" in _bad(["predict", str(tables / "test.csv"), "--predictor", str(predictor_dir),
                               "-o", str(out), "--coverage", "1.5"], out)
    assert ".csv or .parquet" in _bad(["predict", str(tables / "test.csv"), "--predictor", str(predictor_dir),
                                       "-o", str(tmp_path / "pred.txt")], tmp_path / "pred.txt")


def test_bad_screen_inputs(tables, tmp_path):
    frame = pd.DataFrame({"run_id": ["a", "b", "c"], "score": [50.0, 60, 70], "pred": [55.0, 58, 40]})
    frame.to_csv(tmp_path / "p.csv", index=False)
    out = tmp_path / "s.json"
    base = ["screen", str(tmp_path / "p.csv"), "--threshold", "55", "--probe-cost", "1", "-o", str(out)]
    assert "label column must exist" in _bad([*base, "--label", "nope", "--full-cost", "10"], out)
    assert "full cost must be positive" in _bad([*base, "--label", "score", "--full-cost", "0"], out)
    pd.concat([frame, frame]).to_csv(tmp_path / "dup.csv", index=False)
    assert "one row per run" in _bad(["screen", str(tmp_path / "dup.csv"), "--label", "score", "--threshold", "55",
                                      "--full-cost", "10", "--probe-cost", "1", "-o", str(out)], out)


def test_risk_model_scale_via_stand_in(tables, tmp_path, monkeypatch):
    """fit/predict with --risk-model use sqrt(expected_risk) of a duck-typed RiskModel."""

    class StandIn:
        calls = []

        @classmethod
        def load(cls, path):
            cls.calls.append(str(path))
            return cls()

        def expected_risk(self, frame, depth_col="depth"):
            return 4.0 + 100.0 / frame[depth_col].to_numpy(dtype=float)

    module = types.ModuleType("plan_probe._risk_model")
    module.RiskModel = StandIn
    monkeypatch.setitem(sys.modules, "plan_probe._risk_model", module)
    (tmp_path / "risk.json").write_text("{}")
    out_dir = tmp_path / "rp"
    res = CliRunner().invoke(main, ["fit-predictor", str(tables / "train.csv"), "--label", "score", "--no-tune",
                                    "--risk-model", str(tmp_path / "risk.json"), "-o", str(out_dir)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["scale_mode"] == "risk"
    out = tmp_path / "pred.csv"
    assert "--risk-model" in _bad(["predict", str(tables / "test.csv"), "--predictor", str(out_dir), "-o", str(out)],
                                  out)
    res = CliRunner().invoke(main, ["predict", str(tables / "test.csv"), "--predictor", str(out_dir), "-o", str(out),
                                    "--risk-model", str(tmp_path / "risk.json")])
    assert res.exit_code == 0, res.output
    pred = pd.read_csv(out)
    width = (pred["upper"] - pred["lower"]).to_numpy()
    expected = np.sqrt(4.0 + 100.0 / pred["depth"].to_numpy())
    # CV+ half-width ~ q * sqrt(L(c)): the ratio to the scale is nearly one constant q (the fold models'
    # predictions differ a little, so not exactly), while the scale itself varies 1.7-fold over depths.
    ratio = width / expected
    assert expected.max() / expected.min() > 1.5
    np.testing.assert_allclose(ratio, np.median(ratio), rtol=0.15)


@pytest.mark.parametrize("flag", ["--seeds", "--top"])
def test_bad_ensemble_sizes(tables, tmp_path, flag):
    out = tmp_path / "p"
    line = _bad(["fit-predictor", str(tables / "train.csv"), "--label", "score", flag, "0", "-o", str(out)], out)
    assert flag.lstrip("-") in line and "got" in line
