"""The rows of ``plan-probe bench``: one function per timing check, each returning a :class:`Result`.

A row reuses the command or script that owns the check (``plan-probe static``, ``plan-probe
bench-probe``, :mod:`.bench_risk`, ``plan-probe fit-predictor`` / ``evaluate``) and times what a
user waits for: commands run as child processes (imports and model loading included, peak RSS from
``wait4``), library timings in this process as their scripts take them. Adding a row is one
function and one :class:`Row` entry in :data:`ROWS`; a row whose feature is not in this build
returns ``Result(value=None, note="not available: ...")``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["Result", "Row", "BenchContext", "ROWS"]

MODEL = "smollm2-135m-instruct"
_CLI = [sys.executable, "-c", "from plan_probe.cli import main; main()"]


@dataclass(frozen=True)
class Result:
    """One measured row: ``value`` in ``unit`` against ``target`` (smaller is better); None = not measured."""

    label: str
    value: float | None
    target: float
    unit: str
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return None if self.value is None else self.value / self.target

    @property
    def passed(self) -> bool | None:
        return None if self.value is None else self.value <= self.target


@dataclass
class BenchContext:
    """What the rows share: mode, a scratch folder, the instruction data and computed artefacts."""

    quick: bool
    workdir: Path
    data: Path | None
    seed: int = 0
    cache: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    key: str
    measure: Callable[[BenchContext], Result]
    full_only: bool = False  # skipped by --quick (its quick-size twin is another row)


# --- helpers ------------------------------------------------------------------------------------

def run_timed(args: list[str], ctx: "BenchContext | None" = None) -> tuple[float, float, str]:
    """Run a command; return (wall seconds, its peak RSS in GiB, stdout). Raises RuntimeError on failure.

    The child is reaped with ``os.wait4``, so the RSS is that process's own peak (ru_maxrss); its
    CPU seconds (user + system, all threads) go to ``ctx.cache["last_cpu_s"]``.
    """
    import tempfile

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise RuntimeError(f"{' '.join(args[3:5])} exited {proc.returncode}: {last}")
    if ctx is not None:
        ctx.cache["last_cpu_s"] = usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss / 2**20, stdout


def _cpu_note(ctx: BenchContext) -> str:
    """CPU seconds of the last command: steadier than wall time when other jobs share the machine."""
    return f"CPU {ctx.cache.get('last_cpu_s', float('nan')):.1f} s"


def _dataset(ctx: BenchContext, n: int) -> Path:
    from plan_probe.experiments.bench_data import scaled_records, write_records

    key = ("dataset", n)
    if key not in ctx.cache:
        ctx.cache[key] = write_records(scaled_records(ctx.data, n, seed=ctx.seed), ctx.workdir / f"instruct_{n}.jsonl.gz")
    return ctx.cache[key]


def _warm_model(ctx: BenchContext) -> None:
    """Convert/cache the model once (untimed), so the rows time a warm model cache as users see it."""
    if "warm" not in ctx.cache:
        run_timed([*_CLI, "static", str(_dataset(ctx, 1000)), "--limit", "4", "--model", MODEL, "-o", str(ctx.workdir / "warm.json")])
        ctx.cache["warm"] = True


# --- static descriptors -------------------------------------------------------------------------

def _static(n: int, model: bool) -> Callable[[BenchContext], Result]:
    label = f"static, {n:,} examples" + (f", --model {MODEL}" if model else ", no model")

    def measure(ctx: BenchContext) -> Result:
        if ctx.data is None:
            return Result(label, None, 60.0, "s", "not available: no instruction data (pass --data JSONL)")
        path = _dataset(ctx, n)
        args = [*_CLI, "static", str(path), "-o", str(ctx.workdir / f"static_{n}_{int(model)}.json")]
        if model:
            _warm_model(ctx)
            args += ["--model", MODEL]
        wall, rss, _ = run_timed(args, ctx)
        meta = json.loads((ctx.workdir / f"static_{n}_{int(model)}.json").read_text())["metadata"]
        ctx.cache[("static", n, model)] = {"wall": wall, "rss": rss}
        note = f"{_cpu_note(ctx)}; peak RSS {rss:.2f} GiB; samples {meta['samples']}"
        target_note = "issue #17 target" if (n, model) == (10_000, True) else "implied by the 10k-with-model target"
        return Result(label, wall, 60.0, "s", f"{note}; {target_note}", {"peak_rss_gib": rss, "samples": meta["samples"]})

    return measure


def _static_rss(ctx: BenchContext) -> Result:
    label = f"static, 10,000 examples, --model {MODEL}: peak RSS"
    key = ("static", 10_000, True)
    if key not in ctx.cache:
        result = _static(10_000, True)(ctx)
        if result.value is None:
            return Result(label, None, 2.0, "GiB", result.note)
    rss = ctx.cache[key]["rss"]
    return Result(label, rss, 2.0, "GiB", "peak resident set of the static process (wait4 ru_maxrss)")


# --- probe overhead -----------------------------------------------------------------------------

def _probe_overhead(ctx: BenchContext) -> Result:
    if ctx.quick:
        steps, record_at, repeats = 10, "10", 1
        # 1 record depth per 10 steps (twice the full run's density) and the θ₀ OOD pass amortised over
        # 10 steps instead of 100: by the per-component costs (docs/results/speed.md) the same
        # implementation shows about 2.4 x the full run's overhead.
        target, label = 5.0 * 2.4, "probe overhead, SmolLM2 4 x 128, 10 steps, 1 depth, 1 pair (quick; target 5 % x 2.4)"
    else:
        steps, record_at, repeats = 100, "5,10,20,50,100", 3
        target, label = 5.0, "probe overhead, SmolLM2 4 x 128, 100 steps, 5 depths, min of 3 pairs"
    out = ctx.workdir / "bench_probe.json"
    run_timed([*_CLI, "bench-probe", "--model", MODEL, "--steps", str(steps), "--record-at", record_at, "--max-length", "128",
               "--device", "cpu", "--repeats", str(repeats), "-o", str(out)])
    res = json.loads(out.read_text())
    note = (f"median {100 * res['overhead_median']:.1f} %; from CPU times {100 * res['overhead_cpu']:.1f} %; "
            f"bare step {res['bare_step_s']:.2f} s; "
            f"flatness_sample {res.get('flatness_sample')}, ood_sample {res.get('ood_sample')}")
    return Result(label, 100 * res["overhead"], target, "%", note, {"bench_probe": res})


# --- risk model and planner ---------------------------------------------------------------------

def _fit_risk(n_tasks: int, depths: tuple[int, ...], method: str, target: float, quick_tasks: int | None = None):
    def measure(ctx: BenchContext) -> Result:
        from plan_probe.experiments.bench_risk import fit_timed

        n = quick_tasks if ctx.quick and quick_tasks else n_tasks
        scaled = target * n / n_tasks
        label = f"fit-risk {n:,} tasks x {len(depths)} depths ({method})"
        if n != n_tasks:
            label += f" (quick; target scaled x {n}/{n_tasks})"
        cpu0 = time.process_time()
        model, secs, _ = fit_timed(n, depths, ctx.seed)
        cpu = time.process_time() - cpu0
        ctx.cache[("risk_model", method)] = model
        diag = model.diagnostics_
        note = f"CPU {cpu:.1f} s; method {model.method_}; incl. JAX compilation"
        if model.method_ == "nuts":
            note += f"; max r_hat {diag.get('max_r_hat', float('nan')):.3f}, min ESS {diag.get('min_ess', float('nan')):.0f}"
        return Result(label, secs, scaled, "s", note)

    return measure


def _svi_model(ctx: BenchContext):
    if ("risk_model", "SVI") not in ctx.cache:
        from plan_probe.experiments.bench_risk import fit_timed

        ctx.cache[("risk_model", "SVI")] = fit_timed(1300, (5, 10, 20, 50, 100, 200), ctx.seed)[0]
    return ctx.cache[("risk_model", "SVI")]


def _plan_risk(ctx: BenchContext) -> Result:
    from plan_probe._plan import PlanSettings
    from plan_probe.experiments.bench_risk import plan_tasks, plan_timed

    repeats = 1 if ctx.quick else 3
    model, tasks = _svi_model(ctx), plan_tasks(10_000, ctx.seed)
    cpu0 = time.process_time()
    times, _ = plan_timed(model, tasks, PlanSettings(seed=ctx.seed), repeats)
    cpu = (time.process_time() - cpu0) / repeats
    return Result("plan 10,000 tasks, --objective risk (model loaded)", min(times), 2.0, "s",
                  f"best of {repeats}; CPU {cpu:.2f} s per plan; 256 draws/task")


def _plan_decision(ctx: BenchContext) -> Result:
    """The decision objective of issue #20 (``compute_decision_plan``), static predictions spread around tau."""
    label = "plan 10,000 tasks, --objective decision (model loaded)"
    try:
        from plan_probe._decision_plan import DecisionSettings, compute_decision_plan
    except ImportError:
        return Result(label, None, 2.0, "s", "not available: plan --objective decision is not in this build (issue #20)")
    import numpy as np

    from plan_probe._plan import PlanSettings
    from plan_probe.experiments.bench_risk import plan_tasks

    tasks = plan_tasks(10_000, ctx.seed)
    rng = np.random.default_rng(ctx.seed)
    tau, s0 = 55.0, np.full(len(tasks), 25.0)  # a static-only prediction per task: mean m0, variance s0 (score units)
    m0 = tau + 2.0 * np.sqrt(s0) * rng.standard_normal(len(tasks))
    settings, decision = PlanSettings(seed=ctx.seed), DecisionSettings(threshold=tau, full_cost=1000.0)
    repeats = 1 if ctx.quick else 3
    times, cpus = [], []
    for _ in range(repeats):
        start, cpu0 = time.perf_counter(), time.process_time()
        compute_decision_plan(_svi_model(ctx), tasks, settings, decision, m0, s0)
        times.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu0)
    return Result(label, min(times), 2.0, "s",
                  f"best of {repeats}; CPU {min(cpus):.2f} s per plan; tau 55, full cost 1000 steps, 256 draws/task")


# --- predictor ----------------------------------------------------------------------------------

def _fit_predictor(ctx: BenchContext) -> Result:
    from plan_probe.experiments.synthetic.meta_generator import make_meta_dataset

    n = 400 if ctx.quick else 1300
    label = f"fit-predictor, {n:,} runs x 6 depths (synthetic)"
    target = 60.0 * n / 1300
    if n != 1300:
        label += f" (quick; target scaled x {n}/1300)"
    meta = ctx.workdir / f"meta_{n}.csv"
    make_meta_dataset(n, seed=ctx.seed).to_csv(meta, index=False)
    wall, _, _ = run_timed([*_CLI, "fit-predictor", str(meta), "--label", "score", "--seed", str(ctx.seed),
                            "-o", str(ctx.workdir / f"predictor_{n}")], ctx)
    return Result(label, wall, target, "s", f"{_cpu_note(ctx)}; command wall time (imports included); issue #15 target")


def _evaluate(ctx: BenchContext) -> Result:
    from plan_probe.experiments.synthetic.meta_generator import make_tuneahead_layout

    repeats = 1 if ctx.quick else 5
    label = f"evaluate --cv 5 --repeats {repeats}, 450 rows (TuneAhead layout)"
    target = 180.0 * repeats / 5
    if ctx.quick:
        label += " (quick; target scaled x 1/5)"
    meta = ctx.workdir / "tuneahead_450.csv"
    make_tuneahead_layout(450, seed=ctx.seed).to_csv(meta, index=False)
    wall, _, _ = run_timed([*_CLI, "evaluate", str(meta), "--label", "overall_accuracy", "--cv", "5",
                            "--repeats", str(repeats), "--seed", str(ctx.seed)], ctx)
    return Result(label, wall, target, "s", f"{_cpu_note(ctx)}; command wall time (imports included); issue #15 target")


def _live_decision(ctx: BenchContext) -> Result:
    import plan_probe

    label = "live decision: LiveProbe.update per record depth"
    if not hasattr(plan_probe, "LiveProbe"):
        return Result(label, None, 50.0, "ms", "not available: plan_probe.LiveProbe is not in this build (issue #21)")
    return Result(label, None, 50.0, "ms", "not measured: LiveProbe exists; add its measurement here (issue #21)")


ROWS: list[Row] = [
    Row("static-1k", _static(1_000, False)),
    Row("static-1k-model", _static(1_000, True)),
    Row("static-10k", _static(10_000, False), full_only=True),
    Row("static-10k-model", _static(10_000, True), full_only=True),
    Row("static-10k-model-rss", _static_rss, full_only=True),
    Row("probe-overhead", _probe_overhead),
    Row("fit-risk-nuts", _fit_risk(300, (5, 10, 20, 50, 100, 200, 500), "NUTS", 60.0, quick_tasks=150)),
    Row("fit-risk-svi", _fit_risk(1300, (5, 10, 20, 50, 100, 200), "SVI", 60.0)),
    Row("plan-risk", _plan_risk),
    Row("plan-decision", _plan_decision),
    Row("fit-predictor", _fit_predictor),
    Row("evaluate", _evaluate),
    Row("live-decision", _live_decision),
]
