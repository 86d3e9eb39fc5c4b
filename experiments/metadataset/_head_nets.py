"""What the encoder and heads tiers share: seeds from a recipe, the deferred JAX import, head weights.

Both tiers train linear or one-hidden-layer heads on frozen sentence embeddings; keeping these in one
place keeps their seeds and initialisations identical by construction.
"""

from __future__ import annotations

import hashlib

import numpy as np

from plan_probe.experiments.metadataset._spec import canonical_json

__all__ = ["seed_int", "jax_modules", "init_head_params"]


def seed_int(*parts) -> int:
    """A 32-bit seed from any JSON-able parts (the first 8 hex digits of their canonical SHA-256)."""
    return int(hashlib.sha256(canonical_json(list(parts)).encode()).hexdigest()[:8], 16)


def jax_modules():
    """``(jax, jax.numpy)``, imported on first use so the CLI starts without JAX."""
    import jax
    import jax.numpy as jnp

    return jax, jnp


def init_head_params(key, dim: int, hidden: int, n_out: int) -> dict:
    """A linear head (``hidden == 0``: LeCun normal) or a ReLU MLP (He normal, then LeCun normal); zero biases."""
    jax, jnp = jax_modules()
    k1, k2 = jax.random.split(key)
    if hidden == 0:
        return {"w": jax.random.normal(k1, (dim, n_out)) * np.sqrt(1.0 / dim), "b": jnp.zeros(n_out)}
    return {
        "w1": jax.random.normal(k1, (dim, hidden)) * np.sqrt(2.0 / dim),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, n_out)) * np.sqrt(1.0 / hidden),
        "b2": jnp.zeros(n_out),
    }
