"""Figures comparing models or methods: per-model shortcut summaries and DFMs (chapter 6), cost
against agreement with the exact ranking of search methods (chapter 7)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.patches import Rectangle

from fslib.plot.common import Axes, AxesArg, Figure, new_axes
from fslib.plot.ood import annotated_heatmap

__all__ = ["model_summary_bars", "tpr_fpr_heatmap", "dfm_mosaic", "cost_agreement"]


def model_summary_bars(data: pd.DataFrame, ax: AxesArg = None, *, title: str | None = None) -> tuple[Figure, Axes]:
    """Test accuracy (bars, left axis) and number of shortcut classes (dots, right axis) per model.

    Parameters
    ----------
    data : DataFrame, index = models, columns ``test_acc`` (in [0, 1]) and ``n_shortcut``
        (int); an optional ``n_paper_rule`` column is drawn as hollow dots.

    Returns
    -------
    (fig, ax)
    """
    fig, ax = new_axes(ax, figsize=(1.5 + 0.9 * len(data), 3.2))
    x = np.arange(len(data))
    ax.bar(x, data["test_acc"].to_numpy(dtype=float), color="tab:blue", alpha=0.7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy", color="tab:blue")
    ax.set_xticks(x, [str(i) for i in data.index], rotation=25, ha="right")
    right = ax.twinx()
    right.plot(x, data["n_shortcut"].to_numpy(dtype=float), "o", color="tab:red", label="TPR > null p95")
    if "n_paper_rule" in data:
        right.plot(x, data["n_paper_rule"].to_numpy(dtype=float), "o", mfc="none", color="tab:red", label="TPR >= 0.6")
    right.set_ylabel("shortcut classes", color="tab:red")
    right.set_ylim(-0.5, max(10, float(data["n_shortcut"].max()) + 0.5))
    right.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title)
    return fig, ax


def tpr_fpr_heatmap(data: pd.DataFrame, ax: AxesArg = None, *, title: str | None = None,
                    colorbar: bool = True) -> tuple[Figure, Axes]:
    """Models x classes TPR of the shortcut test, each cell annotated ``TPR / FPR``.

    Parameters
    ----------
    data : DataFrame in long form with columns ``model``, ``name`` (class), ``tpr``, ``fpr``
        and optionally ``shortcut`` (bool: the cell is outlined)

    Returns
    -------
    (fig, ax)
    """
    tpr = data.pivot(index="model", columns="name", values="tpr")
    fpr = data.pivot(index="model", columns="name", values="fpr")
    models = list(dict.fromkeys(data["model"]))
    classes = list(dict.fromkeys(data["name"]))
    tpr, fpr = tpr.loc[models, classes], fpr.loc[models, classes]
    fig, ax = annotated_heatmap(tpr, ax, fmt="", vmin=0, vmax=1, cmap="magma", title=title, colorbar=colorbar)
    for (i, j), v in np.ndenumerate(tpr.to_numpy(dtype=float)):
        f = fpr.iloc[i, j]
        ax.text(j, i, f"{v:.2f}\n{f:.2f}", ha="center", va="center", fontsize=6.5, color="white" if v < 0.5 else "black")
    if "shortcut" in data:
        sc = data.pivot(index="model", columns="name", values="shortcut").loc[models, classes]
        for (i, j), v in np.ndenumerate(sc.to_numpy(dtype=bool)):
            if v:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="tab:cyan", linewidth=1.5))
    ax.set_xlabel("class (cell: TPR above FPR; outlined: TPR above the random-mask null)")
    return fig, ax


def dfm_mosaic(data: Mapping[str, torch.Tensor], ax: AxesArg = None, *,
               class_names: Sequence[str] | None = None) -> tuple[Figure, Axes]:
    """DFMs of several models: one row per model, one column per class, white = kept.

    Parameters
    ----------
    data : mapping model name -> Tensor, shape (C, H, W), bool (same C, H, W for all)
    class_names : column labels, default ``0..C-1``

    Returns
    -------
    (fig, ax)
    """
    names = list(data)
    maps = np.stack([data[k].detach().cpu().bool().numpy() for k in names])  # (M, C, H, W)
    m, c, h, w = maps.shape
    pad = 2
    canvas = np.full((m * (h + pad), c * (w + pad)), 0.5)
    for i in range(m):
        for j in range(c):
            canvas[i * (h + pad): i * (h + pad) + h, j * (w + pad): j * (w + pad) + w] = maps[i, j]
    fig, ax = new_axes(ax, figsize=(0.75 * c + 1.2, 0.75 * m + 0.5))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    labels = list(class_names) if class_names is not None else [str(j) for j in range(c)]
    ax.set_xticks([j * (w + pad) + w / 2 for j in range(c)], labels, rotation=30, ha="right", fontsize=7)
    ax.set_yticks([i * (h + pad) + h / 2 for i in range(m)], names, fontsize=7)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    return fig, ax


def cost_agreement(data: pd.DataFrame, ax: AxesArg = None, *, target_iou: float | None = 0.9,
                   target_cost: float | None = 0.25) -> tuple[Figure, Axes]:
    """Cost against agreement with the exact ranking, one labelled dot per method.

    Parameters
    ----------
    data : DataFrame indexed by method with columns ``x_exact`` (cost as a share of the exact
        method's, > 0, log axis) and ``iou_median`` (NaN rows are left out); an optional
        ``iou_min`` column is drawn as a bar down to the minimum
    target_iou, target_cost : dashed guide lines (None: none)

    Returns
    -------
    (fig, ax)
    """
    fig, ax = new_axes(ax, figsize=(5.0, 3.4))
    rows = data.dropna(subset=["iou_median"])
    x, y = rows["x_exact"].to_numpy(dtype=float), rows["iou_median"].to_numpy(dtype=float)
    if "iou_min" in rows:
        ax.vlines(x, rows["iou_min"].to_numpy(dtype=float), y, color="0.7", lw=1)
    ax.plot(x, y, "o", color="tab:blue")
    for i, (xi, yi, name) in enumerate(zip(x, y, rows.index)):  # alternate above / below: close dots stay legible
        ax.annotate(str(name), (xi, yi), textcoords="offset points", xytext=(4, 3 if i % 2 == 0 else -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("cost (forward-equivalents) / exact")
    ax.set_ylabel("top-5 % IoU with exact (median)")
    if target_iou is not None:
        ax.axhline(target_iou, ls="--", color="0.5", lw=0.8)
    if target_cost is not None:
        ax.axvline(target_cost, ls="--", color="0.5", lw=0.8)
    return fig, ax
