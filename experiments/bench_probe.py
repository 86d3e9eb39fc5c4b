"""Probe-overhead benchmark: bare LoRA loop vs the same steps with feature recording.

    python -m plan_probe.experiments.bench_probe [plan-probe bench-probe options]

Thin wrapper around ``plan-probe bench-probe`` (probes/_bench.py), which prints a JSON object
whose ``overhead`` is median(recorded time) / median(bare time) - 1 over ``--repeats`` pairs.
Defaults: SmolLM2-135M-Instruct, 100 steps, rows at 5,10,20,50,100, batch 4, r=8 on q/k/v/o.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from plan_probe.cli import main

    main(["bench-probe", *sys.argv[1:]], prog_name="bench_probe.py")
