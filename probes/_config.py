"""Validated, JSON round-tripping configuration of one LoRA probe (the candidate's own hyperparameters)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["ProbeConfig", "HP_COLUMNS", "parse_int_list"]

HP_COLUMNS = ("hp_lr", "hp_batch_size", "hp_grad_accum", "hp_lora_r", "hp_lora_alpha", "hp_lora_dropout", "hp_max_length")


def parse_int_list(name: str, text: str) -> tuple[int, ...]:
    """Parse ``"5,10,20"`` into ``(5, 10, 20)`` with a clear error."""
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, but got {name}={text!r}; write e.g. 5,10,20.") from None
    if not values:
        raise ValueError(f"{name} must list at least one integer, but got {name}={text!r}; write e.g. 5,10,20.")
    return values


def _is_number(value) -> bool:
    """A real number that is not a bool (TOML/JSON ``true`` is no learning rate)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def anneal_lr(lr: float, j: int, k: int) -> float:
    r"""The learning rate of the j-th of k steps (1-based) that anneal ``lr`` linearly to zero:
    :math:`\eta\,(k + 1 - j)/(k + 1)` (the decay of ``lr_decay_steps`` and the readout's cooldown)."""
    return float(lr) * (k + 1 - j) / (k + 1)


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of one LoRA probe.

    Parameters
    ----------
    lr, batch_size, grad_accum : the candidate's own optimiser settings (AdamW, constant ``lr``;
        one step = ``grad_accum`` micro-batches of ``batch_size`` examples).
    lora_r, lora_alpha, lora_dropout, target_modules : the candidate's LoRA adapter.
    max_length : tokens per example (prompt truncated from the left first, then the response).
    steps : optimiser steps of the probe; must reach the deepest ``record_at`` depth.
    record_at : depths (steps) at which a feature row is recorded; each >= 2 (a slope, a variance
        and a cosine of consecutive gradients need two steps).
    seed : seeds LoRA initialisation, dropout, data order and the flatness perturbations.
    flatness_k, flatness_sigma : number of antithetic pairs θ ± σ·ε and the standard deviation σ
        (absolute, per LoRA weight entry) of the Gaussian perturbations that measure flatness
        (``2k + 1`` extra forwards on one micro-batch per record depth).
    grad_clip : global-norm clipping applied after the (pre-clipping) gradient norm is recorded;
        0 disables clipping.
    sparsity_tol : a gradient entry counts as zero when ``|g_i| <= sparsity_tol * max_j |g_j|``.
    weight_decay : AdamW weight decay.
    lr_decay_steps : the last ``lr_decay_steps`` steps decay the learning rate linearly towards zero
        (step ``steps - lr_decay_steps + k`` runs at ``lr * (lr_decay_steps + 1 - k) / (lr_decay_steps + 1)``);
        0 (the default) keeps it constant. Every ``record_at`` depth must lie before the decay, so
        the features at depth c are those of a constant-lr c-step probe (a full run that anneals
        after its probe depths).
    flatness_sample : examples of the flatness batch (the first micro-batch of step 1) whose loss
        the perturbation forwards evaluate: a seeded subset of this size, fixed for the probe, with
        the Horvitz–Thompson weight (b/k)·(T_S/T_B) so the estimate has the full batch's value as
        its expectation; None evaluates every example (the exact definition; probe configs of schema 1 used it).
    ood_sample : out-of-domain texts evaluated for the forgetting feature, a seeded subset fixed
        for the probe, weighted the same way (N/k)·(T_S/T_all); None evaluates every text (exact).
    readout_cooldown : steps of the cooled-down readout (``dyn_ref_loss``, measured only when the
        probe is given reference examples): at every record depth c the probe branches off, trains
        ``readout_cooldown`` more steps on its next batches with the learning rate decaying linearly
        to zero (step c + j at ``lr * (k + 1 - j) / (k + 1)``, a warmup-stable-decay cooldown), scores
        the reference examples, then restores the adapter, the optimiser state and the random state,
        so the other features are those of a probe without readout. 0 scores the depth-c model as it
        is. Each readout costs ``readout_cooldown`` extra steps.
    """

    lr: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    max_length: int = 256
    steps: int = 100
    record_at: tuple[int, ...] = (5, 10, 20, 50, 100)
    seed: int = 0
    flatness_k: int = 1
    flatness_sigma: float = 1e-2
    grad_clip: float = 1.0
    sparsity_tol: float = 1e-3
    weight_decay: float = 0.0
    lr_decay_steps: int = 0
    flatness_sample: int | None = 2
    ood_sample: int | None = 8
    readout_cooldown: int = 0

    def __post_init__(self) -> None:
        for name in ("target_modules", "record_at"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                example = "q_proj,v_proj" if name == "target_modules" else "5,10,20"
                raise ValueError(f"{name} must be a list, but got {name}={value!r}; pass e.g. {example}.")
        if not all(isinstance(m, str) for m in self.target_modules):
            raise ValueError(f"target_modules must be module names (strings), but got {list(self.target_modules)!r}; "
                             "pass e.g. q_proj,v_proj.")
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in self.record_at):
            raise ValueError(f"record_at must be integers, but got {list(self.record_at)!r}; pass e.g. 5,10,20.")
        # Normalise sequences (JSON gives lists) so equality and hashing work.
        object.__setattr__(self, "target_modules", tuple(str(m) for m in self.target_modules))
        object.__setattr__(self, "record_at", tuple(sorted({int(d) for d in self.record_at})))
        for name in ("lr", "lora_alpha", "flatness_sigma"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, but got {name}={value!r}; pass a value > 0.")
        for name in ("batch_size", "grad_accum", "lora_r", "max_length", "steps", "flatness_k"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, but got {name}={value!r}; pass an integer >= 1.")
        for name in ("flatness_sample", "ood_sample"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be a positive integer or None (every example), but got {name}={value!r}; "
                                 "pass e.g. 2, or None for the exact definition.")
        if not (_is_number(self.lora_dropout) and 0.0 <= self.lora_dropout < 1.0):
            raise ValueError(f"lora_dropout must be in [0, 1), but got lora_dropout={self.lora_dropout!r}; pass e.g. 0.05.")
        for name in ("grad_clip", "weight_decay", "sparsity_tol"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, but got {name}={value!r}; pass a value >= 0.")
        if not (isinstance(self.lr_decay_steps, int) and not isinstance(self.lr_decay_steps, bool) and 0 <= self.lr_decay_steps < self.steps):
            raise ValueError(
                f"lr_decay_steps must be an integer in [0, steps), but got lr_decay_steps={self.lr_decay_steps!r} with "
                f"steps={self.steps}; pass 0 for a constant learning rate."
            )
        if not (isinstance(self.readout_cooldown, int) and not isinstance(self.readout_cooldown, bool) and self.readout_cooldown >= 0):
            raise ValueError(f"readout_cooldown must be an integer >= 0, but got readout_cooldown={self.readout_cooldown!r}; "
                             "pass e.g. 10, or 0 to score the probe's model as it is.")
        if not self.target_modules or not all(self.target_modules):
            raise ValueError(
                f"target_modules must name at least one module, but got {self.target_modules!r}; pass e.g. q_proj,v_proj."
            )
        if not self.record_at or self.record_at[0] < 2:
            raise ValueError(
                f"record_at depths must be >= 2, but got record_at={list(self.record_at)}; "
                "a loss slope and gradient cosine need two steps, so start at 2 or more."
            )
        if self.record_at[-1] > self.steps:
            raise ValueError(
                f"the deepest record_at depth must not exceed steps, but got record_at max {self.record_at[-1]} > {self.steps=}; "
                "raise --steps or drop the deeper depths."
            )
        if self.record_at[-1] > self.steps - self.lr_decay_steps:
            raise ValueError(
                f"record_at depths must come before the learning-rate decay, but got record_at max {self.record_at[-1]} > "
                f"steps - lr_decay_steps = {self.steps - self.lr_decay_steps}; shorten the decay or the depths."
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= 2**32 - 1:
            raise ValueError(f"seed must be an integer in [0, 2**32 - 1], but got seed={self.seed!r}; pass e.g. 0.")

    def lr_at(self, step: int) -> float:
        """The learning rate of (1-based) ``step``: constant, then the linear decay of ``lr_decay_steps``."""
        start = self.steps - self.lr_decay_steps
        if step <= start:
            return float(self.lr)
        return anneal_lr(self.lr, step - start, self.lr_decay_steps)

    def hp_features(self) -> dict[str, float]:
        """The hyperparameter columns ``hp_*`` of this candidate (numeric)."""
        return {
            "hp_lr": float(self.lr),
            "hp_batch_size": float(self.batch_size),
            "hp_grad_accum": float(self.grad_accum),
            "hp_lora_r": float(self.lora_r),
            "hp_lora_alpha": float(self.lora_alpha),
            "hp_lora_dropout": float(self.lora_dropout),
            "hp_max_length": float(self.max_length),
        }

    def replace(self, **changes: Any) -> "ProbeConfig":
        """A copy with some settings changed (validated again)."""
        return ProbeConfig(**{**asdict(self), **changes})

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (format ``plan-probe/probe-config``, with the writing plan-probe version)."""
        from plan_probe.probes._formats import PROBE_CONFIG

        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        data["record_at"] = list(self.record_at)
        return PROBE_CONFIG.stamp({"config": data})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ProbeConfig":
        """Inverse of :meth:`to_json` (unknown keys are an error, missing keys take defaults)."""
        from plan_probe.probes._formats import PROBE_CONFIG

        if isinstance(data, dict) and data.get("kind") == "probe_config" and "format" not in data:  # schema 1
            data = {**data, "format": PROBE_CONFIG.name, "schema_version": 1}
        data = PROBE_CONFIG.read(data, "a probe config JSON")
        if not isinstance(data.get("config"), dict):
            raise ValueError(
                "a probe config JSON must have a 'config' object, "
                f"but got keys {sorted(data)}; write it with ProbeConfig.to_json()."
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data["config"]) - known)
        if unknown:
            raise ValueError(f"probe config keys must be known settings, but got unknown {unknown}; remove them.")
        return cls(**data["config"])
