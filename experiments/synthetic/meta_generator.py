"""A synthetic meta-dataset for the shared predictor: runs x probe depths with a known truth.

Each run (a candidate fine-tuning job) has static dataset features and hyperparameters that set its
expected final score through a nonlinear function, a run-specific latent deviation ``delta`` that no
static feature explains, and label noise. Dynamic features are noisy views of ``delta`` (plus some
static information) whose noise shrinks as the probe gets deeper, so the signal-to-noise ratio grows
with depth, as the risk decomposition (docs/theory.md §1) assumes: L(c) = L_int + K c^(-alpha) with
L_int = label noise variance.

Three writers: :func:`make_meta_dataset` (prefixed columns ``static_*``, ``dyn_*``, ``hp_*``, id
``run_id``, ``depth``, label ``score`` in percentage points), :func:`make_tuneahead_layout`
(TuneAhead's released CSV layout: unprefixed names, id ``dataset_name``, label
``overall_accuracy`` in [0, 1], one row per dataset at the 100-step probe), and
:func:`make_decay_meta_dataset` (``--kind decay``: tasks with several runs each, whose probes reveal
the final score at task-specific speeds that static features predict; the test bed of
``plan-probe benchmark``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEPTHS", "make_meta_dataset", "make_tuneahead_layout", "make_decay_meta_dataset", "make_powerlaw_meta_dataset",
           "TUNEAHEAD_RENAME"]

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


def make_decay_meta_dataset(
    n_tasks: int = 300,
    *,
    runs_per_task: int = 2,
    depths=DEPTHS,
    seed: int = 0,
    reducible_sd: float = 5.0,
    noise_sd: float = 1.0,
    reveal_mid: float = 20.0,
    reveal_spread: float = 1.5,
    shape: float = 1.5,
    size_spread: float = 0.6,
    rate_feature: int = 6,
    size_feature: int = 7,
):
    r"""Tasks whose probes reveal the final score at different, statically predictable speeds.

    Task i has static features :math:`s_i` and hyperparameters that set its expected score
    :math:`\mu_i` (:func:`_expected_score`), a reducible spread :math:`S_i` = ``reducible_sd``²
    × exp(``size_spread`` × s_size) and a half-reveal depth :math:`h_i` = ``reveal_mid`` × exp(``reveal_spread`` ×
    s_rate). Each of its runs has a deviation :math:`\delta \sim N(0, S_i)` that no static feature
    explains and a final score :math:`R = \mu_i + \delta + e`, :math:`e \sim N(0,` ``noise_sd``²).
    A probe of c steps leaves :math:`v_i(c) = S_i (1 + c/h_i)^{-\text{shape}}` of the spread
    unresolved: its information is nested (independent Gaussian increments of precision
    :math:`1/v_i(c) - 1/S_i`, so deeper probes contain shallower ones, a martingale as in
    docs/theory.md §1) and ``dyn_0`` is the posterior mean :math:`E[\delta \mid I_c]`; ``dyn_1`` a
    noisy nonlinear view of it; ``dyn_2`` the initial loss (static information only); ``dyn_3..5``
    noise. So the Bayes risk is :math:`L_i(c) = \text{noise\_sd}^2 + v_i(c)`: tasks with small
    :math:`h_i` are revealed by a few steps, tasks with large :math:`h_i` need deep probes, and
    ``static_<rate_feature>`` says which (the decay is not a power law, so the risk model only
    approximates it).

    Returns
    -------
    pandas.DataFrame
        One row per run x depth: ``task_id``, ``run_id``, ``depth``, ``score`` (pp), ``static_0..7``,
        ``hp_learning_rate``, ``hp_batch_size``, ``dyn_0..5``.
    """
    import pandas as pd

    if n_tasks < 2 or runs_per_task < 1:
        raise ValueError(f"n_tasks must be >= 2 and runs_per_task >= 1, but got {n_tasks=}, {runs_per_task=}; simulate more.")
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n_tasks, _N_STATIC))
    log_lr = rng.uniform(np.log(5e-5), np.log(1e-3), size=n_tasks)
    batch = rng.choice([8, 16, 32], size=n_tasks).astype(float)
    mu = _expected_score(s, log_lr, batch)
    spread = reducible_sd**2 * np.exp(size_spread * s[:, size_feature])
    half = reveal_mid * np.exp(reveal_spread * s[:, rate_feature])
    depths = np.asarray(sorted(depths), dtype=float)

    task = np.repeat(np.arange(n_tasks), runs_per_task)
    n_runs = task.size
    delta = np.sqrt(spread[task]) * rng.standard_normal(n_runs)
    score = mu[task] + delta + noise_sd * rng.standard_normal(n_runs)
    # nested information: precision P(c) = 1/v(c) - 1/S grows with c; increments are independent
    v = spread[task, None] * (1.0 + depths[None, :] / half[task, None]) ** (-shape)
    precision = np.maximum(1.0 / v - 1.0 / spread[task, None], 1e-12)
    inc = np.diff(np.concatenate([np.zeros((n_runs, 1)), precision], axis=1), axis=1)
    obs = delta[:, None] + rng.standard_normal((n_runs, depths.size)) / np.sqrt(np.maximum(inc, 1e-12))
    weighted = np.cumsum(inc * obs, axis=1)  # precision-weighted sum of the increments seen so far
    post_mean = weighted / (precision + 1.0 / spread[task, None])
    initial_loss = 2.0 + 0.5 * s[task, 4] + 0.3 * rng.standard_normal(n_runs)
    rows = []
    for j, c in enumerate(depths):
        frame = pd.DataFrame({"task_id": [f"task{t:04d}" for t in task], "run_id": [f"task{t:04d}-r{r}" for t, r in zip(task, np.tile(np.arange(runs_per_task), n_tasks))],
                              "depth": int(c), "score": score})
        for k in range(_N_STATIC):
            frame[f"static_{k}"] = s[task, k]
        frame["hp_learning_rate"] = np.exp(log_lr[task])
        frame["hp_batch_size"] = batch[task]
        frame["dyn_0"] = post_mean[:, j]
        frame["dyn_1"] = np.tanh(post_mean[:, j] / reducible_sd) + 0.1 * rng.standard_normal(n_runs)
        frame["dyn_2"] = initial_loss
        for k in range(3, _N_DYN):
            frame[f"dyn_{k}"] = rng.standard_normal(n_runs)
        rows.append(frame)
    out = pd.concat(rows, ignore_index=True)
    return out.sort_values(["task_id", "run_id", "depth"], kind="stable").reset_index(drop=True)


def make_powerlaw_meta_dataset(
    n_tasks: int = 300,
    *,
    runs_per_task: int = 1,
    depths=(4, 8, 16, 32, 64, 128),
    seed: int = 0,
    driver: str = "alpha",
    n_static: int = 10,
):
    r"""A second decay generator, unlike :func:`make_decay_meta_dataset` in form and layout.

    The unresolved variance after c steps is a pure power law :math:`v_i(c) = K_i c^{-\alpha_i}` (capped
    at the total spread), the floor is 1, the label is an accuracy in [0, 1] (score units / 100), the
    id column is ``dataset_name`` and, with one run per task, there is no task column. ``driver``
    says what the static feature ``static_f3`` sets: the revelation rate (``"alpha"``:
    :math:`\alpha_i = 0.5 e^{0.6 s}`, K = 30) or the amount the probe can reveal (``"k"``:
    :math:`K_i = 30 e^{s}`, α = 0.6). The probe's view is a monotone loss-like transform of the
    posterior mean of the run's deviation (``dyn_signal``) plus a noise feature.
    """
    import pandas as pd

    if driver not in ("alpha", "k"):
        raise ValueError(f"driver must be 'alpha' or 'k', but got {driver!r}; pick one of those.")
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n_tasks, n_static))
    mu = 60.0 + 5.0 * np.tanh(s[:, 1]) - 1.5 * s[:, 2] ** 2
    if driver == "alpha":
        alpha, k = 0.5 * np.exp(0.6 * s[:, 3]), np.full(n_tasks, 30.0)
    else:
        alpha, k = np.full(n_tasks, 0.6), 30.0 * np.exp(s[:, 3])
    lr = 10 ** rng.uniform(-5, -3, n_tasks)
    d = np.asarray(sorted(depths), dtype=float)
    task = np.repeat(np.arange(n_tasks), runs_per_task)
    n = task.size
    total = k[task] + 5.0
    v = np.minimum(k[task, None] * d[None, :] ** -alpha[task, None], 0.999 * total[:, None])
    delta = np.sqrt(total) * rng.standard_normal(n)
    score = (mu[task] + delta + rng.standard_normal(n)) / 100.0
    precision = 1.0 / v - 1.0 / total[:, None]
    inc = np.diff(np.concatenate([np.zeros((n, 1)), precision], axis=1), axis=1)
    obs = delta[:, None] + rng.standard_normal((n, d.size)) / np.sqrt(np.maximum(inc, 1e-12))
    post = np.cumsum(inc * obs, axis=1) / (precision + 1.0 / total[:, None])
    names = [f"t{t:04d}-r{r}" for t, r in zip(task, np.tile(np.arange(runs_per_task), n_tasks))]
    rows = []
    for j, c in enumerate(d):
        frame = pd.DataFrame({"dataset_name": names, "depth": int(c), "acc": score})
        if runs_per_task > 1:
            frame["task_id"] = [f"t{t:04d}" for t in task]
        for q in range(n_static):
            frame[f"static_f{q}"] = s[task, q]
        frame["hp_lr"] = lr[task]
        frame["dyn_signal"] = np.log1p(np.exp(post[:, j] / 3.0))
        frame["dyn_noise"] = rng.standard_normal(n)
        rows.append(frame)
    return pd.concat(rows, ignore_index=True).sort_values(["dataset_name", "depth"], kind="stable").reset_index(drop=True)


def _main(argv=None) -> int:
    """``python -m plan_probe.experiments.synthetic.meta_generator OUT [--kind K] [--runs N] [--tasks N] [--seed S]``."""
    import argparse

    from plan_probe.probes._io import write_table

    parser = argparse.ArgumentParser(description="Write a synthetic meta-dataset (CSV or Parquet).")
    parser.add_argument("out")
    parser.add_argument("--kind", choices=["predictor", "decay", "powerlaw", "tuneahead"], default="predictor",
                        help="predictor: runs x depths (default); decay: tasks with task-specific revelation speed "
                             "(for plan-probe benchmark); powerlaw: a second such generator (pure power laws, label in "
                             "[0, 1], id dataset_name); tuneahead: TuneAhead's released layout (depth 100 only).")
    parser.add_argument("--driver", choices=["alpha", "k"], default="alpha",
                        help="Kind powerlaw: what static_f3 sets (the revelation rate or the revealable amount).")
    parser.add_argument("--runs", type=int, default=400, help="Runs (kinds predictor and tuneahead).")
    parser.add_argument("--tasks", type=int, default=300, help="Tasks (kind decay).")
    parser.add_argument("--runs-per-task", type=int, default=2, help="Runs per task (kinds decay and powerlaw).")
    parser.add_argument("--reveal-spread", type=float, default=1.5,
                        help="Kind decay: how strongly static_6 sets the revelation speed.")
    parser.add_argument("--size-spread", type=float, default=0.6,
                        help="Kind decay: how strongly static_7 sets the reducible spread (both 0: every task alike, a null case).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tuneahead", action="store_true", help="Same as --kind tuneahead.")
    args = parser.parse_args(argv)
    kind = "tuneahead" if args.tuneahead else args.kind
    if kind == "powerlaw":
        frame = make_powerlaw_meta_dataset(args.tasks, runs_per_task=args.runs_per_task, seed=args.seed, driver=args.driver)
    elif kind == "decay":
        frame = make_decay_meta_dataset(args.tasks, runs_per_task=args.runs_per_task, seed=args.seed, reveal_spread=args.reveal_spread,
                                        size_spread=args.size_spread)
    else:
        frame = (make_tuneahead_layout if kind == "tuneahead" else make_meta_dataset)(args.runs, seed=args.seed)
    write_table(frame, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
