"""plan-probe bench: the table and JSON shapes on a cheap row, row selection errors, the scaled datasets."""

from __future__ import annotations

import gzip
import json

import pytest
from click.testing import CliRunner

from plan_probe.cli import main


def test_bench_quick_cheap_rows_table_and_json(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["bench", "--quick", "--only", "live-decision"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("|")]
    assert lines[0] == "| row | what | measured | target | ratio | result | note |"
    body = lines[2:]
    assert [ln.split("|")[1].strip() for ln in body] == ["live-decision"]
    assert all(len(ln.split("|")) == 9 for ln in body)  # 7 cells per row
    out = tmp_path / "bench.json"
    res = runner.invoke(main, ["bench", "--quick", "--only", "live-decision", "--format", "json", "-o", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc == json.loads(out.read_text()) and doc["quick"] is True
    (row,) = doc["rows"]
    assert set(row) == {"row", "label", "measured", "target", "unit", "ratio", "pass", "note"}
    assert row["target"] == 50.0 and row["unit"] == "ms"
    if row["measured"] is None:  # until plan_probe.LiveProbe exists
        assert row["pass"] is None and row["note"].startswith(("not available", "not measured"))


def test_bench_selects_rows_in_table_order():
    from plan_probe.experiments.bench import _select
    from plan_probe.experiments.bench_rows import ROWS

    assert [r.key for r in _select(ROWS, "live-decision,plan-decision", False)] == ["plan-decision", "live-decision"]
    quick = [r.key for r in _select(ROWS, None, True)]
    assert "static-1k" in quick and "static-10k-model" not in quick  # --quick leaves out the full-size twins


def test_bench_rejects_unknown_rows():
    res = CliRunner().invoke(main, ["bench", "--only", "static-1k,warp-drive"])
    assert res.exit_code == 2
    assert "--only must name rows of the benchmark" in res.output and "warp-drive" in res.output


def test_bench_row_keys_are_unique_and_cover_the_issue():
    from plan_probe.experiments.bench_rows import ROWS

    keys = [r.key for r in ROWS]
    assert len(keys) == len(set(keys))
    for k in ("static-1k", "static-1k-model", "static-10k", "static-10k-model", "probe-overhead", "fit-risk-nuts",
              "fit-risk-svi", "plan-risk", "plan-decision", "fit-predictor", "evaluate", "live-decision"):
        assert k in keys


def test_scaled_records_repeat_with_perturbations(tmp_path):
    from plan_probe.experiments.bench_data import scaled_records, write_records
    from plan_probe.probes import load_examples

    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Say something about topic number {i} in a few words",
                                       "input": "", "output": f"Topic {i} is a fine topic to talk about today"}) + "\n"
                           for i in range(5)))
    recs = scaled_records(src, 12, seed=1)
    assert len(recs) == 12
    assert sorted(r["output"] for r in recs[:5]) == sorted(json.loads(ln)["output"] for ln in src.read_text().splitlines())
    assert all(r not in recs[:5] for r in recs[5:])  # later passes are perturbed, never exact copies
    assert recs == scaled_records(src, 12, seed=1) and recs != scaled_records(src, 12, seed=2)
    path = write_records(recs, tmp_path / "out.jsonl.gz")
    with gzip.open(path, "rt") as fh:
        assert len(fh.readlines()) == 12
    assert len(load_examples(path)) == 12
    with pytest.raises(ValueError, match="n must be a positive integer"):
        scaled_records(src, 0)
