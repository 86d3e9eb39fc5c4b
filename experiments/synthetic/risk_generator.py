"""Synthetic risk observations: tasks whose true risk curve depends on a few static features.

Each task i has standardised static features s_i ~ N(0, I) and true parameters

    (log L_int, log K, log alpha)_i = B s_i + b + e_i,   e_i ~ N(0, diag(task_noise^2)),

so the population regression the risk model fits is exactly the generating process. At each
depth c of a grid the generator emits a fork-variance observation (docs/theory.md §2)

    u = L_i(c) * chi2_nu / nu,   L_i(c) = L_int + K c^(-alpha),

the unbiased sample variance of a Gaussian final score over nu + 1 forks. Output tables follow
docs/theory.md §3: the risk-observation table (``task_id, depth, risk_obs, dof, static_*``), a TASKS
table for held-out tasks (``task_id, static_*``) and a truth table with the true parameters,
regime and the oracle probe length.

With ``margin > 0`` a task is kept only if its regime (docs/theory.md §1 rule) does not change when
each of its log-parameters moves by up to ``margin`` (all 27 corners and mid-points of the cube
{-margin, 0, +margin}^3): tasks "away from regime boundaries".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["RiskGeneratorConfig", "generate_tasks", "risk_observations", "tasks_table", "oracle_depth"]

_REGIMES = ("static_sufficient", "dynamic_critical", "noise_dominant")


@dataclass(frozen=True)
class RiskGeneratorConfig:
    """Settings of the synthetic population (validated on construction).

    ``coef`` rows are (log L_int, log K, log alpha); columns are the static features.
    ``intercept`` is b. Defaults give a portfolio with all three regimes under the default
    thresholds (gamma*lambda = 0.01, epsilon = 3, c_min = 10).
    """

    coef: tuple = ((1.2, 0.0, 0.3), (-0.3, 2.0, 0.0), (0.0, 0.0, 0.55))
    intercept: tuple = (float(np.log(2.0)), float(np.log(3.0)), float(np.log(0.6)))
    task_noise: tuple = (0.15, 0.15, 0.08)
    depths: tuple = (5, 10, 20, 50, 100, 200, 500)
    dof: float = 7.0
    margin: float = 0.0
    cost: float = 0.01
    target_rmse: float = 3.0
    c_min: float = 10.0
    c_max: float = 1000.0
    alpha_max: float = 3.0

    def __post_init__(self):
        coef = np.asarray(self.coef, dtype=float)
        if coef.ndim != 2 or coef.shape[0] != 3 or coef.shape[1] < 1:
            raise ValueError(f"coef must have shape (3, n_features), but got shape {coef.shape}; pass 3 rows.")
        if len(self.intercept) != 3 or len(self.task_noise) != 3:
            raise ValueError(
                f"intercept and task_noise must have 3 entries, but got {len(self.intercept)} and {len(self.task_noise)}; "
                "pass (log L_int, log K, log alpha) values."
            )
        if min(self.task_noise) < 0:
            raise ValueError(f"task_noise must be >= 0, but got {self.task_noise=}; pass non-negative values.")
        if not self.depths or min(self.depths) < 1:
            raise ValueError(f"depths must be integers >= 1, but got {self.depths=}; pass positive depths.")
        if self.dof <= 0:
            raise ValueError(f"dof must be positive, but got {self.dof=}; pass the number of forks minus 1.")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, but got {self.margin=}; pass 0 to keep every task.")

    @property
    def n_features(self) -> int:
        return int(np.asarray(self.coef).shape[1])

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(map(list, v)) if k == "coef" else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _regime(l_int, k, alpha, cfg: RiskGeneratorConfig):
    """docs/theory.md §1 rule on true parameters (0 static, 1 dynamic, 2 noise)."""
    c_star = np.exp((np.log(alpha) + np.log(k) - np.log(cfg.cost)) / (alpha + 1.0))
    return np.where(l_int >= cfg.target_rmse**2, 2, np.where(c_star <= cfg.c_min, 0, 1))


def oracle_depth(l_int, k, alpha, cost: float, c_min: float, c_max: float):
    """Integer minimiser of the true objective L_int + K c^-alpha + cost*c over [c_min, c_max].

    The continuous optimum (Thm. 6.1) clipped to the range; the objective is convex, so the
    integer optimum is its floor or ceiling. Returns ``(c_oracle, objective)``.
    """
    l_int, k, alpha = (np.asarray(x, dtype=float) for x in (l_int, k, alpha))
    lo, hi = int(np.ceil(c_min)), int(np.floor(c_max))
    c_cont = np.clip(np.exp((np.log(alpha) + np.log(k) - np.log(cost)) / (alpha + 1.0)), lo, hi)
    cand = np.stack([np.clip(np.floor(c_cont), lo, hi), np.clip(np.ceil(c_cont), lo, hi)])
    obj = l_int + k * cand ** (-alpha) + cost * cand
    pick = np.argmin(obj, axis=0)
    c_best = np.take_along_axis(cand, pick[None], axis=0)[0]
    return c_best.astype(int), np.take_along_axis(obj, pick[None], axis=0)[0]


def generate_tasks(n_tasks: int, cfg: RiskGeneratorConfig = RiskGeneratorConfig(), *, seed: int = 0, prefix: str = "task"):
    """Draw ``n_tasks`` tasks; return the truth table (pandas DataFrame).

    Columns: ``task_id``, ``static_f0..``, ``l_int``, ``k``, ``alpha``, ``regime`` (name),
    ``c_oracle`` (integer optimum of the true objective), ``objective_oracle``, ``c_star``
    (unclipped Thm. 6.1 optimum). With ``cfg.margin > 0``, draws near a regime boundary are
    rejected and redrawn.
    """
    import pandas as pd

    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, but got {n_tasks=}; ask for at least one task.")
    rng = np.random.default_rng(seed)
    coef = np.asarray(cfg.coef, dtype=float)
    b = np.asarray(cfg.intercept, dtype=float)
    noise = np.asarray(cfg.task_noise, dtype=float)
    kept_s, kept_t = [], []
    n_kept, rounds = 0, 0
    while n_kept < n_tasks:
        rounds += 1
        if rounds > 200:
            raise ValueError(f"margin={cfg.margin} rejects almost every task; lower the margin.")
        m = max(2 * (n_tasks - n_kept), 64)
        s = rng.standard_normal((m, cfg.n_features))
        theta = s @ coef.T + b + rng.standard_normal((m, 3)) * noise
        theta[:, 2] = np.minimum(theta[:, 2], np.log(cfg.alpha_max))
        ok = np.ones(m, dtype=bool)
        if cfg.margin > 0:
            base = _regime(*np.exp(theta).T, cfg)
            grid = np.array(np.meshgrid(*[[-cfg.margin, 0.0, cfg.margin]] * 3, indexing="ij")).reshape(3, -1).T
            for shift in grid:
                ok &= _regime(*np.exp(theta + shift).T, cfg) == base
        kept_s.append(s[ok])
        kept_t.append(theta[ok])
        n_kept += int(ok.sum())
    s = np.concatenate(kept_s)[:n_tasks]
    theta = np.concatenate(kept_t)[:n_tasks]
    l_int, k, alpha = np.exp(theta).T
    c_oracle, obj = oracle_depth(l_int, k, alpha, cfg.cost, cfg.c_min, cfg.c_max)
    width = len(str(n_tasks - 1))
    frame = pd.DataFrame({"task_id": [f"{prefix}{i:0{width}d}" for i in range(n_tasks)]})
    for j in range(cfg.n_features):
        frame[f"static_f{j}"] = s[:, j]
    frame["l_int"], frame["k"], frame["alpha"] = l_int, k, alpha
    frame["regime"] = np.asarray(_REGIMES)[_regime(l_int, k, alpha, cfg)]
    frame["c_oracle"] = c_oracle
    frame["objective_oracle"] = obj
    frame["c_star"] = np.exp((np.log(alpha) + np.log(k) - np.log(cfg.cost)) / (alpha + 1.0))
    return frame


def risk_observations(truth, cfg: RiskGeneratorConfig = RiskGeneratorConfig(), *, seed: int = 0, depths=None, dof=None):
    """Fork-variance observations u = L_i(c) chi2_nu / nu for every task of ``truth`` and depth.

    Returns the docs/theory.md §3 risk-observation table, sorted by task then depth.
    """
    import pandas as pd

    depths = np.asarray(cfg.depths if depths is None else depths, dtype=int)
    nu = float(cfg.dof if dof is None else dof)
    rng = np.random.default_rng(seed)
    n = len(truth)
    l_true = truth["l_int"].to_numpy()[:, None] + truth["k"].to_numpy()[:, None] * depths[None, :] ** (
        -truth["alpha"].to_numpy()[:, None]
    )
    u = l_true * rng.chisquare(nu, size=(n, depths.size)) / nu
    static = [c for c in truth.columns if c.startswith("static_")]
    obs = pd.DataFrame(
        {
            "task_id": np.repeat(truth["task_id"].to_numpy(), depths.size),
            "depth": np.tile(depths, n),
            "risk_obs": u.ravel(),
            "dof": nu,
        }
    )
    for col in static:
        obs[col] = np.repeat(truth[col].to_numpy(), depths.size)
    return obs


def tasks_table(truth):
    """The TASKS table (docs/theory.md §3) of held-out tasks: ``task_id`` and ``static_*`` only."""
    cols = ["task_id"] + [c for c in truth.columns if c.startswith("static_")]
    return truth[cols].copy()
