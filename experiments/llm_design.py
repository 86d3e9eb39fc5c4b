"""Does an LLM-tier design give a learnable meta-dataset? The design criteria of issue #19, item 1,
checked on the records built so far (a pilot, or the whole tier), from the records alone.

* **beat the base model**: every clean, sensibly configured run (no data defect, at least
  ``clean_min_n`` records, lr within ``sensible_lr``) scores at least ``min_gain_se`` of its own
  evaluation SEs above the base model (``base.json``); the paired gain (same held-out examples,
  SE = sd(s_run,i − s_base,i)/√n) is reported beside it;
* **bounded label**: every ok run lies within ``max_sds`` label SDs of the median label;
* **spread vs noise**: the mean evaluation SE is at most ``max_se_ratio`` of the label's SD across runs;
* **run length**: ``steps`` ≥ ``min_length_ratio`` × the deepest recorded probe depth;
* **practitioner ranges**: every run's lr lies in ``lr_range`` and its LoRA rank in ``rank_range``;
* **defects covered**: the grid varies size, label noise, duplicates, imbalance and off-task records.

``python -m plan_probe.experiments.llm_tier check SPEC --out DIR`` prints the result as JSON
(``--markdown``: the tables of the tier's README).

``design_oracle_table`` (stage ``oracle``) answers a different question: how much of the label
could a predictor explain if the static descriptors were perfect, i.e. were the design's own
defect parameters? ``plan-probe evaluate`` on that table is the ceiling of what descriptors of the
dataset can reach on the tier; what it leaves unexplained is the run-to-run variation of the
training itself.

``replicate_spread`` (stage ``replicates``) measures that variation directly: runs of the same
design point (dataset variant and hyperparameters; new data sample and training seed) pooled into
a within-point variance, as a share of the tier's label variance. One minus that share bounds the
R² of any predictor whose inputs are fixed before training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DesignCriteria", "design_check", "design_markdown", "design_oracle_table", "design_visibility", "replace_marked_block", "replicate_spread"]

BEGIN, END = "<!-- llm-tier-check:begin -->", "<!-- llm-tier-check:end -->"

# grid axis -> the value that means "no defect" (size: the defect is a small set, see clean_min_n)
_DEFECT_AXES = {"label_noise": 0.0, "duplicate_rate": 0.0, "imbalance": 0.0, "off_task": 0.0}


@dataclass(frozen=True)
class DesignCriteria:
    """Thresholds of the design check (defaults: issue #19, item 1)."""

    min_gain_se: float = 5.0
    max_sds: float = 5.0
    max_se_ratio: float = 0.2
    min_length_ratio: float = 3.0
    clean_min_n: int = 500
    sensible_lr: tuple[float, float] = (1e-4, 1e-3)
    lr_range: tuple[float, float] = (1e-5, 1e-3)
    rank_range: tuple[int, int] = (4, 64)

    def __post_init__(self) -> None:
        for name in ("min_gain_se", "max_sds", "max_se_ratio", "min_length_ratio"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, but got {name}={value!r}; pass a value > 0.")
        for name in ("sensible_lr", "lr_range", "rank_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, but got {name}={(lo, hi)!r}; fix it.")


def _is_clean(variant: dict, hp: dict, c: DesignCriteria) -> bool:
    no_defect = all(float(variant.get(k) or 0.0) == v for k, v in _DEFECT_AXES.items())
    return no_defect and variant["n"] >= c.clean_min_n and c.sensible_lr[0] <= hp["lr"] <= c.sensible_lr[1]


def _run_row(rec: dict, index: int, metric: str, base_scores, truth, c: DesignCriteria) -> dict:
    from plan_probe.experiments.llm_eval import example_scores

    res, variant, hp = rec["result"], rec["variant"], rec["hp_config"]
    row = {"run_id": rec["run_id"], "design_index": index, "status": rec["status"], "clean": _is_clean(variant, hp, c),
           **_flat_point(rec), "cpu_time_s": res.get("cpu_time_s"), "wall_time_s": rec.get("wall_time_s")}
    if rec["status"] != "ok":
        return row
    metrics = res["metrics"]
    nll = np.asarray(res["eval_nll"], dtype=float)
    row.update({"label": metrics[metric], "label_se": metrics[f"{metric}_se"], "accuracy": metrics["accuracy"],
                "share_first_label": float((nll.argmin(axis=1) == 0).mean())})
    if base_scores is not None:
        if not np.array_equal(np.asarray(res["eval_truth"]), truth):
            raise ValueError(f"runs and base.json must score the same held-out set, but {rec['run_id']} differs; rebuild base.json.")
        diff = example_scores(nll, truth, metric) - base_scores
        row.update({"gain": float(diff.mean()), "gain_in_se": float(diff.mean() / metrics[f"{metric}_se"]),
                    "paired_gain_se": float(diff.std(ddof=1) / np.sqrt(len(diff)))})
    return row


def design_check(spec, out: str | Path, criteria: DesignCriteria | None = None) -> dict:
    """The design criteria on the records in ``out/records`` (and ``out/base.json``) of ``spec``.

    Returns a JSON-ready dict: ``runs`` (one row per record of the spec, in design order), the
    base model's score, per-run CPU and wall seconds, and ``criteria`` (each with its numbers and
    ``pass``: True, False, or None when the records cannot tell yet).
    """
    from plan_probe.experiments.llm_eval import example_scores
    from plan_probe.experiments.llm_tier import candidates
    from plan_probe.probes._io import read_json

    c = criteria or DesignCriteria()
    out = Path(out)
    metric = spec.label_metric
    base = read_json(out / "base.json") if (out / "base.json").is_file() else None
    truth = np.asarray(base["eval_truth"]) if base else None
    base_scores = example_scores(np.asarray(base["eval_nll"], dtype=float), truth, metric) if base else None
    order = {cand.run_id: i for i, cand in enumerate(candidates(spec))}
    paths = sorted((out / "records").glob("*.json"))
    unknown = [p.stem for p in paths if p.stem not in order]
    rows = sorted((_run_row(read_json(p), order[p.stem], metric, base_scores, truth, c) for p in paths if p.stem in order),
                  key=lambda r: r["design_index"])
    ok = [r for r in rows if r["status"] == "ok"]
    labels = np.array([r["label"] for r in ok], dtype=float)
    sd = float(labels.std(ddof=1)) if len(labels) > 1 else float("nan")
    crit = {}
    clean = [r for r in ok if r["clean"]]
    gains = [r["gain_in_se"] for r in clean if "gain_in_se" in r]
    crit["clean_runs_beat_base"] = {"runs": len(clean), "min_gain_in_se": min(gains) if gains else None,
                                    "threshold_se": c.min_gain_se, "pass": (min(gains) >= c.min_gain_se) if gains else None}
    if len(labels) > 1 and sd > 0:
        median = float(np.median(labels))
        far = float(np.abs(labels - median).max() / sd)
        ses = np.array([r["label_se"] for r in ok], dtype=float)
        crit["bounded_label"] = {"min": float(labels.min()), "median": median, "max": float(labels.max()), "sd": sd,
                                 "max_sds_from_median": far, "threshold_sds": c.max_sds, "pass": far <= c.max_sds}
        crit["se_vs_spread"] = {"mean_eval_se": float(ses.mean()), "label_sd": sd, "ratio": float(ses.mean() / sd),
                                "threshold": c.max_se_ratio, "pass": float(ses.mean() / sd) <= c.max_se_ratio}
    else:
        crit["bounded_label"] = crit["se_vs_spread"] = {"pass": None, "why": "fewer than two ok runs with spread"}
    deepest = max(spec.record_at)
    crit["run_length"] = {"steps": spec.steps, "deepest_probe": deepest, "ratio": spec.steps / deepest,
                          "threshold": c.min_length_ratio, "pass": spec.steps >= c.min_length_ratio * deepest}
    lrs, ranks = [float(v) for v in spec.grid["lr"]], [int(v) for v in spec.grid["lora_r"]]
    lrs += [float(r["lr"]) for r in spec.references]
    ranks += [int(r["lora_r"]) for r in spec.references]
    crit["practitioner_ranges"] = {"lr": [min(lrs), max(lrs)], "lora_r": [min(ranks), max(ranks)],
                                   "lora_alpha_ratio": spec.lora_alpha_ratio, "lr_range": list(c.lr_range),
                                   "rank_range": list(c.rank_range),
                                   "pass": c.lr_range[0] <= min(lrs) and max(lrs) <= c.lr_range[1]
                                   and c.rank_range[0] <= min(ranks) and max(ranks) <= c.rank_range[1]}
    grid = spec.grid
    covered = {"size": sorted({int(v) for v in grid["n"]}),
               **{k: sorted({float(v) for v in grid.get(k, [clean_value])}) for k, clean_value in _DEFECT_AXES.items()}}
    varied = {"size": len(covered["size"]) > 1 and min(covered["size"]) < c.clean_min_n,
              **{k: any(v != _DEFECT_AXES[k] for v in covered[k]) for k in _DEFECT_AXES}}
    crit["defects_covered"] = {"grid": covered, "varied": varied, "pass": all(varied.values())}
    cpu = [r["cpu_time_s"] for r in rows if r.get("cpu_time_s") is not None]
    wall = [r["wall_time_s"] for r in rows if r.get("wall_time_s")]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "diverged", "failed")}
    from plan_probe.probes._instruct_data import task_labels

    return {"label_metric": metric, "first_label": task_labels(spec.task)[0], "records": len(rows), "design_size": len(order), "status": counts,
            "unknown_records": unknown,
            "base": ({"label": base["label"], "label_se": base["label_se"], "accuracy": base["metrics"]["accuracy"],
                      "accuracy_se": base["metrics"]["accuracy_se"]} if base else None),
            "cpu_time_s": _spread(cpu), "wall_time_s": _spread(wall), "criteria": crit, "runs": rows}


def _spread(values) -> dict | None:
    if not values:
        return None
    v = np.asarray(values, dtype=float)
    return {"n": int(len(v)), "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "total": float(v.sum())}


def _fmt(value, digits=1) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.0e}"
    return str(value)


def design_markdown(result: dict) -> str:
    """The check as Markdown: the criteria table, then one row per run (design order)."""
    metric = result["label_metric"]
    base = result["base"]
    status = ", ".join(f"{k} {v}" for k, v in result["status"].items())
    lines = [f"Records: {result['records']} of the design's {result['design_size']} ({status}); label `{metric}`."]
    if base:
        lines.append(f"Base model (no fine-tuning): {metric} {base['label']:.1f} ± {base['label_se']:.1f}, "
                     f"accuracy {base['accuracy']:.1f} ± {base['accuracy_se']:.1f} %.")
    for name in ("cpu_time_s", "wall_time_s"):
        s = result[name]
        if s:
            lines.append(f"{name}: median {s['median']:.0f} s per run (min {s['min']:.0f}, max {s['max']:.0f}; {s['n']} runs).")
    lines += ["", "| criterion | numbers | pass |", "|---|---|---|"]
    for name, crit in result["criteria"].items():
        nums = ", ".join(f"{k} {_fmt(v, 2)}" for k, v in crit.items() if k not in ("pass", "grid", "varied"))
        if "grid" in crit:
            nums = "; ".join(f"{k} {v}" for k, v in crit["grid"].items())
        lines.append(f"| {name} | {nums} | {_fmt(crit['pass'])} |")
    lines += ["", f"| # | run | n | noise | dup | imb | off | lr | r | {metric} ± SE | acc % | gain (SE units) | paired gain ± SE | "
              f"share '{result['first_label']}' | CPU s | wall s |", "|" + "---|" * 16]
    for r in result["runs"]:
        if r["status"] != "ok":
            lines.append(f"| {r['design_index']} | {r['run_id']} | {r['n']} | | | | | {r['lr']:g} | {r['lora_r']} | {r['status']} "
                         f"| | | | | {_fmt(r['cpu_time_s'], 0)} | {_fmt(r['wall_time_s'], 0)} |")
            continue
        gain = f"{r['gain_in_se']:.1f}" if "gain_in_se" in r else "–"
        paired = f"{r['gain']:.1f} ± {r['paired_gain_se']:.1f}" if "gain" in r else "–"
        lines.append(
            f"| {r['design_index']}{' (clean)' if r['clean'] else ''} | {r['run_id']} | {r['n']} | {r['label_noise']:g} | "
            f"{r['duplicate_rate']:g} | {r['imbalance']:g} | {r['off_task']:g} | {r['lr']:g} | {r['lora_r']} | "
            f"{r['label']:.1f} ± {r['label_se']:.1f} | {r['accuracy']:.1f} | {gain} | {paired} | {r['share_first_label']:.2f} | "
            f"{_fmt(r['cpu_time_s'], 0)} | {_fmt(r['wall_time_s'], 0)} |")
    return "\n".join(lines) + "\n"


def replace_marked_block(path: str | Path, text: str) -> None:
    """Write ``text`` between the ``BEGIN`` and ``END`` marker lines of the Markdown file ``path``
    (atomically; the rest of the file is kept), e.g. a tier README's pilot numbers."""
    from plan_probe.probes._io import atomic_path

    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old.count(BEGIN) != 1 or old.count(END) != 1 or old.index(BEGIN) > old.index(END):
        raise ValueError(f"the file must hold one {BEGIN} line before one {END} line, but {path} does not; add the two markers.")
    head, rest = old.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with atomic_path(path) as tmp:
        tmp.write_text(f"{head}{BEGIN}\n{text.rstrip()}\n{END}{tail}", encoding="utf-8")


# variant keys that describe a defect (or the size) of a run's dataset, as numbers
_ORACLE_AXES = ("n", *_DEFECT_AXES)


def design_oracle_table(meta, runs):
    """``meta`` with its ``static_*`` columns replaced by the true design of each run's dataset variant.

    Columns ``static_design_<axis>`` for the size ``n`` and every defect axis, taken from the
    ``variant_<axis>`` columns of ``runs`` (one row per run; a missing or null defect is the
    no-defect value, e.g. imbalance None = balanced = 0). Hyperparameter, dynamic, depth, id and
    label columns are kept as they are, so ``plan-probe evaluate`` compares like with like.
    """
    import pandas as pd

    design = pd.DataFrame({"run_id": runs["run_id"]})
    for axis in _ORACLE_AXES:
        column = runs.get(f"variant_{axis}")
        if column is None and axis == "n":
            raise ValueError("runs must carry variant_n (the dataset size), but it has no such column; assemble the tier again.")
        default = _DEFECT_AXES.get(axis, np.nan)
        values = pd.Series(default, index=runs.index) if column is None else pd.to_numeric(column, errors="coerce").fillna(default)
        design[f"static_design_{axis}"] = values.astype(float)
    kept = meta.drop(columns=[c for c in meta.columns if c.startswith("static_")])
    table = kept.merge(design, on="run_id", how="left", validate="many_to_one")
    if table["static_design_n"].isna().any():
        missing = table.loc[table["static_design_n"].isna(), "run_id"].iloc[0]
        raise ValueError(f"every meta row's run must be in runs, but {missing!r} is not; assemble the tier again.")
    return table


def _design_point(rec: dict) -> str:
    """A run's design point: its variant without the seed, and its hyperparameters (as sorted JSON)."""
    import json

    variant = {k: v for k, v in rec["variant"].items() if k != "seed"}
    variant["imbalance"] = variant.get("imbalance") or 0.0  # None and 0 both mean balanced
    return json.dumps({"variant": variant, "hp": rec["hp_config"]}, sort_keys=True)


def replicate_spread(tier_records: list[dict], replicate_records: list[dict], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Within-design-point variance of the label, pooled, against the tier's label variance.

    s²_within = Σ_g Σ_i (y_gi − ȳ_g)² / Σ_g (n_g − 1) over the design points g with at least two ok
    runs among ``tier_records`` + ``replicate_records``; the tier's variance is the sample variance of
    the ok ``tier_records`` labels (the design's own spread). ``share`` = s²_within / var(tier) and
    ``r2_ceiling`` = 1 − share. The 90 % interval of ``share`` resamples the design points (a
    bootstrap over groups, ``n_boot`` draws, seeded): the spread differs a lot from one point to
    another, so a chi-square interval that assumes one common variance would be too narrow.
    The evaluation noise (mean label_se²) is reported beside it: it is part of s²_within.
    """
    ok_tier = [r for r in tier_records if r["status"] == "ok"]
    groups: dict[str, list[dict]] = {}
    for rec in ok_tier + [r for r in replicate_records if r["status"] == "ok"]:
        groups.setdefault(_design_point(rec), []).append(rec)
    reps = [g for g in groups.values() if len(g) >= 2]
    if len(ok_tier) < 3 or len(reps) < 2:
        raise ValueError(f"replicate spread needs >= 3 ok tier runs and >= 2 design points with >= 2 runs, but got "
                         f"{len(ok_tier)} and {len(reps)}; build the replicate runs first.")
    tier_var = float(np.var([r["result"]["label"] for r in ok_tier], ddof=1))
    ss = np.array([float(np.sum((y - y.mean()) ** 2)) for y in (np.array([r["result"]["label"] for r in g]) for g in reps)])
    df = np.array([len(g) - 1 for g in reps], dtype=float)
    within = float(ss.sum() / df.sum())
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(reps), size=(n_boot, len(reps)))
    boot = ss[draws].sum(axis=1) / df[draws].sum(axis=1) / tier_var
    eval_var = float(np.mean([r["result"]["label_se"] ** 2 for g in reps for r in g]))
    points = [{"design_point": g[0]["run_id"], "labels": [round(float(r["result"]["label"]), 2) for r in g],
               "sd": float(np.std([r["result"]["label"] for r in g], ddof=1)), **_flat_point(g[0])} for g in reps]
    return {"design_points": len(reps), "runs": int(sum(len(g) for g in reps)), "df": int(df.sum()),
            "within_sd": within ** 0.5, "tier_sd": tier_var ** 0.5, "share": within / tier_var,
            "share_90": [float(np.quantile(boot, 0.05)), float(np.quantile(boot, 0.95))],
            "r2_ceiling": 1.0 - within / tier_var, "eval_noise_share": eval_var / tier_var, "points": points}


def _flat_point(rec: dict) -> dict:
    """The design axes of a record, flat (for the per-point table)."""
    v, hp = rec["variant"], rec["hp_config"]
    return {"n": v["n"], "label_noise": v["label_noise"], "duplicate_rate": v["duplicate_rate"],
            "imbalance": v.get("imbalance") or 0.0, "off_task": v.get("off_task", 0.0), **hp}


def design_visibility(meta, oracle, *, prefixes: tuple[str, ...] = ("static_",), folds: int = 5, seed: int = 0) -> dict:
    """How well a run's features recover each design axis: out-of-fold R² per axis.

    One row per run: the first row of each run in ``meta`` (pass the rows of one depth when the
    features include ``dyn_*``; the static descriptors do not change with depth). For every
    ``static_design_<axis>`` column of ``oracle``, a LightGBM regressor on the ``meta`` columns
    starting with ``prefixes`` (small trees: a few hundred runs) predicts the axis in ``folds``
    seeded folds; R² = 1 − Σ(axis − prediction)² / Σ(axis − mean)². An axis the features cannot
    see (R² near 0) is a defect the predictor can only guess at from its effects on the label.
    """
    import lightgbm

    from plan_probe._learners import group_folds

    runs = meta.drop_duplicates("run_id").set_index("run_id")
    design = oracle.drop_duplicates("run_id").set_index("run_id").loc[runs.index]
    X = runs[[c for c in runs.columns if c.startswith(prefixes)]].to_numpy(dtype=float)
    # a tier with fewer runs than folds (a test tier) gets one run per fold
    folds = min(folds, len(runs))
    fold_of = group_folds(runs.index, folds, seed)
    params = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 7, "min_data_in_leaf": 5,
              "verbose": -1, "seed": seed, "deterministic": True, "num_threads": 1}
    out = {}
    for column in (c for c in design.columns if c.startswith("static_design_")):
        y = design[column].to_numpy(dtype=float)
        if np.var(y) == 0:
            continue  # an axis the design does not vary
        pred = np.empty_like(y)
        for k in range(folds):
            train = fold_of != k
            booster = lightgbm.train(params, lightgbm.Dataset(X[train], y[train]), num_boost_round=200)
            pred[~train] = booster.predict(X[~train])
        out[column.removeprefix("static_design_")] = float(1.0 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))
    return out
