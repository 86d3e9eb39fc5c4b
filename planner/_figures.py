"""Figures without pyplot: no global figure registry and no GUI backend to choose, so library code
can draw headless anywhere (only the CLI saves files)."""

from __future__ import annotations

__all__ = ["subplots"]


def subplots(*grid: int, figsize: tuple[float, float], **kwargs):
    """A new ``matplotlib.figure.Figure`` and its axes, like ``pyplot.subplots`` but unmanaged."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)
