"""A synthetic meta-dataset for the shared predictor: runs x probe depths with a known truth.

Each run (a candidate fine-tuning job) has static dataset features and hyperparameters that set its
expected final score through a nonlinear function, a run-specific latent deviation ``delta`` that no
static feature explains, and label noise. Dynamic features are noisy views of ``delta`` (plus some
static information) whose noise shrinks as the probe gets deeper, so the signal-to-noise ratio grows
with depth, as the risk decomposition (docs/theory.md §1) assumes: L(c) = L_int + K c^(-alpha) with
L_int = label noise variance.

Two writers: :func:`make_meta_dataset` (prefixed columns ``static_*``, ``dyn_*``, ``hp_*``, id
``run_id``, ``depth``, label ``score`` in percentage points) and :func:`make_tuneahead_layout`
(TuneAhead's released CSV layout: unprefixed names, id ``dataset_name``, label
``overall_accuracy`` in [0, 1], one row per dataset at the 100-step probe).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEPTHS", "make_meta_dataset", "make_tuneahead_layout", "TUNEAHEAD_RENAME"]

DEPTHS = (5, 10, 20, 50, 100, 200)

_N_STATIC = 8
_N_DYN = 6

# Prefixed synthetic column -> a TuneAhead released column name of the same group.
TUNEAHEAD_RENAME = {
    "static_0": "avg_input_length",
    "static_1": "output_ttr",
    "static_2": "approximate_duplicates",
    "static_3": "io_similarity",
    "static_4": "reference_perplexity",
    "static_5": "semantic_diversity",
    "static_6": "special_char_ratio",
    "static_7": "dataset_num_items",
    "dyn_0": "loss_decay_rate",
    "dyn_1": "gradient_consistency",
    "dyn_2": "avg_param_change",
    "dyn_3": "initial_loss",
    "dyn_4": "avg_grad_norm",
    "dyn_5": "landscape_flatness",
    "hp_learning_rate": "learning_rate",
    "hp_batch_size": "batch_size",
}


def _expected_score(s: np.ndarray, log_lr: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Nonlinear expected score (pp) from static features and hyperparameters."""
    # The best learning rate depends on the data (static_4), so hyperparameters interact with data.
    lr_opt = -8.5 + 0.4 * s[:, 4]
    return (
        55.0
        + 6.0 * np.tanh(s[:, 0])
        - 1.5 * s[:, 1] ** 2
        + 2.0 * s[:, 2] * s[:, 3]
        + 3.0 * (s[:, 5] > 0.3)
        - 3.0 * (log_lr - lr_opt) ** 2
        - 1.0 * np.log2(batch / 16.0) ** 2
    )


def make_meta_dataset(
    n_runs: int = 400,
    *,
    depths=DEPTHS,
    seed: int = 0,
    delta_sd: float = 5.0,
    noise_sd: float = 1.0,
    probe_noise: float = 2.0,
    alpha: float = 0.7,
):
    """Simulate a meta-dataset with one row per run x depth.

    Parameters
    ----------
    n_runs : int
        Number of runs (candidates).
    depths : sequence of int
        Probe depths recorded for every run.
    seed : int
        Seed of the numpy Generator; the same seed gives the same table.
    delta_sd : float
        Standard deviation (pp) of the run-specific deviation that only the probe reveals.
    noise_sd : float
        Standard deviation (pp) of the label noise (the intrinsic floor sqrt(L_int)).
    probe_noise : float
        Relative noise of the dynamic views of ``delta`` at depth 1; it falls as ``c**(-alpha/2)``.
    alpha : float
        Information-revelation rate of the dynamic features.

    Returns
    -------
    pandas.DataFrame
        Columns ``run_id, depth, score, static_0..7, hp_learning_rate, hp_batch_size, hp_lora_rank,
        dyn_0..5``; ``score`` is in percentage points.
    """
    import pandas as pd

    if n_runs < 2:
        raise ValueError(f"n_runs must be at least 2, but got {n_runs=}; simulate more runs.")
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n_runs, _N_STATIC))
    log_lr = rng.uniform(np.log(5e-5), np.log(1e-3), size=n_runs)
    batch = rng.choice([8, 16, 32], size=n_runs).astype(float)
    rank = rng.choice([4, 8, 16], size=n_runs).astype(float)
    mu = _expected_score(s, log_lr, batch)
    delta = delta_sd * rng.standard_normal(n_runs)
    score = mu + delta + noise_sd * rng.standard_normal(n_runs)

    # Loadings of the dynamic features on delta (dyn_5 is pure noise) and on static information.
    load_delta = np.array([1.0, 0.8, -0.6, 0.0, 0.5, 0.0])
    depths = np.asarray(sorted(depths), dtype=float)
    # Probe noise is correlated across depths of one run (one trajectory), shrinking with depth.
    z = np.empty((n_runs, len(depths), _N_DYN))
    z[:, 0] = rng.standard_normal((n_runs, _N_DYN))
    for j in range(1, len(depths)):
        z[:, j] = 0.6 * z[:, j - 1] + 0.8 * rng.standard_normal((n_runs, _N_DYN))
    rows = []
    for j, c in enumerate(depths):
        sd = delta_sd * probe_noise * c ** (-alpha / 2.0)
        dyn = load_delta * delta[:, None] / delta_sd + sd / delta_sd * z[:, j]
        # Initial loss carries static information (reference perplexity) and no delta.
        dyn[:, 3] = 2.0 + 0.5 * s[:, 4] + 0.3 * z[:, j, 3]
        frame = pd.DataFrame({"run_id": [f"run{i:04d}" for i in range(n_runs)], "depth": int(c), "score": score})
        for k in range(_N_STATIC):
            frame[f"static_{k}"] = s[:, k]
        frame["hp_learning_rate"] = np.exp(log_lr)
        frame["hp_batch_size"] = batch
        frame["hp_lora_rank"] = rank
        for k in range(_N_DYN):
            frame[f"dyn_{k}"] = dyn[:, k]
        rows.append(frame)
    out = pd.concat(rows, ignore_index=True)
    return out.sort_values(["run_id", "depth"], kind="stable").reset_index(drop=True)


def make_tuneahead_layout(n_runs: int = 400, *, seed: int = 0, depth: int = 100, **kwargs):
    """The same simulation in TuneAhead's released CSV layout (one row per dataset, no prefixes).

    Returns a DataFrame with ``dataset_name``, ``overall_accuracy`` (score / 100, in [0, 1]) and the
    unprefixed TuneAhead feature names of :data:`TUNEAHEAD_RENAME`, at probe depth ``depth``.
    """
    frame = make_meta_dataset(n_runs, seed=seed, depths=(depth,), **kwargs)
    frame = frame.drop(columns=["depth", "hp_lora_rank"]).rename(columns=TUNEAHEAD_RENAME)
    frame = frame.rename(columns={"run_id": "dataset_name", "score": "overall_accuracy"})
    frame["overall_accuracy"] = np.clip(frame["overall_accuracy"] / 100.0, 0.0, 1.0)
    return frame


def _main(argv=None) -> int:
    """``python -m plan_probe.experiments.synthetic.meta_generator OUT [--runs N] [--seed S] [--tuneahead]``."""
    import argparse

    from plan_probe.probes._io import write_table

    parser = argparse.ArgumentParser(description="Write the synthetic meta-dataset (CSV or Parquet).")
    parser.add_argument("out")
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tuneahead", action="store_true", help="TuneAhead's released layout (depth 100 only).")
    args = parser.parse_args(argv)
    maker = make_tuneahead_layout if args.tuneahead else make_meta_dataset
    write_table(maker(args.runs, seed=args.seed), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
