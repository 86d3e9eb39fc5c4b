"""Build the shipped unigram reference table (``probes/data/unigram_wordnet.json``) from WordNet glosses.

Run once by maintainers: ``python -m plan_probe.probes._build_unigram ../shared/data/wordnet/glosses.tsv.gz``.
The source is WordNet 3.0 (Princeton University; the same glosses ship in Debian's ``wordnet-base``),
whose licence allows redistribution with its notice, kept in the output file.
"""

from __future__ import annotations

import collections
import csv
import gzip
import sys

from plan_probe.probes._io import write_json
from plan_probe.probes._static import words

TOP_K = 20000
NOTICE = (
    "WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Permission to use, copy, modify and "
    "distribute this software and database and its documentation for any purpose and without fee or royalty is hereby "
    "granted, provided that the copyright notice and statements appear on all copies. THIS SOFTWARE AND DATABASE IS "
    "PROVIDED 'AS IS' AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED."
)


def main(src: str, out: str = "probes/data/unigram_wordnet.json") -> None:
    counts: collections.Counter = collections.Counter()
    with gzip.open(src, "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            counts.update(words(row["gloss"]))
    total = sum(counts.values())
    top = dict(sorted(counts.most_common(TOP_K)))
    write_json(
        {
            "source": "WordNet 3.0 noun/verb/adjective/adverb glosses (117,659 synsets), lower-cased words",
            "license_notice": NOTICE,
            "total_tokens": total,
            "top_k": TOP_K,
            "counts": top,
        },
        out,
        indent=None,
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
