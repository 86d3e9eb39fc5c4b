"""CLI commands of this area: ``static``, ``probe`` and ``bench-probe``.

Only click and the standard library are imported at module level; torch/transformers/peft load
inside the commands. Every input is checked before any output is written.
"""

from __future__ import annotations

import json
import logging

import click

log = logging.getLogger(__name__)

_MODEL_HELP = "Local HF folder, .gguf file, or the built-in name smollm2-135m-instruct."


def _hp_options(func):
    options = [
        click.option("--lr", type=float, default=2e-4, show_default=True, help="Learning rate (AdamW, constant)."),
        click.option("--batch-size", type=int, default=4, show_default=True, help="Examples per micro-batch."),
        click.option("--grad-accum", type=int, default=1, show_default=True, help="Micro-batches per step."),
        click.option("--lora-r", type=int, default=8, show_default=True),
        click.option("--lora-alpha", type=float, default=16.0, show_default=True),
        click.option("--lora-dropout", type=float, default=0.05, show_default=True),
        click.option("--target-modules", default="q_proj,k_proj,v_proj,o_proj", show_default=True, help="Comma-separated module names."),
        click.option("--max-length", type=int, default=256, show_default=True, help="Tokens per example."),
        click.option("--flatness-k", type=int, default=1, show_default=True, help="Antithetic perturbation pairs for flatness."),
        click.option("--flatness-sigma", type=float, default=1e-2, show_default=True, help="Std of the perturbations."),
        click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Global-norm clip (0: off)."),
        click.option("--flatness-sample", default="2", show_default=True, metavar="N|all",
                     help="Examples of the flatness batch the perturbed forwards evaluate (seeded, weighted to the "
                          "batch's expectation); all: the exact definition."),
        click.option("--ood-sample", default="8", show_default=True, metavar="N|all",
                     help="Out-of-domain texts evaluated for forgetting (seeded, weighted to the set's expectation); "
                          "all: the exact definition."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _config(steps, record_at, seed, hp):
    from plan_probe.probes._config import ProbeConfig, parse_int_list

    modules = tuple(m.strip() for m in hp.pop("target_modules").split(",") if m.strip())
    for name in ("flatness_sample", "ood_sample"):
        size = _sample_option(hp[name], name)
        hp[name] = None if size == "all" else size
    return ProbeConfig(steps=steps, record_at=parse_int_list("record_at", record_at), seed=seed, target_modules=modules, **hp)


def _sample_option(value, name):
    """``--sample``-style values: a positive integer or ``all``."""
    if value is None or str(value).lower() == "all":
        return value if value is None else "all"
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"{name} must be a positive integer or 'all', but got {value!r}; pass e.g. 1000, all, or leave it out.")
    return size


def usable_cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@click.command("static")
@click.argument("dataset")
@click.option("--model", "model_spec", default=None, help=_MODEL_HELP + " Without it the two static_ref_ppl_* keys are left out.")
@click.option("--sample", default=None, metavar="N|all",
              help="Sample size of both the embedding and the perplexity descriptors ('all': every example). "
                   "Default: 256 for the embeddings, 48 for the perplexity (see docs/guide/static-descriptors.md); the SEs go into metadata.se.")
@click.option("--embed-sample", default=None, metavar="N|all", help="Override --sample for the embedding descriptors.")
@click.option("--ppl-sample", default=None, metavar="N|all", help="Override --sample for the reference perplexity.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samples.")
@click.option("--limit", type=int, default=None, help="Use only the first N records.")
@click.option("--threads", type=int, default=None, help="torch threads for the model forwards (default: every usable core).")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the model folder (off by default).")
@click.option("-o", "--output", required=True, help="Output JSON file.")
def static_cmd(dataset, model_spec, sample, embed_sample, ppl_sample, seed, limit, threads, trust_remote_code, output):
    """Compute the 15 static descriptors of DATASET (17 columns) and write them as JSON.

    Counts, lengths, n-grams, duplicates and the other text statistics use every example; the
    embedding and perplexity descriptors use seeded samples and report their standard errors.
    """
    from pathlib import Path

    from plan_probe.probes._io import write_json
    from plan_probe.probes._formats import STATIC_DESCRIPTORS
    from plan_probe.probes._data import load_examples

    if not str(output).lower().endswith(".json"):
        raise ValueError(f"output must be a .json file, but got {output!r}; pass e.g. -o static.json.")
    sizes = {k: _sample_option(v, k) for k, v in (("sample", sample), ("embed_sample", embed_sample), ("ppl_sample", ppl_sample))}
    # more threads than cores never speeds the forwards up, and torch crashes (SIGSEGV) on huge counts
    if threads is not None and not 1 <= threads <= usable_cores():
        raise ValueError(f"threads must be a positive integer no larger than the {usable_cores()} usable cores, but got "
                         f"threads={threads}; pass e.g. 2 or leave it out.")
    if model_spec is not None:
        from plan_probe.probes._models import check_model

        check_model(model_spec, trust_remote_code=trust_remote_code)  # headers only: fails fast, loads nothing
    examples = load_examples(dataset, limit=limit)
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or usable_cores())
    try:
        model = tokenizer = None
        if model_spec is not None:
            from plan_probe.probes._models import resolve_model

            model, tokenizer = resolve_model(model_spec, trust_remote_code=trust_remote_code)
        from plan_probe.probes._static import static_descriptors

        result = static_descriptors(examples, model=model, tokenizer=tokenizer, seed=seed, **sizes)
    finally:
        torch.set_num_threads(previous)
    doc = STATIC_DESCRIPTORS.stamp({
        "dataset": str(dataset),
        "dataset_name": Path(dataset).name,
        "model": model_spec,
        "descriptors": dict(result),
        "metadata": {**result.metadata, "torch_threads": threads or usable_cores()},
    })
    write_json(doc, output)
    click.echo(json.dumps(dict(result), indent=2, sort_keys=False))


@click.command("probe")
@click.argument("dataset")
@click.option("--model", "model_spec", required=True, help=_MODEL_HELP)
@click.option("--steps", type=int, default=100, show_default=True, help="Probe steps.")
@click.option("--record-at", default="5,10,20,50,100", show_default=True, help="Depths at which rows are recorded.")
@_hp_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--seeds", default=None, help="Comma-separated seeds: one probe per seed (overrides --seed).")
@click.option("--limit", type=int, default=None, help="Use only the first N records.")
@click.option("--device", default=None, help="torch device (default: cuda when available, else cpu).")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the model folder (off by default).")
@click.option("-o", "--output", required=True, help="Output table (.parquet or .csv), one row per seed x depth.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Run the probes (one per seed) in this process or as Ray tasks.")
@click.option("--ray-address", default=None, help="Address of an existing Ray cluster (with --backend ray), e.g. auto or ray://head:10001.")
@click.option("--max-retries", type=click.IntRange(min=0), default=1, show_default=True,
              help="Retries of a probe whose worker raised or died, before it is recorded as failed.")
@click.option("--reference", default=None, metavar="FILE",
              help="Held-out examples of the target task (same formats as DATASET): every row also gets dyn_ref_loss, "
                   "their answer loss after a cooldown of --readout-cooldown steps, and dyn_ref_choice, the loss of "
                   "choosing their answers among the distinct ones (NaN for free-form answers).")
@click.option("--readout-cooldown", type=int, default=0, show_default=True,
              help="Steps of the readout's lr anneal to zero at each depth (with --reference; each costs these steps).")
def probe_cmd(dataset, model_spec, steps, record_at, seed, seeds, limit, device, trust_remote_code, output, backend,
              ray_address, max_retries, reference, readout_cooldown, **hp):
    """Run a LoRA probe on DATASET with the candidate's hyperparameters; write the dynamic features per depth.

    With --reference, each depth's row also holds the cooled-down readout dyn_ref_loss and
    dyn_ref_choice: the probe branches off, anneals the learning rate to zero over
    --readout-cooldown steps, scores the reference answers, and undoes the branch (the other
    features are unchanged).
    """
    import pandas as pd

    from plan_probe.probes._executor import Job, check_backend, execute
    from plan_probe.probes._io import table_format, write_table
    from plan_probe.probes._config import parse_int_list
    from plan_probe.probes._data import load_examples
    from plan_probe.probes._jobs import probe_job

    table_format(output)
    check_backend(backend, ray_address)
    seed_list = parse_int_list("seeds", seeds) if seeds is not None else (seed,)
    configs = [_config(steps, record_at, s, {**hp, "readout_cooldown": readout_cooldown}) for s in seed_list]
    from plan_probe.probes._models import check_device, check_model

    check_device(device)
    check_model(model_spec, trust_remote_code=trust_remote_code)  # headers only, before any worker starts
    load_examples(dataset, limit=limit)  # fail fast on bad data, before any worker starts
    if reference is not None:
        load_examples(reference)
    if backend == "local":  # the jobs of this process reuse it: a model that does not load is one error line
        from plan_probe.probes._jobs import cached_model
        from plan_probe.probes._models import check_target_modules

        check_target_modules(cached_model(model_spec, device, trust_remote_code)[0], configs[0].target_modules)
    gpus = 1.0 if backend == "ray" and (device or "").startswith("cuda") else 0.0
    jobs = [
        Job(f"seed{cfg.seed}", probe_job, (str(dataset), model_spec, cfg.to_json()),
            {"limit": limit, "device": device, "trust_remote_code": trust_remote_code, "reference": reference}, num_gpus=gpus)
        for cfg in configs
    ]
    outcomes = {o.key: o for o in execute(jobs, backend=backend, ray_address=ray_address, max_retries=max_retries)}
    done = [outcomes[j.key].value for j in jobs if outcomes[j.key].ok]
    failed = [{"seed": int(j.key[4:]), "status": "failed", "error": outcomes[j.key].error} for j in jobs if not outcomes[j.key].ok]
    if not done:
        raise ValueError(f"every probe failed (first error: {failed[0]['error']}); check the model, data and hyperparameters.")
    write_table(pd.DataFrame([row for r in done for row in r["rows"]]), output)
    summary = {
        "output": str(output),
        "backend": backend,
        "config": configs[0].to_json(),
        "runs": [{"seed": r["seed"], "status": r["status"], "diverged_step": r["diverged_step"],
                  "wall_time_s": round(r["wall_time_s"], 3)} for r in done] + failed,
    }
    click.echo(json.dumps(summary, indent=2))


@click.command("bench-probe")
@click.option("--model", "model_spec", default="smollm2-135m-instruct", show_default=True, help=_MODEL_HELP)
@click.option("--dataset", default=None, help="Instruction data (default: 64 synthetic records).")
@click.option("--steps", type=int, default=100, show_default=True)
@click.option("--record-at", default="5,10,20,50,100", show_default=True)
@_hp_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--repeats", type=int, default=1, show_default=True, help="Timed (bare, recorded) pairs; medians are compared.")
@click.option("--device", default=None, help="torch device (default: cuda when available, else cpu).")
@click.option("--random-init", is_flag=True, help="Random weights of the model's architecture (timing only).")
@click.option("-o", "--output", default=None, help="Also write the result JSON here.")
def bench_cmd(model_spec, dataset, steps, record_at, seed, repeats, device, random_init, output, **hp):
    """Time a bare LoRA loop against the same steps with feature recording; print the overhead ratio."""
    from plan_probe.probes._io import write_json
    from plan_probe.probes._version import __version__

    if output is not None and not str(output).lower().endswith(".json"):
        raise ValueError(f"output must be a .json file, but got {output!r}; pass e.g. -o bench.json.")
    config = _config(steps, record_at, seed, dict(hp))
    from plan_probe.probes._bench import bench_probe
    from plan_probe.probes._data import Example, load_examples
    from plan_probe.probes._models import check_device, check_model, resolve_model

    check_device(device)
    check_model(model_spec, need_weights=not random_init)
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, but got {repeats=}; pass --repeats 1 or more.")

    if dataset is not None:
        examples = load_examples(dataset)
    else:  # long enough that every example fills max_length, so step cost is fixed
        examples = [
            Example(f"Explain item {i}: " + "why the river rises after rain in the hills " * 20, "Because " + "water flows down to the valley " * 20)
            for i in range(64)
        ]
    model, tokenizer = resolve_model(model_spec, device=device, random_init=random_init)
    result = bench_probe(examples, model, tokenizer, config, repeats=repeats)
    result.update({"plan_probe_version": __version__, "model": model_spec, "random_init": random_init})
    if output is not None:
        write_json(result, output)
    click.echo(json.dumps(result, indent=2))


COMMANDS: list = [static_cmd, probe_cmd, bench_cmd]
EXPERIMENT_COMMANDS: list = []
