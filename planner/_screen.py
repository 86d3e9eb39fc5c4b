"""Go/no-go accounting of TuneAhead's Table 4 for a labelled prediction table.

Every candidate is probed (cost P each); a run is launched when its prediction reaches the threshold
(``rule="point"``: pred >= tau, TuneAhead's rule) or when its ``go`` column says so
(``rule="go"``: P(score >= tau) >= the go probability, as written by ``plan-probe predict``).
Without the predictor every run is launched at full cost C. Then

* compute saved = N·C − (N·P + launched·C), as a share of N·C and in cost units;
* successes retained = launched true successes (label >= tau) / true successes;
* false kills = true successes not launched; false launches = launched runs below tau.
"""

from __future__ import annotations

import numpy as np

__all__ = ["screen"]


def screen(frame, *, label: str, threshold: float, full_cost: float, probe_cost: float, rule: str = "point",
           pred_col: str = "pred") -> dict:
    """Table-4 accounting of a prediction table (one row per run).

    Parameters
    ----------
    frame : pandas.DataFrame
        Prediction table with ``pred_col`` (or ``go`` for ``rule="go"``) and the true label.
    label : str
        Column of the true final score.
    threshold : float
        Success threshold tau, in label units.
    full_cost, probe_cost : float
        Cost of one full run (C > 0) and of one probe (P >= 0), in any common unit.
    rule : {"point", "go"}
        Launch rule.
    """
    label = label.strip().lower()
    if label not in frame.columns:
        raise ValueError(f"the label column must exist, but got --label {label!r}; pick one of {list(frame.columns)[:8]}.")
    y = frame[label].to_numpy(dtype=float)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"label values must be finite, but {label!r} has NaN/inf rows; drop them.")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, but got {threshold=}; pass a score.")
    if not full_cost > 0:
        raise ValueError(f"full cost must be positive, but got {full_cost=}; pass --full-cost > 0.")
    if not probe_cost >= 0:
        raise ValueError(f"probe cost must be non-negative, but got {probe_cost=}; pass --probe-cost >= 0.")
    if rule == "point":
        if pred_col not in frame.columns:
            raise ValueError(f"the prediction table needs a {pred_col!r} column, but it has none; pass a plan-probe predict output.")
        pred = frame[pred_col].to_numpy(dtype=float)
        if not np.all(np.isfinite(pred)):
            raise ValueError(f"predictions must be finite, but {pred_col!r} has NaN/inf rows; regenerate them.")
        launch = pred >= threshold
    elif rule == "go":
        if "go" not in frame.columns:
            raise ValueError("rule 'go' needs a 'go' column, but the table has none; run plan-probe predict with --threshold.")
        if "threshold" in frame.columns and not np.allclose(frame["threshold"].to_numpy(dtype=float), threshold):
            raise ValueError(
                f"the go column must come from the same threshold, but the table used {frame['threshold'].iloc[0]!r} "
                f"and --threshold is {threshold!r}; rerun predict with --threshold {threshold!r}."
            )
        launch = frame["go"].astype(bool).to_numpy()
    else:
        raise ValueError(f"rule must be 'point' or 'go', but got {rule=}; pick one of those.")
    n = len(y)
    success = y >= threshold
    launched = int(launch.sum())
    baseline = n * full_cost
    spent = n * probe_cost + launched * full_cost
    n_success = int(success.sum())
    return {
        "runs": n,
        "threshold": float(threshold),
        "rule": rule,
        "full_cost": float(full_cost),
        "probe_cost": float(probe_cost),
        "runs_launched": launched,
        "launched_share": launched / n if n else None,
        "true_successes": n_success,
        "successes_retained": int((launch & success).sum()),
        "successes_retained_share": (int((launch & success).sum()) / n_success) if n_success else None,
        "false_kills": int((~launch & success).sum()),
        "false_launches": int((launch & ~success).sum()),
        "cost_without_predictor": baseline,
        "cost_with_predictor": spent,
        "compute_saved": baseline - spent,
        "compute_saved_share": (baseline - spent) / baseline,
    }
