"""Issue #21: the README's two live-decision examples run as written (Trainer callback, Optuna study).

Each test takes the python block from README.md's "Live decisions" section and executes it in a
fresh folder that holds ``static.json``, with the names the example leaves to the user defined: for
the Trainer example a ``models/`` folder fitted on synthetic runs with label -eval_loss, a tiny LLaMA
+ LoRA model, its tokenizer and datasets (its 1000 steps shortened to 12); for the Optuna example
``start_run`` (a run of the shipped meta-dataset replayed step by step) and the shipped models.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _examples() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Live decisions", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def _static_json(folder: Path, run: dict) -> None:
    (folder / "static.json").write_text(json.dumps({"format": "plan-probe/static-descriptors", "schema_version": 1,
                                                    "descriptors": run["static"]}))


def test_readme_has_both_examples_of_ten_odd_lines():
    blocks = _examples()
    assert len(blocks) == 2
    assert "PlanProbeCallback" in blocks[0] and "PredictivePruner" in blocks[1]
    assert all(len(b.strip().splitlines()) <= 16 for b in blocks)


DEPTHS = (3, 6, 10)
DYN = ("dyn_initial_loss", "dyn_loss_decay", "dyn_loss_variance", "dyn_grad_norm_mean", "dyn_grad_norm_var",
       "dyn_grad_consistency", "dyn_grad_sparsity", "dyn_param_change_norm", "dyn_flatness", "dyn_forgetting")


def _models_dir(folder: Path) -> None:
    """A MODELS_DIR as plan-probe refit writes it, fitted on 80 synthetic runs recorded at steps 3, 6, 10
    whose label (-eval_loss) rises with the gradients' step-to-step agreement; a steep known risk curve."""
    import numpy as np
    import pandas as pd

    from plan_probe import PredictorConfig, ProbePredictor
    from plan_probe._risk_model import RiskModel

    rng = np.random.default_rng(0)
    rows = []
    for run in range(80):
        gc = rng.uniform(-0.1, 0.9)
        label = -4.40 + 0.3 * gc + rng.normal(0, 0.01)
        for depth in DEPTHS:
            dyn = {name: float(rng.normal()) for name in DYN}
            dyn["dyn_grad_consistency"] = gc + rng.normal(0, 0.05)
            rows.append({"run_id": f"r{run}", "depth": depth, "static_n_examples": 32.0, "hp_batch_size": 4.0, **dyn,
                         "label": label})
    meta = pd.DataFrame(rows)
    cfg = PredictorConfig(calibration_folds=5, min_child_samples=5)
    ProbePredictor(cfg).fit(meta[["depth", "static_n_examples", *DYN]], meta["label"].rename("label"),
                            groups=meta["run_id"].to_numpy()).save(folder / "predictor")
    runs = meta.drop_duplicates("run_id")
    ProbePredictor(cfg).fit(runs[["static_n_examples", "hp_batch_size"]], runs["label"].rename("label"),
                            groups=runs["run_id"].to_numpy()).save(folder / "predictor_static")
    RiskModel.from_population(np.zeros((3, 1)), np.log([1e-4, 1e-3, 1.0]), 0.05 * np.eye(3), ["static_n_examples"],
                              feature_mean=np.array([64.0]), feature_std=np.array([30.0])).save(folder / "risk_model.json")


def test_readme_trainer_example_runs(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from plan_probe.probes import Example
    from plan_probe.probes._testing import tiny_model, tiny_tokenizer
    from plan_probe.probes._tokenize import encode_example
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = get_peft_model(tiny_model(len(tok)), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                            target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))

    def data(n, seed):
        rows = []
        for i in range(n):
            a = (i * 7 + seed) % 10
            ids, labels = encode_example(tok, Example(f"Add {a} and {a}.", f"{2 * a}"), 24)
            pad = 24 - len(ids)  # equal lengths: the Trainer's default collator stacks them
            rows.append({"input_ids": torch.tensor(list(ids) + [tok.pad_token_id] * pad),
                         "labels": torch.tensor(list(labels) + [-100] * pad)})
        return rows

    _models_dir(tmp_path / "models")
    _static_json(tmp_path, {"static": {"static_n_examples": 32.0}})
    monkeypatch.chdir(tmp_path)
    code = _examples()[0].replace("max_steps=1000", "max_steps=12, per_device_train_batch_size=4, save_strategy='no'")
    ns = {"model": model, "tokenizer": tok, "train_ds": data(32, 0), "eval_ds": data(8, 5)}
    exec(compile(code, "README.md (Trainer example)", "exec"), ns)
    cb, trainer = ns["callback"], ns["trainer"]
    assert cb.error is None, cb.error
    assert cb.decision is not None and cb.decision.action in ("go", "no_go")
    stopped = cb.decision.action == "no_go"
    assert (trainer.state.global_step < 12) == stopped
    assert cb.decisions[-1].depth in DEPTHS  # decided at a record depth of the run, not before it
    assert cb.record_path.resolve().is_relative_to((tmp_path / "out" / "plan_probe_history").resolve())
    record = json.loads(cb.record_path.read_text())
    assert record["status"] == ("censored" if stopped else "ok")


def _example_threshold(block: str) -> float:
    return float(re.search(r"threshold=(-?[0-9.]+)", block).group(1))


def _unsure_dataset(runs: list, tau: float) -> dict:
    """The run whose dataset the shipped static-only predictor puts nearest the example's τ: the probes,
    not the descriptors, then decide its trials (a dataset far from τ is decided before any probe)."""
    from plan_probe import DecisionSettings, LiveProbe
    from plan_probe._live import load_models_dir

    models = dict(zip(("risk_model", "predictor", "static_predictor"), load_models_dir("default")))
    settings = DecisionSettings(threshold=tau, full_cost=1000)
    gaps = [abs(LiveProbe(r["static"], r["hp"], settings=settings, **models).prior_mean - tau) for r in runs]
    mid = len(runs) // 2  # ties (a constant static predictor): the median final score
    return runs[min(range(len(runs)), key=lambda i: (round(gaps[i], 6), abs(i - mid)))]


@pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="optuna is not installed (pip install 'plan-probe[optuna]')")
def test_readme_optuna_example_runs(tmp_path, monkeypatch):
    import optuna
    from optuna.trial import TrialState

    from tests._live_standin import default_runs

    runs = sorted(default_runs().values(), key=lambda r: r["label"])[::2]  # low to high final scores
    _static_json(tmp_path, _unsure_dataset(runs, _example_threshold(_examples()[1])))
    monkeypatch.chdir(tmp_path)
    started = []

    class Run:  # the user's training run, replayed from a run of the shipped meta-dataset
        def __init__(self, lr, lora_r):
            self.run = runs[len(started) % len(runs)]
            started.append((lr, lora_r))

        def probe_records(self):
            yield from self.run["dyn"]

        def finish(self):
            return self.run["label"]

    ns = {"start_run": Run}
    exec(compile(_examples()[1], "README.md (Optuna example)", "exec"), ns)
    trials = ns["study"].trials
    assert len(trials) == 20 and (tmp_path / "study.db").is_file()
    assert {t.state for t in trials} == {TrialState.PRUNED, TrialState.COMPLETE}
    assert not ns["pruner"].errors
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert all(t.user_attrs for t in pruned)  # each was pruned after a recorded probe step
    assert optuna.load_study(study_name=ns["study"].study_name, storage="sqlite:///study.db").trials[0].user_attrs
