"""Static descriptors at scale: the streaming pass equals the definitions, duplicates stay linear,
sampled descriptors agree with their full-data values within the reported SE, seeds reproduce."""

from __future__ import annotations

import functools
import re
import sys
import zlib

import numpy as np
import pytest

from plan_probe.probes import Example, static_descriptors
from plan_probe.probes._static import SAMPLED_COLUMNS
from plan_probe.probes._static_sample import embedding_estimates, length_batches, nll_estimates, reference_nll, sample_indices
from plan_probe.probes._text_stats import (
    CLAUSE_MARKERS,
    DuplicateIndex,
    _SENTENCE,
    exact_descriptors,
    groundedness,
    ngram_repetition,
    output_majority_share,
    special_char_ratio,
    type_token_ratio,
    unigram_kl,
    words,
)

_WORDS = ("the river rises after rain in hills because water flows down valley which if when bread copper "
          "bees castle train glass honey map star winter garden 42 don't it's (a) [b] {c} ; ! ? é ß _x_ #tag").split()


def _corpus(n: int, seed: int) -> list[Example]:
    """Varied texts: random lengths (heavy tail), brackets, unicode, repeats, exact and near duplicates."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k_in, k_out = int(rng.integers(0, 30)), int(rng.lognormal(2.0, 0.9)) + 1
        x = " ".join(rng.choice(_WORDS, size=k_in)) + ("?" if i % 3 else "\n(nested (twice))")
        y = " ".join(rng.choice(_WORDS, size=k_out)) + (" so the river rises; so the river rises" if i % 5 == 0 else "")
        if i % 7 == 0 and out:  # exact duplicate of an earlier example
            src = out[int(rng.integers(0, len(out)))]
            x, y = src.input, src.output
        elif i % 11 == 0 and out:  # near duplicate: one extra word
            x, y = out[-1].input, out[-1].output + " again"
        out.append(Example(x, y))
    return out


def _depth_by_chars(text: str) -> int:
    """instruction_depth as first written (a loop over every character), the reference."""
    clause = max((1 + sum(1 for w in words(s) if w in CLAUSE_MARKERS) for s in _SENTENCE.split(text) if s.strip()), default=1)
    depth = best = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            best = max(best, depth)
        elif ch in ")]}":
            depth = max(depth - 1, 0)
    return clause + best


def _duplicate_rate_reference(texts, threshold=0.9, num_perm=128):
    """The duplicate rate as first written: MinHash.bulk over sorted shingles, insert every text."""
    from datasketch import MinHash, MinHashLSH

    shingles = []
    for t in texts:
        w = words(t) or [t.strip().lower()]
        grams = {" ".join(w[i : i + 3]) for i in range(max(len(w) - 3 + 1, 1))}
        shingles.append([g.encode("utf-8") for g in sorted(grams)])
    hashes = MinHash.bulk(shingles, num_perm=num_perm, seed=1)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    dups = 0
    for i, m in enumerate(hashes):
        if any(m.jaccard(hashes[int(j)]) >= threshold for j in lsh.query(m)):
            dups += 1
        lsh.insert(str(i), m)
    return dups / len(texts)


def _word_tokenizer(texts, **_):
    return {"input_ids": [words(t) for t in texts]}


def test_streaming_pass_equals_the_definitions():
    ex = _corpus(400, seed=3)
    inputs, outputs = [e.input for e in ex], [e.output for e in ex]
    both = [f"{x}\n{y}" for x, y in zip(inputs, outputs)]
    got = exact_descriptors(ex, _word_tokenizer, chunk=37)  # chunks that do not divide N
    len_in = np.array([len(words(x)) for x in inputs], dtype=float)
    len_out = np.array([len(words(y)) for y in outputs], dtype=float)
    want = {
        "static_n_examples": 400.0,
        "static_token_len_mean": float((len_in + len_out).mean()),
        "static_token_len_std": float((len_in + len_out).std()),
        "static_io_len_ratio": float(np.mean(len_in / np.maximum(len_out, 1.0))),
        "static_special_char_ratio": special_char_ratio(both),
        "static_type_token_ratio": type_token_ratio(both),
        "static_ngram_repetition": ngram_repetition(outputs),
        "static_instruction_complexity": float(np.mean([_depth_by_chars(x) for x in inputs])),
        "static_duplicate_rate": _duplicate_rate_reference(both),
        "static_unigram_kl": unigram_kl(both),
        "static_groundedness": groundedness(inputs, outputs),
        "static_output_majority_share": output_majority_share(outputs),
    }
    assert got == want  # bit for bit
    assert want["static_duplicate_rate"] >= 0.1 and want["static_ngram_repetition"] > 0


def test_special_character_regex_is_isalnum_isspace_everywhere():
    chars = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    special = [ch for ch in chars if not ch.isalnum() and not ch.isspace()]
    assert re.findall(r"[^\w\s]|_", chars) == special


def test_duplicate_index_is_linear_on_a_flood_of_copies():
    index = DuplicateIndex(3000)
    shingles = [b"a b c", b"b c d", b"c d e"]
    flags = [index.add(shingles) for _ in range(3000)]
    assert flags[0] is False and all(flags[1:]) and index.n_duplicates == 2999
    assert len(index._lsh.keys) == 1  # copies never enter the index: each query meets one key, not i


def test_sample_indices_are_the_earlier_draw():
    rng = np.random.default_rng(np.random.SeedSequence([5, 0x57A7]))
    assert np.array_equal(sample_indices(1000, 96, 5), np.sort(rng.choice(1000, size=96, replace=False)))
    assert np.array_equal(sample_indices(50, 96, 5), np.arange(50))


def test_length_batches_cover_once_within_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=500)
    lengths[7] = 5000  # longer than the budget: a batch of its own
    batches = length_batches(lengths, 1024, max_rows=64)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    assert all(len(b) == 1 or len(b) * lengths[b].max() <= 1024 for b in batches)
    assert all(len(b) <= 64 for b in batches)
    assert np.all(np.diff(lengths[flat]) >= 0)  # increasing length: little padding


@functools.lru_cache(maxsize=None)
def _word_vector(w: str) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(w.encode())).normal(size=12)


def _bow_encoder(texts):
    """Bag-of-words hash embedding (unnormalised sums: long texts lie far out, like real outliers)."""
    out = np.zeros((len(texts), 12))
    for i, t in enumerate(texts):
        for w in words(t):
            out[i] += _word_vector(w)
    return out


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("torch")
    from plan_probe.probes._testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    return tiny_model(len(tok)), tok


def test_batching_by_length_does_not_change_nll(tiny):
    model, tok = tiny
    ex = _corpus(40, seed=1)
    a = reference_nll(ex, model, tok, batch_tokens=64)
    b = reference_nll(ex, model, tok, batch_tokens=100_000)
    assert np.allclose(a, b, rtol=0, atol=1e-5)


def test_sampled_descriptors_within_their_se_of_the_full_data(tiny):
    """40 seeded samples against the full-data values: the z-scores (estimate − full) / SE have RMS
    near 1 (calibrated SEs), at most one per descriptor beyond 3 SE (0.1 expected), none beyond 4.
    The per-example NLLs and embeddings are computed once; one end-to-end call checks the wiring."""
    model, tok = tiny
    ex = _corpus(600, seed=2)
    n, m_embed, m_ppl = len(ex), 200, 150
    inputs, outputs = [e.input for e in ex], [e.output for e in ex]
    nll = reference_nll(ex, model, tok)
    full, full_se = embedding_estimates(inputs, outputs, _bow_encoder, n, 0)
    v, s = nll_estimates(nll, n)
    full.update(v)
    full_se.update(s)
    assert all(full_se[k] == 0.0 for k in SAMPLED_COLUMNS)
    assert full["static_embedding_outlier_ratio"] > 0.01  # the case has outliers to estimate

    def estimate(seed):
        ie, ip = sample_indices(n, m_embed, seed), sample_indices(n, m_ppl, seed)
        values, se = embedding_estimates([inputs[i] for i in ie], [outputs[i] for i in ie], _bow_encoder, n, seed)
        v, s = nll_estimates(nll[ip], n)
        return {**values, **v}, {**se, **s}

    z = {k: [] for k in SAMPLED_COLUMNS}
    for seed in range(40):
        values, se = estimate(seed)
        for k in SAMPLED_COLUMNS:
            assert se[k] > 0
            z[k].append((values[k] - full[k]) / se[k])
    for k, zs in z.items():
        zs = np.abs(zs)
        assert np.sum(zs > 3.0) <= 1 and np.all(zs <= 4.0), (k, zs)
        assert 0.6 <= np.sqrt(np.mean(zs**2)) <= 1.4, (k, zs)
    res = static_descriptors(ex, model=model, tokenizer=tok, encoder=_bow_encoder, embed_sample=m_embed, ppl_sample=m_ppl, seed=3)
    values, se = estimate(3)
    assert res.metadata["samples"] == {"embedding": m_embed, "reference_ppl": m_ppl}
    for k in SAMPLED_COLUMNS:
        assert res[k] == pytest.approx(values[k], abs=1e-5) and res.metadata["se"][k] == pytest.approx(se[k], rel=1e-3)


def test_same_seed_same_descriptors_default_samples(tiny):
    model, tok = tiny
    ex = _corpus(300, seed=4)  # larger than both default samples
    a = static_descriptors(ex, model=model, tokenizer=tok, encoder=_bow_encoder, seed=7)
    b = static_descriptors(ex, model=model, tokenizer=tok, encoder=_bow_encoder, seed=7)
    c = static_descriptors(ex, model=model, tokenizer=tok, encoder=_bow_encoder, seed=8)
    assert dict(a) == dict(b) and a.metadata == b.metadata
    assert a["static_ref_ppl_mean"] != c["static_ref_ppl_mean"]
    assert a.metadata["sample"] == "default" and a.metadata["samples"]["reference_ppl"] == 48
    assert a.metadata["samples"]["embedding"] == 256 and a.metadata["se"]["static_ref_ppl_mean"] > 0
    with pytest.raises(ValueError, match="ppl_sample must be a positive integer or 'all'"):
        static_descriptors(ex[:5], encoder=_bow_encoder, ppl_sample=-1)
