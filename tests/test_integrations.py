"""Issue #21 items 3-4: the Optuna pruner and the Ray Tune stopper answer from a live probe.

The plumbing is tested with a stand-in that has LiveProbe's interface (tests/_live_standin.py): a
study on a SQLite RDB storage shared by two worker processes prunes exactly the doomed trials; a
local Ray instance stops the doomed one of two trials. Real models: tests/test_integrations_live.py.
"""

from __future__ import annotations

import importlib.util
import math
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest

from tests._live_standin import DEPTHS, make_standin

optuna_missing = importlib.util.find_spec("optuna") is None
ray_missing = importlib.util.find_spec("ray") is None
STATIC = {"static_n": 1.0}
FULL_STEPS = 400


def _final_score(quality: float) -> float:
    return 50.0 + 10.0 * quality


# --------------------------------------------------------------------------------- optuna
def _objective_factory(steps_seen: dict):
    import optuna

    from plan_probe.integrations.optuna import report_probe

    def objective(trial):
        q = trial.suggest_float("quality", -3.0, 3.0)
        for step in range(1, FULL_STEPS + 1):
            steps_seen[trial.number] = step
            if step in DEPTHS:
                report_probe(trial, step, {"dyn_quality": q})
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return _final_score(q)

    return objective


def _optuna_worker(storage_url: str, study_name: str, n_trials: int, seed: int) -> float:
    """One worker process: load the shared study, run trials; returns its slowest prune call (s)."""
    import optuna

    from plan_probe import DecisionSettings
    from plan_probe.integrations.optuna import PredictivePruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    slowest = [0.0]

    class Timed(PredictivePruner):
        def prune(self, study, trial):
            t = time.perf_counter()
            out = super().prune(study, trial)
            slowest[0] = max(slowest[0], time.perf_counter() - t)
            return out

    pruner = Timed(static_row=STATIC, settings=DecisionSettings(threshold=50.0, full_cost=FULL_STEPS),
                   make_probe=make_standin)
    study = optuna.load_study(study_name=study_name, storage=storage_url, pruner=pruner,
                              sampler=optuna.samplers.RandomSampler(seed=seed))
    study.optimize(_objective_factory({}), n_trials=n_trials)
    return slowest[0]


@pytest.mark.skipif(optuna_missing, reason="optuna is not installed (pip install 'plan-probe[optuna]')")
def test_optuna_rdb_study_two_workers_prunes_doomed_keeps_good(tmp_path):
    import optuna
    from optuna.trial import TrialState

    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="s", storage=optuna.storages.RDBStorage(url), direction="maximize")
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        slowest = list(pool.map(_optuna_worker, [url, url], ["s", "s"], [6, 6], [1, 2]))
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert len(trials) == 12
    for t in trials:
        doomed = _final_score(t.params["quality"]) < 50.0
        assert t.state == (TrialState.PRUNED if doomed else TrialState.COMPLETE), (t.params, t.state)
        recorded = sorted(int(k.rsplit(".", 1)[1]) for k in t.user_attrs)
        assert recorded == [d for d in DEPTHS if d <= recorded[-1]]  # the features travelled through SQLite
    assert {t.state for t in trials} == {TrialState.PRUNED, TrialState.COMPLETE}
    assert max(slowest) <= 0.050, slowest


@pytest.mark.skipif(optuna_missing, reason="optuna is not installed (pip install 'plan-probe[optuna]')")
def test_optuna_pruner_calls_the_model_only_at_new_decision_depths():
    """Between the decision's next_depth and the newest record the last answer stands (no model call)."""
    import optuna

    from plan_probe import DecisionSettings
    from plan_probe.integrations.optuna import PredictivePruner, report_probe

    made = []

    def factory(static_row, hp):
        made.append(make_standin(static_row, hp))
        assert hp == {"hp_quality": pytest.approx(0.3)} and static_row == STATIC
        return made[-1]

    pruner = PredictivePruner(static_row=STATIC, settings=DecisionSettings(threshold=50.0, full_cost=400),
                              make_probe=factory)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.enqueue_trial({"quality": 0.3})
    trial = study.ask({"quality": optuna.distributions.FloatDistribution(-3, 3)})
    assert trial.should_prune() is False  # nothing recorded yet: no decision, no probe built
    assert made == []
    for step in range(1, 60):
        report_probe(trial, step, {"dyn_quality": 0.3, "dyn_nan": math.nan})
        assert trial.should_prune() is False
    assert made[0].calls == 5  # steps 1 (first record), then 5, 10, 20, 50: the next_depth schedule
    key = (study.study_name, trial.number)
    assert pruner.decisions[key].action == "continue" and pruner.decisions[key].depth == 50


@pytest.mark.skipif(optuna_missing, reason="optuna is not installed (pip install 'plan-probe[optuna]')")
def test_optuna_failed_decision_is_logged_and_never_prunes(caplog):
    import optuna

    from plan_probe import DecisionSettings
    from plan_probe.integrations.optuna import PredictivePruner, report_probe

    pruner = PredictivePruner(static_row=STATIC, settings=DecisionSettings(threshold=50.0, full_cost=400),
                              make_probe=make_standin)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    trial = study.ask({"quality": optuna.distributions.FloatDistribution(-3, 3)})
    report_probe(trial, 5, {"dyn_other": -100.0})  # the probe needs dyn_quality
    assert trial.should_prune() is False
    report_probe(trial, 10, {"dyn_quality": -100.0})  # doomed, but deciding has stopped for this trial
    assert trial.should_prune() is False
    assert "dyn_quality" in next(iter(pruner.errors.values()))
    assert "stops deciding" in caplog.text


@pytest.mark.skipif(optuna_missing, reason="optuna is not installed (pip install 'plan-probe[optuna]')")
@pytest.mark.parametrize("step, row, rule", [
    (0, {"dyn_a": 1.0}, "step must be a whole number"),
    (2.5, {"dyn_a": 1.0}, "step must be a whole number"),
    (5, {}, "dyn_row must be a non-empty mapping"),
    (5, {"loss": 1.0}, "dyn_row keys must be dyn_*"),
    (5, {"dyn_a": "high"}, "dyn_row values must be numbers"),
])
def test_report_probe_bad_input_is_one_clear_error(step, row, rule):
    import optuna

    from plan_probe.integrations.optuna import report_probe

    trial = optuna.create_study().ask()
    with pytest.raises(ValueError, match=rule) as info:
        report_probe(trial, step, row)
    assert "but got" in str(info.value)


# ------------------------------------------------------------------------------------ ray
@pytest.mark.skipif(ray_missing, reason="ray is not installed (pip install 'plan-probe[ray]')")
def test_ray_stopper_direct_calls():
    from plan_probe import DecisionSettings
    from plan_probe.integrations.ray import PredictiveStopper

    stop = PredictiveStopper(static_row=STATIC, settings=DecisionSettings(threshold=50.0, full_cost=400),
                             make_probe=make_standin)
    assert stop("a", {"step": 5, "loss": 1.0, "config": {"quality": -2.0}}) is False  # no dyn_*: not a record
    assert stop("a", {"step": 5, "dyn_quality": -5.0, "config": {"quality": -5.0}}) is True
    assert stop("b", {"step": 5, "dyn_quality": 5.0, "config": {"quality": 5.0}}) is False
    assert stop.decisions["b"].action == "go" and stop.decisions["a"].action == "no_go"
    assert stop("c", {"dyn_quality": -2.0}) is False  # no step: logged, never stopped
    assert "depth_key='step'" in stop.errors["c"]
    assert stop.stop_all() is False
    import pickle

    assert pickle.loads(pickle.dumps(stop)).decisions == {}  # per-trial state is not pickled


def _ray_trainable(config):
    from ray import tune

    for step in range(1, FULL_STEPS + 1):  # reports at the record depths and every 100 steps (quick)
        if step in DEPTHS:
            tune.report({"step": step, "dyn_quality": config["quality"]})
        elif step % 100 == 0:
            tune.report({"step": step, "score": _final_score(config["quality"]) - 10.0 / step})


@pytest.mark.skipif(ray_missing, reason="ray is not installed (pip install 'plan-probe[ray]')")
def test_ray_tune_local_two_trials_stops_the_doomed(tmp_path):
    import ray
    from ray import tune

    from plan_probe import DecisionSettings
    from plan_probe.integrations.ray import PredictiveStopper

    stopper = PredictiveStopper(static_row=STATIC, settings=DecisionSettings(threshold=50.0, full_cost=FULL_STEPS),
                                make_probe=make_standin)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        tuner = tune.Tuner(_ray_trainable, param_space={"quality": tune.grid_search([-1.5, 1.5])},
                           run_config=tune.RunConfig(stop=stopper, storage_path=str(tmp_path), verbose=0))
        results = tuner.fit()
    finally:
        ray.shutdown()
    last = {r.config["quality"]: r.metrics["step"] for r in results}
    assert last[-1.5] == 20  # stopped at the record where P(score >= 50) fell below 0.05
    assert last[1.5] == FULL_STEPS  # ran to the end
