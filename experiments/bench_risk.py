"""Benchmarks of the risk area (issue #3): fit and plan wall times on this machine.

Prints JSON with

* ``fit_300x7``: ``fit-risk`` (method auto -> NUTS) on 300 tasks x 7 depths;
* ``fit_1300x6``: ``fit-risk`` (method auto -> SVI) on 1,300 tasks x 6 depths (target <= 60 s);
* ``plan_10000`` / ``plan_10000_budget``: planning 10,000 tasks after the model is loaded
  (target <= 2 s), without and with a portfolio budget.

Times include JAX compilation (what a user waits for); each fit also reports its process CPU
time (``cpu_seconds``), the fairer number on a shared machine. ``--nested`` fits nested residual
vectors (one run per task, docs/theory.md §2) instead of fork variances. Run:
``python -m plan_probe.experiments.bench_risk [--skip-nuts] [--nested] [--repeats N]``; pin cores
with ``taskset -c 0,1`` to measure "2 cores" on a bigger machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _fit(n_tasks: int, depths, seed: int, nested: bool = False):
    import numpy as np

    from plan_probe.experiments.synthetic.residual_coverage import nested_residual_table
    from plan_probe.experiments.synthetic.risk_generator import RiskGeneratorConfig, generate_tasks, risk_observations
    from plan_probe._risk_model import RiskModel

    cfg = RiskGeneratorConfig(depths=tuple(depths))
    truth = generate_tasks(n_tasks, cfg, seed=seed)
    if nested:
        obs = nested_residual_table(truth, depths, 1, np.random.default_rng(seed + 1))
    else:
        obs = risk_observations(truth, cfg, seed=seed + 1)
    start, cpu = time.perf_counter(), time.process_time()
    model = RiskModel().fit(obs, seed=seed)
    return model, time.perf_counter() - start, len(obs), time.process_time() - cpu


def fit_timed(n_tasks: int, depths, seed: int):
    """Fit the risk model (method auto) on ``n_tasks`` synthetic tasks; return (model, seconds, n_obs)."""
    model, secs, n_obs, _ = _fit(n_tasks, depths, seed)
    return model, secs, n_obs


def plan_tasks(n_tasks: int, seed: int):
    """``n_tasks`` synthetic tasks to plan (the generator's static features)."""
    from plan_probe.experiments.synthetic.risk_generator import RiskGeneratorConfig, generate_tasks, tasks_table

    return tasks_table(generate_tasks(n_tasks, RiskGeneratorConfig(), seed=seed + 7))


def plan_timed(model, tasks, settings, repeats: int) -> tuple[list[float], object]:
    """Wall times of ``compute_plan(model, tasks, settings)`` over ``repeats`` calls, and the last plan."""
    from plan_probe._plan import compute_plan

    times, plan = [], None
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        plan, _ = compute_plan(model, tasks, settings)
        times.append(time.perf_counter() - start)
    return times, plan


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-nuts", action="store_true", help="skip the 300 x 7 NUTS fit")
    parser.add_argument("--repeats", type=int, default=3, help="plan timings: best of N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nested", action="store_true", help="nested residual vectors instead of fork variances")
    args = parser.parse_args(argv)

    from plan_probe.experiments.synthetic.risk_generator import RiskGeneratorConfig, generate_tasks, tasks_table
    from plan_probe._plan import PlanSettings, compute_plan
    from plan_probe._risk_model import RiskModel

    out = {"cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "loadavg_start": os.getloadavg()}
    if not args.skip_nuts:
        model, secs, n_obs, cpu = _fit(300, (5, 10, 20, 50, 100, 200, 500), args.seed, args.nested)
        out["fit_300x7"] = {"seconds": round(secs, 2), "cpu_seconds": round(cpu, 2), "method": model.method_, "n_obs": n_obs,
                            "max_r_hat": model.diagnostics_.get("max_r_hat"), "min_ess": model.diagnostics_.get("min_ess"),
                            "divergences": model.diagnostics_.get("divergences"), "ok": model.diagnostics_.get("ok")}
    model, secs, n_obs, cpu = _fit(1300, (5, 10, 20, 50, 100, 200), args.seed, args.nested)
    out["fit_1300x6"] = {"seconds": round(secs, 2), "cpu_seconds": round(cpu, 2), "method": model.method_, "n_obs": n_obs,
                         "elbo_rel_change_last_tenth": model.diagnostics_.get("elbo_rel_change_last_tenth"),
                         "ok": model.diagnostics_.get("ok")}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.json")
        model.save(path)
        model = RiskModel.load(path)
    tasks = tasks_table(generate_tasks(10_000, RiskGeneratorConfig(), seed=args.seed + 7))
    for key, budget in (("plan_10000", None), ("plan_10000_budget", 0.4 * 100 * 10_000)):
        settings = PlanSettings(budget=budget, seed=args.seed)
        times = []
        for _ in range(max(args.repeats, 1)):
            start = time.perf_counter()
            plan, _ = compute_plan(model, tasks, settings)
            times.append(time.perf_counter() - start)
        out[key] = {"seconds_best": round(min(times), 3), "seconds_all": [round(t, 3) for t in times],
                    "n_draws": settings.n_draws, "total_probe_steps": int(plan["probe_steps"].sum())}
    out["loadavg_end"] = os.getloadavg()
    print(json.dumps(out, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
