"""Probe runs as self-contained jobs (for ``plan_probe.probes._executor``: local or Ray workers).

A job gets only plain data (paths, the model spec, the config as JSON) and returns plain data, so
it runs the same in this process or on a Ray worker. The model is loaded once per process.
"""

from __future__ import annotations

import functools

__all__ = ["cached_model", "probe_job"]


@functools.lru_cache(maxsize=2)
def cached_model(model_spec: str, device: str | None = None, trust_remote_code: bool = False):
    """One loaded base model per process and spec (``run_probe`` removes its adapters, so a driver's
    static stage and its local probes can share it, and a Ray worker keeps it between tasks)."""
    from plan_probe.probes._models import resolve_model

    return resolve_model(model_spec, device=device, trust_remote_code=trust_remote_code)


def probe_job(dataset: str, model_spec: str, config_json: dict, *, limit: int | None = None, device: str | None = None,
              trust_remote_code: bool = False, reference: str | None = None) -> dict:
    """Run one probe (with the readout on the ``reference`` file's examples, when given) and return plain data.

    Returns ``{"seed", "status", "diverged_step", "wall_time_s", "rows"}``; ``rows`` is a list of
    dicts, one per recorded depth (NaN as None).
    """
    from plan_probe.probes._config import ProbeConfig
    from plan_probe.probes._data import load_examples
    from plan_probe.probes._io import json_scalar
    from plan_probe.probes._probe import run_probe

    config = ProbeConfig.from_json(config_json)
    examples = load_examples(dataset, limit=limit)
    model, tokenizer = cached_model(model_spec, device, trust_remote_code)
    held_out = None if reference is None else load_examples(reference)
    result = run_probe(examples, model, tokenizer, config, reference=held_out)
    return {
        "seed": config.seed,
        "status": result.status,
        "diverged_step": None if result.diverged_step is None else int(result.diverged_step),
        "wall_time_s": float(result.wall_time_s),
        "rows": [{k: json_scalar(v) for k, v in row.items()} for row in result.rows.to_dict("records")],
    }
