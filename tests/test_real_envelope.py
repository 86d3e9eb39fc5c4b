"""plan-probe experiment real: each fork task's alpha against the envelope 2 rho - 1 of its schedule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plan_probe.experiments.metadataset._real import envelope_comparison, fit_task
from plan_probe.theory import RegimeThresholds, curved_future_variance, flat_future_variance


def _forks(curve_fn, rho, rng, depths=(5, 10, 20, 40, 70, 100), prefixes=6, dof=15, horizon=1000):
    rows = []
    for p in range(prefixes):
        for c in depths:
            v = curve_fn(c)
            rows.append({"task_id": "t", "run_id": f"t-p{p}", "depth": c, "risk_obs": v * rng.chisquare(dof) / dof, "dof": float(dof),
                         "hp_lr_decay": rho, "hp_lr_t0": 10.0, "hp_steps": float(horizon)})
    return pd.DataFrame(rows)


def fit_decay_alpha(curve):
    from plan_probe.experiments.metadataset._real import fit_decay

    d = np.array([5, 10, 20, 40, 70, 100.0])
    return fit_decay(d, curve / curve.max(), np.full(d.size, 1000.0))["alpha"]


def _fit(frame, rng):
    return fit_task(frame, n_boot=50, level=0.9, rng=rng, thresholds=RegimeThresholds())


def test_flat_direction_forks_sit_within_the_finite_range_envelope():
    """Fork variances of a flat NQM direction (the envelope itself, with chi-square noise)."""
    rng = np.random.default_rng(0)
    frame = _forks(lambda c: float(flat_future_variance([c], 1000, 1.0, 10.0, 0.9)[0]), 0.9, rng)
    fit = _fit(frame, rng)
    env = envelope_comparison(frame, fit)
    assert env["bound"] == pytest.approx(0.8)
    exact = flat_future_variance(np.array([5, 10, 20, 40, 70, 100.0]), 1000, 1.0, 10.0, 0.9)
    assert env["finite_range"] == pytest.approx(fit_decay_alpha(exact), rel=1e-6)  # the direct sum is the closed form
    assert env["relation_finite_range"] == "within", (fit["alpha"], fit["alpha_lo"], fit["alpha_hi"], env)
    assert fit["alpha_lo"] <= fit["alpha_fisher_lo"] + 1e-12 and fit["alpha_hi"] >= fit["alpha_boot_hi"] - 1e-12


def test_curved_direction_decays_below_the_bound():
    """rho = 1 with curvature (q = 0.4): exponent 1 - 2q = 0.2, far below 2 rho - 1 = 1."""
    rng = np.random.default_rng(1)
    frame = _forks(lambda c: float(curved_future_variance([c], 100_000, 0.5, 10.0, 0.08)[0]), 1.0, rng,
                   depths=(5, 10, 20, 40, 80, 160, 320), prefixes=12, dof=63, horizon=100_000)
    env = envelope_comparison(frame, _fit(frame, rng))
    assert env["relation"] == "below"


def test_constant_step_size_has_no_decay_rate_to_bound():
    rng = np.random.default_rng(2)
    frame = _forks(lambda c: 2.0 * (1000 - c), 0.0, rng)  # constant steps: the future noise is the steps left
    env = envelope_comparison(frame, _fit(frame, rng))
    assert env["bound"] == -1.0 and env["relation"] == "undefined"
    assert env["finite_range"] < 0.1 and env["relation_finite_range"] == "within"


def test_unbounded_alpha_intervals_are_written_as_null():
    """A singular Fisher information gives alpha_hi = inf; results.json must stay valid JSON (null)."""
    import json

    from plan_probe.experiments.metadataset._real import _json_ready

    raw = {"tasks": {"t": {"alpha": 0.5, "alpha_hi": float("inf"), "k": np.float64(-np.inf)}},
           "envelope": {"tasks": [{"interval": [0.1, float("inf")]}]}, "n": 3}
    clean = _json_ready(raw)
    text = json.dumps(clean, allow_nan=False)
    assert json.loads(text) == {"tasks": {"t": {"alpha": 0.5, "alpha_hi": None, "k": None}},
                                "envelope": {"tasks": [{"interval": [0.1, None]}]}, "n": 3}
