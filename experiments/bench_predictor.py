"""Where `plan-probe evaluate`'s time goes: CPU seconds per model for one outer fold.

``python -m plan_probe.experiments.bench_predictor META --label COL [--id COL] [--depth D] [--cv 5]``
fits every model of ``evaluate`` on the training part of outer fold 0 (same folds, rows and features
as ``evaluate``), builds its CV+ intervals for the test rows, and prints the process CPU time of
each (single process, one BLAS thread). ``evaluate --cv K --repeats R`` costs about K·R times the
total, divided over ``--jobs`` processes.
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plan_probe.experiments.bench_predictor",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("meta")
    parser.add_argument("--label", required=True)
    parser.add_argument("--id", dest="id_col", default=None)
    parser.add_argument("--depth", type=float, default=None)
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import numpy as np
    from threadpoolctl import threadpool_limits

    from plan_probe._evaluate import _specs, eval_depth
    from plan_probe._meta import load_meta
    from plan_probe._predictor import ProbePredictor, group_folds

    meta = load_meta(args.meta, label=args.label, id_col=args.id_col)
    d_eval = eval_depth(meta, args.depth)
    X, y, ids = meta.X, meta.y, meta.ids
    at_eval = np.ones(len(y), dtype=bool) if d_eval is None else X["depth"].to_numpy(dtype=float) == d_eval
    folds = group_folds(ids, args.cv, args.seed)
    train, test = folds != 0, (folds == 0) & at_eval
    seconds = {}
    with threadpool_limits(limits=1):
        for name, spec in _specs(meta, args.seed).items():
            rows = train if spec.all_depths else train & at_eval
            feats = list(spec.features)
            start = time.process_time()
            model = ProbePredictor(spec.config, meta.groups).fit(
                X.loc[rows, feats], y[rows], groups=ids[rows], target_depth=d_eval if spec.all_depths else None)
            model.predict_interval(X.loc[test, feats], 0.9)
            seconds[name] = round(time.process_time() - start, 3)
    seconds["total"] = round(sum(seconds.values()), 3)
    print(json.dumps({"cpu_seconds_per_outer_fold": seconds, "train_rows": int(train.sum())}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
