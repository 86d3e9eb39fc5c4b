"""Issue #7: the Ray backend gives the same probe records as the local backend; failures are isolated."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest
from click.testing import CliRunner

from planner.cli import main

pytest.importorskip("torch")
ray_missing = importlib.util.find_spec("ray") is None


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from probes._testing import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny")
    tok = tiny_tokenizer()
    tiny_model(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Add {i} and {i}.", "output": f"{2 * i}"}) + "\n" for i in range(10)))
    return path


def _probe(tiny_folder, data, out, *extra):
    args = ["probe", str(data), "--model", str(tiny_folder), "--steps", "4", "--record-at", "2,4", "--batch-size", "2",
            "--max-length", "24", "--lora-r", "2", "--target-modules", "q_proj,v_proj", "--seeds", "1,2,3",
            "--device", "cpu", "-o", str(out), *extra]
    return CliRunner().invoke(main, args)


@pytest.mark.skipif(ray_missing, reason="ray is not installed (pip install 'plan-probe[ray]')")
def test_probe_ray_backend_matches_local(tiny_folder, data, tmp_path):
    local = _probe(tiny_folder, data, tmp_path / "local.csv")
    assert local.exit_code == 0, local.output
    remote = _probe(tiny_folder, data, tmp_path / "ray.csv", "--backend", "ray")
    assert remote.exit_code == 0, remote.output
    a = pd.read_csv(tmp_path / "local.csv").sort_values(["seed", "depth"]).reset_index(drop=True)
    b = pd.read_csv(tmp_path / "ray.csv").sort_values(["seed", "depth"]).reset_index(drop=True)
    # Same seeds give the same records. Ray workers run torch with one thread (Ray sets
    # OMP_NUM_THREADS=1), so float reductions sum in another order: losses agree to ~1e-7
    # relative; flatness, a small difference of two losses, gets the tolerance of its inputs.
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-6)
    assert json.loads(remote.stdout)["backend"] == "ray"


def test_ray_address_without_ray_backend_is_one_line_error(tiny_folder, data, tmp_path):
    result = _probe(tiny_folder, data, tmp_path / "x.csv", "--ray-address", "auto")
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: --ray-address needs --backend ray")
    assert not (tmp_path / "x.csv").exists()
