r"""The benchmark protocol: grouped K-fold over tasks, planned vs fair baselines at equal total steps.

Per fold (tasks split by a seeded grouped K-fold; a held-out task is never seen in training):

1. Fit the shared depth-aware predictor (every recorded depth, all features) on the training
   rows; its out-of-fold predictions are grouped by *task*, so a training task's residuals come
   from a model that never saw any of its runs (the situation of a new task).
2. Its signed out-of-fold residuals, grouped by run (:func:`risk_observations`),
   are the risk observations; fit the tool's :class:`plan_probe.RiskModel` on them, with the
   tasks' static and hyperparameter features as its static features (both are known before any
   probe runs).
3. Fit a static-only predictor (static + hyperparameter features) for tasks predicted without a probe.
4. For every held-out task and recorded depth, predict each of its runs; then every policy
   (:mod:`._policies`) allocates steps from the held-out tasks' static features only, and each
   task is predicted at the deepest recorded depth within its allocation.

Metrics over all held-out runs: RMSE, total steps used, and with a threshold τ the decision loss
(share of runs on the wrong side of τ; false kills = a run that reaches τ predicted below it;
false launches = the reverse). Paired bootstrap over held-out tasks: rmse(planned) − rmse(P) with
a 90 % percentile interval, every policy scored on the same resampled tasks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from plan_probe.experiments.benchmark._policies import (
    POLICIES,
    oracle_allocation,
    random_allocation,
    uniform_depth,
    uniform_fill_allocation,
)

__all__ = ["BenchSettings", "BenchData", "load_bench", "run_benchmark", "fit_risk_model", "risk_observations"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchSettings:
    """Benchmark settings (validated; recorded in the output's ``settings``)."""

    label: str
    id_col: str | None = None
    task_col: str | None = None
    budget_shares: tuple = (0.4,)
    fixed_depth: float = 100.0
    threshold: float | None = None
    folds: int = 5
    seed: int = 0
    n_boot: int = 1000
    random_draws: int = 20
    risk_method: str = "auto"
    risk_samples: int = 300
    n_draws: int = 256

    def __post_init__(self):
        shares = tuple(float(s) for s in self.budget_shares)
        if not shares or not all(math.isfinite(s) and s > 0 for s in shares):
            raise ValueError(f"--budget-share must be positive, but got {list(self.budget_shares)}; pass e.g. 0.4 or 0.2,0.4,0.8.")
        object.__setattr__(self, "budget_shares", shares)
        if not (math.isfinite(self.fixed_depth) and self.fixed_depth > 0):
            raise ValueError(f"--fixed-depth must be a positive number of steps, but got {self.fixed_depth!r}; pass e.g. 100.")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError(f"--threshold must be a finite score, but got {self.threshold!r}; pass a number in label units.")
        if int(self.folds) < 2:
            raise ValueError(f"--folds must be at least 2, but got {self.folds}; pass 2 or more.")
        if int(self.n_boot) < 100 or int(self.random_draws) < 1:
            raise ValueError(f"n_boot must be >= 100 and random_draws >= 1, but got {self.n_boot}, {self.random_draws}; raise them.")
        if self.risk_method not in ("auto", "nuts", "svi"):
            raise ValueError(f"--risk-method must be auto, nuts or svi, but got {self.risk_method!r}; pick one of those.")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["budget_shares"] = list(self.budget_shares)
        return out


@dataclass
class BenchData:
    """A validated benchmark meta-dataset (one row per run x depth)."""

    frame: object
    label: str
    id_col: str
    task_col: str
    grid: np.ndarray
    features: list = field(default_factory=list)
    static_features: list = field(default_factory=list)
    log_features: list = field(default_factory=list)

    def risk_features(self, rows):
        """The risk model's task features of ``rows``: static + hyperparameter columns, named ``static_*``,
        log10 for positive columns spanning more than a factor 20 (learning rates, sizes), so that the
        model's linear regression on standardised features sees them on their natural scale."""
        import pandas as pd

        out = pd.DataFrame(index=rows.index)
        for col in self.static_features:
            v = rows[col].astype(float)
            out[col if col.startswith("static_") else f"static_{col}"] = np.log10(v) if col in self.log_features else v
        return out

    @property
    def tasks(self) -> np.ndarray:
        return np.unique(self.frame[self.task_col].to_numpy())


def load_bench(source, settings: BenchSettings) -> BenchData:
    """Read and validate META for the benchmark; every problem is one ``ValueError`` line."""
    from plan_probe._meta import load_meta

    meta = load_meta(source, label=settings.label, id_col=settings.id_col)
    frame = meta.frame
    if "depth" not in frame.columns:
        raise ValueError(
            "the meta-dataset must have a depth column (one row per run x probe depth), but got none; "
            "pass a depth-aware meta-dataset such as build-meta's meta.parquet."
        )
    task_col = settings.task_col.strip().lower() if settings.task_col else ("task_id" if "task_id" in frame.columns else meta.id_col)
    if task_col not in frame.columns:
        raise ValueError(f"the task column must exist, but got --task {task_col!r}; pick one of {list(frame.columns)[:8]}.")
    frame[task_col] = frame[task_col].astype(str)
    grid = np.sort(frame["depth"].astype(float).unique())
    if grid.size < 2:
        raise ValueError(f"the benchmark needs at least 2 recorded depths, but got only depth {grid.tolist()}; record probes at several depths.")
    n_tasks = frame[task_col].nunique()
    if n_tasks < settings.folds:
        raise ValueError(f"grouped folds need at least as many tasks as folds, but got {n_tasks} tasks for --folds {settings.folds}; lower --folds.")
    if n_tasks < 2 * settings.folds:
        log.warning("only %d tasks for %d folds: each fold fits on very few tasks", n_tasks, settings.folds)
    if settings.fixed_depth < grid[0]:
        raise ValueError(f"--fixed-depth must reach the shallowest recorded depth {grid[0]:g}, but got {settings.fixed_depth:g}; raise it.")
    for share in settings.budget_shares:
        if share * settings.fixed_depth < grid[0]:
            raise ValueError(
                f"--budget-share x --fixed-depth must give every task the shallowest recorded depth {grid[0]:g}, but got "
                f"{share:g} x {settings.fixed_depth:g} = {share * settings.fixed_depth:g}; raise --budget-share."
            )
    features = [f for f in meta.features if f != task_col]
    static = [f for f in features if meta.groups[f] in ("static", "hyperparameter")]
    values = {c: frame[c].to_numpy(dtype=float) for c in static}
    logs = [c for c, v in values.items() if v.min() > 0 and v.max() / v.min() > 20]
    return BenchData(frame=frame, label=meta.label_col, id_col=meta.id_col, task_col=task_col, grid=grid,
                     features=features, static_features=static, log_features=logs)


# ----------------------------------------------------------------------------- one fold


def fit_risk_model(obs, settings: BenchSettings):
    """The tool's :class:`plan_probe.RiskModel` on one fold's residual observations (the default fitter)."""
    from plan_probe._risk_model import RiskFitSettings, RiskModel

    fit = RiskFitSettings(method=settings.risk_method, num_warmup=settings.risk_samples, num_samples=settings.risk_samples,
                          num_chains=2)
    try:
        return RiskModel(fit).fit(obs, seed=settings.seed)
    except ValueError as err:
        if "SVI diverged" not in str(err):
            raise
    # A non-finite ELBO is a step size too large for this fold's likelihood surface (the nested
    # residual likelihood is steeper than independent squares): retry once with a 4x smaller step.
    log.warning("the risk model's SVI diverged on this fold; refitting with a 4x smaller step size (svi_lr %.4g)", fit.svi_lr / 4)
    fit = replace(fit, svi_lr=fit.svi_lr / 4, svi_steps=2 * fit.svi_steps)
    return RiskModel(fit).fit(obs, seed=settings.seed)


def _fit_fold(train, data: BenchData, settings: BenchSettings, fit_risk):
    """Depth-aware predictor, static-only predictor and risk model fitted on the training rows."""
    from plan_probe._predictor import PredictorConfig, ProbePredictor

    tasks = train[data.task_col].to_numpy()
    n_tasks = len(np.unique(tasks))
    cfg = PredictorConfig(seed=settings.seed, calibration_folds=min(10, n_tasks))
    full = ProbePredictor(cfg).fit(train[data.features], train[data.label], groups=tasks)
    runs = train.sort_values("depth", kind="stable").drop_duplicates(data.id_col)
    static = None
    if data.static_features:
        static = ProbePredictor(cfg).fit(runs[data.static_features], runs[data.label], groups=runs[data.task_col].to_numpy())
    obs = risk_observations(train, data, full.oof_pred_)
    risk = fit_risk(obs, settings)
    return full, static, risk, float(runs[data.label].mean()), obs


def risk_observations(rows, data: BenchData, oof_pred):
    """The risk model's observations of a fold: the predictor's signed out-of-fold residuals, one
    nested residual vector per run (:func:`plan_probe._residuals.residual_observations`; the
    nested-residual likelihood of docs/theory.md §2), with the task means of the risk features."""
    import pandas as pd

    from plan_probe._residuals import residual_observations

    risk_x = data.risk_features(rows)
    risk_x = risk_x.groupby(rows[data.task_col].to_numpy()).transform("mean")  # one value per task
    base = rows[list(dict.fromkeys([data.label, data.task_col, data.id_col, "depth"]))]
    return residual_observations(pd.concat([base, risk_x], axis=1), oof_pred, label=data.label, task_col=data.task_col,
                                 run_col=data.id_col, static_features=list(risk_x.columns))


def _static_table(frame, data: BenchData, risk):
    """One row per task with the risk model's static features (task means)."""
    x = data.risk_features(frame)[list(risk.static_features_)]
    table = x.groupby(frame[data.task_col].to_numpy(), sort=True).mean()
    table.insert(0, "task_id", table.index.astype(str))
    return table.reset_index(drop=True)


def _predictions(test, data: BenchData, full, static, mean_label):
    """Per held-out run: truth, static-only prediction, prediction at each grid depth (NaN if not recorded)."""
    runs = test.sort_values("depth", kind="stable").drop_duplicates(data.id_col).sort_values(data.id_col)
    run_ids = runs[data.id_col].to_numpy()
    index = {r: i for i, r in enumerate(run_ids)}
    pred = np.full((len(run_ids), data.grid.size), np.nan)
    rows = test[data.id_col].map(index).to_numpy()
    cols = np.searchsorted(data.grid, test["depth"].to_numpy(dtype=float))
    pred[rows, cols] = full.predict(test[data.features])
    static_pred = static.predict(runs[data.static_features]) if static is not None else np.full(len(run_ids), mean_label)
    return {"task": runs[data.task_col].to_numpy(), "truth": runs[data.label].to_numpy(dtype=float),
            "static": np.asarray(static_pred, dtype=float), "pred": pred}


def _at_allocation(p: dict, grid: np.ndarray, alloc_by_run: np.ndarray):
    """Prediction and depth used per run: the deepest recorded depth <= allocation (static below)."""
    ok = ~np.isnan(p["pred"]) & (grid[None, :] <= alloc_by_run[:, None] + 1e-9)
    j = np.where(ok.any(axis=1), grid.size - 1 - np.argmax(ok[:, ::-1], axis=1), -1)
    used = np.where(j >= 0, grid[np.maximum(j, 0)], 0.0)
    pred = np.where(j >= 0, p["pred"][np.arange(len(j)), np.maximum(j, 0)], p["static"])
    return pred, used


def _score(p: dict, tasks: np.ndarray, grid: np.ndarray, alloc: np.ndarray, threshold):
    """Per task: SSE over its runs, runs, steps used (deepest over its runs), and decision errors."""
    pos = {t: i for i, t in enumerate(tasks)}
    ti = np.array([pos[t] for t in p["task"]])
    pred, used = _at_allocation(p, grid, alloc[ti])
    n = len(tasks)
    out = {"sse": np.bincount(ti, (pred - p["truth"]) ** 2, n), "runs": np.bincount(ti, minlength=n).astype(float),
           "steps": np.zeros(n)}
    np.maximum.at(out["steps"], ti, used)
    if threshold is not None:
        good, go = p["truth"] >= threshold, pred >= threshold
        out["false_kill"] = np.bincount(ti, (good & ~go).astype(float), n)
        out["false_launch"] = np.bincount(ti, (~good & go).astype(float), n)
    return out


def _task_loss_on_grid(p: dict, tasks: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Realised SSE of each task at each grid depth (for the oracle)."""
    return np.stack([_score(p, tasks, grid, np.full(len(tasks), d), None)["sse"] for d in grid], axis=1)


def _allocations(share, settings, grid, tasks, expected_risk, p, rng, expected_decision=None):
    """Allocation per held-out task for every policy (random: a list of draws).

    ``expected_decision`` (tasks x grid depths, with ``--threshold``): the posterior expected
    decision loss of each task at each depth; ``planned_decision`` allocates the same budget on it.
    """
    from plan_probe._grid import allocate_on_grid

    n = len(tasks)
    budget = share * settings.fixed_depth * n
    out = {
        "planned": grid[allocate_on_grid(expected_risk, grid, budget)],
        "uniform": np.full(n, uniform_depth(grid, budget, n)),
        "uniform_fill": [uniform_fill_allocation(grid, budget, n, rng) for _ in range(settings.random_draws)],
        "fixed_min": np.full(n, grid[0]),
        "fixed": np.full(n, float(settings.fixed_depth)),
        "static_only": np.zeros(n),
        "random": [random_allocation(grid, budget, n, rng) for _ in range(settings.random_draws)],
        "oracle": oracle_allocation(_task_loss_on_grid(p, tasks, grid), grid, budget),
    }
    if expected_decision is not None:
        out["planned_decision"] = grid[allocate_on_grid(expected_decision, grid, budget)]
    return out


def _expected_decision(test, data: BenchData, static, mean_label, train_var, draws, idx, tasks, tau):
    r"""Posterior expected decision loss per held-out task at each grid depth (docs/theory.md, decision objective).

    The prior of each task is the static-only predictor's N(m0, S0) (S0 its out-of-fold mean squared
    error, :func:`plan_probe._decision_plan.predictive_variance`); launch and kill costs are equal,
    so the loss is the probability of deciding on the wrong side of τ, the benchmark's
    ``decision_loss``.
    """
    from plan_probe._decision_plan import predictive_variance
    from plan_probe.theory import expected_decision_loss

    runs = test.drop_duplicates(data.task_col).set_index(data.task_col).loc[list(tasks)]
    if static is not None:
        X = runs[data.static_features].reset_index(drop=True)
        m0, s0 = np.asarray(static.predict(X), dtype=float), np.asarray(predictive_variance(static, X), dtype=float)
    else:
        m0, s0 = np.full(len(tasks), mean_label), np.full(len(tasks), train_var)
    s0 = np.maximum(s0, 1e-12)
    return expected_decision_loss(data.grid, m0, s0, draws["l_int"][idx], draws["k"][idx], draws["alpha"][idx], tau, 1.0, 1.0)


# ----------------------------------------------------------------------------- metrics


def _rmse(sse, runs, weights=None):
    if weights is None:
        return float(np.sqrt(sse.sum() / runs.sum()))
    return np.sqrt((weights @ sse) / (weights @ runs))


def _summarise(scores: dict, settings: BenchSettings, n_tasks: int, share: float, rng) -> tuple[dict, dict]:
    """Policy metrics and paired bootstrap differences rmse(planned) - rmse(P) over held-out tasks
    (with a threshold also decision_loss(planned) - decision_loss(P), and the same differences of
    ``planned_decision`` in its entry's ``paired_decision_loss``)."""
    runs = scores["planned"]["runs"]
    weights = rng.multinomial(n_tasks, np.full(n_tasks, 1.0 / n_tasks), size=settings.n_boot).astype(float)
    policies, boot, boot_dl = {}, {}, {}
    budget_total = share * settings.fixed_depth * n_tasks
    for name, sc in scores.items():
        draws = sc if isinstance(sc, list) else [sc]
        sse = np.stack([d["sse"] for d in draws])
        entry = {"rmse": float(np.mean([_rmse(s, runs) for s in sse])),
                 "steps": float(np.mean([d["steps"].sum() for d in draws])),
                 "steps_share_of_fixed": float(np.mean([d["steps"].sum() for d in draws]) / (settings.fixed_depth * n_tasks))}
        if isinstance(sc, list):
            entry["draws"] = len(draws)
        entry["within_budget"] = bool(entry["steps"] <= budget_total + 1e-6)
        if settings.threshold is not None:
            fk = np.mean([d["false_kill"].sum() for d in draws])
            fl = np.mean([d["false_launch"].sum() for d in draws])
            entry.update({"decision_loss": float((fk + fl) / runs.sum()), "false_kill": float(fk), "false_launch": float(fl)})
            wrong = np.stack([d["false_kill"] + d["false_launch"] for d in draws])
            boot_dl[name] = np.mean([(weights @ w) / (weights @ runs) for w in wrong], axis=0)
        policies[name] = entry
        boot[name] = np.mean([_rmse(s, runs, weights) for s in sse], axis=0)
    paired = {}
    for name in scores:
        if name == "planned":
            continue
        paired[name] = {"rmse_diff": policies["planned"]["rmse"] - policies[name]["rmse"],
                        "ci90": _ci90(boot["planned"] - boot[name])}
        if boot_dl:
            paired[name].update({"decision_loss_diff": policies["planned"]["decision_loss"] - policies[name]["decision_loss"],
                                 "decision_ci90": _ci90(boot_dl["planned"] - boot_dl[name])})
    if "planned_decision" in boot_dl:
        policies["planned_decision"]["paired_decision_loss"] = {
            name: {"decision_loss_diff": policies["planned_decision"]["decision_loss"] - policies[name]["decision_loss"],
                   "ci90": _ci90(boot_dl["planned_decision"] - boot_dl[name])}
            for name in scores if name != "planned_decision"}
    return policies, paired


def _ci90(diff) -> list:
    lo, hi = np.quantile(diff, [0.05, 0.95])
    return [float(lo), float(hi)]


def _risk_summary(risk, expected: np.ndarray, grid: np.ndarray, alloc: np.ndarray) -> dict:
    """What the risk model concluded about depth on the held-out tasks of one fold."""
    gain = (expected[:, 0] - expected[:, -1]) / np.maximum(expected[:, 0], 1e-300)
    return {"expected_risk_at_min": float(expected[:, 0].mean()), "expected_risk_at_max": float(expected[:, -1].mean()),
            "predicted_gain_share_median": float(np.median(gain)), "predicted_gain_share_max": float(np.max(gain)),
            "allocation": {f"{d:g}": int(np.sum(alloc == d)) for d in grid},
            "diagnostics": {k: v for k, v in risk.diagnostics_.items() if isinstance(v, (int, float, str))}}


# ----------------------------------------------------------------------------- command body


def run_benchmark(data: BenchData, settings: BenchSettings, *, fit_risk=None) -> dict:
    """Run the protocol; returns ``{"policies", "paired", "settings"}`` for the first budget share and,
    in ``settings["sweep"]``, every budget share's policies (for the figure).

    ``fit_risk(obs, settings)`` fits the risk model of a fold (default :func:`fit_risk_model`); it
    must return an object with ``static_features_``, ``diagnostics_`` and ``posterior_task_draws``.
    """
    fit_risk = fit_risk or fit_risk_model
    from plan_probe._grid import expected_risk_on_grid
    from plan_probe._predictor import group_folds

    frame = data.frame
    fold_of = group_folds(frame[data.task_col].to_numpy(), settings.folds, settings.seed)
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 0xBE7C]))
    per_share = {s: {} for s in settings.budget_shares}
    fold_notes = []
    all_tasks = []
    for k in range(settings.folds):
        train, test = frame[fold_of != k], frame[fold_of == k]
        log.info("fold %d/%d: %d training rows, %d held-out tasks", k + 1, settings.folds, len(train), test[data.task_col].nunique())
        full, static, risk, mean_label, _ = _fit_fold(train, data, settings, fit_risk)
        _warn_diagnostics(risk, k)
        p = _predictions(test, data, full, static, mean_label)
        table = _static_table(test, data, risk)
        tasks = table["task_id"].to_numpy()
        draws = risk.posterior_task_draws(table, n_draws=settings.n_draws, seed=settings.seed)
        order = {t: i for i, t in enumerate(np.asarray(draws["task_id"]).astype(str))}
        idx = np.array([order[t] for t in tasks])
        expected = expected_risk_on_grid(draws["l_int"][idx], draws["k"][idx], draws["alpha"][idx], data.grid)
        dec = None
        if settings.threshold is not None:
            dec = _expected_decision(test, data, static, mean_label, float(train[data.label].var()), draws, idx, tasks,
                                     settings.threshold)
        all_tasks.extend(tasks.tolist())
        for share in settings.budget_shares:
            allocs = _allocations(share, settings, data.grid, tasks, expected, p, rng, dec)
            for name, alloc in allocs.items():
                sc = ([_score(p, tasks, data.grid, a, settings.threshold) for a in alloc] if isinstance(alloc, list)
                      else _score(p, tasks, data.grid, alloc, settings.threshold))
                per_share[share].setdefault(name, []).append(sc)
            if share == settings.budget_shares[0]:
                fold_notes.append(_risk_summary(risk, expected, data.grid, allocs["planned"]))
    n_tasks = len(all_tasks)
    results = {}
    for share, by_policy in per_share.items():
        scores = {name: _concat(parts) for name, parts in by_policy.items()}
        results[share] = _summarise(scores, settings, n_tasks, share, np.random.default_rng([settings.seed, 0xB007]))
    first = settings.budget_shares[0]
    policies, paired = results[first]
    policies["planned"]["risk_model"] = fold_notes
    out_settings = {
        **settings.to_dict(),
        "id_col": data.id_col, "task_col": data.task_col, "label": data.label,
        "depths": [float(d) for d in data.grid], "n_tasks": n_tasks, "n_runs": int(frame[data.id_col].nunique()),
        "budget_steps": first * settings.fixed_depth * n_tasks,
        "policy_order": [p for p in POLICIES if p in policies],
        "planned_decision": ("the decision objective (equal launch and kill costs) on the grid" if settings.threshold is not None
                             else "not run: needs --threshold"),
        "risk_features": list(data.static_features),
        "risk_features_log10": list(data.log_features),
        "sweep": [{"budget_share": s, "budget_steps": s * settings.fixed_depth * n_tasks,
                   "policies": {n: {"rmse": e["rmse"], "steps": e["steps"]} for n, e in results[s][0].items()},
                   "paired": results[s][1]} for s in settings.budget_shares],
    }
    return {"policies": policies, "paired": paired, "settings": out_settings}


def _warn_diagnostics(risk, fold: int) -> None:
    """Say so on stderr when a fold's risk-model fit did not converge (its plan rests on a poor posterior)."""
    d = getattr(risk, "diagnostics_", {}) or {}
    if d.get("ok", True):
        return
    problems = "; ".join(d.get("problems", [])) or "diagnostics.ok is false"
    hint = "--risk-method nuts" if d.get("method") == "svi" else "a higher --risk-samples, or --risk-method svi"
    log.warning("fold %d: the risk model did not converge cleanly (%s); its plan rests on an unconverged posterior "
                "(try %s)", fold + 1, problems, hint)


def _concat(parts: list):
    """Join per-fold scores (dicts of per-task arrays; random: lists of draws)."""
    if isinstance(parts[0], list):
        return [_concat([p[d] for p in parts]) for d in range(len(parts[0]))]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
