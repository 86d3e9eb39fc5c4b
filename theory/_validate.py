"""Argument checks shared by ``theory``: one clear ``ValueError`` naming the rule, the value and the fix."""

from __future__ import annotations

import numpy as np

__all__ = ["as_float_array", "check_positive", "check_depth_range", "check_nonnegative"]


def as_float_array(name: str, value) -> np.ndarray:
    """Convert to a float array, rejecting empty, NaN and infinite inputs."""
    arr = np.asarray(value, dtype=float)
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, but got an empty array; pass at least one value.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, but got {name}={_show(arr)}; remove NaN/inf values.")
    return arr


def check_positive(name: str, value) -> np.ndarray:
    arr = as_float_array(name, value)
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be positive, but got {name}={_show(arr[arr <= 0])}; pass a value > 0.")
    return arr


def check_nonnegative(name: str, value) -> np.ndarray:
    arr = as_float_array(name, value)
    if np.any(arr < 0):
        raise ValueError(f"{name} must be non-negative, but got {name}={_show(arr[arr < 0])}; pass a value >= 0.")
    return arr


def check_depth_range(c_min: float, c_max: float) -> tuple[float, float]:
    c_min_f = float(check_positive("c_min", c_min))
    c_max_f = float(check_positive("c_max", c_max))
    if c_min_f > c_max_f:
        raise ValueError(
            f"c_min must not exceed c_max, but got c_min={c_min_f:g} > c_max={c_max_f:g}; swap them or widen the range."
        )
    return c_min_f, c_max_f


def _show(arr: np.ndarray) -> str:
    flat = np.ravel(arr)
    if flat.size == 1:
        return f"{flat[0]:g}"
    head = ", ".join(f"{v:g}" for v in flat[:3])
    return f"[{head}{', ...' if flat.size > 3 else ''}]"
