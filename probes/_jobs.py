"""Probe runs as self-contained jobs (for ``planner._executor``: local or Ray workers).

A job gets only plain data (paths, the model spec, the config as JSON) and loads what it needs,
so it runs the same in this process or on a Ray worker. The model is loaded once per process.
"""

from __future__ import annotations

import functools

__all__ = ["probe_job"]


@functools.lru_cache(maxsize=2)
def _model(model_spec: str, device: str | None, trust_remote_code: bool):
    from probes._models import resolve_model

    return resolve_model(model_spec, device=device, trust_remote_code=trust_remote_code)


def probe_job(dataset: str, model_spec: str, config_json: dict, *, limit: int | None = None, device: str | None = None,
              trust_remote_code: bool = False) -> dict:
    """Run one probe; return its rows (a DataFrame) and outcome fields."""
    from probes._config import ProbeConfig
    from probes._data import load_examples
    from probes._probe import run_probe

    config = ProbeConfig.from_json(config_json)
    examples = load_examples(dataset, limit=limit)
    model, tokenizer = _model(model_spec, device, trust_remote_code)
    result = run_probe(examples, model, tokenizer, config)
    return {"rows": result.rows, "seed": config.seed, "status": result.status, "diverged_step": result.diverged_step,
            "wall_time_s": round(result.wall_time_s, 3)}
