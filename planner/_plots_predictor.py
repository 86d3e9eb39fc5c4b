"""Predictor figures. Data first (:func:`coverage_curve`), then functions that draw on a given Axes
and return it; only the CLI saves files."""

from __future__ import annotations

import numpy as np

__all__ = ["coverage_curve", "plot_pred_vs_true", "plot_calibration", "plot_shap_summary", "plot_waterfall"]

LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def coverage_curve(predictor, X, y, levels=LEVELS, scale=None) -> tuple[np.ndarray, np.ndarray]:
    """Empirical coverage of the predictor's conformal intervals at each nominal level."""
    y = np.asarray(y, dtype=float)
    emp = []
    for level in levels:
        _, lo, hi = predictor.predict_interval(X, level, scale)
        emp.append(float(np.mean((y >= lo) & (y <= hi))))
    return np.asarray(levels, dtype=float), np.asarray(emp)


def plot_pred_vs_true(ax, y_true, y_pred, lower=None, upper=None, label: str = "score"):
    """Predicted against true score with optional interval bars and the identity line."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if lower is not None and upper is not None:
        ax.errorbar(y_true, y_pred, yerr=[y_pred - np.asarray(lower), np.asarray(upper) - y_pred], fmt="none",
                    ecolor="0.8", elinewidth=0.8, zorder=1)
    ax.scatter(y_true, y_pred, s=10, alpha=0.7, zorder=2)
    lo = float(min(y_true.min(), y_pred.min()))
    hi = float(max(y_true.max(), y_pred.max()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=1, ls="--", label="y = x")
    rmse = float(np.sqrt(np.mean((y_pred - y_true) ** 2)))
    ax.set_xlabel(f"true {label}")
    ax.set_ylabel(f"predicted {label}")
    ax.set_title(f"predicted vs true (RMSE {rmse:.3g})")
    ax.legend(loc="upper left")
    return ax


def plot_calibration(ax, nominal, empirical, n: int | None = None):
    """Empirical interval coverage against nominal level, with a ±2 SE Monte Carlo band if ``n``."""
    nominal = np.asarray(nominal, dtype=float)
    ax.plot([0, 1], [0, 1], color="k", lw=1, ls="--", label="ideal")
    if n:
        se = np.sqrt(nominal * (1 - nominal) / n)
        ax.fill_between(nominal, nominal - 2 * se, nominal + 2 * se, color="0.85", label="±2 SE")
    ax.plot(nominal, empirical, marker="o", label="conformal intervals")
    ax.set_xlim(0.4, 1.0)
    ax.set_ylim(0.4, 1.0)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("empirical coverage")
    ax.set_title("interval calibration")
    ax.legend(loc="upper left")
    return ax


def plot_shap_summary(ax, contributions, X, feature_names, max_display: int = 12):
    """SHAP beeswarm summary (the ``shap`` package) drawn on ``ax``."""
    import shap

    explanation = shap.Explanation(
        values=np.asarray(contributions, dtype=float),
        data=np.asarray(X, dtype=float),
        feature_names=list(feature_names),
    )
    shap.plots.beeswarm(explanation, max_display=max_display, ax=ax, show=False, plot_size=None)
    return ax


def plot_waterfall(ax, contributions, base: float, feature_names, max_display: int = 10, title: str = ""):
    """Per-run waterfall: from the base value through the largest contributions to the prediction."""
    contributions = np.asarray(contributions, dtype=float)
    order = np.argsort(-np.abs(contributions), kind="stable")
    shown = order[:max_display]
    rest = float(contributions[order[max_display:]].sum()) if len(order) > max_display else 0.0
    names = [feature_names[i] for i in shown] + ([f"{len(order) - max_display} other features"] if rest else [])
    values = list(contributions[shown]) + ([rest] if rest else [])
    start = float(base)
    for row, (name, value) in enumerate(zip(names, values)):
        color = "#d62728" if value < 0 else "#1f77b4"
        ax.barh(row, value, left=start, color=color)
        ax.text(start + value, row, f" {value:+.3g}", va="center", ha="left" if value >= 0 else "right", fontsize=8)
        start += value
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.axvline(float(base), color="0.5", lw=1, ls=":")
    ax.axvline(start, color="k", lw=1)
    ax.set_xlabel(f"prediction (base {base:.3g} -> {start:.3g})")
    ax.set_title(title or "SHAP waterfall")
    return ax
