"""PlanProbeCallback on a tiny LLaMA Trainer run: doomed runs stop early, healthy ones finish, no work after
a decision, monitoring problems never stop training (docs/guide/live.md)."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

DEPTHS = (3, 6, 10)
MAX_STEPS = 24
TAU = -4.3  # label = -eval_loss: success when the eval loss ends at or below 4.3
DYN = ("dyn_initial_loss", "dyn_loss_decay", "dyn_loss_variance", "dyn_grad_norm_mean", "dyn_grad_norm_var",
       "dyn_grad_consistency", "dyn_grad_sparsity", "dyn_param_change_norm", "dyn_flatness", "dyn_forgetting")


@pytest.fixture(scope="module")
def models():
    """Models that learned, from 80 synthetic runs, that runs whose gradients do not agree step to step
    (destructive steps) end with a higher eval loss; the static features carry no information, and the
    risk curve falls steeply with depth."""
    import pandas as pd

    from plan_probe import PredictorConfig, ProbePredictor
    from plan_probe._risk_model import RiskModel

    rng = np.random.default_rng(0)
    rows = []
    for run in range(80):
        gc = rng.uniform(-0.1, 0.9)
        label = -4.40 + 0.3 * gc + rng.normal(0, 0.01)
        static = {"static_n_examples": float(rng.choice([32, 64, 128]))}
        for depth in DEPTHS:
            dyn = {name: float(rng.normal()) for name in DYN}
            dyn["dyn_grad_consistency"] = gc + rng.normal(0, 0.05)
            rows.append({"run_id": f"r{run}", "depth": depth, **static, "hp_batch_size": 8.0, **dyn, "label": label})
    meta = pd.DataFrame(rows)
    cfg = PredictorConfig(calibration_folds=5, min_child_samples=5)
    full_cols = ["depth", "static_n_examples", *DYN]
    pred = ProbePredictor(cfg).fit(meta[full_cols], meta["label"].rename("label"), groups=meta["run_id"].to_numpy())
    runs = meta.drop_duplicates("run_id")
    static = ProbePredictor(cfg).fit(runs[["static_n_examples", "hp_batch_size"]], runs["label"].rename("label"),
                                     groups=runs["run_id"].to_numpy())
    risk = RiskModel.from_population(np.zeros((3, 1)), np.log([1e-4, 1e-3, 1.0]), 0.05 * np.eye(3), ["static_n_examples"],
                                     feature_mean=np.array([64.0]), feature_std=np.array([30.0]))
    return {"risk_model": risk, "predictor": pred, "static_predictor": static}


def _data(tok, noise, seed, n=64):
    from plan_probe.probes import Example
    from plan_probe.probes._tokenize import encode_example

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a = rng.randrange(10)
        answer = f"{2 * a}" if rng.random() >= noise else f"{rng.randrange(100)}"
        out.append(dict(zip(("input_ids", "labels"), encode_example(tok, Example(f"Add {a} and {a}.", answer), 32))))
    return out


def _train(tmp_path, cb, *, lr, noise, evaluate=True, name="run"):
    """A tiny LLaMA + LoRA Trainer run of MAX_STEPS steps; returns (trainer, model)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from plan_probe.probes._testing import tiny_model, tiny_tokenizer
    from plan_probe.probes._tokenize import collate

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = get_peft_model(tiny_model(len(tok)), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                            target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    cb.tokenizer = tok
    args = TrainingArguments(output_dir=str(tmp_path / name), per_device_train_batch_size=8, max_steps=MAX_STEPS,
                             learning_rate=lr, logging_steps=1000, report_to=[], save_strategy="no", use_cpu=True,
                             remove_unused_columns=False, lr_scheduler_type="constant", seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=_data(tok, noise, 0), eval_dataset=_data(tok, 0.0, 99, 16),
                      callbacks=[cb], data_collator=lambda f: collate([(x["input_ids"], x["labels"]) for x in f], tok.pad_token_id))
    trainer.train()
    if evaluate:
        trainer.evaluate()
    return trainer, model


def _callback(models, tmp_path, **kw):
    from plan_probe import DecisionSettings, PlanProbeCallback

    kw.setdefault("metric_for_outcome", "eval_loss")
    return PlanProbeCallback({"static_n_examples": 64.0}, DecisionSettings(threshold=TAU), history_dir=tmp_path / "history",
                             **models, **kw)


def test_doomed_stops_early_healthy_runs_to_the_end(models, tmp_path):
    from plan_probe._history import read_runs
    from plan_probe.probes._formats import META_RUN_RECORD
    from plan_probe.probes._io import read_json

    doomed = _callback(models, tmp_path, run_id="doomed")
    t_doomed, _ = _train(tmp_path, doomed, lr=3.0, noise=0.9, name="doomed")
    healthy = _callback(models, tmp_path, run_id="healthy")
    t_healthy, _ = _train(tmp_path, healthy, lr=2e-2, noise=0.0, name="healthy")

    assert doomed.decision.action == "no_go" and doomed.decision.depth == DEPTHS[0]
    assert t_doomed.state.global_step == DEPTHS[0] < MAX_STEPS
    assert healthy.decision.action == "go"
    assert t_healthy.state.global_step == MAX_STEPS
    assert [d.action for d in healthy.decisions][0] == "continue"  # depth 0: the static prior is unsure

    rec = META_RUN_RECORD.read(read_json(tmp_path / "history" / "records" / "healthy.json"), "healthy")
    assert rec["status"] == "ok" and rec["error"] is None
    assert rec["result"]["label"] == pytest.approx(-t_healthy.state.log_history[-1]["eval_loss"])
    assert rec["result"]["outcome"]["step"] == MAX_STEPS
    assert rec["result"]["decision"]["action"] == "go" and set(rec["result"]["dyn"]) == {str(DEPTHS[0])}
    dec = META_RUN_RECORD.read(read_json(tmp_path / "history" / "records" / "doomed.json"), "doomed")
    assert dec["status"] == "censored" and dec["result"]["label"] is None and dec["config"]["stopped_at"] == DEPTHS[0]
    assert dec["result"]["decision"]["action"] == "no_go"
    # the history reads like a built meta-dataset: the finished run's rows, the censored run counted
    meta, summary = read_runs([tmp_path / "history"])
    assert list(meta["run_id"].unique()) == ["healthy"] and summary["censored"] == 1
    assert summary["censored_share"] == pytest.approx(0.5)


def test_no_work_after_the_decision(models, tmp_path, monkeypatch):
    from plan_probe.probes import _dynamics

    calls = []
    real = _dynamics.StepRecorder.record
    monkeypatch.setattr(_dynamics.StepRecorder, "record", lambda self, *a: (calls.append(1), real(self, *a))[1])
    cb = _callback(models, tmp_path, run_id="go")
    hooks = []
    real_begin = cb.on_train_begin

    def begin(args, state, control, model=None, **kw):
        hooks.append(len(model._forward_hooks))
        return real_begin(args, state, control, model=model, **kw)

    cb.on_train_begin = begin
    trainer, model = _train(tmp_path, cb, lr=2e-2, noise=0.0, evaluate=False)
    assert cb.decision.action == "go" and trainer.state.global_step == MAX_STEPS
    assert len(calls) == cb.decision.depth  # one recorder call per step up to the decision, none after
    assert cb._handles == [] and len(model._forward_hooks) == hooks[0]
    assert all(not p._post_accumulate_grad_hooks
               for p in model.parameters() if p.requires_grad)


def test_metric_that_never_appears(models, tmp_path, caplog):
    from plan_probe.probes._io import read_json

    cb = _callback(models, tmp_path, run_id="nometric", metric_for_outcome="eval_accuracy")
    with caplog.at_level(logging.WARNING):
        trainer, _ = _train(tmp_path, cb, lr=2e-2, noise=0.0)
    assert trainer.state.global_step == MAX_STEPS
    rec = read_json(tmp_path / "history" / "records" / "nometric.json")
    assert rec["status"] == "no_outcome" and "eval_accuracy" in rec["error"] and "eval_loss" in rec["error"]
    assert any("has no 'eval_accuracy'" in r.message for r in caplog.records)


def test_models_that_do_not_fit_the_run_never_stop_training(models, tmp_path):
    """The static predictor needs hp_batch_size; a run without it (hyperparams override to NaN is not
    allowed, so use a predictor needing hp_max_length, which the Trainer does not know): the callback
    logs, stops deciding, records why, and training finishes."""
    from plan_probe.probes._io import read_json

    broken = dict(models)
    static = models["static_predictor"]

    class NeedsMaxLength:
        feature_names_ = [*static.feature_names_, "hp_max_length"]

        def __getattr__(self, name):
            return getattr(static, name)

    broken["static_predictor"] = NeedsMaxLength()
    cb = _callback(broken, tmp_path, run_id="broken")
    trainer, _ = _train(tmp_path, cb, lr=3.0, noise=0.9)
    assert trainer.state.global_step == MAX_STEPS  # a doomed run, but nobody decides: it trains to the end
    assert cb.decision is None and "hp_max_length" in cb.error
    rec = read_json(tmp_path / "history" / "records" / "broken.json")
    assert "hp_max_length" in rec["error"] and rec["result"]["decision"] is None


def test_failing_update_never_stops_training(models, tmp_path, monkeypatch):
    from plan_probe import LiveProbe

    def boom(self, depth, dyn_row):
        raise RuntimeError("predictor exploded")

    monkeypatch.setattr(LiveProbe, "update", boom)
    cb = _callback(models, tmp_path, run_id="boom")
    trainer, _ = _train(tmp_path, cb, lr=2e-2, noise=0.0)
    assert trainer.state.global_step == MAX_STEPS and "predictor exploded" in cb.error
    assert cb.record["status"] == "ok"  # the outcome is still recorded


def test_unwritable_history_never_stops_training(models, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    from plan_probe import DecisionSettings, PlanProbeCallback

    cb = PlanProbeCallback({"static_n_examples": 64.0}, DecisionSettings(threshold=TAU), history_dir=blocker, **models)
    with caplog.at_level(logging.WARNING):
        trainer, _ = _train(tmp_path, cb, lr=3.0, noise=0.9)
    assert trainer.state.global_step == DEPTHS[0]  # still decides and stops
    assert any("could not write" in r.message for r in caplog.records)
    assert blocker.read_text() == "x"


def test_callback_bad_input(models, tmp_path):
    from plan_probe import DecisionSettings, PlanProbeCallback

    s = DecisionSettings(threshold=TAU)
    with pytest.raises(ValueError, match="risk model and both predictors"):
        PlanProbeCallback({"static_n_examples": 1.0}, s, predictor=models["predictor"])
    with pytest.raises(ValueError, match="MODELS_DIR must hold"):
        PlanProbeCallback({"static_n_examples": 1.0}, s, models_dir="/nonexistent/models")
    with pytest.raises(ValueError, match="DecisionSettings"):
        PlanProbeCallback({"static_n_examples": 1.0}, {"threshold": 1.0}, **models)
    with pytest.raises(ValueError, match="metric_for_outcome"):
        PlanProbeCallback({"static_n_examples": 1.0}, s, metric_for_outcome="", **models)
    with pytest.raises(ValueError, match="hyperparams must be finite"):
        PlanProbeCallback({"static_n_examples": 1.0}, s, hyperparams={"lr": float("nan")}, **models)
    # a predictor that uses the probe readout: the callback cannot record it inside a training run
    from plan_probe._predictor import ProbePredictor
    from tests._run_helpers import make_predictors

    readout_predictor = ProbePredictor.load(make_predictors(tmp_path, readout=True)[0])
    with pytest.raises(ValueError, match=r"uses the probe readout \['dyn_ref_loss'\]"):
        PlanProbeCallback({"static_n_examples": 1.0}, s, **{**models, "predictor": readout_predictor})
    from plan_probe._defaults import default_path
    from plan_probe.probes._io import read_table

    cb = PlanProbeCallback({}, s, models_dir="default", hyperparams={"lr": 1e-3, "hp_lora_r": 8})
    shipped_depths = tuple(int(d) for d in sorted(read_table(default_path("predictor").parent / "meta.parquet")["depth"].unique()))
    assert cb.record_at == shipped_depths and cb.hyperparams == {"hp_lr": 1e-3, "hp_lora_r": 8.0}
