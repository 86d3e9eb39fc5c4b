"""``plan-probe experiment decision`` on a tiny configuration: the rivals spend the same steps, the
table is complete, and the decision objective's realised loss + cost is below probing blindly."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from plan_probe.cli import main
from plan_probe.experiments.synthetic.decision_check import (
    DecisionExperimentSettings,
    Suite,
    _fixed_at,
    _risk_at,
    format_table,
    run_decision_experiment,
)

TINY = DecisionExperimentSettings(n_tasks=120, n_portfolios=3, n_outcomes=8, n_draws=64, depths=(10, 50),
                                  suites=(Suite("near", 1.0),), n_boot=200, seed=3)


def test_rivals_spend_exactly_the_decision_plans_steps():
    rng = np.random.default_rng(0)
    n = 50
    draws = {"l_int": np.full((n, 8), 1.0), "k": rng.uniform(1, 10, (n, 8)), "alpha": rng.uniform(0.2, 1, (n, 8))}
    s0 = rng.uniform(3, 12, n)
    for total in (0, 35, 499, 500, 777, 5000):
        fixed, risk = _fixed_at(total, n, TINY, rng), _risk_at(total, draws, s0, TINY)
        for c in (fixed, risk):
            assert c.sum() <= total and np.all((c == 0) | (c >= TINY.c_min))
            if total >= TINY.c_min * n:
                assert c.sum() == total
            else:
                assert c.sum() == (total // TINY.c_min) * TINY.c_min


def test_tiny_experiment_table_and_its_direction():
    res = run_decision_experiment(TINY)
    rows = res["rows"]
    assert len(rows) == 2 * 2 + 3 and res["checks"]["n_comparisons"] == 4
    for r in rows:
        assert r["diff_lo90"] <= r["diff"] <= r["diff_hi90"]
        if r["depth"] is not None:
            assert r["steps_decision"] <= TINY.n_tasks * r["depth"] + 1e-9
        elif r["rival"] != "decide now":
            assert r["steps_rival"] <= r["steps_decision"]
    fixed50 = next(r for r in rows if r["depth"] == 50 and r["rival"] == "fixed")
    assert fixed50["verdict"] == "decision lower"  # 50 steps on every task cannot pay near tau
    assert format_table(res).count("\n") == len(rows) + 1


def test_cli_refuses_a_file_as_out_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    cli = CliRunner().invoke(main, ["experiment", "decision", "--out", str(f), "--quick"])
    assert cli.exit_code == 2 and cli.stderr.startswith("error: --out must be a")


@pytest.mark.slow
def test_quick_cli_writes_results_and_table(tmp_path):
    out = tmp_path / "exp"
    cli = CliRunner().invoke(main, ["experiment", "decision", "--out", str(out), "--quick", "--seed", "1"])
    assert cli.exit_code == 0, cli.output
    assert (out / "results.json").is_file() and (out / "table.md").read_text().startswith("| suite |")
