"""``plan-probe experiment real``: the decay law and the regimes on real fork variances.

Per task, the fork variances u_j (dof nu_j) at depths c_j are fitted by maximum likelihood under
docs/theory.md §2's observation model, u ~ Gamma(nu/2, rate nu / (2 L(c))), with
L(c) = L_int + K c^-alpha. Intervals come from a bootstrap over prefixes (each prefix's
observations move together, since they share one trajectory). Regimes use
:func:`theory.classify_regimes` on the point estimate and :func:`theory.regime_probabilities` on the
bootstrap draws.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

__all__ = ["fit_decay", "fit_task", "check_risk_table", "run_real", "plot_decay", "plot_phase", "plot_alpha",
           "alpha_fisher_interval", "envelope_comparison", "plot_alpha_vs_bound"]

log = logging.getLogger(__name__)

_BOUNDS = [(np.log(1e-4), np.log(1e4)), (np.log(1e-6), np.log(1e6)), (np.log(0.01), np.log(5.0))]
REGIME_COLOURS = {"static_sufficient": "tab:green", "dynamic_critical": "tab:blue", "noise_dominant": "tab:red"}


def check_risk_table(risk) -> None:
    """Reject a risk table without the docs/theory.md §3 columns or with invalid values."""
    need = ["task_id", "depth", "risk_obs", "dof"]
    missing = [c for c in need if c not in risk.columns]
    if missing:
        raise ValueError(f"risk observations must have columns {need}, but got {missing=} absent; use a build-meta risk_obs.parquet.")
    if len(risk) == 0:
        raise ValueError("risk observations must not be empty, but got 0 rows; build some runs first.")
    if (risk["depth"] < 1).any() or (risk["risk_obs"] < 0).any() or (risk["dof"] <= 0).any():
        raise ValueError("risk observations need depth >= 1, risk_obs >= 0 and dof > 0, but got rows breaking that; rebuild the table.")


def _nll(theta, c, u, nu):
    """Negative Gamma log-likelihood (up to a constant) and its gradient in (log L_int, log K, log alpha)."""
    l_int, k, alpha = np.exp(theta)
    power = k * c ** (-alpha)
    lc = l_int + power
    value = float(np.sum(0.5 * nu * (np.log(lc) + u / lc)))
    dl = 0.5 * nu * (lc - u) / lc**2
    grad = np.array([np.sum(dl * l_int), np.sum(dl * power), np.sum(dl * -power * np.log(c) * alpha)])
    return value, grad


def fit_decay(depth, risk_obs, dof) -> dict:
    """Maximum-likelihood (L_int, K, alpha) of the Gamma observation model, multi-start TNC (bounded Newton-CG)."""
    from scipy.optimize import minimize

    c = np.asarray(depth, float)
    u = np.asarray(risk_obs, float)
    nu = np.asarray(dof, float)
    level = max(float(np.average(u, weights=nu)), 1e-3)
    best = None
    for a0 in (0.2, 0.7, 2.0):
        for frac in (0.1,):
            l0 = max(level * frac, 1e-4)
            k0 = max(level * (1 - frac) * np.median(c) ** a0, 1e-6)
            x0 = np.clip(np.log([l0, k0, a0]), [b[0] for b in _BOUNDS], [b[1] for b in _BOUNDS])
            res = minimize(_nll, x0, args=(c, u, nu), method="TNC", jac=True, bounds=_BOUNDS)
            if best is None or res.fun < best.fun:
                best = res
    l_int, k, alpha = np.exp(best.x)
    return {"l_int": float(l_int), "k": float(k), "alpha": float(alpha), "nll": float(best.fun)}


def alpha_fisher_interval(fit: dict, depth, dof, level: float) -> tuple[float, float]:
    """Interval for alpha from the expected Fisher information of the Gamma model at the fit.

    With parameters (log L_int, log K, log alpha), J = dL/dtheta per observation and weights
    nu / (2 L^2), Cov = (J' W J)^-1; the interval is exp(log alpha -+ z se). Asymptotic, and it
    treats every observation as independent (it ignores that a prefix's observations share one
    trajectory), so :func:`fit_task` widens it to cover the prefix bootstrap as well.
    """
    from scipy.stats import norm

    c = np.asarray(depth, float)
    nu = np.asarray(dof, float)
    power = fit["k"] * c ** (-fit["alpha"])
    lc = fit["l_int"] + power
    J = np.stack([np.full_like(c, fit["l_int"]), power, -power * np.log(c) * fit["alpha"]], axis=1)
    info = J.T @ (J * (nu / (2 * lc**2))[:, None])
    try:
        cov = np.linalg.inv(info)
        se = float(np.sqrt(max(cov[2, 2], 0.0)))
    except np.linalg.LinAlgError:
        se = float("inf")
    z = norm.ppf(0.5 + level / 2)
    return float(fit["alpha"] * np.exp(-z * se)), float(fit["alpha"] * np.exp(z * se))


def fit_task(frame, *, n_boot: int, level: float, rng: np.random.Generator, thresholds) -> dict:
    """Point fit plus a bootstrap over prefixes (``run_id``) for one task's observations.

    ``alpha_lo``/``alpha_hi`` span both the prefix-bootstrap percentile interval and the Fisher
    interval (:func:`alpha_fisher_interval`): with few prefixes the bootstrap alone is too narrow
    (two prefixes give three distinct resamples), and the Fisher interval alone ignores prefix effects.
    """
    from plan_probe.theory import REGIMES, classify_regimes, optimal_probe_length, regime_probabilities

    point = fit_decay(frame["depth"], frame["risk_obs"], frame["dof"])
    groups = frame["run_id"].to_numpy() if "run_id" in frame.columns else np.arange(len(frame))
    ids = np.unique(groups)
    by_id = {g: frame[groups == g] for g in ids}
    draws = []
    for _ in range(n_boot):
        pick = rng.choice(ids, size=len(ids), replace=True)
        sub = [by_id[g] for g in pick]
        d = np.concatenate([s["depth"].to_numpy() for s in sub])
        u = np.concatenate([s["risk_obs"].to_numpy() for s in sub])
        nu = np.concatenate([s["dof"].to_numpy() for s in sub])
        f = fit_decay(d, u, nu)
        draws.append((f["l_int"], f["k"], f["alpha"]))
    draws = np.asarray(draws)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    regime = REGIMES[int(classify_regimes(point["l_int"], point["k"], point["alpha"], thresholds))]
    probs = regime_probabilities(draws[:, 0], draws[:, 1], draws[:, 2], thresholds)
    out = {**point, "regime": regime,
           "c_star": float(optimal_probe_length(point["k"], point["alpha"], thresholds.cost)),
           "n_obs": int(len(frame)), "n_prefixes": int(len(ids)), "dof_total": float(frame["dof"].sum())}
    for j, name in enumerate(("l_int", "k", "alpha")):
        out[f"{name}_lo"], out[f"{name}_hi"] = (float(v) for v in np.quantile(draws[:, j], [lo_q, hi_q]))
    out["alpha_boot_lo"], out["alpha_boot_hi"] = out["alpha_lo"], out["alpha_hi"]
    out["alpha_fisher_lo"], out["alpha_fisher_hi"] = alpha_fisher_interval(point, frame["depth"], frame["dof"], level)
    out["alpha_lo"] = min(out["alpha_boot_lo"], out["alpha_fisher_lo"])
    out["alpha_hi"] = max(out["alpha_boot_hi"], out["alpha_fisher_hi"])
    for r, p in zip(REGIMES, probs):
        out[f"p_{r}"] = float(p)
    return out


def _relation(lo: float, hi: float, bound) -> str:
    if bound is None:
        return "undefined"
    return "above" if lo > bound else ("below" if hi < bound else "within")


def envelope_comparison(frame, fit: dict) -> dict:
    r"""The task's alpha next to the decay envelope of its step-size schedule (Prop. 5.1).

    Needs the recipe columns ``hp_lr_decay`` (rho), optionally ``hp_lr_t0`` (default 10) and
    ``hp_steps`` (the horizon T). ``bound`` = 2 rho - 1; ``relation`` (above / within / below: the
    alpha interval entirely above the bound, containing it, or entirely below it) is only defined
    for rho > 1/2, where the future noise vanishes and the envelope is a decay rate. Above means a
    faster decay than the envelope allows; below a slower one, as curvature or a plateau make it
    (:func:`theory.curved_decay_exponent`). ``finite_range`` is the same Gamma fit on the exact
    flat-direction future variance :math:`\sum_{t=c}^{T-1}\eta_t^2` (:func:`theory.flat_future_variance`
    for rho > 1/2, summed directly so that any rho works) at the task's own depths: the envelope as
    this design can see it (the :math:`t_0` offset flattens it at small c, the horizon steepens it
    near T); ``relation_finite_range`` compares with it.
    """
    rho = float(frame["hp_lr_decay"].iloc[0])
    t0 = float(frame["hp_lr_t0"].iloc[0]) if "hp_lr_t0" in frame.columns else 10.0
    horizon = int(frame["hp_steps"].iloc[0]) if "hp_steps" in frame.columns else None
    out = {"rho": rho, "bound": 2 * rho - 1, "finite_range": None}
    if horizon is not None:
        depths = np.unique(frame["depth"].to_numpy(dtype=float))
        eta2 = (1.0 + np.arange(horizon) / t0) ** (-2.0 * rho)
        tail = np.cumsum(eta2[::-1])[::-1]  # tail[c] = sum_{t >= c} eta_t^2
        curve = tail[depths.astype(int)]
        out["finite_range"] = fit_decay(depths, curve / curve.max(), np.full(depths.size, 1000.0))["alpha"]
    out["relation"] = _relation(fit["alpha_lo"], fit["alpha_hi"], out["bound"] if rho > 0.5 else None)
    out["relation_finite_range"] = _relation(fit["alpha_lo"], fit["alpha_hi"], out["finite_range"])
    return out


def plot_alpha_vs_bound(ax, fits: dict):
    """Fitted alpha (interval) against rho, with the bound 2 rho - 1 and the finite-range envelope."""
    rhos = sorted({f["envelope"]["rho"] for f in fits.values() if "envelope" in f})
    colours = {"above": "tab:red", "within": "tab:blue", "below": "tab:green", "undefined": "tab:gray"}
    rng = np.random.default_rng(0)
    for f in fits.values():
        env = f.get("envelope")
        if env is None:
            continue
        x = env["rho"] + rng.uniform(-0.03, 0.03)
        ax.errorbar([x], [f["alpha"]], yerr=_bars(f["alpha"], f["alpha_lo"], f["alpha_hi"]), fmt="o", ms=3, capsize=1.5,
                    color=colours[env["relation"]], alpha=0.7)
        if env["finite_range"] is not None:
            ax.plot([x], [env["finite_range"]], marker="_", color="black", ms=8)
    grid = np.linspace(0.5, max(rhos + [1.0]), 50)
    ax.plot(grid, 2 * grid - 1, color="black", lw=1, label="bound 2ρ−1")
    for rel, col in colours.items():
        ax.scatter([], [], color=col, label=f"α interval {rel}")
    ax.plot([], [], marker="_", ls="none", color="black", label="flat envelope at these depths")
    ax.set_xlabel("step-size decay ρ (jittered)")
    ax.set_ylabel("fitted α (interval)")
    ax.set_yscale("log")
    alphas = [f["alpha"] for f in fits.values() if "envelope" in f and np.isfinite(f["alpha"]) and f["alpha"] > 0]
    if alphas:  # unbounded intervals (hi = inf, lo ~ 0) must not set the scale
        ax.set_ylim(max(1e-2, 0.5 * min(alphas)), min(20.0, 2.0 * max(alphas + [1.0])))
    ax.legend(fontsize=6)
    ax.set_title("Real fork tasks: α against the envelope")
    return ax


def pooled_by_depth(frame):
    """Dof-weighted pooled variance per depth (the pooled fork estimate of Var(R | I_c))."""
    g = frame.assign(w=frame["risk_obs"] * frame["dof"]).groupby("depth")
    pooled = (g["w"].sum() / g["dof"].sum()).rename("pooled")
    return pooled.reset_index().assign(dof=g["dof"].sum().to_numpy())


# ----------------------------------------------------------------------------- plots


def plot_decay(ax, frame, fit: dict, title: str | None = None):
    """Log-log fork variance V(c) against c with the fitted L_int + K c^-alpha; returns ``ax``."""
    from scipy.stats import chi2

    ax.scatter(frame["depth"], np.maximum(frame["risk_obs"], 1e-4), s=6, alpha=0.25, color="grey", label="per prefix")
    pooled = pooled_by_depth(frame)
    lo = pooled["pooled"] * pooled["dof"] / chi2.ppf(0.95, pooled["dof"])
    hi = pooled["pooled"] * pooled["dof"] / chi2.ppf(0.05, pooled["dof"])
    colour = REGIME_COLOURS.get(fit["regime"], "black")
    ax.errorbar(pooled["depth"], pooled["pooled"], yerr=[np.maximum(pooled["pooled"] - lo, 0), np.maximum(hi - pooled["pooled"], 0)], fmt="o",
                color=colour, ms=4, capsize=2, label="pooled (90% χ²)")
    c = np.geomspace(frame["depth"].min(), frame["depth"].max(), 100)
    ax.plot(c, fit["l_int"] + fit["k"] * c ** (-fit["alpha"]), color=colour, lw=1.5,
            label=f"α={fit['alpha']:.2f} [{fit['alpha_lo']:.2f}, {fit['alpha_hi']:.2f}]")
    ax.axhline(fit["l_int"], color=colour, ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fork depth c (steps)")
    ax.set_ylabel("fork variance (pp²)")
    if title:
        ax.set_title(title, fontsize=7)
    ax.legend(fontsize=5, loc="best")
    return ax


def _bars(x: float, lo: float, hi: float) -> list[list[float]]:
    return [[max(x - lo, 0.0)], [max(hi - x, 0.0)]]


def _ss_dc_alpha(k: float, thresholds) -> list[float]:
    """alpha values on the Static-Sufficient / Dynamic-Critical boundary alpha K = cost c_min^(alpha+1)."""
    a = np.linspace(1e-3, 5.0, 20001)
    f = np.log(a) + np.log(k) - np.log(thresholds.cost) - (a + 1) * np.log(thresholds.c_min)
    idx = np.flatnonzero(np.diff(np.sign(f)) != 0)
    return [float(a[i]) for i in idx]


def plot_phase(ax, fits: dict, thresholds, ref_k=(0.3, 1.0, 3.0, 10.0)):
    """Tasks on the (L_int, alpha) plane, coloured by regime, with the docs/theory.md §1 boundaries."""
    floor = 1e-3
    for name, f in fits.items():
        colour = REGIME_COLOURS[f["regime"]]
        x = max(f["l_int"], floor)
        # a point estimate can sit outside its percentile interval: clip the bars at the point
        ax.errorbar([x], [f["alpha"]], yerr=_bars(f["alpha"], f["alpha_lo"], f["alpha_hi"]),
                    xerr=_bars(x, max(f["l_int_lo"], floor), max(f["l_int_hi"], floor)),
                    fmt="o", color=colour, ms=4, capsize=2, alpha=0.8)
    ax.axvline(thresholds.target_rmse**2, color="tab:red", ls="--", lw=1, label=f"L_int = ε² = {thresholds.target_rmse**2:g}")
    for k in ref_k:
        for a in _ss_dc_alpha(k, thresholds):
            ax.axhline(a, color="grey", ls=":", lw=0.8)
            ax.text(floor * 1.2, a, f"SS/DC, K={k:g}", fontsize=5, va="bottom", color="grey")
    for regime, colour in REGIME_COLOURS.items():
        ax.scatter([], [], color=colour, label=regime.replace("_", " "))
    ax.set_xscale("log")
    ax.set_xlabel("L_int (pp², log; floor 1e-3)")
    ax.set_ylabel("α")
    ax.legend(fontsize=6, loc="upper right")
    ax.set_title("Encoder-tier tasks on the (L_int, α) plane")
    return ax


def plot_alpha(ax, fits: dict):
    """Fitted alpha per task with its bootstrap interval, coloured by regime."""
    names = list(fits)
    y = np.arange(len(names))
    for i, n in enumerate(names):
        f = fits[n]
        ax.errorbar([f["alpha"]], [i], xerr=_bars(f["alpha"], f["alpha_lo"], f["alpha_hi"]), fmt="o",
                    color=REGIME_COLOURS[f["regime"]], ms=4, capsize=2)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=5)
    ax.set_xlabel("α (bootstrap interval over prefixes)")
    ax.invert_yaxis()
    return ax


# ----------------------------------------------------------------------------- command body


def run_real(risk, out: Path, *, thresholds, n_boot: int, level: float, seed: int) -> dict:
    """Fit every task, save decay.png, phase.png, alpha.png and results.json in ``out``."""
    from plan_probe._figures import subplots

    from plan_probe.probes._io import atomic_path, write_json
    from plan_probe.probes._version import __version__

    rng = np.random.default_rng(seed)
    fits = {}
    tasks = sorted(risk["task_id"].unique())
    for t in tasks:
        frame = risk[risk["task_id"] == t]
        fits[t] = fit_task(frame, n_boot=n_boot, level=level, rng=rng, thresholds=thresholds)
        if "hp_lr_decay" in frame.columns:
            fits[t]["envelope"] = envelope_comparison(frame, fits[t])
        log.info("%s: alpha=%.3f L_int=%.3g K=%.3g %s", t, fits[t]["alpha"], fits[t]["l_int"], fits[t]["k"], fits[t]["regime"])
    out.mkdir(parents=True, exist_ok=True)
    ncol = 4
    nrow = int(np.ceil(len(tasks) / ncol))
    fig, axes = subplots(nrow, ncol, figsize=(4 * ncol, 3 * nrow), squeeze=False)
    for ax, t in zip(axes.ravel(), tasks):
        plot_decay(ax, risk[risk["task_id"] == t], fits[t], title=t)
    for ax in axes.ravel()[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, out / "decay.png", atomic_path)
    fig, ax = subplots(figsize=(6, 4.5))
    plot_phase(ax, fits, thresholds)
    fig.tight_layout()
    _save(fig, out / "phase.png", atomic_path)
    fig, ax = subplots(figsize=(6, 0.25 * len(tasks) + 1.2))
    plot_alpha(ax, fits)
    fig.tight_layout()
    _save(fig, out / "alpha.png", atomic_path)
    figures = ["decay.png", "phase.png", "alpha.png"]
    envelope = {}
    if any("envelope" in f for f in fits.values()):
        fig, ax = subplots(figsize=(6, 4.5))
        plot_alpha_vs_bound(ax, fits)
        fig.tight_layout()
        _save(fig, out / "alpha_vs_bound.png", atomic_path)
        figures.append("alpha_vs_bound.png")
        envs = [f["envelope"] for f in fits.values() if "envelope" in f]
        envelope = {
            "vs_bound": {k: sum(e["relation"] == k for e in envs) for k in ("above", "within", "below", "undefined")},
            "vs_finite_range": {k: sum(e["relation_finite_range"] == k for e in envs) for k in ("above", "within", "below", "undefined")},
            "tasks": [{"task_id": t, "rho": f["envelope"]["rho"], "alpha": round(f["alpha"], 4),
                       "interval": [round(f["alpha_lo"], 4), round(f["alpha_hi"], 4)], "bound": f["envelope"]["bound"],
                       "finite_range": None if f["envelope"]["finite_range"] is None else round(f["envelope"]["finite_range"], 4),
                       "relation": f["envelope"]["relation"], "relation_finite_range": f["envelope"]["relation_finite_range"]}
                      for t, f in fits.items() if "envelope" in f],
        }
    counts = {r: sum(f["regime"] == r for f in fits.values()) for r in REGIME_COLOURS}
    results = {
        "plan_probe_version": __version__,
        "seed": seed, "n_boot": n_boot, "level": level,
        "thresholds": {"cost": thresholds.cost, "target_rmse": thresholds.target_rmse,
                       "c_min": thresholds.c_min, "c_max": thresholds.c_max},
        "tasks": fits,
        "regime_counts": counts,
        "envelope": envelope,
    }
    write_json(_json_ready(results), out / "results.json")
    summary = _json_ready({"tasks": len(fits), "regime_counts": counts, "results": str(out / "results.json"),
                           "figures": [str(out / n) for n in figures], "envelope": envelope})
    return {"summary": summary, "results": results}


def _json_ready(value):
    """``None`` for non-finite floats (an unbounded alpha interval has hi = inf; JSON has no inf)."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def _save(fig, path: Path, atomic_path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
