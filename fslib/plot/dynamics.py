"""Figures of chapter 2 (learning dynamics): per-class accuracy curves, when each class is
learned, and the band-stop relative confusion matrices."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from fslib.plot.common import Axes, AxesArg, Figure, axes_grid, new_axes
from fslib.spectral import BAND_PAIRS, band_set_label

__all__ = ["class_accuracy_curves", "learned_at_dots", "relative_confusion_grid"]

def _grid(ax: AxesArg, rows: int, cols: int, size: tuple[float, float] = (2.6, 2.1), **kw: Any) -> tuple[Figure, np.ndarray]:
    return axes_grid(ax, rows, cols, (size[0] * cols + 0.8, size[1] * rows + 0.4), **kw)


def _label(name: str) -> str:
    return name.replace("syn_b", "Syn_B")


def class_accuracy_curves(data: pd.DataFrame, ax: AxesArg = None, *, sets: Sequence[str] = ("test",),
                          class_names: Sequence[str] | None = None, threshold: float | None = None,
                          until: int | None = None) -> tuple[Figure, np.ndarray]:
    """Per-class accuracy over training iterations: mean over seeds, shaded from min to max.

    Parameters
    ----------
    data : DataFrame with columns dataset, seed, iteration, set, class, accuracy
        (:func:`fslib.dynamics.tracking_table`)
    ax : None or a sequence of at least ``len(sets) * n_datasets`` axes (one row per set,
        one column per dataset)
    sets : tracking sets to draw, e.g. ``("test",)`` or the four ``"bandpass:K"``
    class_names : names of the classes (default ``C0``, ``C1``, ...)
    threshold : draw a dashed line at this accuracy (the "learned" threshold)
    until : last iteration shown (None: all)

    Returns
    -------
    (fig, axes)
    """
    datasets = list(dict.fromkeys(data["dataset"]))
    classes = sorted(data["class"].unique())
    names = list(class_names) if class_names is not None else [f"C{int(c)}" for c in classes]
    size = (2.6, 2.1) if len(datasets) > 1 else (5.0, 3.0)
    fig, axes = _grid(ax, len(sets), len(datasets), size=size, sharex=True, sharey=True)
    df = data if until is None else data[data["iteration"] <= until]
    colours = plt.get_cmap("tab10")
    for i, s in enumerate(sets):
        for j, d in enumerate(datasets):
            a = axes[i, j]
            sub = df[(df["set"] == s) & (df["dataset"] == d)]
            if sub.empty:
                raise ValueError(f"no tracking rows for dataset {d!r} and set {s!r}")
            stats = sub.groupby(["class", "iteration"])["accuracy"].agg(["mean", "min", "max"]).reset_index()
            for k, c in enumerate(classes):
                cs = stats[stats["class"] == c]
                a.plot(cs["iteration"], cs["mean"], color=colours(k % 10), lw=1.3, label=names[k])
                a.fill_between(cs["iteration"], cs["min"], cs["max"], color=colours(k % 10), alpha=0.2, lw=0)
            if threshold is not None:
                a.axhline(threshold, color="grey", ls="--", lw=0.8)
            a.set_ylim(-0.03, 1.03)
            a.grid(alpha=0.3)
            if i == 0:
                a.set_title(_label(d), fontsize=9)
            if j == 0:
                a.set_ylabel(f"accuracy\n({band_set_label(s)})" if len(sets) > 1 else "accuracy", fontsize=8)
            if i == len(sets) - 1:
                a.set_xlabel("iteration", fontsize=8)
    if len(classes) <= 4:
        axes[0, -1].legend(fontsize=7, loc="lower right")
    else:  # many classes: outside, to the right
        axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return fig, axes


def learned_at_dots(data: pd.DataFrame, ax: AxesArg = None, *, class_names: Sequence[str] | None = None,
                    until: float | None = None) -> tuple[Figure, Axes]:
    """When each class is learned, one dot per seed, one row per dataset.

    Parameters
    ----------
    data : DataFrame with columns dataset, seed, class, iteration (NaN: never learned)
        (:func:`fslib.dynamics.learned_at`)
    ax : matplotlib axes or None
    class_names : names of the classes (default ``C0``, ``C1``, ...)
    until : end of the window; never-learned classes are drawn as crosses there

    Returns
    -------
    (fig, ax)
    """
    datasets = list(dict.fromkeys(data["dataset"]))
    classes = sorted(data["class"].unique())
    names = list(class_names) if class_names is not None else [f"C{int(c)}" for c in classes]
    fig, ax = new_axes(ax, figsize=(6.0, 0.6 + 0.7 * len(datasets)))
    colours = plt.get_cmap("tab10")
    right = until if until is not None else (np.nanmax(data["iteration"]) if data["iteration"].notna().any() else 1.0)
    offsets = np.linspace(-0.25, 0.25, len(classes))
    for k, c in enumerate(classes):
        sub = data[data["class"] == c]
        y = np.array([datasets.index(d) for d in sub["dataset"]]) + offsets[k]
        x = sub["iteration"].to_numpy(dtype=float)
        seen = np.isfinite(x)
        ax.scatter(x[seen], y[seen], color=colours(k % 10), s=22, label=names[k], zorder=3)
        if (~seen).any():
            ax.scatter(np.full((~seen).sum(), right), y[~seen], color=colours(k % 10), marker="x", s=22, zorder=3)
    ax.set_xlim(-0.03 * right, 1.05 * right)
    ax.set_yticks(range(len(datasets)), [_label(d) for d in datasets])
    ax.invert_yaxis()
    ax.set_xlabel("iteration at which the class is learned (x: not within the window)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(classes), loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    return fig, ax


def relative_confusion_grid(data: Mapping[str, np.ndarray], ax: AxesArg = None, *, pairs: Sequence[tuple[int, int]] = BAND_PAIRS,
                            class_names: Sequence[str] | None = None, vmax: float = 100.0,
                            annotate: bool = True) -> tuple[Figure, np.ndarray]:
    """The band-stop relative confusion matrices, one row per dataset, one column per pair.

    Parameters
    ----------
    data : mapping dataset -> ndarray, shape (P, C, C), percentage points
        (:func:`fslib.dynamics.mean_deltas`); rows of each matrix are true classes
    ax : None or a sequence of at least ``len(data) * P`` axes
    pairs : the P removed band pairs, in the order of the matrices
    class_names : names of the C classes
    vmax : colour scale from ``-vmax`` (blue) to ``+vmax`` (red), centred at 0
    annotate : write the rounded value in every cell

    Returns
    -------
    (fig, axes)
    """
    datasets = list(data)
    first = np.asarray(data[datasets[0]])
    if first.ndim != 3 or first.shape[0] != len(pairs):
        raise ValueError(f"expected ({len(pairs)}, C, C) matrices for {len(pairs)} pairs, got {first.shape}")
    c = first.shape[1]
    names = list(class_names) if class_names is not None else [f"C{i}" for i in range(c)]
    fig, axes = _grid(ax, len(datasets), len(pairs), size=(1.45, 1.45))
    im = None
    for i, d in enumerate(datasets):
        for j, (p, q) in enumerate(pairs):
            a = axes[i, j]
            m = np.asarray(data[d])[j]
            im = a.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            if annotate:
                for (r, s), v in np.ndenumerate(m):
                    a.text(s, r, f"{v:.0f}", ha="center", va="center", fontsize=5.5,
                           color="white" if abs(v) > 0.6 * vmax else "black")
            a.set_xticks(range(c), names if i == len(datasets) - 1 else [], fontsize=6)
            a.set_yticks(range(c), names if j == 0 else [], fontsize=6)
            a.tick_params(length=0)
            if i == 0:
                a.set_title(f"B{p}+B{q} removed", fontsize=7)
            if j == 0:
                a.set_ylabel(f"{_label(d)}\ntrue", fontsize=7)
            if i == len(datasets) - 1:
                a.set_xlabel("predicted", fontsize=6)
    fig.colorbar(im, ax=list(axes.ravel()), shrink=0.6, label="Δ (percentage points)")
    return fig, axes
