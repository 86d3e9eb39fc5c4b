"""A stand-in with LiveProbe's interface for the integration tests' plumbing (no fitted models).

Its prediction is ``50 + 10 * dyn_quality`` with a standard deviation that halves with each
doubling of depth; it answers ``no_go``/``go`` once P(score >= threshold) leaves [0.05, 0.95].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

DEPTHS = (5, 10, 20, 50, 100, 200)


@dataclass(frozen=True)
class StandInDecision:
    action: str
    depth: int
    prediction: float
    interval: tuple
    p_above: float
    expected_loss_now: float
    value_of_next: float
    next_depth: int | None
    reasons: tuple = ()

    def to_json(self) -> dict:
        return asdict(self)


class StandInProbe:
    def __init__(self, static_row, hyperparams, threshold: float = 50.0):
        self.static_row, self.hyperparams, self.threshold = dict(static_row), dict(hyperparams), threshold
        self.last = 0
        self.calls = 0

    def update(self, depth, dyn_row):
        if depth <= self.last:
            raise ValueError(f"depths must increase, but got depth={depth} after {self.last}; pass them in order.")
        if "dyn_quality" not in dyn_row or dyn_row["dyn_quality"] is None:
            raise ValueError("dyn_row lacks dyn_quality; record it.")
        self.last, self.calls = depth, self.calls + 1
        pred = 50.0 + 10.0 * float(dyn_row["dyn_quality"])
        sd = 40.0 / math.sqrt(depth)
        p = 0.5 * math.erfc(-(pred - self.threshold) / (sd * math.sqrt(2)))
        action = "no_go" if p < 0.05 else ("go" if p > 0.95 else "continue")
        later = [d for d in DEPTHS if d > depth]
        if action == "continue" and not later:
            action = "go" if p >= 0.5 else "no_go"
        return StandInDecision(action, int(depth), pred, (pred - 2 * sd, pred + 2 * sd), p, min(p, 1 - p), 0.0,
                               later[0] if action == "continue" else None)


def make_standin(static_row, hyperparams):
    return StandInProbe(static_row, hyperparams)


def default_runs() -> dict:
    """The shipped LLM-tier meta-dataset's runs: run_id -> {static, hp, dyn: [(depth, row)], label}."""
    from plan_probe._defaults import default_path
    from plan_probe.probes._io import read_table

    meta = read_table(default_path("predictor").parent / "meta.parquet")
    out = {}
    for rid, g in meta.groupby("run_id", sort=True):
        g = g.sort_values("depth")
        first = g.iloc[0]
        out[str(rid)] = {
            "static": {c: float(first[c]) for c in g.columns if c.startswith("static_")},
            "hp": {c: float(first[c]) for c in g.columns if c.startswith("hp_")},
            "dyn": [(int(r["depth"]), {c: float(r[c]) for c in g.columns if c.startswith("dyn_")}) for _, r in g.iterrows()],
            "label": float(first["label"]),
        }
    return out


def replay(probe, dyn) -> object:
    """The final (or last) decision of ``probe`` fed the records ``[(depth, row), ...]`` in order."""
    decision = None
    for depth, row in dyn:
        decision = probe.update(depth, row)
        if decision.action != "continue":
            break
    return decision
