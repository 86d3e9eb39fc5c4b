"""The 10 dynamic features, computed from per-step records; the recorder shared by the probe and the callback.

Per optimiser step t (1-based) the recorder keeps four numbers, computed on the device from the
flattened LoRA gradient g_t (the step's full, accumulated gradient, *before* clipping):

* L_t — mean per-token cross-entropy over the step's response tokens (all micro-batches pooled);
* ‖g_t‖₂;
* cos_t = g_t·g_{t−1} / (‖g_t‖ ‖g_{t−1}‖) for t ≥ 2 (0 when a norm is 0);
* s_t = share of entries with |g_{t,i}| ≤ tol · max_j |g_{t,j}|.

They stay on the device (no host sync per step); :func:`dynamic_features` turns steps 1..c of
them, plus the three depth-c measurements, into one feature row.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["DYN_COLUMNS", "READOUT_COLUMNS", "dynamic_features", "StepRecorder"]

DYN_COLUMNS = (
    "dyn_initial_loss",
    "dyn_loss_decay",
    "dyn_loss_variance",
    "dyn_grad_norm_mean",
    "dyn_grad_norm_var",
    "dyn_grad_consistency",
    "dyn_grad_sparsity",
    "dyn_param_change_norm",
    "dyn_flatness",
    "dyn_forgetting",
)
#: the cooled-down readout (``probes._probe.readout_loss``): only in the rows of a probe given reference examples
READOUT_COLUMNS = ("dyn_ref_loss", "dyn_ref_choice")


def dynamic_features(
    losses: Sequence[float],
    grad_norms: Sequence[float],
    grad_cosines: Sequence[float],
    sparsities: Sequence[float],
    *,
    param_change_norm: float,
    flatness: float,
    forgetting: float,
) -> dict[str, float]:
    """The 10 ``dyn_*`` features of steps 1..c (c = ``len(losses)`` >= 2).

    ``grad_cosines[t]`` is cos(g_{t+1}, g_t) in 0-based indexing; entry 0 (step 1 has no
    predecessor) is ignored. Formulas (t = 1..c):

    * ``dyn_initial_loss`` = L_1
    * ``dyn_loss_decay`` = OLS slope of log L_t on t
    * ``dyn_loss_variance`` = sample variance (ddof 1) of L_t
    * ``dyn_grad_norm_mean`` / ``dyn_grad_norm_var`` = mean / sample variance of ‖g_t‖
    * ``dyn_grad_consistency`` = mean of cos_t over t = 2..c
    * ``dyn_grad_sparsity`` = mean of s_t
    * ``dyn_param_change_norm``, ``dyn_flatness``, ``dyn_forgetting``: passed through.
    """
    loss = np.asarray(losses, dtype=float)
    norms = np.asarray(grad_norms, dtype=float)
    c = loss.size
    if c < 2 or norms.size != c or len(grad_cosines) != c or len(sparsities) != c:
        raise ValueError(
            f"dynamic features need >= 2 steps with one value per step, but got {c} losses, {norms.size} norms, "
            f"{len(grad_cosines)} cosines, {len(sparsities)} sparsities; record at depth >= 2."
        )
    t = np.arange(1, c + 1, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_loss = np.log(loss)
    tc = t - t.mean()
    slope = float(np.dot(tc, log_loss - log_loss.mean()) / np.dot(tc, tc))
    return {
        "dyn_initial_loss": float(loss[0]),
        "dyn_loss_decay": slope,
        "dyn_loss_variance": float(np.var(loss, ddof=1)),
        "dyn_grad_norm_mean": float(norms.mean()),
        "dyn_grad_norm_var": float(np.var(norms, ddof=1)),
        "dyn_grad_consistency": float(np.mean(np.asarray(grad_cosines, dtype=float)[1:])),
        "dyn_grad_sparsity": float(np.mean(np.asarray(sparsities, dtype=float))),
        "dyn_param_change_norm": float(param_change_norm),
        "dyn_flatness": float(flatness),
        "dyn_forgetting": float(forgetting),
    }


class StepRecorder:
    """Keeps per-step loss / gradient statistics on the device; syncs only when asked.

    Parameters
    ----------
    n_params : int
        Length of the flattened LoRA gradient.
    max_steps : int
        Capacity (steps).
    sparsity_tol : float
        Relative zero threshold of the sparsity statistic.
    device : torch.device
    """

    def __init__(self, n_params: int, max_steps: int, sparsity_tol: float, device) -> None:
        import torch

        self.sparsity_tol = float(sparsity_tol)
        self._prev = torch.zeros(n_params, dtype=torch.float32, device=device)
        self._prev_norm = torch.zeros((), dtype=torch.float32, device=device)
        self._stats = torch.zeros((max_steps, 4), dtype=torch.float32, device=device)
        self.n_steps = 0

    def record(self, loss, flat_grad) -> None:
        """Record step ``n_steps + 1`` from its loss (0-d tensor) and flat pre-clipping gradient."""
        import torch

        g = flat_grad.detach().float()
        norm = torch.linalg.vector_norm(g)
        denom = norm * self._prev_norm
        cos = torch.where(denom > 0, torch.dot(g, self._prev) / denom.clamp_min(1e-30), torch.zeros_like(denom))
        absg = g.abs()
        sparsity = (absg <= self.sparsity_tol * absg.max()).float().mean()
        self._stats[self.n_steps] = torch.stack([loss.detach().float().reshape(()), norm, cos, sparsity])
        self._prev.copy_(g)
        self._prev_norm = norm
        self.last_norm = norm
        self.n_steps += 1

    def host(self) -> np.ndarray:
        """Steps recorded so far as a float64 array of shape (n_steps, 4): loss, norm, cos, sparsity."""
        return self._stats[: self.n_steps].double().cpu().numpy()


def first_bad_step(stats: np.ndarray) -> int | None:
    """1-based index of the first step whose loss or gradient norm is NaN/inf, or None."""
    bad = ~np.isfinite(stats[:, 0]) | ~np.isfinite(stats[:, 1])
    return int(np.argmax(bad)) + 1 if bad.any() else None


def nan_features() -> dict[str, float]:
    return {name: math.nan for name in DYN_COLUMNS}
