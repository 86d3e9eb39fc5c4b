"""Probe features: static dataset descriptors, LoRA probe dynamics, HF Trainer callback.

Every public object loads on first use (numpy included), so ``import plan_probe.probes`` (and with
it the ``plan-probe`` command line, which starts in a few tenths of a second) stays light.
"""

__all__ = [
    "DYN_COLUMNS",
    "Example",
    "HP_COLUMNS",
    "ProbeConfig",
    "ProbeRecorderCallback",
    "ProbeResult",
    "READOUT_COLUMNS",
    "STATIC_COLUMNS",
    "load_examples",
    "resolve_model",
    "run_probe",
    "static_descriptors",
]

_LAZY = {
    "DYN_COLUMNS": "plan_probe.probes._dynamics",
    "Example": "plan_probe.probes._data",
    "HP_COLUMNS": "plan_probe.probes._config",
    "ProbeConfig": "plan_probe.probes._config",
    "READOUT_COLUMNS": "plan_probe.probes._dynamics",
    "STATIC_COLUMNS": "plan_probe.probes._static",
    "load_examples": "plan_probe.probes._data",
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
