"""Benchmark of ``LiveProbe.update`` (issue #21: each update <= 50 ms on these CPUs, feature forwards excluded).

Replays every run of the shipped LLM-tier meta-dataset (``planner/defaults/llm``) through a
``LiveProbe`` built from the shipped models, calling ``update`` at every record depth (the decision is
reset after each call so that all five depths are timed, not only the ones before a decision). Two
risk curves: the shipped one (flat: the first depth decides) and a steep known one (later depths are
worth probing), which makes no difference to the cost of one call. The dynamic features are read
from the table (the training forwards that compute them are excluded, as the issue states).

Prints JSON: per-call wall and CPU milliseconds (median, p95, max) over all calls, and the cost of
constructing a probe (model loading excluded). Single-threaded BLAS is the default here.

``callback_after_decision_us``: the cost of ``PlanProbeCallback.on_step_end`` once a decision is
made (the state after ``go``: hooks removed, the event returns at once), per call, over 100,000 calls;
the rival is a callback list without it (0 µs). What remains of the callback after a decision is
this call and nothing else: its forward and gradient hooks are removed (tested in
tests/test_live_callback.py).

Run: ``OMP_NUM_THREADS=1 python -m plan_probe.experiments.bench_live [--repeats N]``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _runs():
    from plan_probe._defaults import default_path
    from plan_probe.probes._io import read_table

    meta = read_table(default_path("predictor").parent / "meta.parquet")
    out = []
    for _, g in meta.groupby("run_id", sort=True):
        g = g.sort_values("depth")
        first = g.iloc[0]
        out.append(({c: float(first[c]) for c in g.columns if c.startswith("static_")},
                    {c: float(first[c]) for c in g.columns if c.startswith("hp_")},
                    [(int(r["depth"]), {c: float(r[c]) for c in g.columns if c.startswith("dyn_")}) for _, r in g.iterrows()]))
    return out


def _steep(static_features):
    from plan_probe._risk_model import RiskModel

    p = len(static_features)
    return RiskModel.from_population(np.zeros((3, p)), np.log([100.0, 20000.0, 1.0]), 0.05 * np.eye(3), list(static_features))


def _summary(ms: list) -> dict:
    a = np.asarray(ms)
    return {"n": int(a.size), "median": round(float(np.median(a)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "max": round(float(a.max()), 2)}


def _callback_after_decision(n: int = 100_000) -> float:
    from types import SimpleNamespace

    from plan_probe import DecisionSettings, PlanProbeCallback

    cb = PlanProbeCallback({}, DecisionSettings(threshold=0.0), models_dir="default")
    cb._active = False  # the state after a go decision (what _act leaves behind)
    state, control = SimpleNamespace(global_step=7), SimpleNamespace(should_training_stop=False)
    t0 = time.perf_counter()
    for _ in range(n):
        cb.on_step_end(None, state, control)
    return round(1e6 * (time.perf_counter() - t0) / n, 3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plan_probe.experiments.bench_live", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from plan_probe import DecisionSettings, LiveProbe
    from plan_probe._live import load_models_dir

    risk, pred, static = load_models_dir("default")
    settings = DecisionSettings(threshold=-50.0, full_cost=120.0)
    runs = _runs()
    result = {}
    for name, rm in (("shipped_risk", risk), ("steep_risk", _steep(risk.static_features_))):
        wall, cpu, build = [], [], []
        for _ in range(max(args.repeats, 1)):
            for s, hp, rows in runs:
                t0 = time.perf_counter()
                lp = LiveProbe(s, hp, risk_model=rm, predictor=pred, static_predictor=static, settings=settings)
                build.append(1e3 * (time.perf_counter() - t0))
                for depth, dyn in rows:
                    lp.decision = None  # time every depth, also after a final decision
                    t0, c0 = time.perf_counter(), time.process_time()
                    lp.update(depth, dyn)
                    wall.append(1e3 * (time.perf_counter() - t0))
                    cpu.append(1e3 * (time.process_time() - c0))
        result[name] = {"update_wall_ms": _summary(wall), "update_cpu_ms": _summary(cpu), "construct_wall_ms": _summary(build)}
    result["target_ms"] = 50
    result["callback_after_decision_us"] = _callback_after_decision()
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
