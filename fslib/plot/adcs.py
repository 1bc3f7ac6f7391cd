"""Figures of chapter 3 (class-wise spectra): ADCS maps, radial profiles, stability.

ADCS grids are drawn as one mosaic image on a single axes (tick labels name rows and
columns), in the paper's style: jet colour map with a fixed ``-(C-1)..C-1`` colour bar, so
every function keeps the house signature ``name(data, ax=None)``.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd

from fslib import spectral
from fslib.plot.common import Axes, AxesArg, Figure, as_numpy, new_axes

__all__ = ["adcs_maps", "adcs_radial", "adcs_band_table", "adcs_distinctiveness_bars", "adcs_stability_bars"]


_as_numpy = as_numpy


def adcs_maps(
    data,
    ax: AxesArg = None,
    *,
    class_names: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    ncols: int | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "jet",
    colorbar: bool = True,
) -> tuple[Figure, Axes]:
    """ADCS maps of every class, jet colour map, fixed colour range.

    Parameters
    ----------
    data : Tensor or array, shape (C, H, W) or (D, C, H, W)
        One ADCS map per class (:func:`fslib.metrics.adcs`); a leading axis stacks datasets
        as rows (they must share C, H and W).
    ax : matplotlib axes or None
    class_names : column labels (class names); default ``0..C-1``
    row_labels : row labels for a (D, C, H, W) input (dataset names)
    ncols : wrap a (C, H, W) input into rows of ``ncols`` class_names (the paper's 2 x 5);
        each panel is then titled with its class
    vmin, vmax : colour range; default ``-(C-1)`` and ``C-1`` (the paper's range). Pass
        ``-C`` and ``C-2`` for the official variant.
    cmap : str, the paper uses ``"jet"``
    colorbar : bool

    Returns
    -------
    (fig, ax)
    """
    maps = _as_numpy(data).astype(float)
    if maps.ndim not in (3, 4):
        raise ValueError(f"data must have shape (C, H, W) or (D, C, H, W), got {maps.shape}")
    c, h, w = maps.shape[-3:]
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    wrapped = maps.ndim == 3 and ncols is not None and ncols < c
    if maps.ndim == 3:
        cols = ncols if wrapped else c
        rows = -(-c // cols)
        padded = np.full((rows * cols, h, w), np.nan)
        padded[:c] = maps
        maps = padded.reshape(rows, cols, h, w)
    rows, cols = maps.shape[:2]
    gap = max(1, h // 16)
    vgap = max(gap, round(0.25 * h)) if wrapped else gap  # room for the panel titles
    mosaic = np.full((rows * (h + vgap), cols * (w + gap) - gap), np.nan) if wrapped else \
        np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan)
    top = vgap if wrapped else 0
    for i in range(rows):
        for j in range(cols):
            mosaic[top + i * (h + vgap): top + i * (h + vgap) + h, j * (w + gap): j * (w + gap) + w] = maps[i, j]
    lo = -(c - 1) if vmin is None else vmin
    hi = c - 1 if vmax is None else vmax
    fig, ax = new_axes(ax, figsize=(1.2 + 1.3 * cols, 0.4 + 1.3 * rows * (h + vgap) / h))
    colours = mpl.colormaps[cmap].copy()
    colours.set_bad("white")
    im = ax.imshow(mosaic, cmap=colours, vmin=lo, vmax=hi, interpolation="nearest")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    centres_x = [j * (w + gap) + w / 2 - 0.5 for j in range(cols)]
    centres_y = [i * (h + gap) + h / 2 - 0.5 for i in range(rows)]
    if wrapped:
        ax.set_xticks([])
        ax.set_yticks([])
        for k, name in enumerate(names):
            ax.text(centres_x[k % cols], (k // cols) * (h + vgap) + vgap - 0.5 - 0.1 * vgap, name,
                    ha="center", va="bottom", fontsize=8)
    else:
        ax.set_xticks(centres_x, names[:cols], fontsize=8)
        ax.set_yticks(centres_y, list(row_labels)[:rows] if row_labels is not None else [""] * rows)
        ax.xaxis.tick_top()
    if colorbar:
        ticks = np.arange(int(np.ceil(lo)), int(np.floor(hi)) + 1)
        step = max(1, len(ticks) // 7)
        fig.colorbar(im, ax=ax, ticks=ticks[::step], fraction=0.03, pad=0.02, label="ADCS")
    return fig, ax


def adcs_radial(
    data,
    ax: AxesArg = None,
    *,
    class_names: Sequence[str] | None = None,
    size: int | None = None,
    num_classes: int | None = None,
) -> tuple[Figure, Axes]:
    """Mean ADCS against radius, one line per class.

    Parameters
    ----------
    data : Tensor or array, shape (C, R) (:func:`fslib.metrics.adcs_radial_profile`)
    ax : matplotlib axes or None
    class_names : legend labels
    size : image side; when given, the band edges of :mod:`fslib.spectral` are drawn
    num_classes : sets the y range to ``+-(C-1)``; default C = number of rows

    Returns
    -------
    (fig, ax)
    """
    prof = _as_numpy(data)
    c = prof.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    fig, ax = new_axes(ax, figsize=(5, 3))
    colours = mpl.colormaps["tab10" if c <= 10 else "tab20"]
    for k in range(c):
        ax.plot(np.arange(prof.shape[1]), prof[k], label=names[k], color=colours(k % colours.N), lw=1.4)
    if size is not None:
        for edge in spectral.band_edges(size, size):
            ax.axvline(edge, color="grey", ls=":", lw=0.8)
        ax.axvline(size / 2, color="grey", ls="--", lw=0.8)
    top = (num_classes or c) - 1
    ax.set_ylim(-top - 0.3, top + 0.3)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("radius (frequency bins from DC)")
    ax.set_ylabel("mean ADCS")
    ax.legend(fontsize=7, ncol=2 if c > 5 else 1, frameon=False)
    return fig, ax


def adcs_band_table(data: pd.DataFrame, ax: AxesArg = None, *, num_classes: int | None = None) -> tuple[Figure, Axes]:
    """Heat map of the mean ADCS of each class (rows) in each band (columns), annotated.

    Parameters
    ----------
    data : DataFrame, rows = classes (possibly ``dataset / class`` labels), columns = bands
        (:func:`fslib.metrics.adcs_band_means`, several concatenated)
    ax : matplotlib axes or None
    num_classes : colour range ``+-(C-1)``; default the largest absolute value

    Returns
    -------
    (fig, ax)
    """
    values = data.to_numpy(dtype=float)
    top = (num_classes - 1) if num_classes else max(1.0, float(np.abs(values).max()))
    fig, ax = new_axes(ax, figsize=(0.9 + 0.7 * values.shape[1], 0.5 + 0.28 * values.shape[0]))
    im = ax.imshow(values, cmap="jet", vmin=-top, vmax=top, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:+.1f}", ha="center", va="center", fontsize=7,
                color="white" if abs(v) > 0.6 * top else "black")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in data.columns])
    rows = [" ".join(map(str, r)) if isinstance(r, tuple) else str(r) for r in data.index]
    ax.set_yticks(range(values.shape[0]), rows, fontsize=7)
    ax.xaxis.tick_top()
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02, label="mean ADCS in band")
    return fig, ax


def adcs_distinctiveness_bars(data: pd.DataFrame, ax: AxesArg = None) -> tuple[Figure, Axes]:
    """Horizontal bars of ``top_fraction`` per class, most distinctive on top.

    Parameters
    ----------
    data : DataFrame from :func:`fslib.metrics.adcs_distinctiveness`
    ax : matplotlib axes or None

    Returns
    -------
    (fig, ax)
    """
    table = data.sort_values("rank", ascending=False)
    fig, ax = new_axes(ax, figsize=(4.5, 0.6 + 0.25 * len(table)))
    y = np.arange(len(table))
    ax.barh(y + 0.2, table["top_fraction"], height=0.4, label="beats every other class (ADCS = C-1)")
    ax.barh(y - 0.2, table["positive_fraction"], height=0.4, label="ADCS > 0", alpha=0.6)
    ax.set_yticks(y, table["class"])
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of frequency positions")
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    return fig, ax


def adcs_stability_bars(data: pd.DataFrame, ax: AxesArg = None) -> tuple[Figure, Axes]:
    """Bars per class: positions whose sign(ADCS) survives every / 95 % of the resamples.

    Parameters
    ----------
    data : DataFrame, ``ADCSStability.table`` (:func:`fslib.metrics.adcs_stability`),
        optionally with a ``dataset`` column (one group of bars per dataset)
    ax : matplotlib axes or None

    Returns
    -------
    (fig, ax)
    """
    labels = (data["dataset"] + " " + data["class"]) if "dataset" in data else data["class"]
    fig, ax = new_axes(ax, figsize=(0.8 + 0.32 * len(data), 3))
    x = np.arange(len(data))
    ax.bar(x - 0.2, data["agree_all"], width=0.4, label="all resamples")
    ax.bar(x + 0.2, data["agree_95"], width=0.4, label=">= 95 % of resamples", alpha=0.7)
    ax.set_xticks(x, labels, rotation=70, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of positions\nwith a stable sign")
    ax.legend(fontsize=7, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2)
    return fig, ax
