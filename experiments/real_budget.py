"""Budget-optimal probing on held-out real tasks (issue #6): does a planned probe budget reach the
prediction RMSE of a fixed 100-step probe with at most 40 % of its steps?

Protocol (grouped K-fold over tasks, so a held-out task is never seen in training):

1. On the training tasks fit the shared depth-aware predictor (all recorded depths) and a
   static-only predictor (static + hyperparameter features).
2. The predictor's out-of-fold squared residuals at each depth are risk observations with one
   degree of freedom (docs/theory.md §2, "predictor residuals"); fit the Bayesian risk model on them.
3. Plan the held-out tasks from their static features only, with a total budget of
   ``budget_share`` x (fixed depth x number of held-out tasks), or per task without a budget.
4. Each held-out run is predicted from its features at the deepest recorded depth within its
   planned steps (the static-only predictor when no recorded depth fits); the baseline uses the
   fixed depth for every run. Steps are counted at the depth actually used.

Run as ``python -m plan_probe.experiments.real_budget META.parquet [--fixed-depth 100] [--folds 4]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np

__all__ = ["residual_risk_observations", "budget_check"]

log = logging.getLogger(__name__)


def _feature_columns(meta, prefixes):
    return [c for c in meta.columns if c.startswith(prefixes)]


def residual_risk_observations(meta, oof_pred, *, label: str = "label", task_col: str = "task_id"):
    """Squared out-of-fold residuals as risk observations (dof 1) with the tasks' static features."""
    import pandas as pd

    statics = _feature_columns(meta, ("static_",))
    obs = pd.DataFrame({
        "task_id": meta[task_col].astype(str).to_numpy(),
        "depth": meta["depth"].astype(int).to_numpy(),
        "risk_obs": (meta[label].to_numpy(dtype=float) - np.asarray(oof_pred, dtype=float)) ** 2,
        "dof": 1.0,
    })
    for col in statics:
        obs[col] = meta[col].to_numpy(dtype=float)
    return obs


def _fit_predictors(train, label, seed):
    from plan_probe._predictor import PredictorConfig, ProbePredictor

    full_cols = ["depth"] + _feature_columns(train, ("static_", "dyn_", "hp_"))
    full = ProbePredictor(PredictorConfig(seed=seed)).fit(train[full_cols], train[label], groups=train["run_id"].to_numpy())
    runs = train.drop_duplicates("run_id")
    static_cols = _feature_columns(train, ("static_", "hp_"))
    static = ProbePredictor(PredictorConfig(seed=seed)).fit(runs[static_cols], runs[label], groups=runs["run_id"].to_numpy())
    return full, full_cols, static, static_cols


def _predict_at(test, steps_by_task, full, full_cols, static, static_cols, label):
    """Prediction and used depth for every held-out run at its planned steps."""
    preds, used, truth = [], [], []
    for run_id, rows in test.groupby("run_id", sort=True):
        budget = steps_by_task[str(rows["task_id"].iloc[0])]
        fits = rows[rows["depth"] <= budget]
        if len(fits):
            row = fits.loc[[fits["depth"].idxmax()]]
            preds.append(float(full.predict(row[full_cols])[0]))
            used.append(int(row["depth"].iloc[0]))
        else:
            preds.append(float(static.predict(rows.iloc[[0]][static_cols])[0]))
            used.append(0)
        truth.append(float(rows[label].iloc[0]))
    return np.array(preds), np.array(used), np.array(truth)


def budget_check(meta, *, label: str = "label", fixed_depth: int = 100, budget_share: float = 0.4, folds: int = 4,
                 seed: int = 0, min_depth: int | None = None, target_rmse: float = 3.0) -> dict:
    """Run the protocol of the module docstring; return RMSEs and steps for planned vs fixed probing."""
    from plan_probe._plan import PlanSettings, compute_plan
    from plan_probe._predictor import group_folds
    from plan_probe._risk_model import RiskFitSettings, RiskModel

    depths = sorted(int(d) for d in meta["depth"].unique())
    fixed = max(d for d in depths if d <= fixed_depth)
    min_depth = min_depth or depths[0]
    tasks = meta["task_id"].astype(str).to_numpy()
    fold_of = group_folds(tasks, folds, seed)
    out = {"planned_budget": [], "planned_free": [], "fixed": []}
    for k in range(folds):
        train, test = meta[fold_of != k], meta[fold_of == k]
        full, full_cols, static, static_cols = _fit_predictors(train, label, seed)
        obs = residual_risk_observations(train, full.oof_pred_, label=label)
        risk = RiskModel(RiskFitSettings(method="nuts", num_warmup=300, num_samples=300, num_chains=1)).fit(obs, seed=seed)
        task_table = test.drop_duplicates("task_id")[["task_id", *risk.static_features_]].copy()
        task_table["task_id"] = task_table["task_id"].astype(str)
        n_test = len(task_table)
        for name, budget in (("planned_budget", budget_share * fixed * n_test), ("planned_free", None)):
            settings = PlanSettings(min_depth=min_depth, max_depth=max(depths), budget=budget, seed=seed, target_rmse=target_rmse)
            plan, _ = compute_plan(risk, task_table, settings)
            steps = dict(zip(plan["task_id"], plan["probe_steps"] if budget is not None else plan["c_opt"]))
            out[name].append(_predict_at(test, steps, full, full_cols, static, static_cols, label))
        steps = {t: fixed for t in task_table["task_id"]}
        out["fixed"].append(_predict_at(test, steps, full, full_cols, static, static_cols, label))
    result = {"n_runs": int(meta["run_id"].nunique()), "depths": depths, "fixed_depth": fixed,
              "budget_share": budget_share, "folds": folds, "seed": seed}
    for name, parts in out.items():
        pred = np.concatenate([p[0] for p in parts])
        used = np.concatenate([p[1] for p in parts])
        truth = np.concatenate([p[2] for p in parts])
        result[name] = {"rmse": float(np.sqrt(np.mean((pred - truth) ** 2))), "steps_used": int(used.sum()),
                        "steps_share_of_fixed": float(used.sum() / (fixed * len(used)))}
    result["budget_reaches_fixed_rmse"] = result["planned_budget"]["rmse"] <= result["fixed"]["rmse"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plan_probe.experiments.real_budget", description=__doc__.split("\n\n")[0])
    parser.add_argument("meta")
    parser.add_argument("--label", default="label")
    parser.add_argument("--fixed-depth", type=int, default=100)
    parser.add_argument("--budget-share", type=float, default=0.4)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-rmse", type=float, default=3.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from plan_probe.probes._io import read_table

    meta = read_table(args.meta)
    result = budget_check(meta, label=args.label, fixed_depth=args.fixed_depth, budget_share=args.budget_share,
                          folds=args.folds, seed=args.seed, target_rmse=args.target_rmse)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
