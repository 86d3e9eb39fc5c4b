"""The report of ``plan-probe run``: ``report.md`` with PNG figures beside it, and the stdout summary.

Figure data come from the plotting modules (``plan_probe._plots_risk``); the functions here draw on a
given ``Axes``; only :func:`write_report` saves files (Agg backend, atomic writes). The report holds
no wall times and no absolute paths, so the same inputs give the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from plan_probe.probes._glossary import feature_phrase

__all__ = ["write_report", "render_report", "format_summary", "plot_shap_groups", "compute_table"]

_REGIME_LABELS = {"static_sufficient": "Static-Sufficient", "dynamic_critical": "Dynamic-Critical",
                  "noise_dominant": "Noise-Dominant"}
_GROUP_LABELS = {"shap_static": "static", "shap_dynamic": "dynamic", "shap_hyperparameter": "hyperparameter",
                 "shap_depth": "depth", "shap_other": "other"}


def _f(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}g}"
    return str(v).replace("|", "\\|")


def _interval(row: dict, name: str) -> str:
    """``median [q10, q90]`` of a plan parameter."""
    return f"{_f(row[name])} [{_f(row[f'{name}_q10'])}, {_f(row[f'{name}_q90'])}]"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _prediction_table(predictions, baseline: dict | None) -> list[str]:
    """The predictions table; with a baseline (the base model's own score) also each candidate's predicted
    gain over not fine-tuning and P(score > baseline)."""
    records = predictions.to_dict("records")
    head = ["candidate", "probe", "predictor", "prediction", "interval", "P(score ≥ τ)", "decision", "note"]
    rows = [[r["candidate"], r["probe_status"] if r["probe_steps"] else "-", r["predictor"].replace("_", "-"), r["pred"],
             f"[{_f(r['lower'])}, {_f(r['upper'])}]", r["p_success"], r["decision"], r["note"] or ""]
            for r in records]
    if baseline is None:
        return [_table(head, rows)]
    b = baseline["score"]
    se = f" ± {_f(baseline['se'])}" if baseline.get("se") is not None else ""
    intro = (f"Not fine-tuning scores {_f(b)}{se} ({baseline['source']}); \"gain\" is the predicted score minus it, "
             "with the interval shifted alike.")
    head = head[:5] + ["gain over base", "P(beats base)"] + head[5:]
    for row, r in zip(rows, records):
        row[5:5] = [f"{r['gain_over_base']:+.3g} [{r['lower'] - b:+.3g}, {r['upper'] - b:+.3g}]", r["p_beats_base"]]
    return [intro, "", _table(head, rows)]


def compute_table(plan, fixed: int) -> tuple[list[list], dict]:
    """Rows (candidate, planned steps, fixed steps, share saved) and the portfolio totals."""
    rows = []
    for cand, steps in zip(plan["candidate"], plan["probe_steps"].astype(int)):
        rows.append([cand, int(steps), fixed, 1.0 - steps / fixed])
    total = int(plan["probe_steps"].sum())
    n = len(plan)
    return rows, {"planned": total, "fixed": fixed * n, "share_saved": 1.0 - total / (fixed * n)}


def plot_shap_groups(ax, predictions):
    """Stacked horizontal bars: each candidate's SHAP contribution per feature group (label units)."""
    cols = [c for c in _GROUP_LABELS if c in predictions.columns and np.any(predictions[c].to_numpy() != 0)]
    y = np.arange(len(predictions))
    pos = np.zeros(len(predictions))
    neg = np.zeros(len(predictions))
    colours = {"shap_static": "tab:blue", "shap_dynamic": "tab:orange", "shap_hyperparameter": "tab:green",
               "shap_depth": "tab:purple", "shap_other": "tab:grey"}
    for c in cols:
        v = predictions[c].to_numpy(dtype=float)
        left = np.where(v >= 0, pos, neg)
        ax.barh(y, v, left=left, color=colours[c], label=_GROUP_LABELS[c])
        pos += np.clip(v, 0, None)
        neg += np.clip(v, None, 0)
    ax.axvline(0, color="k", lw=0.8)
    labels = [f"{c} ({d})" for c, d in zip(predictions["candidate"], predictions["decision"])]
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("SHAP contribution to the predicted score (vs. the base value)")
    ax.set_title("Why each prediction: contributions by feature group")
    ax.legend(fontsize=7, loc="best")
    return ax


def _figures(out: Path, plan, draws, settings, predictions) -> list[str]:
    from plan_probe._figures import subplots

    from plan_probe.probes._io import atomic_path
    from plan_probe._plots_risk import plot_phase_diagram, plot_risk_curve

    saved = []

    def save(fig, name):
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        saved.append(name)

    fig, ax = subplots(figsize=(6.5, 4.5))
    plot_phase_diagram(ax, plan, settings, draws)
    for x, y, name in zip(plan["l_int"], plan["alpha"], plan["candidate"]):
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    save(fig, "phase_diagram.png")

    n = len(plan)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for i, row in enumerate(plan.to_dict("records")):
        task_draws = {k: draws[k][i] for k in ("l_int", "k", "alpha")}
        plot_risk_curve(axes[i // cols][i % cols], row, settings, task_draws)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.tight_layout()
    save(fig, "risk_curves.png")

    fig, ax = subplots(figsize=(7, 0.45 * n + 1.6))
    plot_shap_groups(ax, predictions)
    save(fig, "shap_groups.png")
    return saved


def render_report(prepared, plan, predictions, summary, figures: list[str]) -> str:
    """The Markdown text of the report."""
    p = prepared.portfolio
    fixed = p.fixed_probe_steps
    t = summary["totals"]
    budget = "none (each candidate's own optimum)" if p.budget is None else f"{p.budget:g} probe steps"
    ps = summary["plan_settings"]
    relative = set(ps["relative_defaults"])
    gamma = f"{ps['risk_weight']:.3g}" + (" (default 10⁻³·S)" if "risk_weight" in relative else "")
    eps = f"{ps['target_rmse']:.3g}" + (" (default √(S/2))" if "target_rmse" in relative else "")
    decision = getattr(p, "objective", "risk") == "decision"
    go_rule = ("go when C_lb·P(score < τ) ≤ C_kg·P(score ≥ τ)" if decision
               else f"go when P(score ≥ τ) ≥ {p.go_probability:g}")
    objective = ("Objective: decision (expected go/no-go loss + probe cost, costs in the unit of λ)" if decision
                 else "Objective: risk (expected L(c) + γλc)")
    lines = [
        f"# plan-probe run: {p.name}",
        "",
        f"Model `{p.model}`, {len(p.candidates)} candidates, go threshold τ = {p.threshold:g} "
        f"({go_rule}), interval coverage {p.coverage:g}, budget {budget}. {objective}. "
        f"Plan settings: λ = {p.step_cost:g}, γ = {gamma}, ε = {eps}, "
        f"c ∈ [{p.min_depth}, {p.max_depth}]; the risk model's label scale S = {ps['label_scale']:.4g} "
        f"(typical pre-probe risk, label units²); seed {p.seed}. plan-probe {summary['versions']['plan-probe']}.",
        "",
        f"**Result:** {t['go']} go, {t['no_go']} no-go; {t['probed']} candidates probed with {t['probe_steps']} steps in total "
        f"versus {t['fixed_probe_steps_total']} for a fixed {fixed}-step probe of every candidate "
        f"({100 * t['share_saved_vs_fixed']:.1f} % saved)."
        + (f" Expected decision loss avoided by the probes: {_f(t['expected_loss_avoided'])} net of their cost."
           if decision else "")
        + (f" {t['failed_probes']} probe(s) failed." if t["failed_probes"] else "")
        + (f" {t['diverged_probes']} probe(s) diverged." if t["diverged_probes"] else ""),
        "",
        "## Plan",
        "",
    ]
    if decision:
        lines += _decision_section(p, plan, t, summary.get("decision_settings")) + ["### Risk diagnosis", "",
                  "Regimes are a diagnosis of each risk curve (shares of posterior draws); with the decision "
                  "objective they do not set the probe steps. L_int, K and α are posterior medians with 80 % "
                  "intervals; risk at c_opt is a posterior mean.", ""]
    else:
        lines += ["Regime probabilities are shares of posterior draws; the regime is a diagnosis. `c_opt` minimises the "
                  "expected risk plus cost, and every candidate is probed for `c_opt` steps except Static-Sufficient ones "
                  "(0: static features suffice)"
                  + (", then the budget is shared by equal marginal gains." if p.budget is not None else ".")
                  + " A Noise-Dominant candidate cannot reach the target RMSE ε at any probe depth (its intrinsic risk "
                  "L_int ≥ ε²): fix its data or accept the uncertainty; its probe still pays for the risk it removes. "
                  "L_int, K and α are posterior medians with 80 % intervals; risk at c_opt is a posterior mean.", ""]
    lines += [
        _table(
            ["candidate", "regime", "P(static)", "P(dynamic)", "P(noise)", "L_int [80 %]", "K [80 %]", "α [80 %]", "c_opt",
             "probe steps", "risk at c_opt"],
            [[r["candidate"], _REGIME_LABELS.get(r["regime"], r["regime"]), r["p_static_sufficient"], r["p_dynamic_critical"],
              r["p_noise_dominant"], _interval(r, "l_int"), _interval(r, "k"), _interval(r, "alpha"), r["c_opt"],
              r["probe_steps"], r["risk_at_c_opt"]]
             for r in plan.to_dict("records")],
        ),
        "",
    ]
    if not summary.get("risk_model_ok", True):
        lines += ["**Warning:** the risk model did not meet the convergence thresholds (R-hat ≤ 1.05, bulk ESS ≥ 100, "
                  "no divergences); treat its regimes and depths as rough.", ""]
    # the note explains c_opt by the risk objective; the decision objective's reason column explains its own
    at_bound = plan["at_bound"].isin(["c_min", "c_max"]) if "at_bound" in plan.columns and not decision else None
    if at_bound is not None and at_bound.sum() > 0.5 * len(plan):
        lines += [f"**Note:** {int(at_bound.sum())} of {len(plan)} candidates have c_opt at a probe limit "
                  f"({int((plan['at_bound'] == 'c_min').sum())} at c_min, {int((plan['at_bound'] == 'c_max').sum())} at c_max): "
                  "at c_min probing removes less risk than it costs, at c_max the risk still falls faster than the cost.", ""]
    if "phase_diagram.png" in figures:
        lines += ["![Phase diagram](phase_diagram.png)", ""]
    if "risk_curves.png" in figures:
        lines += ["Risk curves L(c) per candidate (posterior mean and 80 % band, c_opt marked):", "",
                  "![Risk curves](risk_curves.png)", ""]
    lines += [
        "## Predictions",
        "",
        f"Probed candidates use the depth-aware predictor at depth = probe steps; the others the static-only "
        f"predictor (static + hyperparameter features). Intervals are conformal at {p.coverage:g} coverage.",
        "",
        *_prediction_table(predictions, summary.get("baseline")),
        "",
    ]
    if "shap_groups.png" in figures:
        lines += ["![SHAP contributions by group](shap_groups.png)", ""]
    no_go = [r for r in predictions.to_dict("records") if not r["go"]]
    lines += ["## Why the predicted failures fail", ""]
    if not no_go:
        lines += ["No candidate is predicted to fail.", ""]
    for r in no_go:
        groups = ", ".join(f"{_GROUP_LABELS[c]} {r[c]:+.2f}" for c in _GROUP_LABELS if r.get(c))
        lines += [f"### {r['candidate']}", "", f"- Reason: {r['reason']}",
                  f"- Predicted {_f(r['pred'])} (base value {_f(r['shap_base'])}); SHAP by group: {groups or '-'}"]
        downs = [feature_phrase(r[f"down_{k}"], effect=r[f"down_{k}_value"]) for k in (1, 2, 3) if r[f"down_{k}"]]
        lines += [f"- Top features pushing the prediction down: {', '.join(downs) if downs else 'none'}"]
        if r["note"]:
            lines += [f"- Note: {r['note']}"]
        lines += [""]
    rows, tot = compute_table(plan, fixed)
    lines += [
        f"## Compute: planned probes vs a fixed {fixed}-step probe",
        "",
        _table(["candidate", "planned steps", "fixed steps", "share saved"],
               [[c, s, f_, f"{100 * sh:.1f} %"] for c, s, f_, sh in rows]
               + [["**total**", tot["planned"], tot["fixed"], f"{100 * tot['share_saved']:.1f} %"]]),
        "",
    ]
    failed = [c for c in summary["candidates"] if c["probe"] and c["probe"]["status"] == "failed"]
    if failed:
        lines += ["## Failed probes", ""]
        lines += [f"- {c['candidate']}: {c['probe']['error']} (after {c['probe']['attempts']} attempt(s))" for c in failed]
        lines += [""]
    lines += [
        "## Inputs",
        "",
        f"- Risk model: `{p.risk_model}` (sha256 {summary['inputs']['risk_model']['sha256'][:12]})",
        f"- Predictor: `{p.predictor}` (sha256 {summary['inputs']['predictor']['sha256'][:12]}); static-only: "
        f"`{p.predictor_static}` (sha256 {summary['inputs']['predictor_static']['sha256'][:12]})",
        "- Datasets: " + "; ".join(f"{c.name} = {c.dataset.describe()}" for c in p.candidates),
        "",
        "Machine-readable results: `summary.json`, `plan.csv`, `predictions.csv`, `probes/*.json`, `static/*.json`.",
        "",
    ]
    return "\n".join(lines)


def _decision_section(p, plan, t, decision=None) -> list[str]:
    """The decision objective's plan: per candidate the numbers and the reason for its steps, and the totals."""
    from plan_probe.theory import probe_cost_steps

    lam, setup = p.step_cost, p.readout_steps
    rows = [[r["candidate"], r["p_success_now"], r["decision_now"], r["loss_now"], r["probe_steps"],
             r["loss_at_probe_steps"], r["loss_now"] - r["loss_at_probe_steps"] - lam * probe_cost_steps(r["probe_steps"], setup),
             r["p_flip"]]
            for r in plan.to_dict("records")]
    lines = [
        "Each candidate's probe length minimises the expected loss of the go/no-go decision at τ plus the probe's "
        "cost (preposterior analysis: before probing, the static-only prediction N(m₀, S₀); a c-step probe leaves "
        "the risk model's L(c) and moves the mean by N(0, S₀ − L(c)); docs/guide/decision.md). Costs are in the "
        f"unit of λ = {lam:g} per probe step: a launched run that ends below τ costs C_lb, a killed run that would "
        "have reached τ costs C_kg (default for both: the candidate's full run, `full_steps` × λ or `full_cost`)"
        + (", and the budget is shared by equal marginal value of information." if p.budget is not None else ".")
        + (f" Every probe also runs the {setup:g}-step readout on the reference set: its cost is charged with the "
           "probe's (so a probe must pay for it), but not counted against the probe budget." if setup > 0 else "")
        + _anchor_sentence(decision),
        "",
        _table(["candidate", "P(score ≥ τ) now", "decide now", "expected loss now", "probe steps",
                "expected loss after", "loss avoided (net)", "P(probe flips it)"], rows),
        "",
        f"Expected decision loss: {_f(t['expected_loss_now'])} deciding every candidate now, "
        f"{_f(t['expected_loss_after_probes'])} after the planned probes, which cost {_f(t['probe_cost'])}: "
        f"**{_f(t['expected_loss_avoided'])} avoided** (net, in the unit of λ).",
        "",
        "### Why each candidate got its steps",
        "",
    ]
    lines += [f"- **{r['candidate']}** ({int(r['probe_steps'])} steps): {r['reason']}" for r in plan.to_dict("records")]
    return lines + [""]


def _anchor_sentence(decision) -> str:
    """How the risk curves were tied to the prior (``anchor``), in one sentence; empty when they were not."""
    if not decision or decision.get("anchor_ratio") is None:
        return ""
    depth, ratio = decision["anchor_depth"], decision["anchor_ratio"]
    verdict = ("so a probe that short adds nothing over the static descriptors" if ratio >= 1 else
               f"so a probe that short resolves {100 * (1 - ratio):.0f} % of the prior's variance")
    return (f" Each risk curve is anchored to the prior: out of fold the depth-aware predictor's MSE at {depth:g} steps "
            f"is {ratio:.2f} × the static-only predictor's, {verdict}; L(c) keeps the risk model's shape and passes "
            f"through {ratio:.2f} × S₀ at {depth:g} steps (docs/theory.md §2, \"Anchoring\").")


def write_report(out: Path, prepared, plan, draws, settings, predictions, summary) -> Path:
    """Write the figures and ``report.md`` into ``out`` (atomically)."""
    from plan_probe.probes._io import atomic_path

    figures = _figures(Path(out), plan, draws, settings, predictions)
    text = render_report(prepared, plan, predictions, summary, figures)
    with atomic_path(Path(out) / "report.md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(out) / "report.md"


def format_summary(summary: dict) -> str:
    """A plain-text results table for stdout."""
    head = f"{'candidate':<20}{'regime':<19}{'steps':>6}{'pred':>9}{'interval':>20}{'P(go)':>7}  decision"
    lines = [head]
    for c in summary["candidates"]:
        q = c["prediction"]
        interval = f"[{_f(q['lower'])}, {_f(q['upper'])}]"
        lines.append(f"{c['candidate']:<20}{_REGIME_LABELS.get(c['plan']['regime'], c['plan']['regime']):<19}"
                     f"{c['plan']['probe_steps']:>6}{_f(q['pred']):>9}{interval:>20}{q['p_success']:>7.2f}  {q['decision']}")
    t = summary["totals"]
    lines.append(f"probe steps {t['probe_steps']} vs {t['fixed_probe_steps_total']} for a fixed probe "
                 f"({100 * t['share_saved_vs_fixed']:.1f} % saved); {t['go']} go, {t['no_go']} no-go")
    if t.get("objective") == "decision":
        lines.append(f"expected decision loss {_f(t['expected_loss_now'])} now -> {_f(t['expected_loss_after_probes'])} "
                     f"after probes costing {_f(t['probe_cost'])}: {_f(t['expected_loss_avoided'])} avoided")
    return "\n".join(lines)
