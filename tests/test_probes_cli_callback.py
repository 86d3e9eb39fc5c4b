"""CLI commands (one-line errors, no partial outputs), the Trainer callback, model resolution, and a slow real probe."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from plan_probe.cli import main

torch = pytest.importorskip("torch")


def _one_line_error(result, pattern):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], result.stderr


def test_probe_cli_writes_rows(tiny_folder, data, tmp_path):
    out = tmp_path / "rows.csv"
    args = ["probe", str(data), "--model", str(tiny_folder), "--steps", "4", "--record-at", "2,4", "--batch-size", "2",
            "--max-length", "24", "--lora-r", "2", "--target-modules", "q_proj,v_proj", "--seeds", "1,2", "--device", "cpu",
            "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out)
    assert len(rows) == 4 and sorted(rows["seed"].unique()) == [1, 2] and (rows["status"] == "ok").all()
    assert json.loads(result.stdout)["runs"][0]["status"] == "ok"


def test_probe_cli_readout_adds_dyn_ref_loss(tiny_folder, data, tmp_path):
    out = tmp_path / "rows.csv"
    args = ["probe", str(data), "--model", str(tiny_folder), "--steps", "4", "--record-at", "2,4", "--batch-size", "2",
            "--max-length", "24", "--lora-r", "2", "--target-modules", "q_proj,v_proj", "--device", "cpu",
            "--reference", str(data), "--readout-cooldown", "2", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out)
    assert len(rows) == 2 and rows["dyn_ref_loss"].notna().all() and (rows["dyn_ref_loss"] > 0).all()
    assert json.loads(result.stdout)["config"]["config"]["readout_cooldown"] == 2


@pytest.mark.parametrize(
    "extra, pattern",
    [
        (["--readout-cooldown", "-2"], "readout_cooldown must be an integer >= 0"),
        (["--reference", "/nonexistent/ref.jsonl"], "ref.jsonl"),
        (["--lr", "-1"], "lr must be a positive"),
        (["--record-at", "2,50"], "must not exceed steps"),
        (["--record-at", "a,b"], "comma-separated integers"),
        (["--model", "/nonexistent/model"], "model must be a local HF folder"),
    ],
)
def test_probe_cli_bad_input(tiny_folder, data, tmp_path, extra, pattern):
    out = tmp_path / "rows.parquet"
    args = ["probe", str(data), "--model", str(tiny_folder), "--steps", "4", "--record-at", "2,4", "-o", str(out), *extra]
    _one_line_error(CliRunner().invoke(main, args), pattern)
    assert not out.exists()


def test_probe_cli_bad_dataset_and_extension(tiny_folder, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\nnot json\n')
    out = tmp_path / "rows.parquet"
    _one_line_error(CliRunner().invoke(main, ["probe", str(bad), "--model", str(tiny_folder), "--steps", "2", "--record-at", "2", "-o", str(out)]), "bad.jsonl:2")
    assert not out.exists()
    _one_line_error(CliRunner().invoke(main, ["probe", str(bad), "--model", str(tiny_folder), "-o", str(tmp_path / "x.txt")]), ".csv or .parquet")


def test_static_cli(tiny_folder, data, tmp_path, monkeypatch):
    import plan_probe.probes._static as st

    monkeypatch.setattr(st, "MiniLMEncoder", lambda: (lambda texts: np.random.default_rng(len(texts)).normal(size=(len(texts), 8))))
    out = tmp_path / "s.json"
    result = CliRunner().invoke(main, ["static", str(data), "--model", str(tiny_folder), "--sample", "5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert len(doc["descriptors"]) == 17 and doc["metadata"]["sampled_n"] == 5 and doc["plan_probe_version"]
    _one_line_error(CliRunner().invoke(main, ["static", str(data), "--sample", "0", "-o", str(tmp_path / "t.json")]), "sample must be")
    assert not (tmp_path / "t.json").exists()


def test_resolve_model_folder_and_errors(tiny_folder):
    from plan_probe.probes import resolve_model

    model, tok = resolve_model(str(tiny_folder), device="cpu")
    assert model.dtype == torch.float32 and tok.pad_token_id is not None and not model.training
    with pytest.raises(ValueError, match="nothing is downloaded"):
        resolve_model("some-org/some-hub-model")


def test_gguf_cache_is_atomic_and_reused(tmp_path, monkeypatch):
    """A conversion that dies leaves no cache folder; the next one completes and is reused."""
    from plan_probe.probes import _models

    monkeypatch.setenv("PLAN_PROBE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")

    def boom(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", boom)
    with pytest.raises(ValueError, match="must load with transformers"):
        _models._convert_gguf(gguf, trust_remote_code=False)
    assert not _models._gguf_cache_folder(gguf).exists()
    assert not any((tmp_path / "cache").glob("*")) if (tmp_path / "cache").exists() else True


def test_callback_matches_trainer_logs(tmp_path):
    """The callback's loss and pre-clipping grad norm equal the Trainer's own logged values."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from plan_probe.probes import Example, ProbeRecorderCallback
    from plan_probe.probes._testing import tiny_model, tiny_tokenizer
    from plan_probe.probes._tokenize import collate, encode_example

    tok = tiny_tokenizer()
    ex = [Example(f"question {i} about things?", f"answer {i} is this one.") for i in range(16)]
    data = [dict(zip(("input_ids", "labels"), encode_example(tok, e, 48))) for e in ex]
    torch.manual_seed(0)
    model = get_peft_model(tiny_model(len(tok)), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    out = tmp_path / "cb.csv"
    cb = ProbeRecorderCallback(record_at=(2, 4), tokenizer=tok, max_length=48, output=out)
    args = TrainingArguments(output_dir=str(tmp_path / "tr"), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-2,
                             max_grad_norm=0.01, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                             remove_unused_columns=False, lr_scheduler_type="constant", seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[cb],
                      data_collator=lambda f: collate([(x["input_ids"], x["labels"]) for x in f], tok.pad_token_id))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "grad_norm" in h]
    stats = cb._recorder.host()
    # Trainer logs the per-token mean loss (one micro-batch per step) and the pre-clip norm; with
    # max_grad_norm 0.01 < norms, a post-clip reading would be 0.01 instead.
    assert [h["grad_norm"] for h in logs] == pytest.approx(stats[:, 1].tolist(), rel=1e-5)
    assert min(stats[:, 1]) > 0.05
    assert [h["loss"] for h in logs] == pytest.approx(stats[:, 0].tolist(), rel=1e-5)
    rows = pd.read_csv(out)
    assert list(rows["depth"]) == [2, 4] and (rows["status"] == "ok").all()
    assert rows.loc[0, "dyn_grad_norm_mean"] == pytest.approx(stats[:2, 1].mean(), rel=1e-6)


@pytest.mark.slow
def test_real_probe_smollm2_dolly(shared_data):
    """A real 5-step probe on SmolLM2-135M-Instruct with Dolly records (a few minutes on 2 CPU cores)."""
    pytest.importorskip("gguf")
    from plan_probe.probes import ProbeConfig, load_examples, resolve_model, run_probe

    examples = [e for e in load_examples(shared_data / "instruct" / "dolly_alpaca.jsonl.gz", limit=200)][:64]
    model, tok = resolve_model("smollm2-135m-instruct", device="cpu")
    cfg = ProbeConfig(steps=5, record_at=(2, 5), batch_size=2, max_length=96, lr=2e-4, seed=0)
    result = run_probe(examples, model, tok, cfg)
    rows = result.rows
    assert result.status == "ok" and len(rows) == 2
    # An instruction-tuned model on instruction data: initial per-token loss well below log(vocab) ≈ 10.8.
    assert 0.3 < rows.loc[0, "dyn_initial_loss"] < 6.0
    assert rows[[c for c in rows.columns if c.startswith("dyn_")]].notna().all().all()
