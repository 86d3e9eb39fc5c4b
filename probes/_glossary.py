"""Plain-language meanings of the feature columns, for failure reasons a user can act on.

A reason such as "pushed down by static_type_token_ratio" asks the reader to know the column
catalogue; "pushed down by word variety of the texts (static_type_token_ratio = 0.41)" does not.
The meanings say what a column measures and, where one is typical, which data defect or setting
moves it; they do not claim that the defect is present. Exact definitions:
docs/reference/features.md.
"""

from __future__ import annotations

import math

__all__ = ["FEATURE_MEANINGS", "feature_phrase"]

FEATURE_MEANINGS: dict[str, str] = {
    # static descriptors (probes/_static.py)
    "static_n_examples": "dataset size",
    "static_token_len_mean": "mean example length",
    "static_token_len_std": "spread of example lengths",
    "static_io_len_ratio": "prompt-to-answer length ratio",
    "static_special_char_ratio": "share of special characters",
    "static_type_token_ratio": "word variety within examples",
    "static_ngram_repetition": "repeated phrases within answers",
    "static_instruction_complexity": "instruction complexity",
    "static_duplicate_rate": "share of duplicated records",
    "static_embedding_outlier_ratio": "share of off-distribution (outlier) records",
    "static_io_semantic_similarity": "prompt-answer semantic similarity",
    "static_output_diversity": "variety of the answers (low when one answer dominates, e.g. class imbalance)",
    "static_ref_ppl_mean": "how unfamiliar the answers are to the base model (log-perplexity)",
    "static_ref_ppl_std": "spread of the base model's log-perplexity over answers",
    "static_unigram_kl": "vocabulary distance from general English",
    "static_groundedness": "share of answer words taken from the prompt",
    "static_output_majority_share": "share of the most common answer (high when one class dominates: class imbalance)",
    # hyperparameters (ProbeConfig.hp_features)
    "hp_lr": "learning rate",
    "hp_batch_size": "batch size",
    "hp_grad_accum": "gradient accumulation steps",
    "hp_lora_r": "LoRA rank",
    "hp_lora_alpha": "LoRA alpha",
    "hp_lora_dropout": "LoRA dropout",
    "hp_max_length": "maximum sequence length",
    # probe dynamics (probes/_dynamics.py)
    "dyn_initial_loss": "probe's starting loss",
    "dyn_loss_decay": "how fast the probe's loss falls",
    "dyn_loss_variance": "how much the probe's loss jumps",
    "dyn_grad_norm_mean": "probe's gradient size",
    "dyn_grad_norm_var": "how much the probe's gradient size jumps",
    "dyn_grad_consistency": "agreement of successive probe gradients",
    "dyn_grad_sparsity": "share of near-zero gradient entries",
    "dyn_param_change_norm": "how far the probe moved the adapter weights",
    "dyn_flatness": "sharpness of the loss around the probe's weights",
    "dyn_forgetting": "loss increase on generic text (forgetting)",
    "dyn_ref_loss": "answer loss on held-out target examples after a short lr cooldown (the readout)",
    "dyn_ref_choice": "the readout's loss at choosing the right answer among the task's answers (telling them apart)",
    "depth": "probe depth",
}


def feature_phrase(name: str, value: float | None = None, effect: float | None = None) -> str:
    """``"<meaning> (<name> = <value>; <effect>)"``, leaving out what is not given or not finite.

    ``effect`` is the feature's signed contribution to a prediction (a SHAP value, label units).
    A column without a meaning is named by itself.

    >>> feature_phrase("hp_lr", 0.002, -12.3)
    'learning rate (hp_lr = 0.002; -12.30)'
    >>> feature_phrase("my_feature", effect=-1.0)
    'my_feature (-1.00)'
    """
    meaning = FEATURE_MEANINGS.get(name)
    inner = []
    if value is not None and math.isfinite(float(value)):
        inner.append(f"{name} = {float(value):.3g}")
    elif meaning:
        inner.append(name)
    if effect is not None and math.isfinite(float(effect)):
        inner.append(f"{float(effect):+.2f}")
    head = meaning or name
    return f"{head} ({'; '.join(inner)})" if inner else head
