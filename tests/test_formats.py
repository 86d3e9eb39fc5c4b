"""Versioned file formats: schema versions, migration, refusal of newer schemas, no version lock."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from plan_probe.probes._formats import FileFormat

FMT = FileFormat("plan-probe/thing", 3, "make a new one", migrations={1: lambda d: {**d, "b": d["a"] * 2},
                                                                        2: lambda d: {**d, "c": d["b"] + 1}},
                 legacy_names={"thing/1": 1})


def test_stamp_then_read_round_trips_and_records_the_package_version():
    doc = FMT.stamp({"a": 1, "b": 2, "c": 3})
    assert doc["format"] == "plan-probe/thing" and doc["schema_version"] == 3 and "plan_probe_version" in doc
    assert FMT.read(doc, "x") == doc


def test_older_schemas_are_migrated_step_by_step():
    assert FMT.read({"format": "plan-probe/thing", "schema_version": 1, "a": 5}, "x")["c"] == 11
    legacy = FMT.read({"format": "thing/1", "a": 5}, "x")
    assert legacy["format"] == "plan-probe/thing" and legacy["schema_version"] == 3 and legacy["c"] == 11


@pytest.mark.parametrize("doc, fragment", [
    ({"format": "plan-probe/thing", "schema_version": 4}, "upgrade plan-probe"),
    ({"format": "plan-probe/other", "schema_version": 1}, "must have format 'plan-probe/thing'"),
    ({"format": "plan-probe/thing", "schema_version": True}, "positive integer schema_version"),
    ({"format": "plan-probe/thing", "schema_version": "2"}, "positive integer schema_version"),
    ({"format": "plan-probe/thing"}, "positive integer schema_version"),
    ([1, 2], "must be a JSON object"),
])
def test_unknown_or_newer_documents_are_one_clear_error(doc, fragment):
    with pytest.raises(ValueError, match=fragment) as err:
        FMT.read(doc, "f.json")
    assert "\n" not in str(err.value)


def test_shipped_defaults_load_under_a_bumped_package_version(monkeypatch, tmp_path):
    """Loaders compare schemas, never the package version: a release bump keeps the defaults usable."""
    import plan_probe.probes._version as version
    from plan_probe._defaults import default_path
    from plan_probe._predictor import ProbePredictor
    from plan_probe._risk_model import RiskModel

    copy = tmp_path / "defaults"
    copy.mkdir()
    for kind in ("risk_model", "predictor", "predictor_static"):
        src = default_path(kind)
        if src.is_dir():
            shutil.copytree(src, copy / src.name)
        else:
            shutil.copy(src, copy / src.name)
    monkeypatch.setattr(version, "__version__", "99.0.0")
    model = RiskModel.load(copy / "risk_model.json")
    assert model.static_features_
    for name in ("predictor", "predictor_static"):
        assert ProbePredictor.load(copy / name).feature_names_


def test_a_risk_model_with_a_future_schema_is_refused_by_the_cli(tmp_path):
    from plan_probe._defaults import default_path
    from plan_probe._risk_model import _checksum

    doc = json.loads(default_path("risk_model").read_text())
    doc.update(format="plan-probe/risk-model", schema_version=99)
    doc["checksum"] = _checksum(doc)
    future = tmp_path / "future.json"
    future.write_text(json.dumps(doc))
    tasks = tmp_path / "tasks.csv"
    tasks.write_text("task_id\nt1\n")
    out = tmp_path / "plan.csv"
    proc = subprocess.run([sys.executable, "-c", "from plan_probe.cli import main; main()", "plan", str(tasks),
                           "--risk-model", str(future), "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "schema_version" in lines[0], proc.stderr
    assert not out.exists()
