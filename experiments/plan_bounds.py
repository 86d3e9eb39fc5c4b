"""How many tasks of a meta-dataset sit at a probe limit when planned with default settings (issue #14).

For a risk-observation table (e.g. ``planner/defaults/llm/risk_obs.parquet`` or
``planner/defaults/encoder/risk_obs.parquet``) and a risk model (given, or fitted here with
``fit-risk``'s defaults), plans the table's own tasks (their static features) twice: with the
relative defaults (gamma = 1e-3 S, epsilon = sqrt(S/2)) and with the former absolute ones
(gamma*lambda = 0.01, epsilon = 3), and prints JSON with the ``at_bound`` counts, regimes, total
probe steps and the resolved settings of each, plus the model's label scale and diagnostics.

Run as ``python -m plan_probe.experiments.plan_bounds RISK_OBS [--risk-model MODEL.json] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["bound_counts"]


def bound_counts(model, obs) -> dict:
    """The comparison of the module docstring for a fitted ``model`` and its observation table ``obs``."""
    from plan_probe._plan import PlanSettings, compute_plan

    tasks = obs.drop_duplicates("task_id")[["task_id", *model.static_features_]].reset_index(drop=True)
    tasks["task_id"] = tasks["task_id"].astype(str)
    diag = model.diagnostics_
    out = {"n_tasks": len(tasks), "label_scale": model.label_scale_,
           "diagnostics": {k: diag.get(k) for k in ("method", "max_r_hat", "min_ess", "divergences", "ok", "problems")}}
    for key, settings in (("relative_defaults", PlanSettings()), ("former_absolute", PlanSettings(risk_weight=0.01, target_rmse=3.0))):
        plan, _ = compute_plan(model, tasks, settings)
        used = settings.resolve(model.label_scale_)
        out[key] = {"at_bound": {k: int(v) for k, v in plan["at_bound"].value_counts().items()},
                    "regimes": {k: int(v) for k, v in plan["regime"].value_counts().items()},
                    "probe_steps_total": int(plan["probe_steps"].sum()), "c_opt_median": float(plan["c_opt"].median()),
                    "cost": used.cost, "target_rmse": used.target_rmse}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plan_probe.experiments.plan_bounds", description=__doc__.split("\n\n")[0])
    parser.add_argument("risk_obs")
    parser.add_argument("--risk-model", default=None, help="MODEL.json; default: fit one here (NUTS, fit-risk's defaults)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from plan_probe._risk_model import RiskModel
    from plan_probe.probes._io import read_table

    obs = read_table(args.risk_obs)
    model = RiskModel.load(args.risk_model) if args.risk_model else RiskModel().fit(obs, seed=args.seed)
    print(json.dumps({"risk_obs": args.risk_obs, "risk_model": args.risk_model or "fitted here", **bound_counts(model, obs)},
                     indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
