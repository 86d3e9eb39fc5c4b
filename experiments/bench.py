"""``plan-probe bench``: the project's timing checks in one table (issue #17).

Rows (see :mod:`.bench_rows`): static descriptors on 1,000 / 10,000 examples with and without the
model (and the 10,000-with-model peak RSS), probe-recording overhead, ``fit-risk`` 300 x 7 (NUTS)
and 1,300 x 6 (SVI), ``plan`` of 10,000 tasks (risk and, once it exists, decision objective),
``fit-predictor`` on 1,300 runs x 6 depths, ``evaluate`` 5 x 5 on 450 rows, and the live decision.
Each row: measured, target, ratio and pass/fail; a row that is not in this build says so.
``--quick`` uses smaller sizes and fewer repeats, scales the targets and says so in the row.
Only click and the standard library load at import (``plan-probe --help`` stays instant).
"""

from __future__ import annotations

import json
import os
import platform
from datetime import date
from pathlib import Path

import click

def _default_data() -> Path | None:
    """``$PLAN_PROBE_BENCH_DATA``, else the development data beside the checkout, else None."""
    env = os.environ.get("PLAN_PROBE_BENCH_DATA")
    if env:
        return Path(env)
    guess = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "instruct" / "dolly_alpaca.jsonl.gz"
    return guess if guess.is_file() else None


def _select(rows, only: str | None, quick: bool):
    keys = [r.key for r in rows]
    if only is None:
        return [r for r in rows if not (quick and r.full_only)]
    wanted = [k.strip() for k in only.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in keys]
    if unknown or not wanted:
        raise ValueError(f"--only must name rows of the benchmark, but got {unknown or only!r}; choose from {','.join(keys)}.")
    return [r for r in rows if r.key in wanted]


def run_bench(rows, ctx) -> list[dict]:
    """Measure each row (a row that raises is reported as failed, the others still run)."""
    import logging

    out = []
    for row in rows:
        logging.getLogger(__name__).info("bench row %s", row.key)
        try:
            res = row.measure(ctx)
        except Exception as exc:  # noqa: BLE001 - a broken check must not hide the other rows
            out.append({"row": row.key, "label": row.key, "measured": None, "target": None, "unit": "", "ratio": None,
                        "pass": None, "note": f"failed: {type(exc).__name__}: {exc}"})
            continue
        out.append({"row": row.key, "label": res.label, "measured": res.value, "target": res.target, "unit": res.unit,
                    "ratio": res.ratio, "pass": res.passed, "note": res.note})
    return out


def _fmt(value, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f} {unit}" if unit != "%" else f"{value:.1f} %"


def format_table(results: list[dict], header: dict) -> str:
    """A Markdown table (one line per row) under a one-line description of the machine and mode."""
    lines = [f"plan-probe bench ({'quick' if header['quick'] else 'full'}) {header['date']}, {header['cpus']} usable cores, "
             f"load {header['loadavg_start'][0]:.1f} -> {header['loadavg_end'][0]:.1f}",
             "",
             "| row | what | measured | target | ratio | result | note |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        verdict = "n/a" if r["pass"] is None else ("pass" if r["pass"] else "FAIL")
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
        target = "n/a" if r["target"] is None else f"<= {_fmt(r['target'], r['unit'])}"
        lines.append(f"| {r['row']} | {r['label']} | {_fmt(r['measured'], r['unit'])} | {target} | "
                     f"{ratio} | {verdict} | {r['note']} |")
    return "\n".join(lines)


@click.command("bench")
@click.option("--quick", is_flag=True, help="Smaller sizes and fewer repeats (about 5 minutes idle); targets scaled and labelled.")
@click.option("--only", default=None, help="Comma-separated row keys (default: every row).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Instruction data (Alpaca/Dolly JSONL) the static rows scale to 1k/10k examples "
                   "(default: $PLAN_PROBE_BENCH_DATA or the development data beside the checkout).")
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="Keep the generated files here (default: a temporary folder).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", default=None, help="Also write the JSON result here.")
def bench(quick, only, fmt, data, workdir, seed, output):
    """Run the project's timing checks and print measured vs target per row."""
    import tempfile

    from plan_probe.experiments.bench_rows import ROWS, BenchContext
    from plan_probe.probes._io import write_json
    from plan_probe.probes._version import __version__

    if output is not None and not str(output).lower().endswith(".json"):
        raise ValueError(f"output must be a .json file, but got {output!r}; pass e.g. -o bench.json.")
    rows = _select(ROWS, only, quick)
    data_path = Path(data) if data is not None else _default_data()
    if data is not None and not data_path.is_file():
        raise ValueError(f"data must be an existing JSONL file, but got {data!r}; pass an Alpaca/Dolly dataset.")
    if data is not None:  # read now: a wrong file would otherwise surface minutes later, mid-benchmark
        from plan_probe.probes._data import load_examples

        load_examples(data_path)
    header = {"quick": quick, "date": date.today().isoformat(), "plan_probe_version": __version__,
              "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
              "machine": platform.machine(), "loadavg_start": list(os.getloadavg()), "data": str(data_path) if data_path else None}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        results = run_bench(rows, BenchContext(quick=quick, workdir=folder, data=data_path, seed=seed))
    header["loadavg_end"] = list(os.getloadavg())
    doc = {**header, "rows": results}
    if output is not None:
        write_json(doc, output)
    click.echo(json.dumps(doc, indent=2) if fmt == "json" else format_table(results, header))
