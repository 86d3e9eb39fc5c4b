"""Probe-overhead benchmark: the bare LoRA loop against the same steps with feature recording.

Both loops use the same model, LoRA initialisation, batches, loss, clipping and optimiser; the
adapters are reset to their initial weights before each timed run. The timed recorded run
includes everything feature recording adds (θ₀ snapshot, the step-0 OOD loss, per-step gradient
statistics, and flatness / forgetting / parameter change at the record depths).
"""

from __future__ import annotations

import logging
import platform
import statistics
import time

from plan_probe.probes._config import ProbeConfig
from plan_probe.probes._probe import ProbeBatches, _ood_texts, attach_lora, probe_loop

__all__ = ["bench_probe"]

log = logging.getLogger(__name__)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_probe(examples, model, tokenizer, config: ProbeConfig, *, repeats: int = 1, warmup_steps: int = 2) -> dict:
    """Time ``repeats`` pairs of (bare, recorded) loops of ``config.steps`` steps; return a JSON-ready dict.

    The pairs alternate their order (bare first, then recorded first, ...) so slow drifts of the
    machine hit both. ``overhead`` is min(recorded) / min(bare) − 1 (the minimum is the least
    noisy estimate of a loop's own cost); ``overhead_median`` uses medians; ``overhead_cpu`` uses
    the minimum process CPU times (steadier than wall time on a shared machine).
    """
    import torch

    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, but got {repeats=}; pass e.g. 2.")
    batches = ProbeBatches(examples, tokenizer, config, _ood_texts(None))
    device = next(model.parameters()).device
    bare, recorded = [], []
    cpu = {False: [], True: []}
    with attach_lora(model, config) as (peft_model, params):
        init = [p.detach().clone() for p in params]

        def reset() -> None:
            with torch.no_grad():
                for p, p0 in zip(params, init):
                    p.copy_(p0)
                    p.grad = None
            torch.manual_seed(config.seed)

        reset()
        probe_loop(peft_model, params, batches, config.replace(steps=warmup_steps, record_at=(warmup_steps,)), device, record=True)
        for r in range(repeats):
            pair = ((False, bare), (True, recorded))
            for record, times in pair if r % 2 == 0 else pair[::-1]:
                reset()
                _sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                probe_loop(peft_model, params, batches, config, device, record=record)
                _sync(device)
                times.append(time.perf_counter() - t0)
                cpu[record].append(time.process_time() - c0)
                log.info("repeat %d %s: %.3f s", r, "recorded" if record else "bare", times[-1])
    t_bare, t_rec = min(bare), min(recorded)
    return {
        "steps": config.steps,
        "record_at": list(config.record_at),
        "batch_size": config.batch_size,
        "max_length": config.max_length,
        "lora_r": config.lora_r,
        "target_modules": list(config.target_modules),
        "flatness_k": config.flatness_k,
        "flatness_sample": config.flatness_sample,
        "ood_sample": config.ood_sample,
        "repeats": repeats,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.machine(),
        "bare_s": bare,
        "recorded_s": recorded,
        "bare_step_s": t_bare / config.steps,
        "overhead": t_rec / t_bare - 1.0,
        "overhead_median": statistics.median(recorded) / statistics.median(bare) - 1.0,
        # CPU time of this process (all threads): on a machine shared with other jobs it is a steadier
        # measure than wall time, exactly so with one torch thread (no spin-waiting threads)
        "bare_cpu_s": cpu[False],
        "recorded_cpu_s": cpu[True],
        "overhead_cpu": min(cpu[True]) / min(cpu[False]) - 1.0,
    }
