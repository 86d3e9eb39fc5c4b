"""The readout re-record of an LLM tier (experiments/llm_readout.py) on a tiny random LLaMA: the re-run probes
reproduce the recorded rows, the readout joins the meta table only once every run has one, reruns resume."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from plan_probe.cli import main as cli

pytest.importorskip("torch")

from plan_probe.probes import DYN_COLUMNS  # noqa: E402
from plan_probe.experiments import llm_readout as lr  # noqa: E402
from plan_probe.experiments import llm_tier  # noqa: E402
from tests.test_llm_tier import _spec  # noqa: E402


@pytest.fixture()
def built(tiny_folder, tmp_path):
    spec = _spec(tmp_path, tiny_folder, n_candidates=3)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["build-meta", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return spec, out


def _stage(*args):
    return lr.main([*args])


def test_readout_resumes_matches_the_records_and_joins_the_table_when_complete(built, capsys):
    spec, out = built
    n_ok = sum(json.loads(p.read_text())["status"] == "ok" for p in (out / "records").glob("*.json"))
    assert _stage("run", str(spec), "--out", str(out), "--cooldown", "2", "--reference", "6", "--limit", "1") == 0
    assert json.loads(capsys.readouterr().out)["recorded"] == 1
    # one of the runs has a readout: assemble leaves the table without the column
    summary = llm_tier.assemble(llm_tier.load_llm_spec(spec), out)
    import pandas as pd

    assert summary["readout"] == {"runs": 1, "of": n_ok, "merged": False}
    assert "dyn_ref_loss" not in pd.read_parquet(out / "meta.parquet")
    assert _stage("run", str(spec), "--out", str(out), "--cooldown", "2", "--reference", "6") == 0
    assert json.loads(capsys.readouterr().out) == {"recorded": n_ok - 1, "skipped": 1}
    docs = [json.loads(p.read_text()) for p in sorted((out / "readout").glob("*.json"))]
    assert len(docs) == n_ok
    for doc in docs:
        # the re-run probe with readouts reproduces every recorded dyn_* row: the branches leave no trace
        assert doc["matches_record"] and doc["cooldown"] == 2 and doc["n_reference"] == 6
        assert set(doc["record_max_abs_diff"]) == set(DYN_COLUMNS) and max(doc["record_max_abs_diff"].values()) == 0.0
        assert [r["depth"] for r in doc["rows"]] == [2, 4] and all(r["dyn_ref_loss"] > 0 for r in doc["rows"])
        assert all(r["dyn_ref_choice"] > 0 for r in doc["rows"]) and "matches_previous_readout" not in doc
    summary = llm_tier.assemble(llm_tier.load_llm_spec(spec), out)
    meta = pd.read_parquet(out / "meta.parquet")
    assert summary["readout"]["merged"] and meta["dyn_ref_loss"].notna().all()
    by_file = {(d["run_id"], r["depth"]): r["dyn_ref_loss"] for d in docs for r in d["rows"]}
    assert all(by_file[(row.run_id, row.depth)] == pytest.approx(row.dyn_ref_loss) for row in meta.itertuples())
    # a file from before dyn_ref_choice existed counts as missing: recorded again, its old values reproduced
    first = sorted((out / "readout").glob("*.json"))[0]
    old = json.loads(first.read_text())
    first.write_text(json.dumps({**old, "rows": [{"depth": r["depth"], "dyn_ref_loss": r["dyn_ref_loss"]} for r in old["rows"]]}))
    assert llm_tier.assemble(llm_tier.load_llm_spec(spec), out)["readout"]["merged"] is False
    assert _stage("run", str(spec), "--out", str(out), "--cooldown", "2", "--reference", "6") == 0
    assert json.loads(capsys.readouterr().out)["recorded"] == 1
    again = json.loads(first.read_text())
    assert again["matches_previous_readout"] is True and again["rows"] == old["rows"]
    assert _stage("summary", str(spec), "--out", str(out)) == 0
    per_column = json.loads(capsys.readouterr().out)
    assert set(per_column) == {"dyn_ref_loss", "dyn_ref_choice"}
    for per_depth in per_column.values():
        assert set(per_depth) == {"2", "4"} and all(v["runs"] == n_ok for v in per_depth.values())
    # the reference the readouts were measured on is kept beside them, readable as a dataset
    from plan_probe.probes._data import load_examples

    tier = llm_tier.load_llm_spec(spec)
    written = (out / lr.REFERENCE).read_bytes()
    assert load_examples(out / lr.REFERENCE) == lr.reference_set(tier, 6)
    (out / lr.REFERENCE).unlink()
    assert _stage("reference", str(spec), "--out", str(out), "--reference", "6") == 0
    assert (out / lr.REFERENCE).read_bytes() == written
    capsys.readouterr()
    assert _stage("reference", str(spec), "--out", str(out), "--reference", "8") == 2
    assert capsys.readouterr().err.startswith("error: --reference must be the size the readouts used, but got 8")


def test_bad_input_is_one_error_line_and_writes_nothing(built, capsys):
    spec, out = built
    assert _stage("run", str(spec), "--out", str(out), "--cooldown", "-1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cooldown must be an integer >= 0")
    assert not (out / "readout").exists()
    assert _stage("run", str(spec), "--out", str(out / "nope")) == 2
    assert capsys.readouterr().err.startswith("error: --out must hold run records")


def test_compare_pairs_evaluate_without_and_with_the_readout(capsys):
    """On a table whose label is carried by the readout alone, the comparison finds it: the full predictor
    and ridge go from nothing to most of the variance, and a model without probe columns is unchanged
    (the same folds both times)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 40
    x = rng.normal(size=n)
    runs = pd.DataFrame({"run_id": [f"r{i}" for i in range(n)], "variant_id": [f"v{i}" for i in range(n)],
                         "static_n_examples": rng.choice([100.0, 500.0], n), "static_duplicate_rate": rng.uniform(0, 0.5, n),
                         "hp_lr": rng.choice([1e-4, 3e-4], n), "label": 20.0 * x + rng.normal(0, 2.0, n)})
    meta = pd.concat([runs.assign(depth=d, dyn_loss_decay=rng.normal(size=n)) for d in (5, 10)], ignore_index=True)
    readout = pd.DataFrame({"run_id": meta["run_id"], "depth": meta["depth"],
                            "dyn_ref_loss": np.tile(x, 2) + rng.normal(0, 0.1, 2 * n)})
    result = lr.compare(meta, readout.iloc[:-1], cv=3, repeats=1, seed=0)  # one run lacks its depth-10 readout
    assert result["runs"] == n - 1
    models = result["models"]
    for model in ("full", "ridge"):
        assert models[model]["r2_without"] < 0.2 < 0.7 < models[model]["r2_with"]
        assert models[model]["sq_err_diff"] + 3 * models[model]["sq_err_diff_se"] < 0
    assert result["with_full_vs_full_no_dynamic"]["rmse_diff"] < 0
    assert models["full_no_dynamic"]["sq_err_diff"] == pytest.approx(0.0, abs=1e-9)  # no probe column: unchanged
    with pytest.raises(ValueError, match="at least 10 runs with a readout at every depth, but got 3"):
        lr.compare(meta, readout[readout["run_id"].isin(["r0", "r1", "r2"])], cv=5)


def test_an_older_readout_counts_as_reproduced_only_when_every_value_it_holds_comes_out_the_same():
    new = [{"depth": 5, "dyn_ref_loss": 0.30000001, "dyn_ref_choice": 0.6}, {"depth": 10, "dyn_ref_loss": None, "dyn_ref_choice": None}]
    assert lr._same_readout([{"depth": 5, "dyn_ref_loss": 0.3}, {"depth": 10, "dyn_ref_loss": None}], new)
    assert not lr._same_readout([{"depth": 5, "dyn_ref_loss": 0.31}], new)
    assert not lr._same_readout([{"depth": 10, "dyn_ref_loss": 0.3}], new)  # a value where now there is none
    assert not lr._same_readout([{"depth": 20, "dyn_ref_loss": 0.3}], new)  # a depth not recomputed
    assert lr._same_readout([{"depth": 5, "dyn_ref_loss": 0.3 * (1 + 2e-4)}], new)  # another CPU's float32 drift


def test_a_rerun_matches_its_record_within_float_drift_and_not_beyond():
    """The rule of ``matches_record``: 1e-3 relative, and for features that cross zero on a unit scale (loss
    differences, a gradient cosine, a log-loss slope) 1e-3 absolute: their rounding error is on that scale, not
    their own (the drift measured across CPUs). ``_deviations`` keeps the evidence."""
    from plan_probe.experiments.llm_checkpoint_eval import _deviations, _rows_match

    record = {"depth": 5, "dyn_grad_norm_mean": 2.0, "dyn_flatness": -2.409e-4, "dyn_grad_consistency": -0.01164, "status": "ok"}
    drift = {**record, "dyn_flatness": -2.411e-4, "dyn_grad_norm_mean": 2.0 * (1 + 1.2e-4), "dyn_grad_consistency": -0.011749}
    assert _rows_match(record, drift)
    assert not _rows_match(record, {**record, "dyn_grad_norm_mean": 2.0 * (1 + 1e-2)})  # a different trajectory
    assert not _rows_match(record, {**record, "dyn_flatness": -2.409e-4 + 5e-3})  # beyond rounding on the loss scale
    assert not _rows_match({"depth": 5, "status": "ok"}, record)  # nothing to compare is no match
    got = _deviations([record, {**record, "depth": 10}], [drift, {**record, "depth": 10, "dyn_grad_norm_mean": 2.5}])
    assert got["dyn_grad_norm_mean"] == 0.5 and got["dyn_flatness"] == pytest.approx(2e-7)
    assert list(got) == sorted(got) and "status" not in got
