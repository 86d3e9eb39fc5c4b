"""Issue #21 items 3-4: the Optuna pruner and the Ray Tune stopper answer from a live probe.

The plumbing is tested with a stand-in that has LiveProbe's interface (tests/_live_standin.py): a
study on a SQLite RDB storage shared by two worker processes prunes exactly the doomed trials; a
local Ray instance stops the doomed one of two trials. Real models: tests/test_integrations_live.py.
"""

from __future__ import annotations

import importlib.util
import math
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest

from tests._live_standin import DEPTHS, default_runs, make_standin, replay

optuna_missing = importlib.util.find_spec("optuna") is None
ray_missing = importlib.util.find_spec("ray") is None
STATIC = {"static_n": 1.0}
FULL_STEPS = 400


def _final_score(quality: float) -> float:
    return 50.0 + 10.0 * quality


# --------------------------------------------------------------------------------- optuna
def _runs_and_settings():
    """The shipped runs and models; τ = the median final score (about half the runs are doomed)."""
    import statistics

    from plan_probe import DecisionSettings

    runs = default_runs()
    tau = statistics.median(r["label"] for r in runs.values())
    ranked = sorted(runs, key=lambda rid: runs[rid]["label"])
    keep = ranked[::3]  # a third of the runs, spread over the whole range of final scores (a quick test)
    return {rid: runs[rid] for rid in keep}, DecisionSettings(threshold=tau, full_cost=1000.0)


def _optuna_worker(storage_url: str, study_name: str, run_ids: list) -> list:
    """One worker process: load the shared study, run one trial per run id; returns (wall, cpu) s of each
    prune call. (Each worker fixes its own runs' ``run`` param: Optuna's enqueued trials can be popped by
    both workers at once on SQLite.)"""
    import optuna

    from plan_probe.integrations.optuna import PredictivePruner, report_probe

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    runs, settings = _runs_and_settings()
    times = []

    class Timed(PredictivePruner):
        def prune(self, study, trial):
            t, c = time.perf_counter(), time.process_time()
            out = super().prune(study, trial)
            times.append((time.perf_counter() - t, time.process_time() - c))
            return out

    pruner = Timed(None, static_row=lambda trial: runs[trial.params["run"]]["static"], settings=settings,
                   hyperparams=lambda trial: runs[trial.params["run"]]["hp"])
    study = optuna.load_study(study_name=study_name, storage=storage_url, pruner=pruner)

    def objective(trial):
        run = runs[trial.suggest_categorical("run", sorted(runs))]
        for step, row in run["dyn"]:  # the training loop: features recorded at each record depth
            report_probe(trial, step, row)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return run["label"]

    for rid in run_ids:
        study.sampler = optuna.samplers.PartialFixedSampler({"run": rid}, optuna.samplers.RandomSampler(seed=0))
        study.optimize(objective, n_trials=1)
    return times


@pytest.mark.skipif(optuna_missing, reason="optuna is not installed (pip install 'plan-probe[optuna]')")
def test_optuna_rdb_study_two_workers_prunes_doomed_keeps_good(tmp_path):
    """13 runs of the shipped meta-dataset as trials of one SQLite study shared by two processes, with the
    shipped models: each trial is pruned exactly when LiveProbe alone says no_go on the same records,
    and the pruner's kills and keeps match the runs' true outcomes better than a coin (τ is the median, so
    pruning everyone or no one is right half the time; in-sample: these runs trained the models)."""
    import optuna
    from optuna.trial import TrialState

    from plan_probe import LiveProbe
    from plan_probe._live import load_models_dir

    runs, settings = _runs_and_settings()
    risk_model, predictor, static_predictor = load_models_dir("default")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="s", storage=optuna.storages.RDBStorage(url), direction="maximize")
    ids, n = sorted(runs), len(runs)
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        times = [t for ts in pool.map(_optuna_worker, [url, url], ["s", "s"], [ids[0::2], ids[1::2]]) for t in ts]
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert sorted(t.params["run"] for t in trials) == sorted(runs)  # every run once, across both workers
    correct = 0
    for t in trials:
        run = runs[t.params["run"]]
        alone = replay(LiveProbe(run["static"], run["hp"], risk_model=risk_model, predictor=predictor,
                                 static_predictor=static_predictor, settings=settings), run["dyn"])
        assert t.state == (TrialState.PRUNED if alone.action == "no_go" else TrialState.COMPLETE), t.params
        recorded = sorted(int(k.rsplit(".", 1)[1]) for k in t.user_attrs)
        last = alone.depth if alone.action == "no_go" else run["dyn"][-1][0]  # a kept trial records on
        assert recorded == [d for d, _ in run["dyn"] if d <= last]  # the features travelled through SQLite
        correct += (t.state == TrialState.PRUNED) == (run["label"] < settings.threshold)
    assert {t.state for t in trials} == {TrialState.PRUNED, TrialState.COMPLETE}
    from scipy.stats import binomtest

    assert binomtest(correct, n, 0.5, alternative="greater").pvalue < 0.05, (correct, n)
    # every prune call was timed (the worker returns wall and CPU seconds per call); the 50 ms target itself
    # is measured by `python -m plan_probe.experiments.bench_live`, not asserted here: a timed unit test fails
    # on a loaded machine (52.6 ms once on the shared 2-core CI box) without any change in the code
    assert len(times) >= n and all(w >= 0 and c >= 0 for w, c in times)  # at least one prune call per trial


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


def _ray_trainable(config, runs):
    from ray import tune

    run = runs[config["run"]]
    records = dict(run["dyn"])
    for step in range(1, FULL_STEPS + 1):  # reports at the record depths and every 100 steps (quick)
        if step in records:
            tune.report({"step": step, **records[step]})
        elif step % 100 == 0:
            tune.report({"step": step, "score": run["label"]})


@pytest.mark.skipif(ray_missing, reason="ray is not installed (pip install 'plan-probe[ray]')")
def test_ray_tune_local_two_trials_stops_the_doomed(tmp_path):
    """Two runs of the shipped meta-dataset as Tune trials with the shipped models: the one LiveProbe
    kills (a true failure) stops at that record, the one it keeps (a true success) runs to the end."""
    import ray
    from ray import tune

    from plan_probe import LiveProbe
    from plan_probe.integrations.ray import PredictiveStopper

    runs, settings = _runs_and_settings()
    alone = {rid: replay(LiveProbe.from_models_dir("default", r["static"], r["hp"], settings), r["dyn"])
             for rid, r in runs.items()}
    doomed = next(rid for rid, d in alone.items() if d.action == "no_go" and runs[rid]["label"] < settings.threshold)
    good = next(rid for rid, d in alone.items() if d.action == "go" and runs[rid]["label"] >= settings.threshold)
    stopper = PredictiveStopper(None, static_row=lambda config: runs[config["run"]]["static"], settings=settings,
                                hyperparams=lambda config: runs[config["run"]]["hp"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        trainable = tune.with_parameters(_ray_trainable, runs={k: runs[k] for k in (doomed, good)})
        tuner = tune.Tuner(trainable, param_space={"run": tune.grid_search([doomed, good])},
                           run_config=tune.RunConfig(stop=stopper, storage_path=str(tmp_path), verbose=0))
        results = tuner.fit()
    finally:
        ray.shutdown()
    last = {r.config["run"]: r.metrics["step"] for r in results}
    assert last[doomed] == alone[doomed].depth < FULL_STEPS  # stopped at the record where LiveProbe said no_go
    assert last[good] == FULL_STEPS  # ran to the end
    assert {d.action for d in stopper.decisions.values()} == {"go", "no_go"} and not stopper.errors


# ----------------------------------------------------------------------------- bad set-up
@pytest.mark.skipif(optuna_missing or ray_missing, reason="needs optuna and ray")
def test_bad_setup_is_one_clear_error_when_built(tmp_path):
    from plan_probe import DecisionSettings
    from plan_probe.integrations.optuna import PredictivePruner
    from plan_probe.integrations.ray import PredictiveStopper

    settings = DecisionSettings(threshold=50.0, full_cost=400)
    for cls in (PredictivePruner, PredictiveStopper):
        with pytest.raises(ValueError, match="MODELS_DIR must hold risk_model.json") as info:
            cls(tmp_path, static_row=STATIC, settings=settings)
        assert "but" in str(info.value)
        with pytest.raises(ValueError, match="static_row must be a mapping"):
            cls(static_row=5, settings=settings, make_probe=make_standin)
    with pytest.raises(ValueError, match="hyperparams must be a mapping"):
        PredictivePruner(static_row=STATIC, settings=settings, make_probe=make_standin, hyperparams=[1])


@pytest.mark.parametrize("module, extra", [("plan_probe.integrations.optuna", "optuna"),
                                           ("plan_probe.integrations.ray", "ray")])
def test_missing_extra_names_the_install(monkeypatch, module, extra):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, extra, None)  # "not installed"
    monkeypatch.delitem(sys.modules, module, raising=False)
    if extra == "ray":
        monkeypatch.setitem(sys.modules, "ray.tune", None)
    with pytest.raises(ImportError, match=rf"pip install 'plan-probe\[{extra}\]'"):
        importlib.import_module(module)
    import plan_probe  # the package itself never needs the extras

    assert plan_probe.LiveProbe
