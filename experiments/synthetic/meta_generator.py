"""A synthetic meta-dataset for the shared predictor: runs x probe depths with a known truth.

Each run (a candidate fine-tuning job) has static dataset features and hyperparameters that set its
expected final score through a nonlinear function, a run-specific latent deviation ``delta`` that no
static feature explains, and label noise. Dynamic features are noisy views of ``delta`` (plus some
static information) whose noise shrinks as the probe gets deeper, so the signal-to-noise ratio grows
with depth, as the risk decomposition (docs/theory.md §1) assumes: L(c) = L_int + K c^(-alpha) with
L_int = label noise variance.

Four writers: :func:`make_meta_dataset` (prefixed columns ``static_*``, ``dyn_*``, ``hp_*``, id
``run_id``, ``depth``, label ``score`` in percentage points), :func:`make_tuneahead_layout`
(TuneAhead's released CSV layout: its 33 unprefixed feature names, id ``dataset_name``, label
``overall_accuracy`` in [0, 1], one row per run at the 100-step probe, its own simulation),
:func:`make_decay_meta_dataset` (``--kind decay``: tasks with several runs each, whose probes reveal
the final score at task-specific speeds that static features predict; the test bed of
``plan-probe benchmark``) and :func:`make_powerlaw_meta_dataset` (``--kind powerlaw``: a second
such generator in another layout).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEPTHS", "make_meta_dataset", "make_tuneahead_layout", "make_decay_meta_dataset", "make_powerlaw_meta_dataset",
           "TUNEAHEAD_STATIC", "TUNEAHEAD_DYNAMIC", "TUNEAHEAD_HP"]

DEPTHS = (5, 10, 20, 50, 100, 200)

_N_STATIC = 8
_N_DYN = 6

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


#: The 33 feature columns of TuneAhead's released meta-dataset, by group (its feature pipeline).
TUNEAHEAD_STATIC = (
    "dataset_num_items", "dataset_total_chars", "approximate_duplicates", "avg_input_length", "avg_output_length",
    "base_model_perplexity", "base_perplexity_std", "embedding_outlier_ratio", "input_length_std", "input_ttr",
    "io_length_ratio", "io_similarity", "output_length_std", "output_ngram_repetition", "output_ttr",
    "reference_perplexity", "reference_perplexity_std", "semantic_consistency", "semantic_diversity",
    "special_char_ratio", "vocab_complexity",
)
TUNEAHEAD_DYNAMIC = (
    "avg_activation_sparsity", "avg_grad_norm", "avg_grad_sparsity", "avg_param_change", "catastrophic_forgetting",
    "gradient_consistency", "initial_loss", "landscape_flatness", "loss_decay_rate", "loss_stability",
)
TUNEAHEAD_HP = ("learning_rate", "batch_size")
_LRS = np.array([1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 3e-4, 5e-4])
_BATCHES = np.array([4, 8, 16, 32])


def _softplus(x):
    return np.logaddexp(0.0, x)


def make_tuneahead_layout(n_runs: int = 450, *, seed: int = 0, runs_per_dataset: int = 3, noise_sd: float = 0.5,
                          delta_sd: float = 0.7, probe_reveal: float = 0.6):
    """A meta-dataset in TuneAhead's released CSV layout: MMLU-accuracy-like labels of LoRA runs.

    One row per run: ``dataset_name`` (the id; ``runs_per_dataset`` runs with different
    hyperparameters share a dataset and its static features), ``overall_accuracy`` in [0, 1] and
    TuneAhead's 33 unprefixed features (:data:`TUNEAHEAD_STATIC`, :data:`TUNEAHEAD_DYNAMIC`,
    :data:`TUNEAHEAD_HP`), the dynamic ones from a 100-step probe.

    The accuracy (percentage points before /100) mixes structures a predictor must handle:

    * additive linear effects of latent data quality q, domain match m, log size, duplicate share,
      output length and semantic diversity, seen through 21 correlated, noisy, partly redundant
      static descriptors (some pure nuisance);
    * a non-linear hyperparameter effect: forgetting 2.0·softplus((log η − log 2e-4)/0.45) with
      η = lr·sqrt(16/batch), larger when the data match the benchmark less (an interaction), and
      an undertraining penalty for tiny learning rates on high-quality data;
    * a run-specific deviation (sd ``delta_sd`` pp) that no static feature explains and the probe
      reveals partly (``probe_reveal`` of its variance, through catastrophic_forgetting and the
      loss features), plus evaluation noise (sd ``noise_sd`` pp).

    The probe features are noisy, nearly linear read-outs of the forgetting and of the deviation,
    so a linear model on the probe recovers much of the non-linear hyperparameter effect.
    """
    import pandas as pd

    if n_runs < 2 or runs_per_dataset < 1:
        raise ValueError(f"n_runs must be at least 2 and runs_per_dataset at least 1, but got {n_runs=}, "
                         f"{runs_per_dataset=}; simulate more runs.")
    rng = np.random.default_rng(seed)
    n_sets = -(-n_runs // runs_per_dataset)
    q, m = rng.standard_normal(n_sets), rng.standard_normal(n_sets)
    log_n = rng.uniform(np.log(500), np.log(50_000), n_sets)
    dup = rng.beta(1.2, 8.0, n_sets)
    in_len = np.exp(rng.normal(4.8, 0.5, n_sets) + 0.15 * m)
    out_len = np.exp(rng.normal(5.4, 0.6, n_sets) + 0.2 * q)
    ref_ppl = np.exp(2.3 - 0.25 * m + 0.1 * rng.standard_normal(n_sets))

    def noisy(x, sd):
        return x + sd * rng.standard_normal(n_sets)

    static = {
        "dataset_num_items": np.round(np.exp(log_n)),
        "dataset_total_chars": np.round(np.exp(log_n) * (in_len + out_len) * np.exp(noisy(0, 0.05))),
        "approximate_duplicates": dup,
        "avg_input_length": in_len,
        "avg_output_length": out_len,
        "base_model_perplexity": ref_ppl * np.exp(noisy(0.05, 0.08)),
        "base_perplexity_std": np.abs(noisy(0.4 * ref_ppl, 0.6)),
        "embedding_outlier_ratio": np.clip(noisy(0.02 * np.exp(-0.5 * q), 0.005), 0, None),
        "input_length_std": in_len * np.exp(noisy(-0.5, 0.2)),
        "input_ttr": np.clip(noisy(0.45 + 0.03 * q, 0.03), 0.05, 0.95),
        "io_length_ratio": out_len / in_len,
        "io_similarity": np.clip(noisy(0.35 + 0.06 * m, 0.05), 0, 1),
        "output_length_std": out_len * np.exp(noisy(-0.4, 0.2)),
        "output_ngram_repetition": 0.3 / (1 + np.exp(1.5 + q - 4 * dup + 0.3 * rng.standard_normal(n_sets))),
        "output_ttr": np.clip(noisy(0.4 + 0.04 * q - 0.2 * dup, 0.03), 0.05, 0.95),
        "reference_perplexity": ref_ppl,
        "reference_perplexity_std": np.abs(noisy(0.3 * ref_ppl, 0.5)),
        "semantic_consistency": np.clip(noisy(0.6 + 0.05 * q, 0.04), 0, 1),
        "semantic_diversity": np.clip(noisy(0.5 + 0.05 * q - 0.3 * dup, 0.04), 0, 1),
        "special_char_ratio": np.clip(noisy(0.03, 0.01), 0, None),  # nuisance
        "vocab_complexity": noisy(6.0 + 0.4 * m, 0.3),
    }
    ds = np.repeat(np.arange(n_sets), runs_per_dataset)[:n_runs]
    lr = rng.choice(_LRS, n_runs)
    batch = rng.choice(_BATCHES, n_runs).astype(float)
    eta = lr * np.sqrt(16.0 / batch)
    forget = 2.0 * _softplus((np.log(eta) - np.log(2e-4)) / 0.45) * (1.0 - 0.25 * m[ds])
    under = 0.6 * (1.0 + 0.5 * q[ds]) * _softplus((np.log(3e-5) - np.log(lr)) / 0.5)
    delta = delta_sd * rng.standard_normal(n_runs)
    # additive effects of several independent facets, each visible in one or two descriptors
    z_len = (np.log(out_len) - 5.4) / 0.6
    z_div = (static["semantic_diversity"] - 0.5) / 0.05
    quality = (1.3 * q + 0.9 * m + 0.45 * (log_n - np.log(5000)) - 6.0 * dup + 0.7 * z_len + 0.5 * z_div)[ds]
    acc = 46.0 + quality - forget - under + delta + noise_sd * rng.standard_normal(n_runs)

    seen = np.sqrt(probe_reveal) * delta + np.sqrt(1 - probe_reveal) * delta_sd * rng.standard_normal(n_runs)

    def run_noise(sd):
        return sd * rng.standard_normal(n_runs)

    dynamic = {
        "initial_loss": 1.2 + 0.35 * np.log(ref_ppl[ds]) + run_noise(0.03),
        "loss_decay_rate": -0.02 * (eta / 1e-4) ** 0.5 * (1 + 0.1 * q[ds]) + 0.003 * seen + run_noise(0.002),
        "loss_stability": 0.05 + 0.04 * np.log1p(eta / 5e-5) + run_noise(0.01),
        "avg_grad_norm": 1.0 + 1.5 * dup[ds] + 0.1 * np.log(batch) + run_noise(0.1),
        "gradient_consistency": 0.5 + 0.05 * q[ds] - 0.03 * np.log(eta / 1e-4) + run_noise(0.03),
        "avg_grad_sparsity": 0.3 + run_noise(0.02),  # nuisance
        "avg_param_change": eta * 1e3 * np.exp(run_noise(0.1)),
        "landscape_flatness": 0.01 + 0.004 * forget + run_noise(0.003),
        "catastrophic_forgetting": 0.05 * forget - 0.03 * seen + run_noise(0.02),
        "avg_activation_sparsity": 0.5 + run_noise(0.02),  # nuisance
    }
    frame = pd.DataFrame({"dataset_name": [f"ds{i:04d}" for i in ds], "overall_accuracy": np.clip(acc / 100, 0, 1)})
    for name in TUNEAHEAD_STATIC:
        frame[name] = static[name][ds]
    for name in TUNEAHEAD_DYNAMIC:
        frame[name] = dynamic[name]
    frame["learning_rate"] = lr
    frame["batch_size"] = batch
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
                             "[0, 1], id dataset_name); tuneahead: TuneAhead's released layout (one row per run, 33 "
                             "unprefixed features, MMLU-like accuracy, depth 100 only).")
    parser.add_argument("--driver", choices=["alpha", "k"], default="alpha",
                        help="Kind powerlaw: what static_f3 sets (the revelation rate or the revealable amount).")
    parser.add_argument("--runs", type=int, default=None, help="Runs (kinds predictor and tuneahead; default 400, 450 with tuneahead).")
    parser.add_argument("--tasks", type=int, default=300, help="Tasks (kinds decay and powerlaw).")
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
        runs = args.runs if args.runs is not None else (450 if kind == "tuneahead" else 400)
        frame = (make_tuneahead_layout if kind == "tuneahead" else make_meta_dataset)(runs, seed=args.seed)
    write_table(frame, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
