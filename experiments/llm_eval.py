"""Held-out evaluation of a (LoRA-tuned) causal LM on a classification task written as instructions.

Each candidate label is scored by the summed negative log-likelihood of its tokens (and the end
token) after the prompt, with the same prompt format the probe trains on; the prediction is the
label with the lowest NLL. Four metrics, all in percentage points with their evaluation standard
error, so a meta-dataset can show that the spread of scores across runs is well above the
evaluation noise:

* ``accuracy``: share of examples whose lowest-NLL label is the true one (binomial SE);
* ``prob_correct``: mean probability of the true label when the model's label likelihoods are
  normalised over the label set, p_i = softmax(−NLL_i)[y_i] (SE = sd(p_i)/√n). It moves with
  every change of the model's confidence, not only with flips of the arg-max, so across runs it
  spreads further relative to its evaluation noise;
* ``log_score``: the log score of the normalised label probabilities as a skill over uniform
  guessing, 100 (1 + mean_i log p_i / log K) for K labels: 0 for a model that puts 1/K on every
  label, 100 for certainty on the truth, negative when confidently wrong (SE = 100 sd(log p_i) /
  (√n log K)). A proper scoring rule (held-out cross-entropy over the labels, rescaled): it
  rewards calibrated confidence and punishes a collapse onto one class, which accuracy barely
  sees on a balanced set.
* ``brier_skill``: the Brier score of the normalised label probabilities as a skill over uniform
  guessing, 100 (1 − mean_i B_i / B_u) with B_i = Σ_k (p_ik − y_ik)² and B_u = (K − 1)/K the
  Brier score of 1/K on every label: 0 for uniform guessing, 100 for certainty on the truth, and
  bounded below by 100 (1 − 2K/(K − 1)) (−300 for two labels: certain of a wrong label on every
  example) (SE = 100 sd(B_i) / (√n B_u)). Proper like the log score, but bounded, so one
  collapsed run cannot dominate the spread across runs.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["label_nll", "metrics_from_nll", "example_scores", "LABEL_METRICS"]

LABEL_METRICS = ("accuracy", "prob_correct", "log_score", "brier_skill")


def label_nll(model, tokenizer, examples, labels: Sequence[str], *, max_length: int, batch_size: int = 32) -> np.ndarray:
    """NLL of every label for every example, shape ``(n_examples, n_labels)``.

    When an example's prompt tokens are the same whatever the label (the usual case: only the
    response differs), the prompt runs through the model once and every label continues from its
    key/value cache; otherwise each (example, label) pair runs in full. Both give the same NLL up
    to float rounding (tested); the shared prompt costs one forward instead of one per label.
    """
    import torch

    from plan_probe.probes._data import Example
    from plan_probe.probes._tokenize import encode_example

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [[encode_example(tokenizer, Example(ex.input, lab), max_length) for lab in labels] for ex in examples]
    out = np.empty((len(examples), len(labels)), dtype=np.float64)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            nll = _shared_prompt_nll(model, chunk, pad) if _prompts_shared(chunk) else _pairwise_nll(model, chunk, pad)
            out[start : start + len(chunk)] = nll
    model.train(was_training)
    return out


def _prompt_length(labels: list[int]) -> int:
    from plan_probe.probes._tokenize import IGNORE

    return next((i for i, lab in enumerate(labels) if lab != IGNORE), len(labels))


def _prompts_shared(chunk) -> bool:
    """Every example's prompt ids equal across labels, and every response at least one token."""
    for pairs in chunk:
        first_ids, first_labels = pairs[0]
        n = _prompt_length(first_labels)
        for ids, labs in pairs:
            if _prompt_length(labs) != n or ids[:n] != first_ids[:n] or len(ids) == n or n == 0:
                return False
    return True


def _pairwise_nll(model, chunk, pad: int) -> np.ndarray:
    """Each (example, label) sequence in full: ``(len(chunk), n_labels)``."""
    import torch

    from plan_probe.probes._probe import _to
    from plan_probe.probes._tokenize import batch_nll, collate

    device = next(model.parameters()).device
    flat = [pair for pairs in chunk for pair in pairs]
    step = len(chunk)  # rows per forward as in the shared path, not len(chunk) x n_labels
    nll = [batch_nll(model, _to(collate(flat[i : i + step], pad), device), per_example=True)[0] for i in range(0, len(flat), step)]
    return torch.cat(nll).double().cpu().numpy().reshape(len(chunk), -1)


def _shared_prompt_nll(model, chunk, pad: int) -> np.ndarray:
    """One forward of the prompts, then every label's response from the prompts' key/value cache.

    The first response token is scored from the prompt's last logits; the rest (``response[1:]``,
    fed ``response[:-1]``) in one batch of ``n_examples x n_labels`` rows that attend to their
    example's cached prompt (right padding is masked; positions continue from the prompt length).
    """
    import torch
    import torch.nn.functional as F

    from plan_probe.probes._tokenize import collate, logits_at

    device = next(model.parameters()).device
    n_labels = len(chunk[0])
    prompts = [pairs[0][0][: _prompt_length(pairs[0][1])] for pairs in chunk]
    responses = [ids[_prompt_length(labs) :] for pairs in chunk for ids, labs in pairs]
    batch = collate([(p, p) for p in prompts], pad)
    input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    lengths = mask.sum(dim=1)
    rows = torch.arange(len(prompts), device=device)
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[rows, lengths - 1] = True
    out, last = logits_at(model, input_ids, mask, keep, use_cache=True)
    first_logp = F.log_softmax(last.float(), dim=-1).repeat_interleave(n_labels, dim=0)
    first_tokens = torch.tensor([r[0] for r in responses], device=device)
    nll = -first_logp[torch.arange(len(responses), device=device), first_tokens].double()
    width = max(len(r) for r in responses) - 1
    if width > 0:
        nll += _continuation_nll(model, out.past_key_values, mask, lengths, responses, width, n_labels, pad)
    return nll.cpu().numpy().reshape(len(chunk), n_labels)


def _continuation_nll(model, cache, prompt_mask, lengths, responses, width: int, n_labels: int, pad: int):
    """Summed NLL of ``response[1:]`` for every (example, label) row, from the prompts' cache."""
    import torch
    import torch.nn.functional as F

    device = prompt_mask.device
    feed = torch.full((len(responses), width), pad, dtype=torch.long)
    target = torch.full((len(responses), width), -1, dtype=torch.long)
    for i, r in enumerate(responses):
        feed[i, : len(r) - 1] = torch.tensor(r[:-1])
        target[i, : len(r) - 1] = torch.tensor(r[1:])
    feed, target = feed.to(device), target.to(device)
    valid = target >= 0
    cache.batch_repeat_interleave(n_labels)
    mask = torch.cat([prompt_mask.repeat_interleave(n_labels, dim=0), valid.long()], dim=1)
    positions = lengths.repeat_interleave(n_labels)[:, None] + torch.arange(width, device=device)
    logits = model(input_ids=feed, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True).logits
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return -(logp * valid).sum(dim=1).double()


def metrics_from_nll(nll: np.ndarray, truth: np.ndarray) -> dict:
    """Every metric (pp) and its standard error from label NLLs ``(n, n_labels)`` and true indices."""
    n, n_labels = nll.shape
    acc = float((nll.argmin(axis=1) == truth).mean())
    shifted = -nll - (-nll).max(axis=1, keepdims=True)
    logp_true = (shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))[np.arange(n), truth]
    p_true = np.exp(logp_true)
    probs = np.exp(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))
    brier = ((probs - np.eye(n_labels)[truth]) ** 2).sum(axis=1)
    brier_uniform = (n_labels - 1) / n_labels
    log_k = math.log(n_labels)
    sd = (lambda x: float(x.std(ddof=1))) if n > 1 else (lambda x: float("nan"))
    return {
        "accuracy": 100.0 * acc,
        "accuracy_se": 100.0 * math.sqrt(max(acc * (1 - acc), 1e-12) / n),
        "prob_correct": 100.0 * float(p_true.mean()),
        "prob_correct_se": 100.0 * sd(p_true) / math.sqrt(n),
        "log_score": 100.0 * (1.0 + float(logp_true.mean()) / log_k),
        "log_score_se": 100.0 * sd(logp_true) / (math.sqrt(n) * log_k),
        "brier_skill": 100.0 * (1.0 - float(brier.mean()) / brier_uniform),
        "brier_skill_se": 100.0 * sd(brier) / (math.sqrt(n) * brier_uniform),
    }



def example_scores(nll: np.ndarray, truth: np.ndarray, metric: str) -> np.ndarray:
    """Each example's share of ``metric`` (pp): their mean is ``metrics_from_nll(nll, truth)[metric]``.

    Two models scored on the same examples can then be compared pairwise: the SE of the mean
    difference, sd(s_a − s_b)/√n, removes the examples' shared difficulty.
    """
    n, n_labels = nll.shape
    shifted = -nll - (-nll).max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    logp_true = logp[np.arange(n), truth]
    if metric == "accuracy":
        return 100.0 * (nll.argmin(axis=1) == truth).astype(float)
    if metric == "prob_correct":
        return 100.0 * np.exp(logp_true)
    if metric == "log_score":
        return 100.0 * (1.0 + logp_true / math.log(n_labels))
    if metric == "brier_skill":
        brier = ((np.exp(logp) - np.eye(n_labels)[truth]) ** 2).sum(axis=1)
        return 100.0 * (1.0 - brier / ((n_labels - 1) / n_labels))
    raise ValueError(f"metric must be one of {list(LABEL_METRICS)}, but got {metric!r}; pick one of those.")
