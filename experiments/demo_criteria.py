"""Issue #19's demo criteria, read off a ``plan-probe run`` output folder.

Three of item 4's criteria are mechanical and computed here from ``plan.csv`` and ``predictions.csv``:
how many candidates the plan put at a probe-depth bound (``at_bound`` = ``c_min`` / ``c_max``; a
decision to probe 0 steps is a choice, not a bound), and how many 90 % intervals are narrower than half
the label's spread across the meta-dataset the predictor was fitted on (its range, max - min over runs;
the 5-95 % range and SD are printed beside it). The third, a failure reason that names the defect a
candidate was built with, needs a reader: every no-go candidate's reason is printed for that.

Run as ``python -m plan_probe.experiments.demo_criteria RUN_DIR --labels META.parquet [--label label]
[--id run_id]`` (e.g. ``demo_out/portfolio`` and ``planner/defaults/llm/meta.parquet``); JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["demo_criteria"]


def demo_criteria(plan, predictions, labels) -> dict:
    """The criteria of the module docstring for a run's ``plan`` and ``predictions`` tables and the
    meta-dataset's per-run ``labels`` (one value per run)."""
    import numpy as np

    labels = np.asarray(labels, dtype=float)
    half_range = float(labels.max() - labels.min()) / 2
    q05, q95 = np.quantile(labels, [0.05, 0.95])
    bound = plan["at_bound"].isin(["c_min", "c_max"])
    width = predictions["upper"] - predictions["lower"]
    n = len(plan)
    return {
        "candidates": n,
        "at_bound": {"count": int(bound.sum()), "candidates": plan.loc[bound, "candidate"].tolist(),
                     "zero_steps": plan.loc[plan["probe_steps"] == 0, "candidate"].tolist(),
                     "probe_steps": dict(zip(plan["candidate"], plan["probe_steps"].astype(int).tolist())),
                     "met": bool(bound.sum() < n / 2)},
        "interval_width": {"widths": dict(zip(predictions["candidate"], width.round(2).tolist())),
                           "half_label_range": half_range, "narrower": int((width < half_range).sum()),
                           "half_5_95_range": float(q95 - q05) / 2, "label_sd": float(labels.std(ddof=1)),
                           "runs": int(labels.size), "met": bool((width < half_range).all())},
        "reasons": {r["candidate"]: r["reason"] for r in predictions.to_dict("records") if r["decision"] == "no-go"},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plan_probe.experiments.demo_criteria", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a plan-probe run output folder (plan.csv, predictions.csv)")
    parser.add_argument("--labels", required=True, help="the predictor's meta-dataset (parquet or CSV)")
    parser.add_argument("--label", default="label")
    parser.add_argument("--id", default="run_id", help="the run id column (one label per run)")
    args = parser.parse_args(argv)
    from plan_probe.probes._io import read_table

    try:
        run = Path(args.run_dir)
        tables = {name: run / f"{name}.csv" for name in ("plan", "predictions")}
        missing = [str(p) for p in tables.values() if not p.is_file()]
        if missing:
            raise ValueError(f"RUN_DIR must hold plan.csv and predictions.csv, but got no {missing[0]!r}; "
                             "pass the -o folder of plan-probe run.")
        meta = read_table(args.labels)
        if not {args.label, args.id} <= set(meta.columns):
            raise ValueError(f"--labels must have columns {args.label!r} and {args.id!r}, but got {sorted(meta.columns)[:8]}; "
                             "pass --label and --id.")
        labels = meta.groupby(args.id)[args.label].first()
        result = demo_criteria(read_table(tables["plan"]), read_table(tables["predictions"]), labels)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
