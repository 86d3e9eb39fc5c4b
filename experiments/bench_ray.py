"""Wall time of N probes on the local backend vs Ray with 2 workers (issue #7).

The probes use a small random-init LLaMA (built here, saved to a temp folder) so the benchmark
needs no download and measures scheduling plus compute; each probe is an independent job, as in
``plan-probe probe --seeds`` or ``plan-probe run``. Ray's start-up is included in its time,
because a user pays it too. Prints JSON.

Run as ``python -m plan_probe.experiments.bench_ray [--probes 4] [--steps 30]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _model_folder(folder: Path, hidden: int, layers: int) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    from plan_probe.probes._testing import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plan_probe.experiments.bench_ray", description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    from plan_probe.probes._executor import Job, execute
    from plan_probe.probes._config import ProbeConfig
    from plan_probe.probes._jobs import probe_job

    with tempfile.TemporaryDirectory() as tmp:
        model = _model_folder(Path(tmp) / "model", args.hidden, args.layers)
        data = Path(tmp) / "data.jsonl"
        data.write_text("".join(json.dumps({"instruction": f"Repeat the number {i} twice.", "output": f"{i} {i}"}) + "\n"
                                for i in range(64)))
        configs = [ProbeConfig(steps=args.steps, record_at=(args.steps,), batch_size=4, max_length=48, lora_r=4,
                               target_modules=("q_proj", "v_proj"), seed=s) for s in range(args.probes)]
        jobs = [Job(f"seed{c.seed}", probe_job, (str(data), model, c.to_json()), {"device": "cpu"}) for c in configs]
        timings = {}
        for backend in ("local", "ray"):
            t0 = time.perf_counter()
            outcomes = list(execute(jobs, backend=backend, num_cpus=args.workers))
            timings[backend] = round(time.perf_counter() - t0, 2)
            if not all(o.ok for o in outcomes):
                raise SystemExit(f"{backend}: a probe failed: {[o.error for o in outcomes if not o.ok]}")
    result = {"probes": args.probes, "steps": args.steps, "model": f"llama hidden={args.hidden} layers={args.layers}",
              "ray_workers": args.workers, "wall_s": timings, "speedup_ray_vs_local": round(timings["local"] / timings["ray"], 2)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
