"""Benchmark of the decision objective (issue #20): planning 10,000 tasks on this machine.

Prints JSON with, for 10,000 tasks x 256 posterior draws (best of N repeats):

* ``curves_<suite>_jobs<k>``: :func:`plan_probe.theory.decision_curves` alone (the decision
  optimum of every task), with k worker threads, for static predictions spread around tau
  (``spread``: m0 = tau + 2 sqrt(S0) z, many tasks far from tau) and all near tau (``near``:
  0.3 sqrt(S0) z, every task worth evaluating: the worst case);
* ``plan_<suite>`` / ``plan_<suite>_budget``: the whole decision plan after the risk model is loaded
  (posterior draws, the regime diagnosis, decision curves, reasons; target <= 2 s), without and with
  a portfolio budget of 5 steps per task.

Each entry also gives the process CPU time: on a loaded machine, the CPU time of a single-threaded
run (``jobs1``) is the wall time it would take on one idle core.

Run: ``python -m plan_probe.experiments.bench_decision [--repeats N]``; pin cores with
``taskset -c 0,1`` to measure "2 cores" on a bigger machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _best(fn, repeats: int):
    """Best wall time of N runs, and the CPU time of that run (on a loaded machine the CPU time of a
    single-threaded run is what it would take on one idle core)."""
    times, cpus, out = [], [], None
    for _ in range(max(repeats, 1)):
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    best = min(range(len(times)), key=times.__getitem__)
    return out, {"seconds_best": round(times[best], 3), "seconds_all": [round(t, 3) for t in times],
                 "cpu_seconds_of_best": round(cpus[best], 3), "cpu_seconds_min": round(min(cpus), 3)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of N")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import numpy as np

    from plan_probe._decision_plan import DecisionSettings, compute_decision_plan
    from plan_probe._plan import PlanSettings
    from plan_probe._risk_model import RiskModel
    from plan_probe.experiments.synthetic.risk_generator import RiskGeneratorConfig, generate_tasks, tasks_table
    from plan_probe.theory import decision_curves

    out = {"cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "loadavg_start": os.getloadavg()}
    cfg = RiskGeneratorConfig()
    names = [f"static_f{j}" for j in range(cfg.n_features)]
    model = RiskModel.from_population(cfg.coef, cfg.intercept, np.diag(cfg.task_noise), names)
    truth = generate_tasks(10_000, cfg, seed=args.seed + 7)
    tasks = tasks_table(truth)
    rng = np.random.default_rng(args.seed)
    s0 = (truth["l_int"] + truth["k"]).to_numpy()
    z = rng.standard_normal(len(tasks))
    tau = 55.0
    draws = model.posterior_task_draws(tasks, n_draws=256, seed=args.seed)
    decision = DecisionSettings(threshold=tau, full_cost=1000.0)
    for suite, spread in (("spread", 2.0), ("near", 0.3)):
        m0 = tau + spread * np.sqrt(s0) * z
        for jobs in (1, 2):
            cur, timing = _best(lambda: decision_curves(m0, s0, draws["l_int"], draws["k"], draws["alpha"], tau, 1000.0,
                                                        1000.0, 1.0, 10, 1000, n_jobs=jobs), args.repeats)
            out[f"curves_{suite}_jobs{jobs}"] = {**timing, "share_probed": round(float(np.mean(cur.c_opt > 0)), 3),
                                                 "mean_c_opt": round(float(cur.c_opt.mean()), 2)}
        for key, budget in ((f"plan_{suite}", None), (f"plan_{suite}_budget", 5.0 * len(tasks))):
            settings = PlanSettings(budget=budget, seed=args.seed)
            (plan, _), timing = _best(lambda: compute_decision_plan(model, tasks, settings, decision, m0, s0), args.repeats)
            out[key] = {**timing, "n_draws": settings.n_draws, "total_probe_steps": int(plan["probe_steps"].sum())}
    out["loadavg_end"] = os.getloadavg()
    print(json.dumps(out, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
