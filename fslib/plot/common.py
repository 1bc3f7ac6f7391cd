"""Shared plotting helpers and the types of every ``fslib.plot`` function's ``ax`` and result."""

from __future__ import annotations

from typing import Any, Sequence, Union

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["new_axes", "Axes", "AxesArg", "Figure"]

AxesArg = Union[Axes, Sequence[Axes], np.ndarray, None]
"""What a plot function's ``ax`` accepts: None (a new figure), one Axes, or several (grids)."""


def new_axes(ax: Axes | None = None, figsize: tuple[float, float] = (4, 3)) -> tuple[Figure, Axes]:
    """Return ``(fig, ax)``: the given axes and its figure, or a new figure."""
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def axes_grid(ax: AxesArg, rows: int, cols: int, figsize: tuple[float, float], **kw: Any) -> tuple[Figure, np.ndarray]:
    """A ``(rows, cols)`` array of axes: a new figure of ``figsize``, or the given axes reshaped."""
    if ax is None:
        fig, axes = plt.subplots(rows, cols, figsize=figsize, squeeze=False, **kw)
        return fig, axes
    axes = np.asarray(ax, dtype=object).reshape(-1)
    if axes.size < rows * cols:
        raise ValueError(f"need {rows * cols} axes for a {rows} x {cols} grid, got {axes.size}")
    return axes[0].figure, axes[: rows * cols].reshape(rows, cols)


def as_numpy(x: Any) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
