"""Coverage of the risk model's posterior intervals on nested residual vectors (issue #14).

Synthetic truth: tasks with static features and true (L_int, K, alpha) from the population
regression of :mod:`plan_probe.experiments.synthetic.risk_generator`. For each run of a task the
residuals at the depths c_1 < ... < c_k are drawn as a martingale residual vector
(docs/theory.md §2): the deepest e(c_k) ~ N(0, L(c_k)) and independent increments
e(c_i) - e(c_{i+1}) ~ N(0, L(c_i) - L(c_{i+1})), so Cov(e(c_i), e(c_j)) = L(max(c_i, c_j)).

Per replicate dataset the risk model is fitted twice on the same residuals:

* ``nested``: rows keep ``run_id`` and the signed ``residual`` (the nested likelihood);
* ``independent``: the old treatment, k squared residuals as k independent dof-1 observations.

Each task's posterior (population regression updated with the task's own residuals, as ``plan``
does with pilot rows) gives a central interval of L(c) at the evaluation depths; coverage is the
share of (task, depth) pairs whose true L(c) lies inside, pooled over replicates, with a binomial
standard error and the spread across replicates.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["ResidualCoverageSettings", "nested_residual_table", "run_residual_coverage"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResidualCoverageSettings:
    """Settings of the experiment (validated). ``quick()`` gives the short variant."""

    n_tasks: int = 100
    runs_per_task: int = 1
    depths: tuple = (10, 20, 50, 100, 200)
    eval_depths: tuple = (10, 50, 200)
    replicates: int = 20
    level: float = 0.8
    coef: tuple = ((0.5, 0.0), (0.0, 0.6), (0.0, 0.25))
    intercept: tuple = (0.0, float(np.log(4.0)), float(np.log(0.5)))
    task_noise: tuple = (0.3, 0.3, 0.2)
    num_warmup: int = 400
    num_samples: int = 400
    num_chains: int = 2
    #: NUTS target acceptance: the increments' curved K-alpha ridge needs smaller steps than fork
    #: variances (one 100-task replicate: 19 divergences at 0.85, 18 at 0.9, 1 at 0.95).
    target_accept: float = 0.95
    n_draws: int = 400
    seed: int = 0

    def __post_init__(self):
        if self.n_tasks < 10 or self.replicates < 1 or self.runs_per_task < 1:
            raise ValueError(f"n_tasks >= 10, replicates >= 1 and runs_per_task >= 1 are needed, but got {self.n_tasks=}, "
                             f"{self.replicates=}, {self.runs_per_task=}; raise them.")
        if len(self.depths) < 2 or sorted(set(self.depths)) != list(self.depths) or min(self.depths) < 1:
            raise ValueError(f"depths must be >= 2 increasing positive integers, but got {self.depths=}; sort them.")
        if not 0 < self.level < 1:
            raise ValueError(f"level must be in (0, 1), but got {self.level=}; use e.g. 0.8.")

    @classmethod
    def quick(cls, seed: int = 0) -> "ResidualCoverageSettings":
        """3 replicates and a shorter chain (a few minutes on 2 cores)."""
        return cls(replicates=3, num_warmup=250, num_samples=250, seed=seed)


def nested_residual_table(truth, depths, runs_per_task: int, rng):
    """Signed nested residual vectors for every task of ``truth`` (one per run), as a risk-observation table.

    Columns: ``task_id, run_id, depth, residual, risk_obs (= residual**2), dof (= 1), static_*``.
    """
    import pandas as pd

    c = np.asarray(depths, dtype=float)
    l_true = truth["l_int"].to_numpy()[:, None] + truth["k"].to_numpy()[:, None] * c[None, :] ** -truth["alpha"].to_numpy()[:, None]
    n, k = l_true.shape
    var = np.concatenate([l_true[:, :-1] - l_true[:, 1:], l_true[:, -1:]], axis=1)  # increments, then the deepest level
    parts = rng.standard_normal((n, runs_per_task, k)) * np.sqrt(var)[:, None, :]
    e = np.cumsum(parts[:, :, ::-1], axis=2)[:, :, ::-1]  # e(c_i) = e(c_k) + sum of the increments below
    statics = [col for col in truth.columns if col.startswith("static_")]
    tid = np.repeat(truth["task_id"].to_numpy(), runs_per_task * k)
    run = np.array([f"{t}-r{r}" for t in truth["task_id"] for r in range(runs_per_task) for _ in range(k)])
    frame = pd.DataFrame({"task_id": tid, "run_id": run, "depth": np.tile(c.astype(int), n * runs_per_task),
                          "residual": e.ravel(), "risk_obs": e.ravel() ** 2, "dof": 1.0})
    for col in statics:
        frame[col] = np.repeat(truth[col].to_numpy(), runs_per_task * k)
    return frame


def _coverage(model, obs, truth, settings, seed):
    """Per (task, eval depth): whether the central ``level`` interval of the task's L(c) covers the truth."""
    post = model.posterior_task_draws(obs, n_draws=settings.n_draws, seed=seed)
    order = {t: i for i, t in enumerate(post["task_id"])}
    idx = np.array([order[t] for t in truth["task_id"]])
    q = [(1 - settings.level) / 2, (1 + settings.level) / 2]
    hits, widths = [], []
    for c in settings.eval_depths:
        draws = post["l_int"][idx] + post["k"][idx] * float(c) ** -post["alpha"][idx]
        lo, hi = np.quantile(draws, q, axis=1)
        true_l = truth["l_int"].to_numpy() + truth["k"].to_numpy() * float(c) ** -truth["alpha"].to_numpy()
        hits.append((lo <= true_l) & (true_l <= hi))
        widths.append(np.log(hi / lo))
    return np.stack(hits, axis=1), np.stack(widths, axis=1)


def _summary(hits: list, widths: list, fits: list, eval_depths) -> dict:
    all_hits = np.concatenate(hits)
    per_rep = np.array([h.mean() for h in hits])
    n = all_hits.size
    share = float(all_hits.mean())
    return {
        "coverage": share,
        "coverage_se_binomial": float(np.sqrt(share * (1 - share) / n)),
        "coverage_by_depth": {str(c): float(v) for c, v in zip(eval_depths, all_hits.mean(axis=0))},
        "coverage_replicates_min_max": [float(per_rep.min()), float(per_rep.max())],
        "coverage_replicates_sd": float(per_rep.std(ddof=1)) if per_rep.size > 1 else None,
        "median_log_width": float(np.median(np.concatenate(widths))),
        "fits_ok": int(sum(f["ok"] for f in fits)),
        "max_r_hat": float(max(f["max_r_hat"] for f in fits)),
        "min_ess": float(min(f["min_ess"] for f in fits)),
        "divergences": int(sum(f["divergences"] for f in fits)),
        "fit_seconds_mean": float(np.mean([f["fit_seconds"] for f in fits])),
    }


def run_residual_coverage(settings: ResidualCoverageSettings = ResidualCoverageSettings()) -> dict:
    """Run every replicate; return the results dict (``coverage_nested``, ``coverage_independent``, details)."""
    from plan_probe.experiments.synthetic.risk_generator import RiskGeneratorConfig, generate_tasks
    from plan_probe._risk_model import RiskFitSettings, RiskModel

    cfg = RiskGeneratorConfig(coef=settings.coef, intercept=settings.intercept, task_noise=settings.task_noise,
                              depths=tuple(settings.depths))
    fit = RiskFitSettings(method="nuts", num_warmup=settings.num_warmup, num_samples=settings.num_samples,
                          num_chains=settings.num_chains, target_accept=settings.target_accept)
    out = {"nested": ([], [], []), "independent": ([], [], [])}
    start = time.perf_counter()
    for rep in range(settings.replicates):
        seed = settings.seed * 1000 + rep
        truth = generate_tasks(settings.n_tasks, cfg, seed=seed, prefix=f"r{rep}t")
        nested = nested_residual_table(truth, settings.depths, settings.runs_per_task, np.random.default_rng(seed + 500_000))
        tables = {"nested": nested, "independent": nested.drop(columns=["run_id", "residual"])}
        for name, obs in tables.items():
            model = RiskModel(fit).fit(obs, seed=seed)
            hits, widths = _coverage(model, obs, truth, settings, seed)
            out[name][0].append(hits)
            out[name][1].append(widths)
            out[name][2].append(model.diagnostics_)
            log.info("replicate %d %s: coverage %.3f (fit %.1f s, ok=%s)", rep, name, hits.mean(),
                     model.diagnostics_["fit_seconds"], model.diagnostics_["ok"])
    detail = {name: _summary(*parts, settings.eval_depths) for name, parts in out.items()}
    return {
        "coverage_nested": detail["nested"]["coverage"],
        "coverage_independent": detail["independent"]["coverage"],
        "nominal": settings.level,
        "nested": detail["nested"],
        "independent": detail["independent"],
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
