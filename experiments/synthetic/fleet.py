r"""``plan-probe experiment fleet``: the whole live loop on a synthetic fleet of candidate runs (issue #21).

Each fleet is ``n_runs`` candidate fine-tuning runs with known final scores R, drawn from the
synthetic meta-dataset generator (:func:`plan_probe.experiments.synthetic.meta_generator.make_meta_dataset`:
static descriptors, hyperparameters, dynamic probe features at the record depths whose noise shrinks
as :math:`c^{-\alpha/2}`). A run succeeds when :math:`R \ge \tau`. The depth-aware and static-only
predictors are fitted on ``n_train`` other runs of the same generator; the risk model is the
generator's known curve of the dynamic features, :math:`L(c) = \sigma^2_\mathrm{noise} +
\sigma^2_\delta p^2 c^{-\alpha}` (:meth:`RiskModel.from_population`), so the experiment measures the
decisions, not a risk fit.

Optuna's pruners watch an intermediate validation score instead of the features:
:math:`v(c) = R - A e^{-c/T} + \sigma_v z_c` with a warm-up gap :math:`A \sim U(5, 25)` pp and a
run-specific time constant T (log-uniform in the suite's range): "late bloomers" (T from 20 to 500
steps, so early ranks mislead) and "early convergers" (T from 2 to 10 steps: the curve ranks runs
by their final score from the first record on).

Policies, each on the same runs (paired): run everything; plan-probe live (:class:`plan_probe.LiveProbe`
at every record depth, stop at ``no_go``); TuneAhead's protocol (the same predictor once at step 100,
then go/no-go with the same rule; the probe is the run's first 100 steps, the accounting most
favourable to it); Optuna's ``MedianPruner`` with its defaults; Optuna's ``PercentilePruner`` (the
median rule's family) and ``ThresholdPruner`` with their knob (percentile, lower bound) set in
hindsight, per fleet, so that they spend the compute live spent ("matched compute": favourable to them);
and the same two pruners with the knob matched on the previous fleet (the last fleet's for the first:
"knob of another fleet", the way a user would carry a tuned knob over; needs two or more fleets).
Compute: a killed run costs the steps it ran, a kept run its ``full_steps``.

Reported per suite and policy: compute (full runs per fleet), successes kept, false kills (successes
stopped), failures run to the end; and the paired differences live − rival with a 90 % bootstrap
interval (runs resampled within fleets; the pruners' decisions depend on the other runs, which this
resampling ignores).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["FleetSuite", "FleetSettings", "POLICIES", "run_fleet_experiment", "format_table", "plot_fleet"]

log = logging.getLogger(__name__)

#: Policy keys, in table order, and their labels.
POLICIES = {
    "all": "run everything",
    "live": "plan-probe live",
    "tuneahead": "TuneAhead (100-step probe, go/no-go)",
    "median": "Optuna MedianPruner (defaults)",
    "percentile": "Optuna PercentilePruner, matched compute",
    "threshold": "Optuna ThresholdPruner, matched compute",
    "percentile_transfer": "Optuna PercentilePruner, knob of another fleet",
    "threshold_transfer": "Optuna ThresholdPruner, knob of another fleet",
}
_RIVALS = ("all", "tuneahead", "median", "percentile", "threshold")


@dataclass(frozen=True)
class FleetSuite:
    """How the intermediate validation score approaches the final one: T log-uniform in [t_min, t_max] steps."""

    name: str
    t_min: float
    t_max: float

    def __post_init__(self):
        if not (0 < self.t_min <= self.t_max):
            raise ValueError(f"time constants must satisfy 0 < t_min <= t_max, but got {self!r}; fix them.")


@dataclass(frozen=True)
class FleetSettings:
    """Sizes and settings of the fleet experiment (validated)."""

    n_runs: int = 200
    n_fleets: int = 5
    n_train: int = 400
    full_steps: int = 1000
    threshold: float = 55.0
    eval_noise: float = 1.0
    probe_step: int = 100
    suites: tuple = field(default_factory=lambda: (FleetSuite("late bloomers", 20.0, 500.0),
                                                   FleetSuite("early convergers", 2.0, 10.0)))
    n_boot: int = 2000
    seed: int = 0

    def __post_init__(self):
        for name in ("n_runs", "n_fleets", "n_train", "full_steps", "n_boot"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be a positive whole number, but got {name}={v!r}; pass one.")
        if self.n_runs < 20 or self.n_train < 50:
            raise ValueError(f"the fleet needs n_runs >= 20 and n_train >= 50, but got {self.n_runs} and {self.n_train}; "
                             "pass more runs.")
        from plan_probe.experiments.synthetic.meta_generator import DEPTHS

        if self.probe_step not in DEPTHS or self.full_steps <= max(DEPTHS):
            raise ValueError(f"probe_step must be a record depth {DEPTHS} and full_steps > {max(DEPTHS)}, but got "
                             f"{self.probe_step} and {self.full_steps}; change them.")

    @classmethod
    def quick(cls, seed: int = 0) -> "FleetSettings":
        return cls(n_fleets=2, n_train=300, n_boot=500, seed=seed)


# -------------------------------------------------------------------------------------- world
_DELTA_SD, _NOISE_SD, _PROBE_NOISE, _ALPHA = 5.0, 1.0, 2.0, 0.7  # make_meta_dataset's defaults


def _split_runs(frame):
    """{run_id: (static, hp, [(depth, dyn)], score)} from a meta-dataset table."""
    runs = {}
    for rid, g in frame.groupby("run_id", sort=True):
        first = g.iloc[0]
        runs[str(rid)] = (
            {c: float(first[c]) for c in g.columns if c.startswith("static_")},
            {c: float(first[c]) for c in g.columns if c.startswith("hp_")},
            [(int(r["depth"]), {c: float(r[c]) for c in g.columns if c.startswith("dyn_")})
             for _, r in g.sort_values("depth").iterrows()],
            float(first["score"]),
        )
    return runs


def fit_models(train, seed: int = 0):
    """(risk_model, depth-aware predictor, static-only predictor) for the generator's runs."""
    from plan_probe._predictor import PredictorConfig, ProbePredictor
    from plan_probe._risk_model import RiskModel

    static = [c for c in train.columns if c.startswith(("static_", "hp_"))]
    dyn = [c for c in train.columns if c.startswith("dyn_")]
    groups = train["run_id"].to_numpy()
    cfg = PredictorConfig(seed=seed)
    pred = ProbePredictor(cfg).fit(train[[*static, "depth", *dyn]], train["score"], groups=groups)
    first = train.groupby("run_id", sort=True).first().reset_index()
    spred = ProbePredictor(cfg).fit(first[static], first["score"], groups=first["run_id"].to_numpy())
    # the generator's truth: Var(score | dyn at c) = noise^2 + delta_sd^2 p^2 c^-alpha (large c)
    risk = RiskModel.from_population(np.zeros((3, 1)), np.log([_NOISE_SD**2, (_DELTA_SD * _PROBE_NOISE) ** 2, _ALPHA]),
                                     0.05 * np.eye(3), ["static_0"])
    return risk, pred, spred


def _eval_curves(scores, depths, suite: FleetSuite, noise: float, rng) -> np.ndarray:
    """(n_runs, n_depths) intermediate validation scores v(c) = R - A exp(-c/T) + noise z."""
    n = scores.size
    gap = rng.uniform(5.0, 25.0, n)
    t = np.exp(rng.uniform(math.log(suite.t_min), math.log(suite.t_max), n))
    c = np.asarray(depths, dtype=float)
    return scores[:, None] - gap[:, None] * np.exp(-c[None, :] / t[:, None]) + noise * rng.standard_normal((n, c.size))


# ----------------------------------------------------------------------------------- policies
def _live_policy(runs, models, dec, full_steps: int):
    """Stop step (``full_steps`` when kept) and the decisions of plan-probe live, per run."""
    from plan_probe import LiveProbe

    risk, pred, spred = models
    stop, depth_decided = [], []
    for static, hp, records, _ in runs:
        lp = LiveProbe(static, hp, risk_model=risk, predictor=pred, static_predictor=spred, settings=dec)
        d = None
        for depth, row in records:
            d = lp.update(depth, row)
            if d.final:
                break
        stop.append(d.depth if d.action == "no_go" else full_steps)
        depth_decided.append(d.depth)
    return np.array(stop), np.array(depth_decided)


def _tuneahead_policy(runs, models, dec, probe_step: int, full_steps: int) -> np.ndarray:
    """The same predictor once at ``probe_step``; go iff C_lb (1 - p) <= C_kg p (the live rule without VOI)."""
    import pandas as pd

    _, pred, _ = models
    rows = []
    for static, hp, records, _ in runs:
        dyn = dict(records)[probe_step]
        rows.append({**static, **hp, "depth": float(probe_step), **dyn})
    X = pd.DataFrame(rows)[pred.feature_names_]
    p = np.asarray(pred.prob_at_least(X, dec.threshold), dtype=float)
    c_lb, c_kg = (float(v[0]) for v in dec.costs(1))
    go = c_lb * (1.0 - p) <= c_kg * p
    return np.where(go, full_steps, probe_step)


def _optuna_policy(pruner, curves, scores, depths, full_steps: int) -> np.ndarray:
    """Stop step per run: the fleet's runs as sequential trials of one study that reports v(c) at the record depths."""
    import optuna

    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    stop = np.full(scores.size, full_steps)
    for i in range(scores.size):
        trial = study.ask()
        for j, c in enumerate(depths):
            trial.report(float(curves[i, j]), int(c))
            if trial.should_prune():
                stop[i] = int(c)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, float(scores[i]))
    return stop


def _matched(make_pruner, lo: float, hi: float, target: float, curves, scores, depths, full_steps: int, *,
             rising: bool, iters: int = 14):
    """Bisection on a pruner's knob to the stop steps whose total is nearest ``target``.

    ``rising``: compute rises with the knob (PercentilePruner's percentile when maximising: Optuna
    prunes below the (100 - q)-th percentile) or falls with it (ThresholdPruner's ``lower``)."""
    best = None
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        stop = _optuna_policy(make_pruner(mid), curves, scores, depths, full_steps)
        spent = float(stop.sum())
        if best is None or abs(spent - target) < abs(best[1].sum() - target):
            best = (mid, stop)
        if (spent > target) != rising:
            lo = mid
        else:
            hi = mid
        if abs(spent - target) <= 0.005 * target:
            break
    return best


# ---------------------------------------------------------------------------------- experiment
def _metrics(stop, success, full_steps: int) -> dict:
    kept = stop >= full_steps
    return {"compute": stop / full_steps, "kept_success": (kept & success).astype(float),
            "false_kill": (~kept & success).astype(float), "failure_run": (kept & ~success).astype(float)}


def _paired(a, b, fleet_of, rng, n_boot: int):
    """Mean per-fleet total of a - b and its 90 % bootstrap interval (runs resampled within fleets)."""
    diff = a - b
    fleets = np.unique(fleet_of)
    idx = [np.flatnonzero(fleet_of == f) for f in fleets]
    boots = np.zeros(n_boot)
    for ix in idx:
        draw = rng.integers(0, ix.size, (n_boot, ix.size))
        boots += diff[ix][draw].sum(axis=1)
    boots /= len(fleets)
    lo, hi = np.quantile(boots, [0.05, 0.95])
    return float(diff.sum() / len(fleets)), float(lo), float(hi)


def run_fleet_experiment(settings: FleetSettings = FleetSettings()) -> dict:
    """Run every suite; returns JSON-ready results (one row per suite x policy, paired differences, settings)."""
    import optuna

    from plan_probe import DecisionSettings
    from plan_probe.experiments.synthetic.meta_generator import DEPTHS, make_meta_dataset
    from plan_probe.probes._version import __version__

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n_fleet_runs = settings.n_runs * settings.n_fleets
    table = make_meta_dataset(settings.n_train + n_fleet_runs, seed=settings.seed, delta_sd=_DELTA_SD,
                              noise_sd=_NOISE_SD, probe_noise=_PROBE_NOISE, alpha=_ALPHA)
    ids = sorted(table["run_id"].unique())
    train_ids = set(ids[: settings.n_train])
    models = fit_models(table[table["run_id"].isin(train_ids)], seed=settings.seed)
    runs = list(_split_runs(table[~table["run_id"].isin(train_ids)]).values())
    dec = DecisionSettings(threshold=settings.threshold, full_cost=float(settings.full_steps))
    F, depths = settings.full_steps, np.asarray(DEPTHS)
    rng = np.random.default_rng(settings.seed + 1)
    boot_rng = np.random.default_rng(settings.seed + 2)

    # the features-based policies do not depend on the suite (it changes only the validation curve)
    live_stop, live_depth = _live_policy(runs, models, dec, F)
    ta_stop = _tuneahead_policy(runs, models, dec, settings.probe_step, F)
    scores = np.array([r[3] for r in runs])
    success = scores >= settings.threshold
    fleet_of = np.repeat(np.arange(settings.n_fleets), settings.n_runs)

    rows, knobs = [], []
    for suite in settings.suites:
        curves = _eval_curves(scores, depths, suite, settings.eval_noise, rng)
        stops = {"all": np.full(scores.size, F), "live": live_stop, "tuneahead": ta_stop,
                 "median": np.zeros(scores.size, int), "percentile": np.zeros(scores.size, int),
                 "threshold": np.zeros(scores.size, int)}
        for f in range(settings.n_fleets):
            sl = slice(f * settings.n_runs, (f + 1) * settings.n_runs)
            cv, sc, target = curves[sl], scores[sl], float(live_stop[sl].sum())
            stops["median"][sl] = _optuna_policy(optuna.pruners.MedianPruner(), cv, sc, depths, F)
            pk, stops["percentile"][sl] = _matched(lambda q: optuna.pruners.PercentilePruner(q), 0.0, 100.0, target,
                                                   cv, sc, depths, F, rising=True)
            lo, hi = float(cv.min()) - 1.0, float(cv.max()) + 1.0
            tk, stops["threshold"][sl] = _matched(lambda x: optuna.pruners.ThresholdPruner(lower=x), lo, hi, target,
                                                  cv, sc, depths, F, rising=False)
            knobs.append({"suite": suite.name, "fleet": f, "percentile": pk, "threshold_lower": tk})
        if settings.n_fleets >= 2:  # the realistic use: a knob tuned on the previous fleet (the last's on the first)
            own = [k for k in knobs if k["suite"] == suite.name]
            stops["percentile_transfer"] = np.zeros(scores.size, int)
            stops["threshold_transfer"] = np.zeros(scores.size, int)
            for f in range(settings.n_fleets):
                sl = slice(f * settings.n_runs, (f + 1) * settings.n_runs)
                prev = own[f - 1]
                stops["percentile_transfer"][sl] = _optuna_policy(optuna.pruners.PercentilePruner(prev["percentile"]),
                                                                  curves[sl], scores[sl], depths, F)
                stops["threshold_transfer"][sl] = _optuna_policy(
                    optuna.pruners.ThresholdPruner(lower=prev["threshold_lower"]), curves[sl], scores[sl], depths, F)
        metrics = {k: _metrics(s, success, F) for k, s in stops.items()}
        for key in [k for k in POLICIES if k in stops]:
            m = metrics[key]
            row = {"suite": suite.name, "policy": key, "label": POLICIES[key],
                   **{name: float(v.sum() / settings.n_fleets) for name, v in m.items()},
                   "successes": float(success.sum() / settings.n_fleets)}
            if key != "live":
                for name in ("compute", "kept_success", "false_kill"):
                    mean, lo90, hi90 = _paired(metrics["live"][name], m[name], fleet_of, boot_rng, settings.n_boot)
                    row[f"live_minus_{name}"] = [mean, lo90, hi90]
            rows.append(row)
    depth_counts = {int(d): int((live_depth == d).sum()) for d in np.unique(live_depth)}
    return {
        "experiment": "fleet",
        "settings": {**asdict(settings), "suites": [asdict(s) for s in settings.suites], "depths": [int(d) for d in depths]},
        "rows": rows,
        "knobs": knobs,
        "live_decision_depths": depth_counts,
        "models": {"predictor_cv_rmse": float(models[1].cv_rmse_), "static_cv_rmse": float(models[2].cv_rmse_),
                   "risk_model": "known population (generator truth)"},
        "version": __version__,
    }


def _ci(v) -> str:
    return f"{v[0]:+.1f} [{v[1]:+.1f}, {v[2]:+.1f}]"


def format_table(results: dict) -> str:
    """The results as one Markdown table (per fleet of n_runs; differences live − rival, 90 % CI)."""
    n = results["settings"]["n_runs"]
    head = (f"| suite | policy | compute (full runs of {n}) | successes kept | false kills | failures run to the end "
            "| Δ compute, live − rival | Δ successes kept | Δ false kills |")
    lines = [head, "|" + "---|" * 9]
    for r in results["rows"]:
        diffs = [_ci(r[f"live_minus_{k}"]) if f"live_minus_{k}" in r else "—" for k in ("compute", "kept_success", "false_kill")]
        lines.append(f"| {r['suite']} | {r['label']} | {r['compute']:.1f} | {r['kept_success']:.1f} of {r['successes']:.1f} "
                     f"| {r['false_kill']:.1f} | {r['failure_run']:.1f} | " + " | ".join(diffs) + " |")
    return "\n".join(lines)


def plot_fleet(ax, results: dict, suite: str) -> None:
    """Successes kept against compute for every policy of one suite (error bars: 90 % CI of the paired difference to live)."""
    rows = [r for r in results["rows"] if r["suite"] == suite]
    if not rows:
        raise ValueError(f"suite must be one of the results' suites, but got {suite!r}; pick one of "
                         f"{sorted({r['suite'] for r in results['rows']})}.")
    live = next(r for r in rows if r["policy"] == "live")
    for i, r in enumerate(rows):
        xerr = yerr = None
        if "live_minus_compute" in r:  # the rival's spread relative to live: -(diff) bounds
            d = r["live_minus_compute"]
            xerr = [[max(d[2] - d[0], 0.0)], [max(d[0] - d[1], 0.0)]]
            e = r["live_minus_kept_success"]
            yerr = [[max(e[2] - e[0], 0.0)], [max(e[0] - e[1], 0.0)]]
        ax.errorbar(r["compute"], r["kept_success"], xerr=xerr, yerr=yerr, fmt="o*"[r["policy"] == "live"],
                    ms=11 if r["policy"] == "live" else 7, capsize=3, label=r["label"], color=f"C{i}")
    ax.axhline(live["successes"], color="0.6", lw=0.8, ls=":")
    ax.set_xlabel(f"compute per fleet (full runs of {results['settings']['n_runs']})")
    ax.set_ylabel("successes kept (score ≥ τ, run to the end)")
    ax.set_title(f"fleet: {suite}")
    ax.legend(fontsize=7, loc="lower right")
