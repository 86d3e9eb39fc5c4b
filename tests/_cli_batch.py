"""Run many ``plan-probe`` command lines in one process tree: import once, fork per command line.

The bad-input battery runs about a hundred command lines. Starting a fresh interpreter for each
costs a second of CPU (imports of click, numpy, pandas, the CLI) before the command even looks at
its input; on a shared 2-core machine that dominated the default suite. This runner imports the CLI
and the common libraries once, then forks one child per command line. Each child is a separate
process as far as the checks go: its own working folder and environment, file descriptors 1 and 2
redirected to files (so C-level writes are caught too), its own exit status (from ``sys.exit``, as
the real entry point), CPU time from ``wait4``. What it does not see is an interpreter's start-up
and shutdown; the battery also runs a sample of its cases as fresh ``python`` processes for that.

Usage: ``python tests/_cli_batch.py JOBS.json RESULTS.json [WORKERS]``. JOBS.json is a list of
``{"args": [...], "cwd": str, "env": {...}}``; RESULTS.json gets, per job, ``rc``, ``stdout``,
``stderr``, ``cpu_seconds``, ``seconds`` and ``imported`` (heavy top-level modules the child
imported that the runner had not).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback

#: Imported once in the runner (every command imports them); anything else a child imports is its own.
PRELOAD = ("plan_probe.cli", "numpy", "pandas")
#: Top-level modules reported when a child imports them (model loading goes through these).
HEAVY = ("torch", "transformers", "peft", "lightgbm", "jax", "numpyro", "gguf", "safetensors", "datasets")
TIMEOUT_S = 180.0


def _child(job: dict, out_path: str, err_path: str, mod_path: str) -> None:
    """Run one command line in this (forked) process and ``os._exit`` with its status."""
    code = 1
    try:
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        for fd, path in ((1, out_path), (2, err_path)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        before = set(sys.modules)
        try:
            from plan_probe.cli import main

            main(job["args"], prog_name="plan-probe")
            code = 0
        except SystemExit as exc:  # what the interpreter does with sys.exit(x)
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:  # an uncaught exception: the traceback the interpreter would print
            traceback.print_exc()
            code = 1
        imported = sorted({m.split(".")[0] for m in set(sys.modules) - before} & set(HEAVY))
        with open(mod_path, "w") as fh:
            json.dump(imported, fh)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed or broken stream: nothing more to save
                pass
        os._exit(code)


def _read(path: str) -> str:
    with open(path, "rb") as fh:
        return fh.read().decode(errors="replace")


def run_jobs(jobs: list[dict], workers: int = 2) -> list[dict]:
    """Fork a child per job (at most ``workers`` at a time); return their results in job order."""
    results: list[dict | None] = [None] * len(jobs)
    running: dict[int, tuple[int, float, tuple[str, str, str]]] = {}
    scratch = tempfile.mkdtemp(prefix="cli_batch_")
    pending = list(enumerate(jobs))
    while pending or running:
        while pending and len(running) < workers:
            i, job = pending.pop(0)
            paths = tuple(os.path.join(scratch, f"{i}.{kind}") for kind in ("out", "err", "mod"))
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(job, *paths)
            running[pid] = (i, time.perf_counter(), paths)
        pid, status, usage = os.wait4(-1, os.WNOHANG)
        if pid == 0:
            now = time.perf_counter()
            for other, (_, start, _) in list(running.items()):
                if now - start > TIMEOUT_S:
                    os.kill(other, 9)
            time.sleep(0.005)
            continue
        i, start, (out, err, mod) = running.pop(pid)
        imported = json.loads(_read(mod)) if os.path.exists(mod) and os.path.getsize(mod) else None
        results[i] = {"rc": os.waitstatus_to_exitcode(status), "stdout": _read(out), "stderr": _read(err),
                      "cpu_seconds": usage.ru_utime + usage.ru_stime, "seconds": time.perf_counter() - start,
                      "imported": imported}
        for path in (out, err, mod):
            if os.path.exists(path):
                os.remove(path)
    os.rmdir(scratch)
    return results


def main(argv: list[str]) -> None:
    import importlib

    with open(argv[0]) as fh:
        jobs = json.load(fh)
    for name in PRELOAD:
        importlib.import_module(name)
    results = run_jobs(jobs, int(argv[2]) if len(argv) > 2 else 2)
    with open(argv[1], "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main(sys.argv[1:])
