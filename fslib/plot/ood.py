"""Figures of chapter 5 (OOD transfer): texture vs shape, transfer matrices, shortcut transfer."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from fslib.plot.common import Axes, AxesArg, Figure, new_axes

__all__ = ["annotated_heatmap", "ood_accuracy_bars", "texture_bias_bars", "shortcut_transfer_scatter", "image_mosaic"]


def annotated_heatmap(data: pd.DataFrame, ax: AxesArg = None, *, fmt: str = "{:.2f}", vmin: float = 0.0, vmax: float = 1.0,
                      cmap: str = "viridis", title: str | None = None, colorbar: bool = True) -> tuple[Figure, Axes]:
    """A labelled matrix with every cell's value written in it.

    Parameters
    ----------
    data : DataFrame, rows x columns of numbers (e.g. :func:`fslib.ood.transfer_matrix`)
    ax : matplotlib axes or None
    fmt : format of the cell text
    vmin, vmax, cmap : colour scale
    title : str or None
    colorbar : bool

    Returns
    -------
    (fig, ax)
    """
    values = data.to_numpy(dtype=float)
    fig, ax = new_axes(ax, figsize=(1.0 + 0.8 * values.shape[1], 0.8 + 0.5 * values.shape[0]))
    im = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in data.columns], rotation=30, ha="right")
    ax.set_yticks(range(values.shape[0]), [str(i) for i in data.index])
    mid = (vmin + vmax) / 2
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8, color="white" if v < mid else "black")
    if data.columns.name:
        ax.set_xlabel(str(data.columns.name))
    if data.index.name:
        ax.set_ylabel(str(data.index.name))
    if title:
        ax.set_title(title)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig, ax


def ood_accuracy_bars(data: pd.DataFrame, ax: AxesArg = None, *, chance: float | None = None,
                      title: str | None = None) -> tuple[Figure, Axes]:
    """Grouped bars: one group per model, one bar per test (columns of ``data``).

    Parameters
    ----------
    data : DataFrame, index = models, columns = tests (e.g. "CIFAR-10 (7 classes)",
        "cue-conflict: shape", "cue-conflict: texture", "edges", "silhouettes"), values in [0, 1]
    chance : float or None, a dashed line at chance level (1/7 for the 7 mapped classes)

    Returns
    -------
    (fig, ax)
    """
    fig, ax = new_axes(ax, figsize=(1.5 + 1.3 * len(data), 3.2))
    k = data.shape[1]
    width = 0.8 / k
    x = np.arange(len(data))
    for j, col in enumerate(data.columns):
        ax.bar(x + (j - (k - 1) / 2) * width, data[col].to_numpy(dtype=float), width, label=str(col))
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(x, [str(i) for i in data.index], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, ncols=2, loc="upper right")
    if title:
        ax.set_title(title)
    return fig, ax


def texture_bias_bars(data: pd.Series, ax: AxesArg = None, *, title: str | None = None) -> tuple[Figure, Axes]:
    """Texture bias per model (Geirhos et al.: texture decisions / (shape + texture decisions)).

    Parameters
    ----------
    data : Series, index = models, values in [0, 1]

    Returns
    -------
    (fig, ax)
    """
    fig, ax = new_axes(ax, figsize=(1.5 + 0.8 * len(data), 3.0))
    ax.bar(range(len(data)), data.to_numpy(dtype=float), color="tab:brown")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(data)), [str(i) for i in data.index], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("texture bias")
    if title:
        ax.set_title(title)
    return fig, ax


def shortcut_transfer_scatter(data: pd.DataFrame, ax: AxesArg = None, *, x: str = "ood_tpr", y: str = "ood_acc",
                              hue: str | None = None, label: str = "name", title: str | None = None) -> tuple[Figure, Axes]:
    """One point per class (and model): a DFM-based quantity against OOD accuracy.

    Parameters
    ----------
    data : DataFrame from :func:`fslib.ood.shortcut_transfer` (optionally concatenated over
        models with a ``model`` column named by ``hue``)
    x, y : column names (e.g. ``"ood_tpr"`` or ``"energy_retained"`` against ``"ood_acc"``)
    hue : column that colours the points (e.g. ``"model"``) or None
    label : column whose value annotates each point (None: no annotation)

    Returns
    -------
    (fig, ax)
    """
    fig, ax = new_axes(ax, figsize=(4.2, 3.6))
    groups = [(None, data)] if hue is None else list(data.groupby(hue, sort=False))
    for key, part in groups:
        ax.scatter(part[x], part[y], s=28, label=None if key is None else str(key))
        if label is not None:
            for _, row in part.iterrows():
                ax.annotate(str(row[label]), (row[x], row[y]), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    if hue is not None:
        ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return fig, ax


def image_mosaic(data: torch.Tensor, ax: AxesArg = None, *, ncols: int = 8, titles: Sequence[str] | None = None,
                 row_labels: Sequence[str] | None = None) -> tuple[Figure, Axes]:
    """A grid of images on one axes.

    Parameters
    ----------
    data : Tensor, shape (N, 3, H, W), uint8 or float in [0, 1]
    ncols : images per row
    titles : one short text per image, written above it, or None
    row_labels : one label per row, on the left, or None

    Returns
    -------
    (fig, ax)
    """
    x = data.detach().cpu()
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float().clamp(0, 1)
    n, _, h, w = x.shape
    rows = -(-n // ncols)
    pad = 2 if titles is None else max(2, h // 4)  # room above each image for its title
    canvas = np.ones((rows * (h + pad), ncols * (w + pad), 3))
    for i in range(n):
        r, c = divmod(i, ncols)
        canvas[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = x[i].permute(1, 2, 0).numpy()
    fig, ax = new_axes(ax, figsize=(0.8 * ncols, 0.9 * rows + 0.3))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([] if row_labels is None else [r * (h + pad) + h / 2 for r in range(rows)],
                  [] if row_labels is None else list(row_labels))
    if titles is not None:
        for i, t in enumerate(titles):
            r, c = divmod(i, ncols)
            ax.text(c * (w + pad) + w / 2, r * (h + pad) - 1, str(t), ha="center", va="bottom", fontsize=6)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    return fig, ax
