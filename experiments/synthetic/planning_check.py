"""Does planning from static features work? Issue #3's acceptance check on generator data.

Train tasks come with fork-variance observations; held-out tasks with static features only.
Fits the risk model, plans the held-out tasks and prints JSON with

* ``regime_accuracy``: share of held-out tasks whose planned regime is the true one (>= 0.95);
* ``objective_within_5pct``: share whose realised objective L(c_opt) + gamma*lambda*c_opt is
  within 5 % of the oracle's (>= 0.90);
* ``budget``: with B = 40 % of "100 steps for every task", the mean true risk of the allocation
  against that of 100 steps for every task (must be no higher);
* ``pooling``: recovery of log K and log alpha on the train tasks, hierarchical posterior mean
  (population prior updated with each task's own observations) against per-task least squares.

Run: ``python -m plan_probe.experiments.synthetic.planning_check [--quick] [--seed N] [--out FILE.json]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

__all__ = ["run_planning_check", "per_task_least_squares"]


def per_task_least_squares(obs):
    """The paper's protocol per task: fit log u ~ log(L_int + K c^-alpha) by least squares.

    Returns a DataFrame ``task_id, l_int, k, alpha`` (bounded fit in log-parameters).
    """
    import pandas as pd
    from scipy.optimize import least_squares

    rows = []
    for tid, g in obs.groupby("task_id", sort=False):
        c = g["depth"].to_numpy(dtype=float)
        y = np.log(np.maximum(g["risk_obs"].to_numpy(dtype=float), 1e-12))

        def resid(p, c=c, y=y):
            return np.logaddexp(p[0], p[1] - np.exp(p[2]) * np.log(c)) - y

        x0 = np.array([y.min() - 0.5, y.max() + 0.5 * np.log(c.min()), np.log(0.5)])
        fit = least_squares(resid, x0, bounds=([-15, -15, np.log(0.01)], [15, 15, np.log(5.0)]))
        rows.append((tid, *np.exp(fit.x)))
    return pd.DataFrame(rows, columns=["task_id", "l_int", "k", "alpha"])


def run_planning_check(n_train: int = 300, n_test: int = 1000, *, seed: int = 0, method: str = "auto",
                       margin: float = 0.3, fit_settings=None, n_draws: int = 256) -> dict:
    """Run the whole check and return the result dict (see module docstring)."""
    from plan_probe.experiments.synthetic.risk_generator import RiskGeneratorConfig, generate_tasks, risk_observations, tasks_table
    from plan_probe._plan import PlanSettings, compute_plan
    from plan_probe._risk_model import RiskFitSettings, RiskModel

    cfg = RiskGeneratorConfig(margin=margin)
    train = generate_tasks(n_train, cfg, seed=seed, prefix="train")
    obs = risk_observations(train, cfg, seed=seed + 1)
    test = generate_tasks(n_test, cfg, seed=seed + 2, prefix="new")
    t0 = time.perf_counter()
    model = RiskModel(fit_settings or RiskFitSettings(method=method)).fit(obs, seed=seed)
    fit_s = time.perf_counter() - t0
    # the generator's truth (regimes, oracle depths) uses its own absolute thresholds: plan with the same
    abs_settings = {"risk_weight": cfg.cost, "target_rmse": cfg.target_rmse, "min_depth": cfg.c_min, "max_depth": cfg.c_max}
    settings = PlanSettings(seed=seed, n_draws=n_draws, **abs_settings)
    t0 = time.perf_counter()
    plan, _ = compute_plan(model, tasks_table(test), settings)
    plan_s = time.perf_counter() - t0
    l, k, a = (test[c].to_numpy() for c in ("l_int", "k", "alpha"))
    c_opt = plan["c_opt"].to_numpy(dtype=float)
    realised = l + k * c_opt ** (-a) + settings.cost * c_opt
    rel = realised / test["objective_oracle"].to_numpy() - 1.0
    acc = float((plan["regime"].to_numpy() == test["regime"].to_numpy()).mean())

    budget = 0.4 * 100 * n_test
    bplan, _ = compute_plan(model, tasks_table(test), PlanSettings(seed=seed, n_draws=n_draws, budget=budget, **abs_settings))
    steps = bplan["probe_steps"].to_numpy(dtype=float)
    risk_budget = float(np.mean(l + k * steps ** (-a)))
    risk_fixed = float(np.mean(l + k * 100.0 ** (-a)))

    # partial pooling vs per-task least squares on the train tasks' K and alpha
    post = model.posterior_task_draws(obs, n_draws=n_draws, seed=seed)
    order = {t: i for i, t in enumerate(post["task_id"])}
    idx = np.array([order[t] for t in train["task_id"]])
    ls = per_task_least_squares(obs).set_index("task_id").loc[train["task_id"]]
    pooling = {}
    for name in ("k", "alpha"):
        truth = np.log(train[name].to_numpy())
        hier = np.log(post[name][idx]).mean(axis=1)
        lsq = np.log(ls[name].to_numpy())
        pooling[name] = {"rmse_log_hierarchical": float(np.sqrt(np.mean((hier - truth) ** 2))),
                         "rmse_log_least_squares": float(np.sqrt(np.mean((lsq - truth) ** 2)))}
    return {
        "n_train": n_train, "n_test": n_test, "seed": seed, "margin": margin, "method": model.method_,
        "fit_seconds": round(fit_s, 2), "plan_seconds": round(plan_s, 3), "diagnostics": model.diagnostics_,
        "true_regime_counts": test["regime"].value_counts().to_dict(),
        "regime_accuracy": acc,
        "objective_within_5pct": float(np.mean(rel <= 0.05)),
        "objective_rel_excess_median": float(np.median(rel)),
        "budget": {"budget_steps": budget, "allocated_steps": int(steps.sum()), "mean_true_risk_budget": risk_budget,
                   "mean_true_risk_fixed_100": risk_fixed, "budget_no_worse": bool(risk_budget <= risk_fixed)},
        "pooling": pooling,
        "pilot_min_ess": float(post["ess"].min()),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="auto", choices=["auto", "nuts", "svi"])
    parser.add_argument("--quick", action="store_true", help="120 train / 400 test tasks, short NUTS")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    fit_settings = None
    if args.quick:
        from plan_probe._risk_model import RiskFitSettings

        args.n_train, args.n_test = 120, 400
        fit_settings = RiskFitSettings(method=args.method, num_warmup=250, num_samples=250)
    result = run_planning_check(args.n_train, args.n_test, seed=args.seed, method=args.method, fit_settings=fit_settings)
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.out:
        from plan_probe.probes._io import write_json

        write_json(result, args.out)


if __name__ == "__main__":
    main()
