"""The NQM experiment: exact moments vs Monte Carlo, config contract, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from plan_probe.experiments.synthetic._experiment import identity_config
from plan_probe.experiments.synthetic.nqm import NQMConfig, simulate_fork_table, simulate_forks
from plan_probe.cli import main
from plan_probe.theory import fork_risk, nqm_conditional_moments


def test_exact_risk_matches_monte_carlo():
    config = identity_config().__class__(**{**identity_config().__dict__, "horizon": 120})
    depths = [3, 30, 90]
    exact, _, _ = config.exact_risk(depths)
    samples = simulate_fork_table(config, depths, 256, 16, np.random.default_rng(11))
    z = np.array([(e.value - x) / e.se for e, x in zip(map(fork_risk, samples), exact)])
    # |z| <= 4 for 3 depths: a false alarm has probability < 1e-3 under the CLT
    assert np.all(np.abs(z) <= 4.0), z


def test_conditional_moments_match_forks_of_one_prefix():
    config = identity_config().__class__(**{**identity_config().__dict__, "horizon": 80})
    scores, states = simulate_forks(config, 20, 3, 4000, np.random.default_rng(5))
    mean, var = nqm_conditional_moments(states, config.transfer([20]), 0, config.lin_weights, config.quad_weights, config.eval_noise_var)
    for i in range(3):
        # 4000 forks: SE of the mean is sqrt(var/4000); of the variance ~ var*sqrt(2/4000) (x1.5 for mild kurtosis)
        assert abs(scores[i].mean() - mean[i]) <= 4 * np.sqrt(var[i] / 4000)
        assert abs(scores[i].var(ddof=1) - var[i]) <= 4 * 1.5 * var[i] * np.sqrt(2 / 4000)


def test_simulation_is_seeded():
    config = identity_config().__class__(**{**identity_config().__dict__, "horizon": 50})
    a = simulate_fork_table(config, [5, 20], 4, 3, np.random.default_rng(9))
    b = simulate_fork_table(config, [5, 20], 4, 3, np.random.default_rng(9))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_config_round_trips_and_validates():
    config = identity_config()
    data = json.loads(json.dumps(config.to_dict()))
    assert "version" in data
    assert NQMConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="one value per direction"):
        NQMConfig(curvatures=(0.0, 1.0), noise_var=(1.0, 1.0, 1.0), lin_weights=1.0, quad_weights=0.0, theta0=0.0)
    with pytest.raises(ValueError, match="every step contracts"):
        NQMConfig(curvatures=(0.0, 5.0), noise_var=1.0, lin_weights=1.0, quad_weights=0.0, theta0=0.0, eta0=0.5)
    with pytest.raises(ValueError, match="noise_var must be non-negative"):
        NQMConfig(curvatures=(0.0,), noise_var=-1.0, lin_weights=1.0, quad_weights=0.0, theta0=0.0)
    with pytest.raises(ValueError, match="unknown"):
        NQMConfig.from_dict({**data, "bogus": 1})
    with pytest.raises(ValueError, match="depth must be an integer"):
        simulate_forks(config, config.horizon + 1, 2, 2, np.random.default_rng(0))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--cost", "-0.01"], "cost must be positive"),
        (["--c-min", "100", "--c-max", "10"], "c_min must not exceed c_max"),
        (["--target-rmse", "0"], "target_rmse must be positive"),
        (["--seed", "-1"], "seed must be a non-negative integer"),
    ],
)
def test_cli_bad_arguments_exit_2_and_write_nothing(tmp_path, args, needle):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["experiment", "synthetic", "--quick", "--out", str(out), *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert not out.exists()


def test_cli_quick_run_meets_the_issue_thresholds(tmp_path):
    out = tmp_path / "syn"
    result = CliRunner().invoke(main, ["experiment", "synthetic", "--quick", "--out", str(out), "--seed", "0"])
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    for key in ("identity_max_z", "envelope", "regimes", "seed", "settings", "version"):
        assert key in res
    assert res["seed"] == 0 and res["quick"] is True
    assert res["identity_max_z"] <= 4.0
    assert [e["rho"] for e in res["envelope"]] == [0.6, 0.7, 0.8, 0.9, 1.0]
    for e in res["envelope"]:
        assert e["alpha_bound"] == pytest.approx(2 * e["rho"] - 1)
        assert e["alpha_fit"] <= e["alpha_bound"] + 0.05 and abs(e["alpha_fit"] - e["alpha_bound"]) <= 0.15
    assert {r["intended"] for r in res["regimes"]} == {"static_sufficient", "dynamic_critical", "noise_dominant"}
    assert all(r["classified"] == r["intended"] for r in res["regimes"])
    assert all(res["checks"].values())
    # decay families where alpha is not the flat-direction bound by construction
    fam = {f["family"]: f for f in res["decay_families"]}
    assert set(fam) == {"curved_q25", "curved_q40", "mixed", "transition"}
    for name in ("curved_q25", "curved_q40"):
        assert fam[name]["alpha_closed_form"] == pytest.approx(1 - 2 * 0.5 * 10 * (0.05 if name == "curved_q25" else 0.08))
        assert fam[name]["relation"] == "below" and fam[name]["bound"] == 1.0
    assert fam["curved_q25"]["alpha"] > fam["curved_q40"]["alpha"]  # more curvature, slower decay
    for f in fam.values():
        assert abs(f["alpha"] - f["alpha_exact_fit"]) <= 3 * f["alpha_se"] + 0.02
    for name in ("envelope.png", "phase_diagram.png", "fork_fits.png", "decay_families.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(result.stdout)["checks"] == res["checks"]
