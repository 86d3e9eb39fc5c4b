"""Held-out evaluation of a (LoRA-tuned) causal LM on a classification task written as instructions.

Each candidate label is scored by the summed negative log-likelihood of its tokens (and the end
token) after the prompt, with the same prompt format the probe trains on; the prediction is the
label with the lowest NLL. Accuracy is reported in percentage points with its binomial standard
error, so a meta-dataset can show that the spread of scores across runs is well above the
evaluation noise.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["label_nll", "label_accuracy"]


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


def label_accuracy(model, tokenizer, examples, labels: Sequence[str], *, max_length: int, batch_size: int = 32) -> tuple[float, float]:
    """Accuracy (pp) of lowest-NLL label prediction, and its binomial standard error (pp)."""
    truth = np.array([list(labels).index(ex.output) for ex in examples])
    pred = label_nll(model, tokenizer, examples, labels, max_length=max_length, batch_size=batch_size).argmin(axis=1)
    acc = float((pred == truth).mean())
    return 100.0 * acc, 100.0 * math.sqrt(max(acc * (1 - acc), 1e-12) / len(truth))
