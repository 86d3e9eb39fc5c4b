"""RMSE against total probe steps for every policy (one point per budget share)."""

from __future__ import annotations

__all__ = ["plot_benchmark"]

_STYLE = {
    "planned": ("tab:blue", "o", "-"), "planned_decision": ("tab:cyan", "o", "-"), "uniform": ("tab:orange", "s", "-"), "uniform_fill": ("tab:olive", "s", "--"),
    "random": ("tab:gray", "^", "-"), "oracle": ("black", "*", ":"), "fixed_min": ("tab:green", "D", ""),
    "fixed": ("tab:red", "D", ""), "static_only": ("tab:purple", "X", ""),
}


def plot_benchmark(ax, result: dict, title: str | None = None):
    """Draw RMSE vs total steps; budget policies are lines over the budget shares of the sweep."""
    sweep = result["settings"]["sweep"]
    names = result["settings"]["policy_order"]
    for name in names:
        colour, marker, line = _STYLE.get(name, ("tab:brown", "o", "-"))
        xs = [s["policies"][name]["steps"] for s in sweep]
        ys = [s["policies"][name]["rmse"] for s in sweep]
        if name in ("fixed_min", "fixed", "static_only"):
            xs, ys = xs[:1], ys[:1]  # independent of the budget
        xs, ys = (list(v) for v in zip(*sorted(zip(xs, ys)))) if xs else (xs, ys)
        ax.plot(xs, ys, marker=marker, ls=line or "none", color=colour, label=name)
    for s in sweep:
        ax.axvline(s["budget_steps"], color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("total probe steps over held-out tasks")
    ax.set_ylabel("RMSE on held-out runs (label units)")
    shares = ", ".join(f"{s['budget_share']:g}" for s in sweep)
    ax.set_title(title or f"plan-probe benchmark (budget shares {shares}; grey lines: budgets)", fontsize=9)
    ax.legend(fontsize=7)
    return ax
