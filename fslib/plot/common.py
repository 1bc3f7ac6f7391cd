"""Shared plotting helpers."""

from __future__ import annotations

import matplotlib.pyplot as plt

__all__ = ["new_axes"]


def new_axes(ax=None, figsize=(4, 3)):
    """Return ``(fig, ax)``: the given axes and its figure, or a new figure."""
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax
