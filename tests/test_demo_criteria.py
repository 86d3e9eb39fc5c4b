"""Issue #19's mechanical demo criteria on tables built here, with answers counted by hand."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from plan_probe.experiments import demo_criteria as dc


def _tables():
    plan = pd.DataFrame({"candidate": ["a", "b", "c", "d"], "probe_steps": [5, 0, 17, 40],
                         "at_bound": ["c_min", "none", "none", "c_max"]})
    predictions = pd.DataFrame({"candidate": ["a", "b", "c", "d"], "lower": [0.0, -10.0, 5.0, 20.0],
                                "upper": [40.0, 45.0, 30.0, 69.0], "decision": ["go", "no-go", "go", "no-go"],
                                "reason": ["", "duplicates", "", "noise"]})
    return plan, predictions


def test_counts_bounds_and_widths_against_half_the_label_range():
    plan, predictions = _tables()
    got = dc.demo_criteria(plan, predictions, [-50.0, 0.0, 10.0, 50.0])  # range 100: half 50
    assert got["at_bound"]["count"] == 2 and got["at_bound"]["candidates"] == ["a", "d"]
    assert got["at_bound"]["zero_steps"] == ["b"] and not got["at_bound"]["met"]  # 2 of 4 is not fewer than half
    assert got["interval_width"]["half_label_range"] == 50.0
    assert got["interval_width"]["narrower"] == 3 and not got["interval_width"]["met"]  # b: 55 wide
    assert got["interval_width"]["widths"]["b"] == 55.0
    assert got["reasons"] == {"b": "duplicates", "d": "noise"}
    got = dc.demo_criteria(plan.assign(at_bound=["none", "none", "none", "c_max"]), predictions.assign(upper=[40.0, 39.0, 30.0, 69.0]),
                           [-60.0, 60.0])
    assert got["at_bound"]["met"] and got["interval_width"]["met"]


def test_command_prints_json_and_refuses_a_folder_without_the_tables(tmp_path, capsys):
    plan, predictions = _tables()
    plan.to_csv(tmp_path / "plan.csv", index=False)
    predictions.to_csv(tmp_path / "predictions.csv", index=False)
    pd.DataFrame({"run_id": ["r1", "r1", "r2"], "label": [0.0, 0.0, 100.0]}).to_parquet(tmp_path / "meta.parquet")
    assert dc.main([str(tmp_path), "--labels", str(tmp_path / "meta.parquet")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["interval_width"]["runs"] == 2 and out["interval_width"]["half_label_range"] == 50.0
    assert dc.main([str(tmp_path / "nowhere"), "--labels", str(tmp_path / "meta.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: RUN_DIR must hold plan.csv and predictions.csv") and err.count("\n") == 1
    assert dc.main([str(tmp_path), "--labels", str(tmp_path / "meta.parquet"), "--label", "score"]) == 2
    assert "--labels must have columns 'score'" in capsys.readouterr().err
