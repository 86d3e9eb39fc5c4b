"""Probe features: static dataset descriptors, LoRA probe dynamics, HF Trainer callback.

Heavy libraries (torch, transformers, peft) load on first use of the probe, model and callback
objects, so ``import plan_probe.probes`` stays light.
"""

from plan_probe.probes._config import HP_COLUMNS, ProbeConfig
from plan_probe.probes._data import Example, load_examples
from plan_probe.probes._dynamics import DYN_COLUMNS
from plan_probe.probes._static import STATIC_COLUMNS

__all__ = [
    "DYN_COLUMNS",
    "Example",
    "HP_COLUMNS",
    "ProbeConfig",
    "ProbeRecorderCallback",
    "ProbeResult",
    "STATIC_COLUMNS",
    "load_examples",
    "resolve_model",
    "run_probe",
    "static_descriptors",
]

_LAZY = {
    "ProbeRecorderCallback": "plan_probe.probes._callback",
    "ProbeResult": "plan_probe.probes._probe",
    "run_probe": "plan_probe.probes._probe",
    "resolve_model": "plan_probe.probes._models",
    "static_descriptors": "plan_probe.probes._static",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'plan_probe.probes' has no attribute {name!r}")
