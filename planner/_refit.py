r"""Refit the risk model and both predictors from run histories and built meta-datasets (``plan-probe refit``).

What is fitted, on the labelled runs of every input (:func:`plan_probe._history.read_runs`):

* ``predictor/``: the depth-aware predictor on ``depth``, ``static_*``, ``hp_*`` and ``dyn_*``
  (grouped by run; CV+ intervals), with its record depths in ``extra["depths"]``;
* ``predictor_static/``: the static-only predictor on ``static_*`` and ``hp_*``, one row per run;
* ``risk_obs.parquet`` and ``risk_model.json``: the depth-aware predictor's squared out-of-fold
  residuals as risk observations (dof 1; docs/theory.md §2, "predictor residuals"), with a few
  a-priori risk features, and the hierarchical risk model fitted on them;
* ``meta.parquet`` (the rows used) and ``refit.json`` (sources, statuses, censoring, fit summaries).

This is the layout of the shipped defaults (``planner/defaults/llm``), so a MODELS_DIR works
wherever ``"default"`` does: ``LiveProbe.from_models_dir``, ``PlanProbeCallback(models_dir=...)``
and a portfolio's ``models = "MODELS_DIR"``.

**Censoring.** Runs stopped as ``no_go`` are censored (no label) and left out; the labelled runs
are then a selected sample (the runs the live rule let finish), which biases the models towards
healthy-looking runs. The summary reports the censored count and share and warns above
``censored_warn`` (see docs/guide/live.md for what the bias does and how to limit it).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plan_probe.probes._formats import FileFormat
from plan_probe._risk_model import DEFAULT_TASK_SD_PRIOR

__all__ = ["RefitSettings", "refit", "REFIT_SUMMARY", "RISK_FEATURES"]

log = logging.getLogger(__name__)

#: ``MODELS_DIR/refit.json``: what a refit was fitted on.
REFIT_SUMMARY = FileFormat("plan-probe/refit-summary", 1, "rerun plan-probe refit")
#: Default risk features (those present are used): the a-priori choice of the shipped defaults.
RISK_FEATURES = ("static_n_examples", "static_duplicate_rate", "static_ref_ppl_mean", "static_output_diversity")
_MODEL_FILES = ("risk_model.json", "predictor", "predictor_static", "risk_obs.parquet", "meta.parquet", "refit.json")


@dataclass(frozen=True)
class RefitSettings:
    """Settings of :func:`refit` (validated).

    seed : seed of every fit.
    tune : tune the predictors' learners by grouped inner CV (slower) instead of TuneAhead's settings.
    method : risk-model inference, ``"auto"``, ``"nuts"`` or ``"svi"``.
    num_samples, num_warmup, num_chains : NUTS settings; svi_steps : SVI optimisation steps.
    risk_features : static features of the risk model (None: those of :data:`RISK_FEATURES` present).
    censored_warn : warn when the censored share of finished runs exceeds this.
    prediction_scale : intervals whose width follows each predictor's own prediction
        (``PredictorConfig.prediction_scale``).
    task_sd_prior, lkj_eta : the risk model's priors (:class:`plan_probe._risk_model.RiskFitSettings`).
    """

    seed: int = 0
    tune: bool = False
    method: str = "auto"
    num_samples: int = 400
    num_warmup: int = 400
    num_chains: int = 2
    svi_steps: int = 3000
    risk_features: tuple | None = None
    censored_warn: float = 0.3
    prediction_scale: bool = False
    task_sd_prior: tuple = DEFAULT_TASK_SD_PRIOR
    lkj_eta: float = 2.0

    def __post_init__(self):
        if self.method not in ("auto", "nuts", "svi"):
            raise ValueError(f"method must be auto, nuts or svi, but got method={self.method!r}; pick one.")
        for name in ("num_samples", "num_warmup", "num_chains", "svi_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, but got {name}={v!r}; pass 1 or more.")
        if not (isinstance(self.censored_warn, (int, float)) and 0 <= self.censored_warn <= 1):
            raise ValueError(f"censored_warn must be a share in [0, 1], but got censored_warn={self.censored_warn!r}; "
                             "pass e.g. 0.3.")
        from plan_probe._risk_model import RiskFitSettings

        # the risk model's own validation; keeps the frozen settings hashable when a JSON list was passed
        object.__setattr__(self, "task_sd_prior", RiskFitSettings(task_sd_prior=self.task_sd_prior,
                                                                  lkj_eta=self.lkj_eta).task_sd_prior)


def _features(meta, prefixes) -> list[str]:
    return [c for c in meta.columns if c.startswith(prefixes)]


def _usable(meta) -> tuple:
    """Drop feature columns that are not finite in every row (e.g. present in one source only)."""
    import pandas as pd

    feats = _features(meta, ("static_", "hp_", "dyn_"))
    values = meta[feats].apply(pd.to_numeric, errors="coerce")
    ok = [c for c in feats if np.all(np.isfinite(values[c].to_numpy(dtype=float)))]
    dropped = [c for c in feats if c not in ok]
    meta = meta.drop(columns=dropped)
    meta[ok] = values[ok]
    return meta, dropped


def _check_output(out: Path, inputs) -> None:
    resolved = [Path(p).resolve() for p in inputs]
    target = out.resolve()
    for src in resolved:
        if target == src or src in target.parents or target in src.parents:
            raise ValueError(f"MODELS_DIR must not overlap an input, but got -o {str(out)!r} and input {str(src)!r}; "
                             "write the models to a new folder.")
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"MODELS_DIR must be a folder, but {str(out)!r} is a file; pass a new folder.")
        foreign = [p.name for p in out.iterdir() if p.name not in _MODEL_FILES]
        if foreign:
            raise ValueError(f"MODELS_DIR must be new or a previous refit output, but {str(out)!r} holds {foreign[:3]}; "
                             "pass a new folder.")


def refit(paths, out_dir, settings: RefitSettings | None = None) -> dict:
    """Fit the three models from ``paths`` into ``out_dir`` (written only when every fit succeeded).

    Returns the summary written as ``refit.json``.
    """
    from plan_probe._history import _clean, read_runs
    from plan_probe._meta import check_folds
    from plan_probe._predictor import PredictorConfig, ProbePredictor
    from plan_probe._risk_model import RiskFitSettings, RiskModel
    from plan_probe.probes._io import write_json, write_table

    settings = settings or RefitSettings()
    paths = list(paths)
    if not paths:
        raise ValueError("refit needs at least one HISTORY_OR_META, but got none; pass history directories or meta-datasets.")
    out = Path(out_dir)
    _check_output(out, paths)
    meta, summary = read_runs(paths)
    meta = meta[np.isfinite(meta["label"].astype(float).to_numpy())].copy()
    meta, dropped = _usable(meta)
    meta["depth"] = meta["depth"].astype(float)
    if not np.all(np.isfinite(meta["depth"])) or (meta["depth"] < 1).any():
        raise ValueError("every row's depth must be a training step >= 1, but some are not; fix the inputs.")
    meta["depth"] = meta["depth"].astype(int)
    statics, hps, dyns = (_features(meta, (p,)) for p in ("static_", "hp_", "dyn_"))
    if not dyns:
        raise ValueError("refit needs dyn_* features for the depth-aware predictor, but the inputs have none (finite in "
                         "every row); record them with PlanProbeCallback or build-meta.")
    if not statics + hps:
        raise ValueError("refit needs static_* or hp_* features for the static-only predictor, but the inputs have none; "
                         "record them.")
    config = PredictorConfig(seed=settings.seed, tune=settings.tune, prediction_scale=bool(settings.prediction_scale))
    n_runs = int(meta["run_id"].nunique())
    check_folds(n_runs, config.calibration_folds, "labelled runs (calibration folds)")
    censored = summary["censored"]
    warnings = []
    if dropped:
        warnings.append(f"dropped {len(dropped)} feature column(s) not finite in every row: {dropped[:6]}")
    if summary["censored_share"] > settings.censored_warn:
        warnings.append(f"{censored} of {censored + summary['status'].get('ok', 0)} finished runs were stopped as no_go "
                        f"(censored share {summary['censored_share']:.2f} > {settings.censored_warn:g}): the labelled runs "
                        "are the ones the live rule let finish, so the refitted models are biased towards healthy-looking "
                        "runs (docs/guide/live.md#censoring)")
    for w in warnings:
        log.warning(w)
    risk_feats = list(settings.risk_features) if settings.risk_features is not None else [f for f in RISK_FEATURES if f in statics]
    repeated = sorted({f for f in risk_feats if risk_feats.count(f) > 1})
    if repeated:
        raise ValueError(f"risk features must be distinct, but got {repeated} more than once; list each feature once.")
    lacking = [f for f in risk_feats if f not in statics]
    if lacking:
        raise ValueError(f"risk features must be static_* columns of the inputs, but {lacking} are not; pick among "
                         f"{statics[:6]}.")

    t0 = time.perf_counter()
    meta = meta.sort_values(["run_id", "depth"], kind="stable").reset_index(drop=True)
    full_cols = ["depth", *statics, *hps, *dyns]
    label = meta["label"].astype(float).rename("label")
    full = ProbePredictor(config).fit(meta[full_cols], label, groups=meta["run_id"].to_numpy())
    runs = meta.groupby("run_id", sort=True).tail(1).reset_index(drop=True)
    static = ProbePredictor(config).fit(runs[[*statics, *hps]], runs["label"].astype(float).rename("label"),
                                        groups=runs["run_id"].to_numpy())
    resid = meta["label"].to_numpy(dtype=float) - np.asarray(full.oof_pred_, dtype=float)
    obs = meta[["task_id", "depth", *risk_feats]].assign(risk_obs=resid**2, dof=1.0)
    obs = obs[np.isfinite(obs["risk_obs"].to_numpy())][["task_id", "depth", "risk_obs", "dof", *risk_feats]]
    risk = RiskModel(RiskFitSettings(method=settings.method, num_samples=settings.num_samples,
                                     num_warmup=settings.num_warmup, num_chains=settings.num_chains,
                                     task_sd_prior=settings.task_sd_prior, lkj_eta=settings.lkj_eta,
                                     svi_steps=settings.svi_steps)).fit(obs, seed=settings.seed)
    seconds = time.perf_counter() - t0
    depths = sorted(int(d) for d in meta["depth"].unique())
    doc = {
        **summary, "runs": n_runs, "rows": int(len(meta)), "depths": depths,
        "features": {"static": len(statics), "hp": len(hps), "dyn": len(dyns), "dropped": dropped},
        "risk_features": risk_feats, "seed": settings.seed, "tune": settings.tune,
        "prediction_scale": bool(settings.prediction_scale),
        "cv_rmse_full": float(full.cv_rmse_), "cv_rmse_static": float(static.cv_rmse_),
        "label_sd": float(runs["label"].astype(float).std(ddof=1)) if n_runs > 1 else None,
        "risk_diagnostics": risk.diagnostics_, "fit_seconds": round(seconds, 2), "warnings": warnings,
    }
    # write everything into a temporary sibling, then move it into place: no half-written MODELS_DIR
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        extra = {"id": "run_id", "seed": settings.seed, "risk_model": None, "depths": depths}
        full.save(tmp / "predictor", extra={**extra, "features_option": "all"})
        static.save(tmp / "predictor_static", extra={**extra, "features_option": "static"})
        risk.save(tmp / "risk_model.json")
        write_table(obs.reset_index(drop=True), tmp / "risk_obs.parquet")
        write_table(meta, tmp / "meta.parquet")
        write_json(REFIT_SUMMARY.stamp(_clean(doc)), tmp / "refit.json")
        out.mkdir(exist_ok=True)
        for name in _MODEL_FILES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            (tmp / name).rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**_clean(doc), "models_dir": str(out)}
