"""The shipped heads tier (issue #18 item 1) keeps its contract: scale, depths, forks, user-only features."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

HEADS = Path(__file__).resolve().parents[1] / "experiments" / "metadataset" / "built" / "heads"

# Anything a user would not have: injected rates, protocol flags, evaluation details.
_FORBIDDEN = re.compile(r"noise_rate|label_noise|eval_mode|eval_size|protocol|fixed200|eval100|imbalance_ratio|dup_rate_injected|label_se")


@pytest.fixture(scope="module")
def meta():
    if not (HEADS / "meta.parquet").is_file():
        pytest.skip(f"the heads tier is not in this checkout ({HEADS})")
    return pd.read_parquet(HEADS / "meta.parquet")


@pytest.fixture(scope="module")
def risk():
    return pd.read_parquet(HEADS / "risk_obs.parquet")


def test_scale_seeds_depths_and_run_length(meta):
    runs_per_task = meta.groupby("task_id")["run_id"].nunique()
    assert runs_per_task.size >= 300 and runs_per_task.min() >= 2
    depths = np.sort(meta["depth"].unique())
    assert depths.size >= 5
    assert meta["hp_steps"].min() >= 10 * depths.max()  # a probe is at most a tenth of the run
    # one row per run x depth, every run at every depth, labels present
    assert len(meta) == meta["run_id"].nunique() * depths.size
    assert meta["label"].notna().all()


def test_only_features_a_user_has(meta, risk):
    cols = set(meta.columns) - {"run_id", "task_id", "depth", "label"}
    assert all(c.split("_", 1)[0] in ("static", "dyn", "hp") for c in cols), sorted(cols)
    assert not [c for c in set(meta.columns) | set(risk.columns) if _FORBIDDEN.search(c)]
    assert sum(c.startswith("dyn_") for c in cols) >= 5 and sum(c.startswith("static_") for c in cols) >= 5


def test_fork_variances_for_the_decay_law(risk, meta):
    assert risk["task_id"].nunique() >= 60
    assert risk["dof"].min() >= 15  # >= 16 forks
    per_task = risk.groupby("task_id")["depth"].nunique()
    assert per_task.min() >= 5
    assert (risk["risk_obs"] >= 0).all() and set(risk["task_id"]) <= set(meta["task_id"])
    assert "hp_lr_decay" in risk.columns  # rho, for the envelope bound 2 rho - 1


def test_readme_names_the_build_command_and_time():
    text = (HEADS / "README.md").read_text()
    assert "plan-probe build-meta experiments/metadataset/specs/heads.toml" in text
    assert "CPU-minutes" in text
    spec = Path(__file__).resolve().parents[1] / "experiments" / "metadataset" / "specs" / "heads.toml"
    assert spec.read_text() == (HEADS / "spec.toml").read_text()
