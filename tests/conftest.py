"""Shared test settings: offline hub, deterministic CPU, the shared data folder when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (development/CI data only)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A tiny random LLaMA + character tokenizer saved as a local HF folder (what --model accepts)."""
    pytest.importorskip("torch")
    from plan_probe.probes._testing import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny")
    tok = tiny_tokenizer()
    tiny_model(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def data(tmp_path):
    """Ten Alpaca-form records of simple arithmetic."""
    import json

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Add {i} and {i}.", "output": f"{2 * i}"}) + "\n" for i in range(10)))
    return path
