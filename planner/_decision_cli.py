"""``plan --objective decision``: the options and the decision branch of the ``plan`` command.

Only click and the standard library at module level (``plan-probe --help`` stays instant); the
numerical work is in :mod:`plan_probe._decision_plan`. Every input is checked before anything is
written (a ``ValueError`` becomes one ``error:`` line and exit code 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import click

__all__ = ["decision_options", "prepare_decision", "DecisionRequest"]

_DECISION_ONLY = ("threshold", "full_cost", "launch_cost", "kill_cost", "static_predictor", "anchor_depth", "anchor_ratio")


def decision_options(f):
    """Add ``--objective``, ``--threshold``, ``--full-cost``, ``--launch-cost``, ``--kill-cost``, ``--static-predictor``,
    ``--anchor-depth`` and ``--anchor-ratio``."""
    options = [
        click.option("--objective", type=click.Choice(["risk", "decision"]), default="risk", show_default=True,
                     help="risk: minimise L(c) + gamma*lambda*c (Thm. 6.1); decision: minimise the expected go/no-go "
                          "loss + lambda*c at --threshold (docs/guide/decision.md)."),
        click.option("--threshold", type=float, default=None, help="decision: the go score tau (label units)."),
        click.option("--full-cost", type=float, default=None,
                     help="decision: cost of one full run, in the unit of --step-cost (e.g. its steps); default of "
                          "both error costs. A TASKS column full_cost gives it per task."),
        click.option("--launch-cost", type=float, default=None,
                     help="decision: cost of launching a run that ends below tau (default: --full-cost)."),
        click.option("--kill-cost", type=float, default=None,
                     help="decision: cost of not launching a run that would reach tau (default: --full-cost)."),
        click.option("--static-predictor", type=click.Path(file_okay=False), default=None,
                     help="decision: a static-only predictor (fit-predictor --features static) giving each task's "
                          "prior_mean and prior_var, instead of TASKS columns."),
        click.option("--anchor-depth", type=float, default=None,
                     help="decision: anchor each risk curve to the prior at this depth (with --anchor-ratio): "
                          "L(depth) = ratio x prior_var (docs/theory.md §2, \"Anchoring\")."),
        click.option("--anchor-ratio", type=float, default=None,
                     help="decision: the depth-aware predictor's out-of-fold MSE at --anchor-depth over the "
                          "static-only predictor's (plan-probe run measures it from the two predictors)."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


@dataclass
class DecisionRequest:
    """A checked ``--objective decision`` request: settings, the split TASKS table, where the priors come from."""

    settings: object
    risk_frame: object
    decision_frame: object
    static_predictor: object | None  # a loaded ProbePredictor, or None: priors from TASKS columns

    def plan(self, model, frame, plan_settings, seed: int = 0):
        """(plan, draws, warning): priors, costs, the decision plan; all checks before any output."""
        from plan_probe._decision_plan import (
            compute_decision_plan,
            priors_from_predictor,
            priors_from_table,
            warn_cost_scale,
        )
        from plan_probe._tables import validate_tasks

        tasks, _ = validate_tasks(frame, model.static_features_)
        ids = tasks["task_id"].to_numpy()
        if self.static_predictor is not None:
            m0, s0 = priors_from_predictor(self.static_predictor, self.decision_frame, ids, model, seed=seed)
        else:
            m0, s0 = priors_from_table(self.decision_frame, ids)
        full = None
        if "full_cost" in self.decision_frame.columns:
            from plan_probe._decision_plan import _per_task

            full = _per_task(self.decision_frame, ids, "full_cost")
        c_lb, c_kg = self.settings.costs(len(ids), full)
        warning = warn_cost_scale(c_lb, c_kg, plan_settings.step_cost, plan_settings.max_depth)
        plan, draws = compute_decision_plan(model, frame, plan_settings, self.settings, m0, s0, full)
        return plan, draws, warning

    def summary(self, plan, warning) -> dict:
        """Fields the JSON summary of ``plan`` adds for the decision objective."""
        steps = plan["probe_steps"].to_numpy()
        avoided = plan["loss_now"] - plan["loss_at_probe_steps"]
        out = {"objective": "decision", "decision": self.settings.to_dict(),
               "expected_loss_now": float(plan["loss_now"].sum()),
               "expected_loss_after_probes": float(plan["loss_at_probe_steps"].sum()),
               "expected_loss_avoided_gross": float(avoided.sum()),
               "decisions_now": {k: int(v) for k, v in plan["decision_now"].value_counts().items()},
               "probed": int((steps > 0).sum())}
        if warning:
            out["warning"] = warning
        return out


def prepare_decision(opts: dict, frame):
    """Check the decision options against ``frame`` (TASKS); None for ``--objective risk``."""
    if opts["objective"] == "risk":
        given = [name for name in _DECISION_ONLY if opts.get(name) is not None]
        if given:
            flags = ", ".join("--" + g.replace("_", "-") for g in given)
            verb = "applies" if len(given) == 1 else "apply"
            raise ValueError(f"{flags} only {verb} to the decision objective, but got --objective risk; "
                             "add --objective decision or drop them.")
        return None
    from plan_probe._decision_plan import PRIOR_COLUMNS, DecisionSettings, split_decision_columns

    if opts.get("threshold") is None:
        raise ValueError("--objective decision needs the go threshold, but got no --threshold; pass --threshold τ "
                         "(label units, e.g. --threshold 55).")
    if (opts.get("anchor_depth") is None) != (opts.get("anchor_ratio") is None):
        given, missing = ("--anchor-depth", "--anchor-ratio")[:: 1 if opts.get("anchor_depth") is not None else -1]
        raise ValueError(f"{given} and {missing} go together, but got {given} alone; pass both or neither.")
    settings = DecisionSettings(threshold=opts["threshold"], full_cost=opts.get("full_cost"),
                                launch_cost=opts.get("launch_cost"), kill_cost=opts.get("kill_cost"),
                                anchor_depth=opts.get("anchor_depth"), anchor_ratio=opts.get("anchor_ratio"))
    has_priors = [c for c in PRIOR_COLUMNS if c in frame.columns]
    if opts.get("static_predictor") is not None and has_priors:
        raise ValueError(f"the priors must come from one place, but got both TASKS columns {has_priors} and "
                         "--static-predictor; drop one.")
    predictor, keep = None, ()
    if opts.get("static_predictor") is not None:
        from plan_probe._predictor import ProbePredictor

        predictor = ProbePredictor.load(opts["static_predictor"])
        if "depth" in predictor.feature_names_:
            raise ValueError("--static-predictor must be a static-only predictor (no 'depth' feature), but this one is "
                             "depth-aware; fit one with plan-probe fit-predictor --features static.")
        keep = tuple(predictor.feature_names_)
    risk_frame, decision_frame = split_decision_columns(frame, keep)
    if opts.get("full_cost") is None and "full_cost" not in frame.columns and None in (settings.launch_cost, settings.kill_cost):
        raise ValueError("--objective decision needs the cost of a full run, but got no --full-cost (and no full_cost "
                         "column in TASKS); pass --full-cost C in the unit of --step-cost (e.g. the run's steps).")
    return DecisionRequest(settings, risk_frame, decision_frame, predictor)
