"""The realised-decision arithmetic of ``experiments.bench_decision_tier`` (its fits are the shipped recipes)."""

import numpy as np

from plan_probe.experiments.bench_decision_tier import local_ratios, realise, realised_loss


def test_realise_takes_the_first_recorded_depth_at_or_beyond_the_plan_and_charges_it():
    depths = [5.0, 10.0, 20.0]
    preds = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [10.0, 11.0, 12.0]])
    used, charged = realise(preds, m0=np.array([-1.0, -2.0, -3.0, -4.0]), steps=[0, 5, 7, 40], depths=depths)
    np.testing.assert_array_equal(used, [-1.0, 4.0, 8.0, 12.0])  # 40 beyond the deepest: the deepest recorded
    np.testing.assert_array_equal(charged, [0.0, 5.0, 10.0, 20.0])


def test_realised_loss_is_the_full_cost_per_wrong_call_plus_the_steps():
    label = np.array([30.0, 10.0, 25.0, 24.9])
    go = np.array([True, True, False, False])
    loss = realised_loss(label, go, [0, 5, 10, 0], threshold=25.0, full_cost=120.0, step_cost=2.0)
    np.testing.assert_array_equal(loss, [0.0, 120.0 + 10.0, 120.0 + 20.0, 0.0])  # τ itself is a success


def test_local_ratios_are_the_mse_ratio_in_the_bin_of_the_static_prediction():
    """Two bins: runs predicted low have shallow residuals 2x the static ones (κ 4), runs predicted high the
    same (κ 1); held-out predictions take their bin's κ."""
    pred = np.array([-50.0, -40.0, -30.0, 10.0, 20.0, 30.0])
    static_res = np.array([1.0, -2.0, 3.0, 1.0, -1.0, 2.0])
    shallow = np.array([2.0, -4.0, 6.0, 1.0, -1.0, 2.0])
    got = local_ratios(pred, static_res, shallow, m0=[-45.0, 25.0, 100.0], n_bins=2)
    np.testing.assert_allclose(got, [4.0, 1.0, 1.0], rtol=1e-12)


def test_a_missing_table_is_one_error_line_and_exit_2(tmp_path, capsys):
    from plan_probe.experiments.bench_decision_tier import main

    code = main([str(tmp_path), "--threshold", "25", "--full-cost", "120", "--risk-obs", str(tmp_path / "none.parquet")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: the tier's tables must exist") and err.count("\n") == 1


def test_fold_fits_use_the_priors_the_shipped_risk_model_records(tmp_path):
    from pathlib import Path

    from plan_probe.experiments.bench_decision_tier import shipped_priors

    root = Path(__file__).resolve().parents[1] / "planner" / "defaults" / "llm"
    assert shipped_priors(root) == {"task_sd_prior": [1.0, 1.0, 0.2], "lkj_eta": 4.0}
    assert shipped_priors(tmp_path) == {}  # no risk model: the RiskFitSettings defaults
