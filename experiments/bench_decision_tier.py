"""Realised go/no-go decisions on held-out runs of a built tier: decision plans anchored to the prior
against the same plans with the risk curves as fitted, deciding now, and fixed probes.

Run as ``python -m plan_probe.experiments.bench_decision_tier DEFAULTS_DIR --threshold 25 --full-cost 120
[--folds 5] [--seed 0] [--min-depth 5] [--max-depth 40] [--risk-obs PATH] [--priors shipped|default]`` on a folder that ``llm_defaults``
wrote (``meta.parquet``, ``meta_runs.parquet``, ``risk_obs.parquet``; e.g. ``planner/defaults/llm``). Prints
JSON. ``--risk-obs`` takes the risk observations from elsewhere, e.g. the readout variant's
``planner/defaults/llm/readout/risk_obs.parquet`` (its depth-aware predictor saw the probe readouts).

Per fold (runs grouped by ``variant_id``):

1. the static-only predictor is refitted on the training runs (the shipped recipe, ``fit_static_predictor``)
   and gives each held-out run its prior N(m₀, S₀);
2. the risk model is fitted (SVI) on the training runs' nested out-of-fold residuals (``risk_obs.parquet``),
   with the priors the shipped ``DEFAULTS_DIR/risk_model.json`` records (``settings.task_sd_prior``,
   ``lkj_eta``; the defaults of ``RiskFitSettings`` when the folder has no risk model or with ``--priors default``);
3. the anchor ratio κ is the training runs' mean squared residual at the shallowest depth over the refitted
   static predictor's out-of-fold MSE (what ``anchor_from_predictors`` measures on the shipped pair);
4. every policy picks a probe length per held-out run; a probe is realised with that run's out-of-fold
   depth-aware prediction at the first recorded depth at or beyond it (label − residual) and is charged that
   depth; 0 steps decides on m₀. With equal error costs (both the full run) the Bayes rule is "go iff the
   mean is at least τ", and the realised loss is the full cost for a wrong call plus λ per probe step.

Policies: ``decide_now`` (0 steps), ``fixed_min`` / ``fixed_max`` (every run at the depth bounds), the decision
plan ``as_fitted`` and ``anchored`` (the pooled κ of ``anchor_from_predictors``), and ``anchored_local``
(experimental: κ per run from the training runs in the same third of the static prediction,
:func:`local_ratios`).

The depth-aware out-of-fold predictions come from the shipped predictor's own cross-fit (folds by run), not
from a refit per fold; the risk observations and priors of a held-out run never enter its own plan.
``depth_minus_static_sq_error`` pairs each run's squared error at every recorded depth with that of its
held-out static prediction (what a probe of that depth adds; negative: the probe helps).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

POLICIES = ("decide_now", "fixed_min", "fixed_max", "as_fitted", "anchored", "anchored_local")


def local_ratios(static_pred, static_res, shallow_res, m0, n_bins: int = 3) -> np.ndarray:
    """κ per held-out run from the training runs in the same bin of the static prediction.

    Training runs are split into ``n_bins`` quantile bins of their static out-of-fold prediction; in each,
    κ = mean(shallow depth-aware residual²) / mean(static residual²); a held-out run takes its m₀'s bin.
    """
    static_pred, static_res, shallow_res = (np.asarray(a, dtype=float) for a in (static_pred, static_res, shallow_res))
    edges = np.quantile(static_pred, np.linspace(0, 1, n_bins + 1)[1:-1])
    train_bin, test_bin = np.digitize(static_pred, edges), np.digitize(np.asarray(m0, dtype=float), edges)
    kappa = np.array([np.mean(shallow_res[train_bin == b] ** 2) / np.mean(static_res[train_bin == b] ** 2)
                      for b in range(n_bins)])
    return kappa[test_bin]


def realised_loss(label, go, steps, *, threshold: float, full_cost: float, step_cost: float = 1.0) -> np.ndarray:
    """Per run: ``full_cost`` for a wrong call (go below τ, or no-go at or above it) plus ``step_cost`` per probe step."""
    label, go, steps = (np.asarray(a) for a in (label, go, steps))
    wrong = np.where(go, label < threshold, label >= threshold)
    return full_cost * wrong + step_cost * steps.astype(float)


def realise(depth_pred, m0, steps, depths) -> tuple[np.ndarray, np.ndarray]:
    """(mean used for the decision, steps charged): m₀ at 0 steps, else the prediction at the first recorded depth ≥ steps.

    ``depth_pred`` is (n_runs, len(depths)), in the order of ``depths`` (ascending).
    """
    depths = np.asarray(depths, dtype=float)
    steps = np.asarray(steps, dtype=float)
    col = np.minimum(np.searchsorted(depths, steps, side="left"), depths.size - 1)
    used = np.where(steps > 0, depth_pred[np.arange(steps.size), col], m0)
    return used, np.where(steps > 0, depths[col], 0.0)


def _paired(a, b, rng, n_boot: int = 2000) -> dict:
    d = np.asarray(a) - np.asarray(b)
    boot = rng.choice(d, size=(n_boot, d.size)).mean(axis=1)
    return {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(d.size)),
            "ci90": [float(np.quantile(boot, 0.05)), float(np.quantile(boot, 0.95))]}


def _fold_plans(train, test, runs, obs, depths, priors, args):
    """Probe steps of every policy for the held-out runs of one fold, and the fold's κ."""
    import pandas as pd

    from plan_probe._decision_plan import DecisionSettings, decision_plan, predictive_variance
    from plan_probe._plan import PlanSettings
    from plan_probe._risk_model import RiskFitSettings, RiskModel
    from plan_probe.experiments.llm_defaults import RISK_FEATURES, fit_static_predictor
    from plan_probe.theory import anchor_risk_draws

    static = fit_static_predictor(runs.loc[runs["run_id"].isin(train)].reset_index(drop=True), seed=args.seed)
    held = runs.set_index("run_id").loc[test]
    X = held[list(static.feature_names_)].reset_index(drop=True)
    m0, s0 = static.predict(X), predictive_variance(static, X)
    risk = RiskModel(RiskFitSettings(method="svi", **priors)).fit(obs.loc[obs["run_id"].isin(train)], seed=args.seed)
    shallow = (obs.loc[obs["run_id"].isin(train) & (obs["depth"] == depths[0])].set_index("run_id")["residual"])
    kappa = float(np.mean(shallow**2) / static.cv_rmse_**2)
    train_runs = runs.loc[runs["run_id"].isin(train)].reset_index(drop=True)
    local = local_ratios(static.oof_pred_, train_runs["label"].to_numpy() - static.oof_pred_,
                         shallow.loc[train_runs["run_id"]].to_numpy(), m0)
    tasks = pd.DataFrame({"task_id": test, **{f: held[f].to_numpy() for f in RISK_FEATURES}})
    draws = risk.posterior_task_draws(tasks, n_draws=256, seed=args.seed)
    settings = PlanSettings(step_cost=1.0, min_depth=args.min_depth, max_depth=args.max_depth)
    steps = {"decide_now": np.zeros(len(test)), "fixed_min": np.full(len(test), float(args.min_depth)),
             "fixed_max": np.full(len(test), float(args.max_depth))}
    for name, anchor in (("as_fitted", {}), ("anchored", {"anchor_depth": float(depths[0]), "anchor_ratio": kappa})):
        decision = DecisionSettings(threshold=args.threshold, full_cost=args.full_cost, **anchor)
        plan = decision_plan(draws["task_id"], m0, s0, draws["l_int"], draws["k"], draws["alpha"], settings, decision)
        steps[name] = plan.set_index("task_id").loc[test, "probe_steps"].to_numpy(dtype=float)
    # experimental: κ local to the prediction (the training runs near the same static prediction)
    l_int, k = anchor_risk_draws(s0, draws["l_int"], draws["k"], draws["alpha"], depths[0], local)
    plan = decision_plan(draws["task_id"], m0, s0, l_int, k, draws["alpha"], settings,
                         DecisionSettings(threshold=args.threshold, full_cost=args.full_cost))
    steps["anchored_local"] = plan.set_index("task_id").loc[test, "probe_steps"].to_numpy(dtype=float)
    return m0, steps, kappa


def shipped_priors(root: Path) -> dict:
    """The risk-model priors ``root/risk_model.json`` was fitted with (so each fold's fit matches the shipped one),
    or {} (the ``RiskFitSettings`` defaults) when the folder has none."""
    from plan_probe._risk_model import RiskModel

    path = root / "risk_model.json"
    if not path.is_file():
        return {}
    settings = RiskModel.load(path).settings_
    return {"task_sd_prior": list(settings.task_sd_prior), "lkj_eta": float(settings.lkj_eta)}


def run(args) -> dict:
    from plan_probe.probes._io import read_table

    root = Path(args.defaults_dir)
    paths = [root / "meta_runs.parquet", Path(args.risk_obs) if args.risk_obs else root / "risk_obs.parquet",
             root / "meta.parquet"]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise ValueError(f"the tier's tables must exist, but got no {str(missing)!r}; pass a folder that "
                         "`make llm-defaults` wrote (and --risk-obs a risk_obs.parquet).")
    runs, obs, meta = (read_table(p) for p in paths)
    priors = shipped_priors(root) if args.priors == "shipped" else {}
    depths = sorted(float(d) for d in obs["depth"].unique())
    label = runs.set_index("run_id")["label"]
    preds = (obs.assign(pred=lambda o: label.loc[o["run_id"]].to_numpy() - o["residual"])
             .pivot(index="run_id", columns="depth", values="pred"))
    variant = meta.drop_duplicates("run_id").set_index("run_id")["variant_id"]
    groups = variant.loc[runs["run_id"]].to_numpy()
    rng = np.random.default_rng(args.seed)
    fold_of = dict(zip(np.unique(groups), rng.permutation(np.unique(groups).size) % args.folds))
    folds = np.array([fold_of[g] for g in groups])
    loss = {p: np.zeros(len(runs)) for p in POLICIES}
    charged = {p: np.zeros(len(runs)) for p in POLICIES}
    kappas, static_res = [], np.zeros(len(runs))
    for k in range(args.folds):
        test_rows = np.flatnonzero(folds == k)
        train, test = runs["run_id"][folds != k].tolist(), runs["run_id"].iloc[test_rows].tolist()
        m0, steps, kappa = _fold_plans(train, test, runs, obs, depths, priors, args)
        kappas.append(kappa)
        static_res[test_rows] = label.loc[test].to_numpy() - m0
        for name, s in steps.items():
            used, cost = realise(preds.loc[test, depths].to_numpy(), m0, s, depths)
            loss[name][test_rows] = realised_loss(label.loc[test], used >= args.threshold, cost,
                                                  threshold=args.threshold, full_cost=args.full_cost)
            charged[name][test_rows] = cost
    summary = {p: {"loss_per_run": float(loss[p].mean()), "steps_per_run": float(charged[p].mean()),
                   "probed": int((charged[p] > 0).sum()),
                   "wrong_calls": int(np.round((loss[p] - charged[p]) / args.full_cost).sum())} for p in POLICIES}
    paired = {f"anchored_minus_{p}": _paired(loss["anchored"], loss[p], rng) for p in POLICIES if p != "anchored"}
    paired["anchored_local_minus_as_fitted"] = _paired(loss["anchored_local"], loss["as_fitted"], rng)
    paired["anchored_local_minus_decide_now"] = _paired(loss["anchored_local"], loss["decide_now"], rng)
    # what a probe adds per depth: held-out squared error of the depth-aware prediction minus the static one's
    depth_sq = (label.loc[runs["run_id"]].to_numpy()[:, None] - preds.loc[runs["run_id"], depths].to_numpy()) ** 2
    by_depth = {f"{d:g}": _paired(depth_sq[:, j], static_res**2, rng) for j, d in enumerate(depths)}
    return {"runs": int(len(runs)), "fold_risk_priors": priors, "depth_minus_static_sq_error": by_depth, "folds": args.folds, "threshold": args.threshold, "full_cost": args.full_cost,
            "depths": depths, "kappa_by_fold": kappas, "policies": summary, "paired": paired}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plan_probe.experiments.bench_decision_tier",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("defaults_dir")
    parser.add_argument("--threshold", type=float, required=True)
    parser.add_argument("--full-cost", type=float, required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-depth", type=int, default=5)
    parser.add_argument("--max-depth", type=int, default=40)
    parser.add_argument("--risk-obs", default=None,
                        help="risk observations to use instead of DEFAULTS_DIR/risk_obs.parquet (e.g. the readout variant's)")
    parser.add_argument("--priors", choices=("shipped", "default"), default="shipped",
                        help="risk-model priors of each fold's fit: those DEFAULTS_DIR/risk_model.json records, or the "
                             "RiskFitSettings defaults")
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
