"""Instruction datasets of a chosen size for timing ``plan-probe static`` (issue #17).

The first N records of a seeded shuffle of a source file (Alpaca/Dolly JSONL, e.g. the development
data's Dolly + Alpaca mix); beyond the source's size, further passes over it with every text
perturbed (about 10 % of its words dropped and one adjacent pair swapped, seeded per record and
pass), so the copies are different texts of the same kind rather than exact duplicates. Run:
``python -m plan_probe.experiments.bench_data SOURCE OUT.jsonl.gz --n 100000 [--seed 0]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

__all__ = ["scaled_records", "write_records"]

_FIELDS = ("instruction", "input", "output")


def _read(source: Path) -> list[dict]:
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _perturb(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    if len(words) < 3:
        return text
    kept = [w for w in words if rng.random() >= 0.1] or words[:1]
    if len(kept) >= 2:
        i = rng.randrange(len(kept) - 1)
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return " ".join(kept)


def scaled_records(source, n: int, *, seed: int = 0) -> list[dict]:
    """``n`` records: a seeded shuffle of ``source``, then perturbed further passes over it."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, but got {n=}; pass e.g. 10000.")
    base = _read(Path(source))
    if not base:
        raise ValueError(f"source must hold at least one record, but {source} is empty; pass a JSONL dataset.")
    random.Random(seed).shuffle(base)
    out = []
    for k in range(n):
        record = base[k % len(base)]
        rounds = k // len(base)
        if rounds:
            rng = random.Random(f"{seed}/{rounds}/{k % len(base)}")
            record = {**record, **{f: _perturb(str(record.get(f, "")), rng) for f in _FIELDS if record.get(f)}}
        out.append({f: record.get(f, "") for f in _FIELDS})
    return out


def write_records(records: list[dict], path) -> Path:
    """Write ``records`` as gzipped JSONL (the file is complete or absent: written beside, then renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    tmp.replace(path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_records(scaled_records(args.source, args.n, seed=args.seed), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
