"""Held-out evaluation of a (LoRA-tuned) causal LM on a classification task written as instructions.

Each candidate label is scored by the summed negative log-likelihood of its tokens (and the end
token) after the prompt, with the same prompt format the probe trains on; the prediction is the
label with the lowest NLL. Two metrics, both in percentage points with their evaluation standard
error, so a meta-dataset can show that the spread of scores across runs is well above the
evaluation noise:

* ``accuracy``: share of examples whose lowest-NLL label is the true one (binomial SE);
* ``prob_correct``: mean probability of the true label when the model's label likelihoods are
  normalised over the label set, p_i = softmax(−NLL_i)[y_i] (SE = sd(p_i)/√n). It moves with
  every change of the model's confidence, not only with flips of the arg-max, so across runs it
  spreads further relative to its evaluation noise.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["label_nll", "label_metrics", "metrics_from_nll", "LABEL_METRICS"]

LABEL_METRICS = ("accuracy", "prob_correct")


def label_nll(model, tokenizer, examples, labels: Sequence[str], *, max_length: int, batch_size: int = 32) -> np.ndarray:
    """NLL of every label for every example, shape ``(n_examples, n_labels)``."""
    import torch

    from probes._data import Example
    from probes._probe import _to
    from probes._tokenize import batch_nll, collate, encode_example

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    pairs = [encode_example(tokenizer, Example(ex.input, lab), max_length) for ex in examples for lab in labels]
    out = np.empty(len(pairs), dtype=np.float64)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            nll, _ = batch_nll(model, _to(collate(pairs[start : start + batch_size], pad), device), per_example=True)
            out[start : start + len(nll)] = nll.double().cpu().numpy()
    model.train(was_training)
    return out.reshape(len(examples), len(labels))


def metrics_from_nll(nll: np.ndarray, truth: np.ndarray) -> dict:
    """Both metrics (pp) and their standard errors from label NLLs ``(n, n_labels)`` and true indices."""
    n = len(truth)
    acc = float((nll.argmin(axis=1) == truth).mean())
    logp = -nll - (-nll).max(axis=1, keepdims=True)
    prob = np.exp(logp) / np.exp(logp).sum(axis=1, keepdims=True)
    p_true = prob[np.arange(n), truth]
    return {
        "accuracy": 100.0 * acc,
        "accuracy_se": 100.0 * math.sqrt(max(acc * (1 - acc), 1e-12) / n),
        "prob_correct": 100.0 * float(p_true.mean()),
        "prob_correct_se": 100.0 * float(p_true.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
    }


def label_metrics(model, tokenizer, examples, labels: Sequence[str], *, max_length: int, batch_size: int = 32) -> dict:
    """``accuracy``, ``prob_correct`` and their ``*_se`` (all pp) on ``examples``."""
    labels = list(labels)
    truth = np.array([labels.index(ex.output) for ex in examples])
    nll = label_nll(model, tokenizer, examples, labels, max_length=max_length, batch_size=batch_size)
    return metrics_from_nll(nll, truth)
