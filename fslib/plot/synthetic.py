"""Figures of chapter 1 (the synthetic datasets): example grids and class-average spectra.

Each grid is drawn as one mosaic image on a single axes, with tick labels naming rows and
columns, so every function keeps the house signature ``name(data, ax=None)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib.patches import Circle

from fslib.plot.common import Axes, AxesArg, Figure, new_axes

__all__ = ["synthetic_examples", "synthetic_spectra", "synthetic_variants"]

_DATASET_LABELS = ("Syn_B1", "Syn_B2", "Syn_B3", "Syn_B4")
_CLASS_LABELS = ("C0", "C1", "C2", "C3")


def _mosaic(tiles: np.ndarray, gap: int, fill: float) -> np.ndarray:
    """``(R, C, h, w, ...)`` tiles -> one ``(R*(h+gap)-gap, C*(w+gap)-gap, ...)`` array."""
    rows, cols, h, w = tiles.shape[:4]
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *tiles.shape[4:]), fill, dtype=float)
    for i in range(rows):
        for j in range(cols):
            out[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = tiles[i, j]
    return out


def _label_axes(ax, rows: Sequence[str], cols: Sequence[str], h: int, w: int, gap: int) -> None:
    ax.set_yticks([i * (h + gap) + h / 2 - 0.5 for i in range(len(rows))], list(rows))
    ax.set_xticks([j * (w + gap) + w / 2 - 0.5 for j in range(len(cols))], list(cols))
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)


def synthetic_examples(data: torch.Tensor, ax: AxesArg = None, *,
                       row_labels: Sequence[str] = _DATASET_LABELS) -> tuple[Figure, Axes]:
    """Grid of example images: one row per dataset, one block of columns per class.

    Parameters
    ----------
    data : Tensor, shape (D, 4, K, 3, H, W), uint8 (:func:`fslib.synthetic.examples`)
    ax : matplotlib axes or None

    Returns
    -------
    (fig, ax)
    """
    d, c, k, _, h, w = data.shape
    fig, ax = new_axes(ax, figsize=(1.0 + 0.42 * c * k, 0.5 + 0.5 * d))
    imgs = data.permute(0, 1, 2, 4, 5, 3).reshape(d, c * k, h, w, 3).numpy() / 255.0
    gap = 2
    ax.imshow(_mosaic(imgs, gap, 1.0), interpolation="nearest")
    _label_axes(ax, row_labels[:d], [""] * (c * k), h, w, gap)
    ax.set_xticks([(j * k + k / 2) * (w + gap) - gap / 2 - 0.5 for j in range(c)], list(_CLASS_LABELS[:c]))
    return fig, ax


def synthetic_spectra(data: torch.Tensor, ax: AxesArg = None, *, row_labels: Sequence[str] = _DATASET_LABELS,
                      band_edges: Sequence[float] = (4.0, 8.0, 12.0)) -> tuple[Figure, Axes]:
    """Class-average amplitude spectra on a log scale, with the band edges drawn as circles.

    Parameters
    ----------
    data : Tensor, shape (D, 4, H, W), centred amplitude spectra (:func:`fslib.synthetic.class_spectra`)
    ax : matplotlib axes or None
    band_edges : radii (frequency bins) of the circles, the inner edges of B2, B3, B4

    Returns
    -------
    (fig, ax)
    """
    d, c, h, w = data.shape
    fig, ax = new_axes(ax, figsize=(1.2 + 1.6 * c, 0.4 + 1.6 * d))
    logs = torch.log10(data.to(torch.float64).clamp_min(1e-6)).numpy()
    gap = 3
    image = ax.imshow(_mosaic(logs, gap, np.nan), cmap="magma", interpolation="nearest")
    for i in range(d):
        for j in range(c):
            centre = (j * (w + gap) + w // 2, i * (h + gap) + h // 2)
            for r in band_edges:
                ax.add_patch(Circle(centre, r, fill=False, lw=0.5, ls="--", color="white", alpha=0.6))
    _label_axes(ax, row_labels[:d], _CLASS_LABELS[:c], h, w, gap)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label="log10 mean |F|")
    return fig, ax


def synthetic_variants(data: torch.Tensor, ax: AxesArg = None, *, row_labels: Sequence[str] | None = None) -> tuple[Figure, Axes]:
    """Original images and their band-filtered versions: one row per filter, one column per class.

    Parameters
    ----------
    data : Tensor, shape (R, 4, 3, H, W), uint8 (:func:`fslib.synthetic.variant_examples`)
    ax : matplotlib axes or None
    row_labels : names of the rows (default: "original", then "filter 1", ...)

    Returns
    -------
    (fig, ax)
    """
    r, c, _, h, w = data.shape
    labels = row_labels or ["original"] + [f"filter {i}" for i in range(1, r)]
    fig, ax = new_axes(ax, figsize=(1.2 + 1.0 * c, 0.3 + 1.0 * r))
    imgs = data.permute(0, 1, 3, 4, 2).numpy() / 255.0
    gap = 2
    ax.imshow(_mosaic(imgs, gap, 1.0), interpolation="nearest")
    _label_axes(ax, labels, _CLASS_LABELS[:c], h, w, gap)
    return fig, ax

