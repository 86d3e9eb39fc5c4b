"""Probe-checkpoint evaluation of recorded LLM-tier runs: does the model at the end of a c-step
probe already score what the finished run scores?

The tier's probe features (``dyn_*``) describe the optimisation (losses, gradients, parameter
motion); none of them looks at what the adapted model *answers*. This experiment measures whether
such a look would carry the label, before anyone re-records a tier with it. For each chosen run:

1. re-run its probe to depth ``c`` (same seed, same data order, the constant learning rate that
   precedes the decay: exactly the run's first ``c`` steps), and check that the recomputed
   depth-``c`` feature row equals the recorded one (``matches_record``);
2. score a *reference set*, balanced held-out examples disjoint from the label's evaluation set,
   with every metric of ``llm_eval.metrics_from_nll``.

One JSON line per run (appended; a rerun skips the runs already in the file). ``summary`` compares
the reference score with the label: Pearson and Spearman correlation and the leave-one-out R² of
the linear fit ``label ~ a + b * score``.

Run as ``python -m plan_probe.experiments.llm_checkpoint_eval run SPEC.toml --records DIR --out FILE``
(``--pick K`` runs spread over the label's range, or ``--runs ID,ID``) and ``... summary FILE``;
``summary FILE --predictions OOF`` also compares the reference score with a rival prediction of the same
runs (the out-of-fold predictions of ``plan-probe evaluate ... --predictions OOF``): does it add to it?
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["reference_examples", "pick_runs", "checkpoint_scores", "summarise"]

log = logging.getLogger(__name__)

# rows of the re-run probe and of the record agree to 1e-3 of each feature's scale. Same seed, same bytes on
# one machine, but a CPU with other float32 kernels (AVX-512 vs AVX2) drifts in the last digits over 40
# steps: on tier v3 runs up to 1.2e-4 relative (a gradient cosine of 0.87: float32 dot products over the
# LoRA gradients), so 1e-3 leaves a margin of 8. A run of another seed still fails: in the 8 same-design pairs
# of llm_v3_replicates the initial loss differs by 5.9e-2 relative or more, the mean gradient norm by 4.7e-3
_MATCH_RTOL = 1e-3
# features that cross zero on a unit scale (loss differences, a cosine, a log-loss slope): their rounding
# error is absolute, on that scale (measured: flatness 2.4e-4 off by 1.9e-7, a gradient cosine -0.0116 off
# by 5.5e-6, i.e. 5e-4 relative), so they get the same tolerance as an absolute one
_UNIT_SCALE = ("dyn_flatness", "dyn_forgetting", "dyn_grad_consistency", "dyn_loss_decay")


def reference_examples(spec, corpus, eval_examples, n: int, seed: int) -> list:
    """``n`` balanced held-out examples of the spec's task, none of them in ``eval_examples``."""
    from plan_probe.experiments.llm_tier import _examples
    from plan_probe.probes._instruct_data import _record, task_labels

    labels = task_labels(spec.task)
    if n < len(labels):
        raise ValueError(f"the reference set needs at least one example per label, but got n={n}; pass e.g. --reference 100.")
    taken = {ex.input for ex in eval_examples}  # the prompt text: what the model sees
    pool = corpus[corpus["split"] == "eval"]
    rng = np.random.default_rng(seed)
    chosen = []
    for label in labels:
        unused = [ex for ex in _examples([_record(text, label, spec.task) for text in pool.loc[pool["label"] == label, "text"]])
                  if ex.input not in taken]
        k = n // len(labels)
        if len(unused) < k:
            raise ValueError(f"the held-out pool has {len(unused)} unused {label!r} examples, but the reference set needs {k}; "
                             "pass a smaller --reference.")
        chosen += [unused[i] for i in rng.choice(len(unused), size=k, replace=False)]
    return chosen


def pick_runs(records: list[dict], k: int) -> list[str]:
    """``k`` ok runs spread evenly over the label's range (sorted by label, evenly spaced ranks)."""
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: (r["result"]["label"], r["run_id"]))
    if not 1 <= k <= len(ok):
        raise ValueError(f"--pick must be between 1 and the {len(ok)} ok runs, but got {k}; pass a smaller --pick.")
    ranks = np.unique(np.linspace(0, len(ok) - 1, k).round().astype(int))
    return [ok[i]["run_id"] for i in ranks]


def _rows_match(recorded: dict, recomputed: dict) -> bool:
    keys = [k for k in recorded if k.startswith("dyn_")]
    return bool(keys) and all(math.isclose(recorded[k], recomputed[k], rel_tol=_MATCH_RTOL,
                                           abs_tol=_MATCH_RTOL if k in _UNIT_SCALE else 1e-9) for k in keys)


def _deviations(recorded: list[dict], recomputed: list[dict]) -> dict[str, float]:
    """Per ``dyn_*`` feature, the largest absolute difference between recorded and recomputed rows of a depth
    (the evidence behind ``matches_record``, kept so a verdict can be re-judged without re-running)."""
    by_depth = {int(r["depth"]): r for r in recomputed}
    out: dict[str, float] = {}
    for row in recorded:
        other = by_depth.get(int(row["depth"]))
        for k, v in row.items():
            if other is not None and k.startswith("dyn_") and v is not None and other.get(k) is not None:
                out[k] = max(out.get(k, 0.0), abs(float(v) - float(other[k])))
    return dict(sorted(out.items()))


def checkpoint_scores(spec, cand, record: dict, model, tokenizer, corpus, reference, depth: int, cooldown: int = 0) -> dict:
    """Re-run ``cand``'s probe to ``depth`` and score ``reference`` with the adapted model.

    ``cooldown > 0`` continues the probe for ``cooldown`` more steps with the learning rate decaying linearly
    to zero (a warmup-stable-decay branch off the constant-lr prefix) before scoring: the cooled-down model,
    not the constant-lr iterate, is scored. The rows up to ``depth`` are still the run's own.
    """
    from plan_probe.experiments.llm_eval import label_nll, metrics_from_nll
    from plan_probe.experiments.llm_tier import _train_examples, probe_config
    from plan_probe.probes._instruct_data import task_labels
    from plan_probe.probes._probe import ProbeBatches, _ood_texts, attach_lora, probe_loop

    labels = task_labels(spec.task)
    # a depth inside the constant-lr phase: this config's steps are the run's first `depth` steps
    config = dataclasses.replace(probe_config(spec, cand), steps=depth + cooldown, lr_decay_steps=cooldown,
                                 record_at=tuple(d for d in spec.record_at if d <= depth))
    batches = ProbeBatches(_train_examples(cand.variant, corpus), tokenizer, config, _ood_texts(None))
    device = next(model.parameters()).device
    c0 = time.process_time()
    with attach_lora(model, config) as (peft_model, params):
        rows, diverged = probe_loop(peft_model, params, batches, config, device, record=True)
        nll = None if diverged is not None else label_nll(peft_model, tokenizer, reference, labels, max_length=spec.max_length)
    recorded = next((r for r in record["result"].get("rows", []) if r["depth"] == depth), None)
    here = next((r for r in rows if r["depth"] == depth), None)
    out = {"run_id": cand.run_id, "depth": depth, "cooldown": cooldown, "label": record["result"].get("label"), "diverged_step": diverged,
           "matches_record": bool(here and recorded and _rows_match(recorded, here)),
           "cpu_time_s": round(time.process_time() - c0, 3)}
    if nll is not None:
        truth = np.array([labels.index(ex.output) for ex in reference])
        out["reference"] = metrics_from_nll(nll, truth)
    return out


def _read_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(spec, records: list[dict], out: Path, run_ids: list[str], *, depth: int, n_reference: int, cooldown: int = 0,
        device=None) -> dict:
    """Append one line per run of ``run_ids`` not yet in ``out``; returns counts."""
    from plan_probe.experiments.llm_tier import _worker_state, candidates

    constant_until = spec.steps - spec.lr_decay_steps
    if depth not in spec.record_at or depth > constant_until:
        raise ValueError(f"depth must be a recorded depth within the constant-lr phase (<= {constant_until}), but got {depth=}; "
                         f"pass one of {[d for d in spec.record_at if d <= constant_until]}.")
    by_id = {r["run_id"]: r for r in records}
    unknown = [i for i in run_ids if i not in by_id]
    if unknown:
        raise ValueError(f"every run must have a record, but got unknown run ids {unknown[:3]}; pick ids from the records folder.")
    done = {line["run_id"] for line in _read_lines(out)}
    todo = [i for i in run_ids if i not in done]
    if todo:
        cands = {c.run_id: c for c in candidates(spec)}
        # the builder's own loading: the same corpus, held-out set and float32 model as the recorded runs
        corpus, eval_examples, model, tokenizer = _worker_state(spec, None, device)
        reference = reference_examples(spec, corpus, eval_examples, n_reference, seed=spec.seed + 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        for run_id in todo:
            line = checkpoint_scores(spec, cands[run_id], by_id[run_id], model, tokenizer, corpus, reference, depth, cooldown)
            with out.open("a", encoding="utf-8") as fh:  # one line per run: a kill loses at most the run in progress
                fh.write(json.dumps(line, sort_keys=True) + "\n")
            log.info("run %s: label %.1f, reference %s", run_id, line["label"], line.get("reference", {}).get(spec.label_metric))
    return {"scored": len(todo), "skipped": len(run_ids) - len(todo)}


def _loo_residuals(y: np.ndarray, *columns) -> np.ndarray:
    """Leave-one-out residuals of least squares of y on an intercept and ``columns``, in closed form."""
    X = np.column_stack([np.ones_like(y), *columns])
    hat = X @ np.linalg.pinv(X)
    return (y - hat @ y) / (1.0 - np.diag(hat))


def compare_with_rival(lines: list[dict], metric: str, rival: dict[str, float]) -> dict:
    """Does the reference score add to a rival prediction of the same runs (e.g. the predictor's out-of-fold one)?

    On the runs scored and predicted: R² of the rival as it is (1 − SSE / SS about these runs' mean), the
    leave-one-out R² of a linear recalibration of the rival alone and of the rival plus the reference score,
    and the paired per-run difference of their squared LOO errors (mean ± SE; negative: the reference helps).
    """
    scored = [ln for ln in lines if "reference" in ln and ln["run_id"] in rival]
    if len(scored) < 5:
        raise ValueError(f"a comparison needs at least 5 runs both scored and predicted, but got {len(scored)}; "
                         "pass the predictions of the same tier (plan-probe evaluate --predictions).")
    y = np.array([ln["label"] for ln in scored], dtype=float)
    x = np.array([ln["reference"][metric] for ln in scored], dtype=float)
    r = np.array([rival[ln["run_id"]] for ln in scored], dtype=float)
    ss = np.sum((y - y.mean()) ** 2)
    alone, both = _loo_residuals(y, r), _loo_residuals(y, r, x)
    diff = both**2 - alone**2
    return {"runs": len(scored), "rival_r2": float(1.0 - np.sum((y - r) ** 2) / ss),
            "rival_loo_r2": float(1.0 - np.sum(alone**2) / ss), "rival_plus_reference_loo_r2": float(1.0 - np.sum(both**2) / ss),
            "sq_err_diff": float(diff.mean()), "sq_err_diff_se": float(diff.std(ddof=1) / np.sqrt(diff.size))}


def summarise(lines: list[dict], metric: str) -> dict:
    """Pearson / Spearman correlation of the reference ``metric`` with the label, and the LOO R² of a linear fit."""
    from scipy import stats

    scored = [ln for ln in lines if "reference" in ln]
    x = np.array([ln["reference"][metric] for ln in scored], dtype=float)
    y = np.array([ln["label"] for ln in scored], dtype=float)
    if x.size < 4:
        raise ValueError(f"a summary needs at least 4 scored runs, but got {x.size}; score more runs first.")
    summary = {"runs": int(x.size), "metric": metric, "all_match_record": all(ln["matches_record"] for ln in scored),
               "pearson": None, "spearman": None, "loo_r2": None,
               "median_cpu_time_s": float(np.median([ln["cpu_time_s"] for ln in scored]))}
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # every run scored (or labelled) alike: no correlation is defined
        return summary
    loo = _loo_residuals(y, x)
    summary.update(pearson=float(stats.pearsonr(x, y)[0]), spearman=float(stats.spearmanr(x, y)[0]),
                   loo_r2=float(1.0 - np.mean(loo**2) / np.var(y)))
    return summary


def _rival(path: Path, model: str) -> dict[str, float]:
    """``{run_id: prediction}`` from an ``evaluate --predictions`` table (rows at the evaluation depth)."""
    from plan_probe.probes._io import read_table

    table = read_table(path)
    if model not in table.columns or "run_id" not in table.columns:
        raise ValueError(f"--predictions must have run_id and {model!r} columns, but got {list(table.columns)[:10]}; "
                         "write it with plan-probe evaluate ... --id run_id --predictions FILE.")
    return dict(zip(table["run_id"].astype(str), table[model].astype(float)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plan_probe.experiments.llm_checkpoint_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("run", "summary"))
    parser.add_argument("path", help="run: the tier spec (TOML); summary: the JSON-lines file of run")
    parser.add_argument("--records", default=None, help="run: the tier's records folder")
    parser.add_argument("--out", help="run: the JSON-lines file to append to")
    parser.add_argument("--runs", default=None, help="run: comma-separated run ids")
    parser.add_argument("--pick", type=int, default=None, help="run: this many ok runs spread over the label's range")
    parser.add_argument("--depth", type=int, default=None, help="run: the probe depth (default: the deepest recorded depth before the lr decay)")
    parser.add_argument("--reference", type=int, default=100, help="run: reference-set size (balanced)")
    parser.add_argument("--cooldown", type=int, default=0,
                        help="run: after the depth, this many steps of lr decaying linearly to zero before scoring (default 0)")
    parser.add_argument("--metric", default=None, help="summary: the reference metric (default: the records' label metric, brier_skill)")
    parser.add_argument("--predictions", default=None,
                        help="summary: out-of-fold predictions of the same runs (plan-probe evaluate --predictions) to compare with")
    parser.add_argument("--model", default="full", help="summary: the column of --predictions to compare with")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.stage == "summary":
            lines = _read_lines(Path(args.path))
            result = summarise(lines, args.metric or "brier_skill")
            if args.predictions:
                result["against_" + args.model] = compare_with_rival(lines, result["metric"],
                                                                     _rival(Path(args.predictions), args.model))
        else:
            from plan_probe.experiments.llm_tier import load_llm_spec, read_records

            spec = load_llm_spec(args.path)
            if args.records is None or args.out is None or (args.runs is None) == (args.pick is None):
                raise ValueError(f"run needs --records, --out and exactly one of --runs / --pick, but got records={args.records!r}, "
                                 f"out={args.out!r}, runs={args.runs!r}, pick={args.pick!r}; "
                                 "pass e.g. --records DIR/records --out checkpoint.jsonl --pick 20.")
            records = read_records(Path(args.records), "--records")
            ids = args.runs.split(",") if args.runs else pick_runs(records, args.pick)
            depth = args.depth or max(d for d in spec.record_at if d <= spec.steps - spec.lr_decay_steps)
            if args.cooldown < 0:
                raise ValueError(f"--cooldown must be >= 0, but got {args.cooldown}; pass e.g. --cooldown 10.")
            result = run(spec, records, Path(args.out), ids, depth=depth, n_reference=args.reference, cooldown=args.cooldown,
                         device=args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from plan_probe.experiments.llm_tier import _finite

    print(json.dumps(_finite(result), sort_keys=True))  # a constant label has no correlation: null, not NaN
    return 0


if __name__ == "__main__":
    sys.exit(main())
