"""LiveProbe: the continue/go/no-go rule at record depths (docs/guide/live.md)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import ndtr, ndtri

from plan_probe import DecisionSettings, LiveDecision, LiveProbe

RISK_FEATURES = ("static_n_examples", "static_duplicate_rate", "static_ref_ppl_mean", "static_output_diversity")


@pytest.fixture(scope="module")
def models():
    from plan_probe._live import load_models_dir

    return load_models_dir("default")


@pytest.fixture(scope="module")
def shipped_meta():
    from plan_probe.probes._io import read_table
    from plan_probe._defaults import default_path

    return read_table(default_path("predictor").parent / "meta.parquet")


@pytest.fixture(scope="module")
def scale(shipped_meta):
    """The shipped label's median (the test threshold: about half the runs below, so decisions go both
    ways) and variance (the test risk curves below are relative to it)."""
    labels = shipped_meta.groupby("run_id")["label"].first()
    return SimpleNamespace(tau=float(labels.median()), var=float(labels.var()))


@pytest.fixture(scope="module")
def runs(shipped_meta):
    meta = shipped_meta
    out = []
    for rid, g in meta.groupby("run_id", sort=True):
        g = g.sort_values("depth")
        first = g.iloc[0]
        out.append({
            "static": {c: float(first[c]) for c in g.columns if c.startswith("static_")},
            "hp": {c: float(first[c]) for c in g.columns if c.startswith("hp_")},
            "dyn": {int(r["depth"]): {c: float(r[c]) for c in g.columns if c.startswith("dyn_")} for _, r in g.iterrows()},
            "label": float(first["label"]),
        })
    return out


def steep_risk(var, l_int=0.01, k=2.0, alpha=1.0, spread=0.05):
    """A risk model whose L(c) = L_int + K c^-alpha falls steeply with depth (known population); L_int and K
    are in units of ``var``, the label's variance across the shipped runs (so the curve keeps its shape
    against the static prior whatever the label's scale)."""
    from plan_probe._risk_model import RiskModel

    p = len(RISK_FEATURES)
    return RiskModel.from_population(np.zeros((3, p)), np.log([l_int * var, k * var, alpha]), spread * np.eye(3),
                                     list(RISK_FEATURES), feature_mean=np.zeros(p), feature_std=np.ones(p))


def flat_risk(var):
    """A risk curve that does not fall with depth: about half the label's variance at every depth."""
    return steep_risk(var, l_int=0.48, k=3e-7, alpha=0.1)


def probe(models, run, tau, risk=None, **kw):
    risk_model, pred, static = models
    settings = kw.pop("settings", DecisionSettings(threshold=tau, full_cost=120.0))
    return LiveProbe(run["static"], run["hp"], risk_model=risk if risk is not None else risk_model, predictor=pred,
                     static_predictor=static, settings=settings, **kw)


def mc_loss_after(p, ratios, c_lb, c_kg, n=400_000, seed=0):
    """Monte Carlo of the preposterior loss: standardised mean u = Φ⁻¹(p), next variance ratio w per draw."""
    rng = np.random.default_rng(seed)
    u = ndtri(p)
    w = rng.choice(np.asarray(ratios), size=n)
    m = u + np.sqrt(1.0 - w) * rng.standard_normal(n)  # preposterior mean, in units of the current sd
    p_next = ndtr(m / np.sqrt(w))
    vals = np.minimum(c_lb * (1.0 - p_next), c_kg * p_next)
    return vals.mean(), vals.std(ddof=1) / math.sqrt(n)


def test_value_of_next_matches_monte_carlo(models, runs, scale):
    run = runs[0]
    lp = probe(models, run, scale.tau, risk=steep_risk(scale.var))
    d = lp.update(5, run["dyn"][5])
    ratios = np.minimum(lp._post_var(d.next_depth) / lp._post_var(5), 1.0)
    mc, se = mc_loss_after(d.p_above, ratios, lp.c_lb, lp.c_kg)
    loss_next = d.expected_loss_now - d.value_of_next - lp.step_cost * (d.next_depth - 5)
    assert abs(loss_next - mc) < 4 * se + 1e-9
    assert d.expected_loss_now == pytest.approx(min(lp.c_lb * (1 - d.p_above), lp.c_kg * d.p_above))


def test_continue_exactly_when_value_exceeds_cost(models, runs, scale):
    steep, flat = steep_risk(scale.var), flat_risk(scale.var)
    seen = set()
    for run in runs[::3]:  # every third shipped run: each update costs about 0.1 s of CV+ intervals
        for risk in (steep, flat):
            lp = probe(models, run, scale.tau, risk=risk)
            for depth in lp.depths:
                d = lp.update(depth, run["dyn"][depth])
                seen.add(d.action)
                if d.next_depth is None:
                    assert d.final and d.value_of_next is None
                else:
                    assert (d.action == "continue") == (d.value_of_next > 0)
                if d.final:
                    q = lp.c_lb / (lp.c_lb + lp.c_kg)
                    assert (d.action == "go") == (d.p_above >= q)
                    break
            assert lp.decision is not None and lp.decision.final
        # a flat risk curve resolves nothing: the first record depth decides
        lp = probe(models, run, scale.tau, risk=flat)
        assert lp.update(lp.depths[0], run["dyn"][lp.depths[0]]).final
    assert seen == {"continue", "go", "no_go"}


def test_steep_risk_probes_longer_than_flat(models, runs, scale):
    """A risk curve that keeps falling makes later depths worth their steps (mean decision depth grows)."""
    def mean_depth(risk):
        out = []
        for run in runs[::3]:  # every third shipped run (51), as above
            lp = probe(models, run, scale.tau, risk=risk)
            for depth in lp.depths:
                if lp.update(depth, run["dyn"][depth]).final:
                    break
            out.append(lp.decision.depth)
        return np.mean(out)

    assert mean_depth(steep_risk(scale.var)) > mean_depth(flat_risk(scale.var))


def test_decision_record_fields_and_json(models, runs, scale):
    run = runs[3]
    lp = probe(models, run, scale.tau)
    d0 = lp.initial()
    assert d0.depth == 0 and d0.next_depth == lp.depths[0]
    d = lp.update(lp.depths[0], run["dyn"][lp.depths[0]])
    assert isinstance(d, LiveDecision)
    assert d.interval[0] <= d.prediction <= d.interval[1]
    assert 0 < d.p_above < 1 and d.expected_loss_now >= 0
    assert len(d.reasons) == 3 and all(isinstance(f, str) for f, _ in d.reasons)
    assert abs(d.reasons[0][1]) >= abs(d.reasons[1][1]) >= abs(d.reasons[2][1])
    doc = json.loads(json.dumps(d.to_json(), allow_nan=False))
    assert set(doc) == {"action", "depth", "prediction", "interval", "p_above", "expected_loss_now", "value_of_next",
                        "next_depth", "reasons"}
    with pytest.raises(Exception):
        d.action = "go"  # frozen


def test_final_decision_is_sticky(models, runs, scale):
    run = runs[1]
    lp = probe(models, run, scale.tau)
    d = lp.update(5, run["dyn"][5])
    assert d.final  # the shipped risk curve is flat: the first depth decides
    assert lp.update(10, run["dyn"][10]) is d
    assert lp.update(3, {}) is d  # no more checks once decided


def test_prior_is_the_static_predictor(models, runs, scale):
    from plan_probe._decision_plan import predictive_variance

    run = runs[2]
    lp = probe(models, run, scale.tau)
    static = models[2]
    import pandas as pd

    X = pd.DataFrame([{f: {**run["static"], **run["hp"]}[f] for f in static.feature_names_}])
    assert lp.prior_mean == pytest.approx(float(static.predict(X)[0]))
    assert lp.prior_var == pytest.approx(float(predictive_variance(static, X)[0]))


def test_anchored_live_curve_passes_through_ratio_times_the_prior(models, runs, scale):
    """DecisionSettings(anchor_depth=c_a, anchor_ratio=κ): the live probe's risk draws are rescaled so that
    L(c_a) = κ S₀ for every draw (rel 1e-12) with the shape kept (L(40)/L(10) unchanged); without the anchor
    the curve is the risk model's."""
    run = runs[2]
    plain = probe(models, run, scale.tau, risk=steep_risk(scale.var))
    anchored = probe(models, run, scale.tau, risk=steep_risk(scale.var),
                     settings=DecisionSettings(threshold=scale.tau, full_cost=120.0, anchor_depth=5.0, anchor_ratio=0.7))
    np.testing.assert_allclose(anchored._risk(5.0), 0.7 * anchored.prior_var, rtol=1e-12)
    np.testing.assert_allclose(anchored._risk(40.0) / anchored._risk(10.0), plain._risk(40.0) / plain._risk(10.0), rtol=1e-12)
    assert not np.allclose(plain._risk(5.0), 0.7 * plain.prior_var)


def test_hyperparams_without_prefix(models, runs, scale):
    run = runs[0]
    hp = {k[3:]: v for k, v in run["hp"].items()}
    a = probe(models, run, scale.tau).update(5, run["dyn"][5])
    b = probe(models, {**run, "hp": hp}, scale.tau).update(5, run["dyn"][5])
    assert a == b


@pytest.mark.parametrize("case", ["missing_dyn", "nan_dyn", "order", "same_depth", "bad_depth", "not_mapping"])
def test_update_bad_input(models, runs, scale, case):
    run = next(r for r in runs if probe(models, r, scale.tau, risk=steep_risk(scale.var)).update(5, r["dyn"][5]).action == "continue")
    lp = probe(models, run, scale.tau, risk=steep_risk(scale.var))
    lp.update(5, run["dyn"][5])
    dyn = dict(run["dyn"][10])
    args = {
        "missing_dyn": (10, {k: v for k, v in dyn.items() if k != "dyn_loss_decay"}),
        "nan_dyn": (10, {**dyn, "dyn_loss_decay": float("nan")}),
        "order": (4, dyn),
        "same_depth": (5, dyn),
        "bad_depth": (10.5, dyn),
        "not_mapping": (10, [1, 2]),
    }[case]
    with pytest.raises(ValueError) as err:
        lp.update(*args)
    msg = str(err.value)
    assert ", but " in msg and "\n" not in msg
    if case == "missing_dyn":
        assert "dyn_loss_decay" in msg
    # the probe still works after a refused update
    assert lp.update(10, dyn).depth == 10


def test_constructor_bad_input(models, runs):
    risk, pred, static = models
    run = runs[0]
    settings = DecisionSettings(threshold=-50.0, full_cost=120.0)
    with pytest.raises(ValueError, match="risk model and both predictors"):
        LiveProbe(run["static"], run["hp"], risk_model=None, predictor=pred, static_predictor=static, settings=settings)
    with pytest.raises(ValueError, match="depth-aware"):
        LiveProbe(run["static"], run["hp"], risk_model=risk, predictor=static, static_predictor=static, settings=settings)
    with pytest.raises(ValueError, match="static_n_examples"):
        LiveProbe({k: v for k, v in run["static"].items() if k != "static_n_examples"}, run["hp"], risk_model=risk,
                  predictor=pred, static_predictor=static, settings=settings)
    with pytest.raises(ValueError, match="cost of a full run"):
        LiveProbe(run["static"], run["hp"], risk_model=risk, predictor=pred, static_predictor=static,
                  settings=DecisionSettings(threshold=-50.0))
    with pytest.raises(ValueError, match="DecisionSettings"):
        LiveProbe(run["static"], run["hp"], risk_model=risk, predictor=pred, static_predictor=static, settings={"threshold": 1})
    with pytest.raises(ValueError, match="setup_steps must be 0"):
        LiveProbe(run["static"], run["hp"], risk_model=risk, predictor=pred, static_predictor=static,
                  settings=DecisionSettings(threshold=-50.0, full_cost=120.0, setup_steps=10))
    with pytest.raises(ValueError, match="setup_steps must be a non-negative number of steps"):
        DecisionSettings(threshold=-50.0, full_cost=120.0, setup_steps=-1)


def test_from_models_dir(tmp_path, runs, scale):
    run = runs[0]
    settings = DecisionSettings(threshold=scale.tau, full_cost=120.0)
    lp = LiveProbe.from_models_dir("default", run["static"], run["hp"], settings)
    assert lp.depths == tuple(sorted(run["dyn"]))  # the depths the shipped meta-dataset recorded
    with pytest.raises(ValueError, match="MODELS_DIR must hold"):
        LiveProbe.from_models_dir(tmp_path, run["static"], run["hp"], settings)
