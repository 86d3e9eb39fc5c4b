"""The exact static descriptors (docs/theory.md §4): text statistics over every example, in one pass.

:class:`ExactPass` reads the examples once, in chunks, and keeps only running sums, one token
length pair per example, a word-count table and 128 MinHash values per example, so time and memory
grow linearly with N. Each text is split into words once and every descriptor reads those words.
The list-based functions below (``ngram_repetition``, ``special_char_ratio``, ...) are the
definitions, kept as the reference the pass is tested against.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from importlib import resources
from itertools import islice
from typing import Sequence

import numpy as np

__all__ = [
    "ExactPass", "DuplicateIndex", "words", "ngram_repetition", "special_char_ratio", "type_token_ratio",
    "instruction_depth", "groundedness", "duplicate_rate", "unigram_kl", "output_majority_share",
]

NGRAM_N = 4
GROUND_N = 2
DUP_THRESHOLD = 0.9
DUP_NUM_PERM = 128
DUP_SHINGLE = 3
CHUNK = 1024  # examples per tokenizer call
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SENTENCE = re.compile(r"[.!?;\n]+")
# \w is exactly str.isalnum() plus "_", \s exactly str.isspace() (both use the same Unicode tables;
# checked over every code point in the tests), so this matches the characters that are neither.
_SPECIAL = re.compile(r"[^\w\s]|_")
_BRACKET = re.compile(r"[()\[\]{}]")
# Words that open a clause: each adds one level to the instruction-complexity depth.
CLAUSE_MARKERS = frozenset(
    "if because although though while when whenever whereas unless since that which who whom whose where "
    "after before until whether so".split()
)
_OPEN, _CLOSE = "([{", ")]}"


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters/digits, with an optional apostrophe suffix)."""
    return _WORD.findall(text.lower())


# --- definitions (lists in, one number out) ----------------------------------------------------

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
    for ch in _BRACKET.findall(text):  # only brackets change the depth: skip every other character
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
    shares = [s for s in (_grounded_share(words(x), words(y), n) for x, y in zip(inputs, outputs)) if s is not None]
    return float(np.mean(shares)) if shares else 0.0


def _grounded_share(wx: list[str], wy: list[str], n: int = GROUND_N) -> float | None:
    k = n if len(wy) >= n else 1
    out_grams = list(zip(*(wy[i:] for i in range(k))))
    if not out_grams:
        return None
    in_grams = set(zip(*(wx[i:] for i in range(k))))
    return sum(g in in_grams for g in out_grams) / len(out_grams)


def _shingles(w: list[str], text: str) -> list[bytes]:
    """Word 3-gram shingles of a text (the whole lower-cased text when it has no words)."""
    w = w or [text.strip().lower()]
    return [g.encode("utf-8") for g in {" ".join(w[i : i + DUP_SHINGLE]) for i in range(max(len(w) - DUP_SHINGLE + 1, 1))}]


def duplicate_rate(texts: Sequence[str], *, threshold: float = DUP_THRESHOLD, num_perm: int = DUP_NUM_PERM) -> float:
    """Share of texts that are near-duplicates (MinHash Jaccard >= ``threshold`` on word 3-gram shingles)
    of an earlier text, i.e. the share a near-duplicate filter would drop. MinHash/LSH by ``datasketch``."""
    index = DuplicateIndex(len(texts), threshold=threshold, num_perm=num_perm)
    for t in texts:
        index.add(_shingles(words(t), t))
    return index.n_duplicates / len(texts)


def _reference_unigrams() -> dict:
    text = resources.files("plan_probe.probes").joinpath("data/unigram_wordnet.json").read_text(encoding="utf-8")
    return json.loads(text)


def unigram_kl(texts: Sequence[str]) -> float:
    """KL(P_data ‖ Q_ref) in nats over the reference vocabulary (top 20k WordNet-gloss words) plus one
    out-of-vocabulary bucket, both add-one smoothed."""
    counts: Counter = Counter()
    for t in texts:
        counts.update(words(t))
    return _kl_from_counts(counts)


def _normalised_answer(output: str) -> str:
    """Responses that differ only in case or surrounding/inner whitespace count as the same answer."""
    return " ".join(output.split()).casefold()


def _answer_key(output: str) -> bytes:
    """An 8-byte digest of the normalised answer (the streaming pass keeps digests, not texts)."""
    return hashlib.blake2b(_normalised_answer(output).encode("utf-8"), digest_size=8).digest()


def output_majority_share(outputs: Sequence[str]) -> float:
    """Share of examples whose response is the most common one (case and whitespace normalised).

    For classification-style data it is the majority class's share (1/K when K answers are
    balanced, near 1 when one dominates); for free-text responses it is about 1/N.
    """
    if not outputs:
        return 0.0
    counts = Counter(_normalised_answer(y) for y in outputs)
    return max(counts.values()) / len(outputs)


def _kl_from_counts(counts: Counter) -> float:
    ref = _reference_unigrams()
    vocab = ref["counts"]
    index = {w: i for i, w in enumerate(vocab)}
    q = np.fromiter(vocab.values(), dtype=float, count=len(vocab))
    q = np.append(q, ref["total_tokens"] - q.sum()) + 1.0
    p = np.zeros_like(q)
    oov = len(vocab)
    for w, c in counts.items():
        p[index.get(w, oov)] += c
    p += 1.0
    p /= p.sum()
    q /= q.sum()
    return float(np.sum(p * np.log(p / q)))


# --- the streaming pass --------------------------------------------------------------------------

class DuplicateIndex:
    """Near-duplicate counting with MinHash + LSH (datasketch), one query and one insert per text.

    A text is a duplicate when some earlier text that shares an LSH band has estimated Jaccard
    >= ``threshold``. Cost per text: hashing its shingles, one LSH query (the texts sharing a band)
    and one insert, so O(N) in total unless many texts share a band. Texts whose MinHash signature
    equals an earlier one (exact duplicates, the common flood) are counted without touching the
    index: any later text's estimated Jaccard to them equals that to the earlier copy, so the
    count is unchanged and a file of N copies costs O(N), not O(N²). Signatures are kept as
    uint32 (datasketch's default values are < 2³²): 512 bytes per text at 128 permutations.
    """

    def __init__(self, capacity: int, *, threshold: float = DUP_THRESHOLD, num_perm: int = DUP_NUM_PERM) -> None:
        from datasketch import MinHash, MinHashLSH

        self.threshold = float(threshold)
        self._template = MinHash(num_perm=num_perm, seed=1)
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        # affine32 (datasketch >= 2 default) and legacy values are < 2**32; affine64 needs 64 bits
        wide = getattr(self._template, "scheme", "legacy") not in ("affine32", "legacy")
        self._sigs = np.empty((capacity, num_perm), dtype=np.uint64 if wide else np.uint32)
        self._first: dict[bytes, int] = {}  # 16-byte digest of a signature -> its first text
        self.n = 0
        self.n_duplicates = 0

    def add(self, shingles: list[bytes]) -> bool:
        """Hash one text's shingles; return whether it duplicates an earlier text."""
        m = self._template.copy()
        m.update_batch(shingles)
        sig = m.hashvalues.astype(self._sigs.dtype)
        key = hashlib.blake2b(sig.tobytes(), digest_size=16).digest()
        first = self._first.get(key)
        if first is not None and np.array_equal(self._sigs[first], sig):  # compared in full: exact
            dup = True
        else:
            dup = any(np.count_nonzero(self._sigs[j] == sig) / sig.size >= self.threshold for j in self._lsh.query(m))
            self._lsh.insert(self.n, m, check_duplication=False)
            self._first.setdefault(key, self.n)
        self._sigs[self.n] = sig
        self.n += 1
        self.n_duplicates += dup
        return dup


class ExactPass:
    """Accumulate the exact descriptors over examples fed in chunks (see the module docstring).

    ``tokenizer`` counts tokens of inputs and outputs (no special tokens). Every statistic is the
    same number the list-based definition gives on the whole dataset (tested).
    """

    def __init__(self, n_examples: int, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.len_in = np.empty(n_examples)
        self.len_out = np.empty(n_examples)
        self.n = 0
        self.special = self.chars = 0
        self.rep = self.grams = 0
        # per-example values (averaged with np.mean at the end, as the definitions do)
        self.ttr: list[float] = []
        self.depth: list[int] = []
        self.ground: list[float] = []
        self.counts: Counter = Counter()
        self.answers: Counter = Counter()  # 8-byte digests of normalised responses: memory O(distinct answers)
        self.dups = DuplicateIndex(n_examples)

    def add(self, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        """Add one chunk of examples (inputs[i], outputs[i])."""
        k = len(inputs)
        self.len_in[self.n : self.n + k] = _token_lengths(self.tokenizer, inputs)
        self.len_out[self.n : self.n + k] = _token_lengths(self.tokenizer, outputs)
        self.n += k
        for x, y in zip(inputs, outputs):
            self._add_one(x, y)

    def _add_one(self, x: str, y: str) -> None:
        wx, wy = words(x), words(y)
        both = wx + wy  # == words(x + "\n" + y): a newline never joins two words
        self.special += len(_SPECIAL.findall(x)) + len(_SPECIAL.findall(y))
        self.chars += len(x) + len(y) + 1
        if both:
            self.ttr.append(len(set(both)) / len(both))
        total = max(len(wy) - NGRAM_N + 1, 0)
        self.grams += total
        self.rep += total - len(set(zip(*(wy[i:] for i in range(NGRAM_N)))))
        self.depth.append(instruction_depth(x))
        share = _grounded_share(wx, wy)
        if share is not None:
            self.ground.append(share)
        self.counts.update(both)
        self.answers[_answer_key(y)] += 1
        self.dups.add(_shingles(both, f"{x}\n{y}"))

    def result(self) -> dict[str, float]:
        """The 12 exact descriptors."""
        lengths = self.len_in[: self.n] + self.len_out[: self.n]
        return {
            "static_n_examples": float(self.n),
            "static_token_len_mean": float(lengths.mean()),
            "static_token_len_std": float(lengths.std()),
            "static_io_len_ratio": float(np.mean(self.len_in[: self.n] / np.maximum(self.len_out[: self.n], 1.0))),
            "static_special_char_ratio": self.special / self.chars if self.chars else 0.0,
            "static_type_token_ratio": float(np.mean(self.ttr)) if self.ttr else 0.0,
            "static_ngram_repetition": self.rep / self.grams if self.grams else 0.0,
            "static_instruction_complexity": float(np.mean(self.depth)),
            "static_duplicate_rate": self.dups.n_duplicates / self.n,
            "static_unigram_kl": _kl_from_counts(self.counts),
            "static_groundedness": float(np.mean(self.ground)) if self.ground else 0.0,
            "static_output_majority_share": max(self.answers.values()) / self.n if self.n else 0.0,
        }


def _token_lengths(tokenizer, texts: Sequence[str]) -> np.ndarray:
    ids = tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return np.fromiter((len(x) for x in ids), dtype=float, count=len(texts))


def exact_descriptors(examples, tokenizer, *, chunk: int = CHUNK) -> dict[str, float]:
    """Run :class:`ExactPass` over ``examples`` (objects with ``input`` and ``output``)."""
    acc = ExactPass(len(examples), tokenizer)
    it = iter(examples)
    while batch := list(islice(it, chunk)):
        acc.add([e.input for e in batch], [e.output for e in batch])
    return acc.result()
