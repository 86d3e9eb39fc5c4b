"""Benchmark of ``PredictivePruner.prune`` (issue #21: each call <= 50 ms on these CPUs).

Replays every run of the shipped LLM-tier meta-dataset as a trial of one Optuna study on a SQLite
file (one process), with the shipped models and τ = the median final score: the objective reports
the run's probe features at each record depth and asks ``should_prune``. Times only the pruner's
``prune`` (the storage read of ``should_prune`` is Optuna's); the first call of a trial builds its
``LiveProbe`` and is summarised apart. Prints JSON (wall and CPU milliseconds: median, p95, max).

Run: ``OMP_NUM_THREADS=1 python -m plan_probe.experiments.bench_pruner``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _runs():
    from plan_probe._defaults import default_path
    from plan_probe.probes._io import read_table

    meta = read_table(default_path("predictor").parent / "meta.parquet")
    out = {}
    for rid, g in meta.groupby("run_id", sort=True):
        g = g.sort_values("depth")
        first = g.iloc[0]
        out[str(rid)] = ({c: float(first[c]) for c in g.columns if c.startswith("static_")},
                         {c: float(first[c]) for c in g.columns if c.startswith("hp_")},
                         [(int(r["depth"]), {c: float(r[c]) for c in g.columns if c.startswith("dyn_")})
                          for _, r in g.iterrows()], float(first["label"]))
    return out


def _summary(ms) -> dict:
    a = np.asarray(ms)
    return {"n": int(a.size), "median": round(float(np.median(a)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "max": round(float(a.max()), 2)}


def main() -> int:
    import optuna

    from plan_probe import DecisionSettings
    from plan_probe.integrations.optuna import PredictivePruner, report_probe

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs = _runs()
    settings = DecisionSettings(threshold=statistics.median(r[3] for r in runs.values()), full_cost=1000.0)
    times = {"first": [], "later": []}
    seen = set()

    class Timed(PredictivePruner):
        def prune(self, study, trial):
            t, c = time.perf_counter(), time.process_time()
            out = super().prune(study, trial)
            kind = "later" if trial.number in seen else "first"
            seen.add(trial.number)
            times[kind].append((1e3 * (time.perf_counter() - t), 1e3 * (time.process_time() - c)))
            return out

    t0 = time.perf_counter()
    pruner = Timed(None, static_row=lambda tr: runs[tr.params["run"]][0], settings=settings,
                   hyperparams=lambda tr: runs[tr.params["run"]][1])
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        study = optuna.create_study(storage=f"sqlite:///{Path(tmp) / 'bench.db'}", direction="maximize", pruner=pruner)
        for rid in sorted(runs):
            study.enqueue_trial({"run": rid})

        def objective(trial):
            static, hp, records, label = runs[trial.suggest_categorical("run", sorted(runs))]
            for step, row in records:
                report_probe(trial, step, row)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            return label

        study.optimize(objective, n_trials=len(runs))
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    out = {kind: {"wall_ms": _summary([w for w, _ in v]), "cpu_ms": _summary([c for _, c in v])}
           for kind, v in times.items() if v}
    out.update({"trials": len(runs), "pruned": pruned, "model_load_s": round(load_s, 2), "target_ms": 50})
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
