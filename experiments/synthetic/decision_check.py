r"""``plan-probe experiment decision``: realised decision loss + probe cost of three ways to spend
the same probe steps, on synthetic portfolios with known truth (issue #20, check (c)).

Each portfolio: tasks drawn from the synthetic risk population
(:mod:`plan_probe.experiments.synthetic.risk_generator`, labels in pp); the planner knows that
population (:meth:`RiskModel.from_population`) but not a task's own curve, so it plans from the
posterior draws given the task's static features. The true static-only predictive is
:math:`N(m_0, S_0)` with :math:`S_0 = L(1)` of the true curve and :math:`m_0 = \tau + s\sqrt{S_0}z`
(``spread`` s). The whole process is simulated with the truth: the final score
:math:`R = m_0 + \sqrt{S_0}Z`, a c-step probe reveals :math:`m_c = E[R \mid I_c]` with
:math:`\mathrm{Var}(m_c) = S_0 - L(c)` (drawn given R, with common random numbers for every
policy), the user decides go iff :math:`C_{lb}P(R<\tau \mid m_c) \le C_{kg}P(R\ge\tau \mid m_c)` with
the planner's posterior predictive (a mixture over the draws of :math:`L(c)`), and pays
:math:`C_{lb}1\{\text{go}, R<\tau\} + C_{kg}1\{\text{no-go}, R\ge\tau\} + \lambda c`.

Two suites test misspecification (the planner's beliefs wrong, the process still the truth):
``S0 x2`` (the static predictor reports twice its true variance) and ``risk x1/3`` (the risk model's
L_int and K a third of the population's: probes look more informative than they are); the user
then also decides from those wrong beliefs.

Policies at the same total steps. (1) The decision objective's own optimum spends T steps; the risk
objective and a fixed depth get exactly T (:func:`_risk_at`, :func:`_fixed_at`), and deciding now
(no probe) is the floor. (2) For each fixed depth d, budget :math:`B = n\,d`: every task probed d
steps ("fixed"), the risk objective's budget allocation (equal marginal gains of
:math:`\mathbb E[L(c)]`, ``plan --budget``), and the decision objective with budget B (it may leave
steps unspent). Differences are paired over tasks (same truth, same simulated outcomes), averaged,
with a 90 % interval from a cluster bootstrap over portfolios.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.special import ndtr

__all__ = ["Suite", "DecisionExperimentSettings", "run_decision_experiment", "format_table"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Suite:
    """One kind of portfolio: how far the static predictions sit from τ, and the cost asymmetry."""

    name: str
    spread: float
    kill_ratio: float = 1.0  # C_kg / C_lb
    prior_var_bias: float = 1.0  # the planner's S0 / the true S0 (a miscalibrated static predictor)
    risk_bias: float = 1.0  # the planner's L_int and K / the population's (a wrong risk model)

    def __post_init__(self):
        if not (self.spread > 0 and self.kill_ratio > 0 and self.prior_var_bias > 0 and self.risk_bias > 0):
            raise ValueError(f"spread and kill_ratio must be positive, but got {self!r}; pass values > 0.")


@dataclass(frozen=True)
class DecisionExperimentSettings:
    """Sizes and settings of the experiment (validated)."""

    n_tasks: int = 400
    n_portfolios: int = 20
    n_outcomes: int = 64
    n_draws: int = 256
    depths: tuple = (10, 25, 50, 100, 200)
    suites: tuple = field(default_factory=lambda: (
        Suite("near", 1.0), Suite("wide", 2.5), Suite("asymmetric", 1.5, 0.3),
        Suite("near, S0 x2", 1.0, prior_var_bias=2.0), Suite("near, risk x1/3", 1.0, risk_bias=1 / 3)))
    threshold: float = 55.0
    full_cost: float = 1000.0
    step_cost: float = 1.0
    c_min: int = 10
    c_max: int = 1000
    n_boot: int = 2000
    seed: int = 0

    def __post_init__(self):
        for name in ("n_tasks", "n_portfolios", "n_outcomes", "n_draws", "n_boot"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, but got {name}={getattr(self, name)!r}; pass a positive number.")
        if self.n_portfolios < 2:
            raise ValueError(f"n_portfolios must be >= 2 for the bootstrap, but got {self.n_portfolios}; pass 2 or more.")
        if not all(self.c_min <= d <= self.c_max for d in self.depths):
            raise ValueError(f"depths must lie in [c_min, c_max], but got {self.depths}; change them.")

    @classmethod
    def quick(cls, seed: int = 0) -> "DecisionExperimentSettings":
        return cls(n_tasks=200, n_portfolios=5, n_outcomes=16, n_draws=128, depths=(10, 50, 200), n_boot=1000, seed=seed)


def _portfolio(settings: DecisionExperimentSettings, suite: Suite, rng):
    """Truth, priors and the planner's posterior draws of one synthetic portfolio."""
    from plan_probe._risk_model import RiskModel
    from plan_probe.experiments.synthetic.risk_generator import RiskGeneratorConfig, generate_tasks, tasks_table

    cfg = RiskGeneratorConfig()
    truth = generate_tasks(settings.n_tasks, cfg, seed=int(rng.integers(2**31)))
    names = [f"static_f{j}" for j in range(cfg.n_features)]
    bias = np.array([1.0, 1.0, 0.0]) * np.log(suite.risk_bias)  # log L_int and log K shifted
    model = RiskModel.from_population(cfg.coef, np.asarray(cfg.intercept) + bias, np.diag(cfg.task_noise), names)
    draws = model.posterior_task_draws(tasks_table(truth), n_draws=settings.n_draws, seed=int(rng.integers(2**31)))
    true = {k: truth[k].to_numpy(dtype=float) for k in ("l_int", "k", "alpha")}
    s0 = true["l_int"] + true["k"]  # the static-only predictive variance: the true curve at one step
    m0 = settings.threshold + suite.spread * np.sqrt(s0) * rng.standard_normal(settings.n_tasks)
    return true, draws, m0, s0, s0 * suite.prior_var_bias


def _realised(c, true, draws, m0, s0, s0_plan, tau, c_lb, c_kg, lam, z_r, xi):
    """Per task: mean realised decision loss over the simulated outcomes, plus the probe cost.

    The process follows the truth (``s0``, ``true``); the user decides with the planner's beliefs
    (``s0_plan``, ``draws``)."""
    c = np.asarray(c, dtype=float)
    cc = np.maximum(c, 1.0)
    L_true = np.where(c > 0, true["l_int"] + true["k"] * cc ** -true["alpha"], np.inf)
    v = np.maximum(s0 - L_true, 0.0)  # variance the probe resolves (0 without a probe)
    R = m0[:, None] + np.sqrt(s0)[:, None] * z_r
    share = (v / s0)[:, None]
    m_c = m0[:, None] + share * (R - m0[:, None]) + np.sqrt(v * (1.0 - v / s0))[:, None] * xi
    # the user's predictive after the probe: the planner's mixture over draws of L(c)
    sig = np.sqrt(np.minimum(draws["l_int"] + draws["k"] * cc[:, None] ** -draws["alpha"], s0_plan[:, None]))
    sig = np.where((c > 0)[:, None], sig, np.sqrt(s0_plan)[:, None])
    p_go = ndtr((m_c[:, :, None] - tau) / sig[:, None, :]).mean(axis=2)
    go = c_lb * (1.0 - p_go) <= c_kg * p_go
    loss = np.where(go, c_lb * (R < tau), c_kg * (R >= tau))
    return loss.mean(axis=1) + lam * c


def _risk_at(total: int, draws, s0, settings) -> np.ndarray:
    """The risk objective spending exactly ``total`` steps.

    With ``total >= c_min * n`` its budget allocation (equal marginal gains of E[L(c)]); below that
    (not every task can get c_min) the tasks whose c_min-step probe resolves the most variance,
    S0 - E[min(L(c_min), S0)], get c_min steps each.
    """
    from plan_probe._plan import allocate_budget

    n = s0.size
    if total >= settings.c_min * n:
        return allocate_budget(draws["k"], draws["alpha"], float(total), settings.c_min, settings.c_max)
    resolved = s0 - np.minimum(draws["l_int"] + draws["k"] * settings.c_min ** -draws["alpha"], s0[:, None]).mean(axis=1)
    c = np.zeros(n, dtype=np.int64)
    c[np.argsort(-resolved, kind="stable")[: total // settings.c_min]] = settings.c_min
    return c


def _fixed_at(total: int, n: int, settings, rng) -> np.ndarray:
    """A fixed depth spending ``total`` steps: floor(total / n) for every task (the remainder one step
    each to random tasks), or c_min steps for a random subset when total / n < c_min."""
    c = np.zeros(n, dtype=np.int64)
    if total >= settings.c_min * n:
        c[:] = total // n
        c[rng.permutation(n)[: total - int(c.sum())]] += 1
    else:
        c[rng.permutation(n)[: total // settings.c_min]] = settings.c_min
    return c


def _interval(diff, rng, n_boot: int):
    """Mean of per-task differences (portfolios x tasks) and its 90 % cluster-bootstrap interval."""
    per = diff.mean(axis=1)
    boots = per[rng.integers(0, per.size, (n_boot, per.size))].mean(axis=1)
    lo, hi = np.quantile(boots, [0.05, 0.95])
    return float(diff.mean()), float(lo), float(hi)


def run_decision_experiment(settings: DecisionExperimentSettings = DecisionExperimentSettings()) -> dict:
    """Run every suite; returns the JSON-ready results (rows of the table, settings, checks)."""
    from plan_probe._decision_plan import DecisionSettings, decision_plan
    from plan_probe._plan import PlanSettings, allocate_budget
    from plan_probe.probes._version import __version__

    rng = np.random.default_rng(settings.seed)
    rows = []
    lam, tau, n = settings.step_cost, settings.threshold, settings.n_tasks
    for suite in settings.suites:
        c_lb, c_kg = settings.full_cost, settings.full_cost * suite.kill_ratio
        dec = DecisionSettings(threshold=tau, launch_cost=c_lb, kill_cost=c_kg)
        costs = {d: {"decision": [], "risk": [], "fixed": []} for d in settings.depths}
        steps = {d: {"decision": [], "risk": [], "fixed": []} for d in settings.depths}
        free = {"decision": [], "now": [], "risk": [], "fixed": [], "planned": [], "steps": [], "steps_risk": [],
                "steps_fixed": []}
        for _ in range(settings.n_portfolios):
            true, draws, m0, s0_true, s0 = _portfolio(settings, suite, rng)  # s0: what the planner believes
            z_r = rng.standard_normal((n, settings.n_outcomes))
            xi = rng.standard_normal((n, settings.n_outcomes))
            args = (true, draws, m0, s0_true, s0, tau, c_lb, c_kg, lam, z_r, xi)
            base = PlanSettings(step_cost=lam, min_depth=settings.c_min, max_depth=settings.c_max)
            own = decision_plan(draws["task_id"], m0, s0, draws["l_int"], draws["k"], draws["alpha"], base, dec)
            free["decision"].append(_realised(own["probe_steps"].to_numpy(), *args))
            free["now"].append(_realised(np.zeros(n), *args))
            free["planned"].append(own["loss_at_probe_steps"].to_numpy() + lam * own["probe_steps"].to_numpy())
            free["steps"].append(int(own["probe_steps"].sum()))
            total = int(own["probe_steps"].sum())  # the rivals get exactly the steps the decision plan used
            for name, c in (("risk", _risk_at(total, draws, s0, settings)), ("fixed", _fixed_at(total, n, settings, rng))):
                free[name].append(_realised(c, *args))
                free[f"steps_{name}"].append(int(c.sum()))
            for d in settings.depths:
                budget = float(n * d)
                plan = decision_plan(draws["task_id"], m0, s0, draws["l_int"], draws["k"], draws["alpha"],
                                     PlanSettings(step_cost=lam, min_depth=settings.c_min, max_depth=settings.c_max,
                                                  budget=budget), dec)
                policy = {
                    "decision": plan["probe_steps"].to_numpy(),
                    "risk": allocate_budget(draws["k"], draws["alpha"], budget, settings.c_min, settings.c_max),
                    "fixed": np.full(n, d),
                }
                for name, c in policy.items():
                    costs[d][name].append(_realised(c, *args))
                    steps[d][name].append(int(np.sum(c)))
        boot_rng = np.random.default_rng(settings.seed + 1)
        for d in settings.depths:
            dec_cost = np.array(costs[d]["decision"])
            for rival in ("risk", "fixed"):
                riv = np.array(costs[d][rival])
                mean, lo, hi = _interval(dec_cost - riv, boot_rng, settings.n_boot)
                rows.append({
                    "suite": suite.name, "spread": suite.spread, "kill_ratio": suite.kill_ratio, "depth": d,
                    "budget_per_portfolio": n * d, "rival": rival,
                    "steps_decision": float(np.mean(steps[d]["decision"])), "steps_rival": float(np.mean(steps[d][rival])),
                    "cost_decision": float(dec_cost.mean()), "cost_rival": float(riv.mean()),
                    "diff": mean, "diff_lo90": lo, "diff_hi90": hi,
                    "verdict": "decision lower" if hi < 0 else ("rival lower" if lo > 0 else "tie"),
                })
        own_cost = np.array(free["decision"])
        for rival in ("risk", "fixed", "now"):
            riv = np.array(free[rival])
            mean, lo, hi = _interval(own_cost - riv, boot_rng, settings.n_boot)
            rows.append({
                "suite": suite.name, "spread": suite.spread, "kill_ratio": suite.kill_ratio, "depth": None,
                "budget_per_portfolio": None, "rival": {"now": "decide now", "risk": "risk", "fixed": "fixed"}[rival],
                "steps_decision": float(np.mean(free["steps"])),
                "steps_rival": float(np.mean(free[f"steps_{rival}"])) if rival != "now" else 0.0,
                "cost_decision": float(own_cost.mean()), "cost_rival": float(riv.mean()),
                "diff": mean, "diff_lo90": lo, "diff_hi90": hi,
                "verdict": "decision lower" if hi < 0 else ("rival lower" if lo > 0 else "tie"),
                "planned_cost_decision": float(np.mean(free["planned"])),
            })
    budget_rows = [r for r in rows if r["depth"] is not None]
    return {
        "experiment": "decision",
        "settings": {**asdict(settings), "suites": [asdict(s) for s in settings.suites]},
        "rows": rows,
        "checks": {"decision_lower_everywhere": all(r["verdict"] == "decision lower" for r in budget_rows),
                   "n_comparisons": len(budget_rows)},
        "version": __version__,
    }


def format_table(results: dict) -> str:
    """The results as a Markdown table (per-task means, in steps)."""
    head = ("| suite | steps / task (B = n·d) | rival | steps used: decision / rival | cost per task: decision | rival "
            "| difference [90 % CI] | verdict |")
    lines = [head, "|" + "---|" * 8]
    n = results["settings"]["n_tasks"]
    for r in results["rows"]:
        budget = "T (decision's own optimum)" if r["depth"] is None else f"{r['depth']}"
        used = f"{r['steps_decision'] / n:.1f} / {r['steps_rival'] / n:.1f}"
        lines.append(f"| {r['suite']} | {budget} | {r['rival']} | {used} | {r['cost_decision']:.1f} | {r['cost_rival']:.1f} "
                     f"| {r['diff']:+.1f} [{r['diff_lo90']:+.1f}, {r['diff_hi90']:+.1f}] | {r['verdict']} |")
    return "\n".join(lines)
