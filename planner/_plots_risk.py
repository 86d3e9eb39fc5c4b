"""Plots of the risk area: the phase diagram and per-task risk curves.

Each function draws on a given matplotlib ``Axes`` and returns it; saving is the CLI's job.
"""

from __future__ import annotations

import numpy as np

__all__ = ["phase_diagram_data", "plot_phase_diagram", "risk_curve_data", "plot_risk_curve", "REGIME_COLOURS"]

REGIME_COLOURS = {"static_sufficient": "tab:blue", "dynamic_critical": "tab:orange", "noise_dominant": "tab:red"}
_LABELS = {"static_sufficient": "Static-Sufficient", "dynamic_critical": "Dynamic-Critical", "noise_dominant": "Noise-Dominant"}
#: What each regime means for the probe (docs/theory.md §1): only Static-Sufficient skips it.
_ACTIONS = {"static_sufficient": "no probe", "dynamic_critical": "probe c_opt",
            "noise_dominant": "probe c_opt; ε out of reach"}


def phase_diagram_data(plan_df, settings, draws=None, *, level: float = 0.8):
    """Points, intervals and boundary curves of the phase diagram.

    Returns a dict with ``l_int``, ``alpha``, ``regime`` (per task), optional ``l_int_ci`` and
    ``alpha_ci`` (2, n) central ``level`` intervals from ``draws``, ``noise_boundary`` (epsilon^2),
    and ``static_boundaries``: for each K quartile of the portfolio, the curve
    alpha K = gamma lambda c_min^(alpha+1) as (K, alpha grid, L_int-independent) -- a horizontal
    line in alpha, since the Static/Dynamic rule does not involve L_int.
    """
    from scipy.optimize import brentq

    out = {
        "l_int": plan_df["l_int"].to_numpy(dtype=float),
        "alpha": plan_df["alpha"].to_numpy(dtype=float),
        "regime": plan_df["regime"].astype(str).to_numpy(),
        "noise_boundary": settings.target_rmse**2,
    }
    if draws is not None:
        q = [(1 - level) / 2, (1 + level) / 2]
        out["l_int_ci"] = np.quantile(draws["l_int"], q, axis=1)
        out["alpha_ci"] = np.quantile(draws["alpha"], q, axis=1)
    ks = np.quantile(plan_df["k"].to_numpy(dtype=float), [0.25, 0.5, 0.75])
    c_min = settings.min_depth
    bounds = []
    for kq in ks:
        # g(alpha) = log(alpha K) - log(cost) - (alpha+1) log c_min; tasks with alpha above the root
        # (for this K) are Static-Sufficient. g may have no root in range: then no curve.
        g = lambda a, kq=kq: np.log(a * kq) - np.log(settings.cost) - (a + 1) * np.log(c_min)  # noqa: E731
        grid = np.geomspace(1e-3, 20, 400)
        vals = g(grid)
        roots = [brentq(g, grid[i], grid[i + 1]) for i in range(len(grid) - 1) if np.sign(vals[i]) != np.sign(vals[i + 1])]
        bounds.append({"k": float(kq), "alpha": [float(r) for r in roots]})
    out["static_boundaries"] = bounds
    return out


def plot_phase_diagram(ax, plan_df, settings, draws=None):
    """Tasks on the (L_int, alpha) plane (log x), coloured by regime, with the regime boundaries.

    Points are posterior medians (the plan's ``l_int`` and ``alpha``); the legend says what each
    regime means for the probe (only Static-Sufficient tasks skip it).
    """
    data = phase_diagram_data(plan_df, settings, draws)
    for regime, colour in REGIME_COLOURS.items():
        m = data["regime"] == regime
        if not m.any():
            continue
        x, y = data["l_int"][m], data["alpha"][m]
        if "l_int_ci" in data:
            xerr = np.abs(data["l_int_ci"][:, m] - x)
            yerr = np.abs(data["alpha_ci"][:, m] - y)
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="none", ecolor=colour, alpha=0.25, lw=0.7)
        ax.scatter(x, y, s=14, color=colour, label=f"{_LABELS[regime]} ({int(m.sum())}): {_ACTIONS[regime]}", zorder=3)
    ax.axvline(data["noise_boundary"], color="k", ls="--", lw=1, label=r"$L_{int}=\varepsilon^2$ (target RMSE out of reach beyond)")
    styles = [":", "-.", "-"]
    for bound, ls in zip(data["static_boundaries"], styles):
        for a in bound["alpha"]:
            ax.axhline(a, color="grey", ls=ls, lw=1)
        if bound["alpha"]:
            ax.plot([], [], color="grey", ls=ls, label=rf"$\alpha K=\gamma\lambda c_{{min}}^{{\alpha+1}}$, K={bound['k']:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel(r"intrinsic risk $L_{int}$ (score$^2$)")
    ax.set_ylabel(r"information-revelation rate $\alpha$")
    ax.set_title("Predictability regimes")
    ax.legend(fontsize=7, loc="best")
    return ax


def risk_curve_data(row, settings, draws=None, *, n_points: int = 120, level: float = 0.8):
    """Posterior mean (and band) of L(c) over [c_min/2, 2 c_max] for one plan row."""
    c = np.geomspace(max(settings.min_depth / 2, 1.0), settings.max_depth * 2, n_points)
    if draws is not None:
        curves = draws["l_int"][:, None] + draws["k"][:, None] * c[None, :] ** (-draws["alpha"][:, None])
        mean = curves.mean(axis=0)
        lo, hi = np.quantile(curves, [(1 - level) / 2, (1 + level) / 2], axis=0)
    else:
        mean = row["l_int"] + row["k"] * c ** (-row["alpha"])
        lo = hi = None
    return {"c": c, "mean": mean, "lo": lo, "hi": hi, "c_opt": int(row["c_opt"]), "risk_at_c_opt": float(row["risk_at_c_opt"])}


def plot_risk_curve(ax, row, settings, draws=None):
    """L(c) for one task: posterior mean, band (with draws), c_opt marked, the floor epsilon^2."""
    d = risk_curve_data(row, settings, draws)
    colour = REGIME_COLOURS.get(str(row["regime"]), "k")
    ax.plot(d["c"], d["mean"], color=colour, label="posterior mean L(c)")
    if d["lo"] is not None:
        ax.fill_between(d["c"], d["lo"], d["hi"], color=colour, alpha=0.2, label="80% band")
    if d["c_opt"] > 0:  # c_opt = 0 (decide without a probe) has no place on a log axis
        ax.axvline(d["c_opt"], color="k", ls="--", lw=1, label=f"c_opt = {d['c_opt']}")
        ax.plot([d["c_opt"]], [d["risk_at_c_opt"]], "ko", ms=4)
    ax.axhline(settings.target_rmse**2, color="grey", ls=":", lw=1, label=r"$\varepsilon^2$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("probe depth c (steps)")
    ax.set_ylabel("risk L(c) (score$^2$)")
    ax.set_title(f"{row['task_id']}: {_LABELS.get(str(row['regime']), row['regime'])}", fontsize=9)
    ax.legend(fontsize=7)
    return ax
