"""Figures of Dominant Frequency Maps and the shortcut test (chapter 4).

* :func:`dfm_grid`: per class a binary map, black background, white kept frequencies, in
  the style of the paper's Fig. 7 (one row per model when given several sets).
* :func:`loss_map_grid`: the ablation loss maps behind the DFMs.
* :func:`dfm_examples`: images next to their DFM and the DFM-filtered image (Fig. 1 style).
* :func:`tpr_fpr_bars`: TPR and FPR per class with intervals, the null and the paper rule.
* :func:`tpr_vs_threshold`: TPR per class, mean TPR, mean FPR and mean null against the
  share of frequencies kept (the paper's 1, 5, 10, 20 %).
* :func:`split_half_curves`: split-half IoU and Spearman of DFMs against the ranking images.
"""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from fslib.plot.common import Axes, AxesArg, Figure, as_numpy, axes_grid, new_axes
from fslib.spectral import filter_frequencies

Maps = Union[torch.Tensor, np.ndarray, Mapping[str, Union[torch.Tensor, np.ndarray]]]
"""One set of maps ``(C, H, W)``, or several by name (one row each)."""

__all__ = ["dfm_grid", "loss_map_grid", "dfm_examples", "tpr_fpr_bars", "tpr_vs_threshold", "split_half_curves"]


_np = as_numpy


def _axes_grid(ax: AxesArg, rows: int, cols: int, size: float = 1.3) -> tuple[Figure, np.ndarray]:
    return axes_grid(ax, rows, cols, (size * cols, size * rows + 0.3))


def _rows(data: Maps) -> tuple[list[str], list[np.ndarray]]:
    if isinstance(data, Mapping):
        return [str(k) for k in data], [_np(v) for v in data.values()]
    return [""], [_np(data)]


TARGET_COLOURS = {"target only": (0.55, 0.08, 0.08), "DFM and target": (1.0, 0.78, 0.0)}


def _with_targets(dfm: np.ndarray, target: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3): DFM only white, target only dark red, both gold, neither black."""
    d, t = dfm.astype(bool), target.astype(bool)
    rgb = np.zeros(d.shape + (3,))
    rgb[d & ~t] = 1.0
    rgb[t & ~d] = TARGET_COLOURS["target only"]
    rgb[d & t] = TARGET_COLOURS["DFM and target"]
    return rgb


def dfm_grid(data: Maps, ax: AxesArg = None, class_names: Sequence[str] | None = None,
             targets: Maps | None = None) -> tuple[Figure, np.ndarray]:
    """Binary DFMs, one panel per class: black background, white kept frequencies.

    Parameters
    ----------
    data : bool array (C, H, W), or a mapping ``{row label (e.g. model): (C, H, W)}``
        Centred layout (DC in the middle), as returned by ``dominant_frequency_maps``.
    ax : None or a sequence of at least ``rows * C`` axes
    class_names : column titles (default: class indices)
    targets : None, or bool arrays of the same structure as ``data`` (positions a class was
        built to use, or where its ADCS is highest); then target-only positions are dark
        red and positions in both the DFM and the target gold (:data:`TARGET_COLOURS`).

    Returns
    -------
    (Figure, ndarray of Axes, shape (rows, C))
    """
    labels, maps = _rows(data)
    target_maps = _rows(targets)[1] if targets is not None else [None] * len(maps)
    if len(target_maps) != len(maps):
        raise ValueError(f"targets has {len(target_maps)} rows, data {len(maps)}")
    n_cls = maps[0].shape[0]
    fig, axes = _axes_grid(ax, len(maps), n_cls)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_cls)]
    for i, (label, m, tm) in enumerate(zip(labels, maps, target_maps)):
        for k in range(n_cls):
            a = axes[i, k]
            if tm is None:
                a.imshow(m[k].astype(float), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                a.imshow(_with_targets(m[k], tm[k]), interpolation="nearest")
            a.set_xticks([])
            a.set_yticks([])
            if i == 0:
                a.set_title(names[k], fontsize=8)
            if k == 0 and label:
                a.set_ylabel(label, fontsize=8)
    return fig, axes


def loss_map_grid(data: torch.Tensor | np.ndarray, ax: AxesArg = None, class_names: Sequence[str] | None = None,
                  baseline: torch.Tensor | np.ndarray | None = None,
                  symlog: bool = False) -> tuple[Figure, np.ndarray]:
    """Ablation loss maps, one panel per class (brighter = removing it hurts more).

    Parameters
    ----------
    data : array (C, H, W), centred layout, from ``ablation_loss``
    ax : None or a sequence of at least C axes
    class_names : panel titles
    baseline : array (C,) or None
        Unablated class losses (``class_losses``); when given the maps show the increase.
    symlog : bool
        Symmetric-log colour scale (linear within 1 % of the largest magnitude): the few
        lowest frequencies dominate a linear scale and hide the rest of the map.

    Returns
    -------
    (Figure, ndarray of Axes, shape (1, C))
    """
    maps = _np(data).astype(float)
    if baseline is not None:
        maps = maps - _np(baseline).astype(float)[:, None, None]
    n_cls = maps.shape[0]
    fig, axes = _axes_grid(ax, 1, n_cls)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_cls)]
    vmin, vmax = float(np.nanmin(maps)), float(np.nanmax(maps))  # one colour scale for all
    if symlog:
        from matplotlib.colors import SymLogNorm

        top = max(abs(vmin), abs(vmax)) or 1.0
        scale = dict(norm=SymLogNorm(linthresh=0.01 * top, vmin=vmin, vmax=vmax))
    else:
        scale = dict(vmin=vmin, vmax=vmax)
    for k in range(n_cls):
        a = axes[0, k]
        im = a.imshow(maps[k], cmap="magma", interpolation="nearest", **scale)
        a.set_title(names[k], fontsize=8)
        a.set_xticks([])
        a.set_yticks([])
    fig.colorbar(im, ax=list(axes[0]), shrink=0.7, label="loss increase" if baseline is not None else "loss")
    return fig, axes


def _display(img: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, C) scaled to [0, 1] per image (filtered images lose their range)."""
    img = np.transpose(img, (1, 2, 0)).astype(float)
    lo, hi = img.min(), img.max()
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def dfm_examples(data: Mapping, ax: AxesArg = None) -> tuple[Figure, np.ndarray]:
    """Rows of (image, its class's DFM, DFM-filtered image), in the style of Fig. 1.

    Parameters
    ----------
    data : mapping with
        ``images`` : (N, 3, H, W) float, the originals (any range; each panel is min-max scaled)
        ``dfms`` : (N, H, W) bool, the DFM applied to each image
        ``filtered`` : (N, 3, H, W) float, optional; computed with
        ``fslib.spectral.filter_frequencies`` when absent
        ``titles`` : N str, optional row labels
    ax : None or a sequence of at least 3 N axes

    Returns
    -------
    (Figure, ndarray of Axes, shape (N, 3))
    """
    images, dfms = data["images"], data["dfms"]
    filtered = data.get("filtered")
    if filtered is None:
        filtered = filter_frequencies(torch.as_tensor(_np(images)), torch.as_tensor(_np(dfms)))
    images, dfms, filtered = _np(images), _np(dfms), _np(filtered)
    n = images.shape[0]
    fig, axes = _axes_grid(ax, n, 3, size=1.6)
    titles = data.get("titles") or [""] * n
    for i in range(n):
        axes[i, 0].imshow(_display(images[i]))
        axes[i, 1].imshow(dfms[i].astype(float), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[i, 2].imshow(_display(filtered[i]))
        axes[i, 0].set_ylabel(titles[i], fontsize=8)
        for a in axes[i]:
            a.set_xticks([])
            a.set_yticks([])
    for a, t in zip(axes[0], ("image", "DFM", "DFM-filtered")):
        a.set_title(t, fontsize=8)
    return fig, axes


def tpr_fpr_bars(table: pd.DataFrame | Mapping[str, pd.DataFrame], ax: AxesArg = None, class_names: Sequence[str] | None = None,
                 paper_tpr: float = 0.6) -> tuple[Figure, np.ndarray]:
    """TPR and FPR on DFM-filtered images per class, with 95 % intervals and the null.

    Parameters
    ----------
    table : DataFrame from ``evaluate_dfms`` (columns class, tpr, tpr_lo, tpr_hi, fpr,
        fpr_lo, fpr_hi, null_tpr_p95, shortcut), or a mapping ``{panel title: DataFrame}``
        drawn as side-by-side panels sharing the y axis
    ax : matplotlib axes (a sequence of one per table for a mapping) or None
    class_names : tick labels (default: the class column)
    paper_tpr : dashed line of the paper-style rule

    Returns
    -------
    (Figure, Axes), or (Figure, ndarray of Axes) for a mapping
    """
    if isinstance(table, Mapping):
        n = len(table)
        fig, axes = axes_grid(ax, 1, n, (3.3 * n, 3.3), sharey=True)
        axes = axes[0]
        for a, (title, t) in zip(axes, table.items()):
            tpr_fpr_bars(t, ax=a, class_names=class_names, paper_tpr=paper_tpr)
            a.set_title(str(title), fontsize=9)
            a.get_legend().remove()
        for a in axes[1:]:
            a.set_ylabel("")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, ncol=4, loc="upper center", frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.9))
        return fig, axes
    fig, ax = new_axes(ax, figsize=(max(4.0, 0.6 * len(table) + 1.5), 3))
    x = np.arange(len(table))
    wdt = 0.38
    for off, key, color in ((-wdt / 2, "tpr", "tab:blue"), (wdt / 2, "fpr", "tab:orange")):
        val = table[key].to_numpy(float)
        err = np.vstack([val - table[f"{key}_lo"].to_numpy(float), table[f"{key}_hi"].to_numpy(float) - val])
        ax.bar(x + off, val, wdt, color=color, label=key.upper(), yerr=np.clip(err, 0, None), capsize=2)
    ax.scatter(x - wdt / 2, table["null_tpr_p95"], marker="_", s=200, color="black", zorder=3,
               label="null TPR, 95th pct.")
    ax.axhline(paper_tpr, color="gray", ls="--", lw=1, label=f"TPR = {paper_tpr}")
    for xi, flag in zip(x, table["shortcut"]):
        if flag:
            ax.annotate("*", (xi - wdt / 2, 1.02), ha="center", fontsize=12)
    names = list(class_names) if class_names is not None else [str(c) for c in table["class"]]
    ax.set_xticks(x, names, rotation=45 if max(len(s) for s in names) > 3 else 0, ha="right" if
                  max(len(s) for s in names) > 3 else "center")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("rate on DFM-filtered images")
    ax.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return fig, ax


def tpr_vs_threshold(table: pd.DataFrame, ax: AxesArg = None, class_names: Sequence[str] | None = None,
                     paper_tpr: float = 0.6) -> tuple[Figure, Axes]:
    """TPR of every class against the DFM threshold, with the class mean, the mean FPR and
    the mean null TPR (95th percentile of random same-profile masks).

    Parameters
    ----------
    table : DataFrame from ``fslib.dfm.shortcut_test_sweep`` (columns top, class, tpr, fpr,
        null_tpr_p95)
    ax : matplotlib axes or None
    class_names : legend labels of the classes (default: the class column)
    paper_tpr : dashed line of the paper-style rule

    Returns
    -------
    (Figure, Axes)
    """
    fig, ax = new_axes(ax, figsize=(5, 3.2))
    tops = np.sort(table["top"].unique())
    x = 100 * tops
    classes = list(dict.fromkeys(table["class"]))
    names = list(class_names) if class_names is not None else [str(c) for c in classes]
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, c in enumerate(classes):
        rows = table[table["class"] == c].set_index("top").loc[tops]
        ax.plot(x, rows["tpr"], color=cmap(i % cmap.N), lw=1, alpha=0.6, marker=".", label=names[i])
    mean = table.groupby("top")[["tpr", "fpr", "null_tpr_p95"]].mean().loc[tops]
    ax.plot(x, mean["tpr"], color="black", lw=2.2, marker="o", label="mean TPR")
    ax.plot(x, mean["fpr"], color="black", lw=1.5, ls=":", marker="s", label="mean FPR")
    if mean["null_tpr_p95"].notna().any():
        ax.plot(x, mean["null_tpr_p95"], color="gray", lw=1.5, ls="-.", label="mean null TPR (95th pct.)")
    ax.axhline(paper_tpr, color="gray", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.minorticks_off()
    ax.set_xlabel("frequencies kept (% of positions)")
    ax.set_ylabel("rate on DFM-filtered images")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return fig, ax


def split_half_curves(summary: pd.DataFrame, ax: AxesArg = None) -> tuple[Figure, Axes]:
    """Split-half IoU and Spearman correlation of DFMs against the ranking images per class,
    with the 2.5-97.5 % range over the splits.

    Parameters
    ----------
    summary : DataFrame from ``fslib.dfm.split_half_summary`` (index per_class; columns iou,
        iou_low, iou_high, spearman, spearman_low, spearman_high)
    ax : matplotlib axes or None

    Returns
    -------
    (Figure, Axes)
    """
    fig, ax = new_axes(ax, figsize=(4.5, 3))
    x = summary.index.to_numpy()
    for col, label, style in (("iou", "IoU of the DFMs", "-o"), ("spearman", "Spearman of the rankings", "--s")):
        ax.plot(x, summary[col], style, color="black", lw=1.5, label=label)
        ax.fill_between(x, summary[f"{col}_low"], summary[f"{col}_high"], color="gray", alpha=0.25, lw=0)
    ax.set_xticks(x)
    ax.set_xlabel("ranking images per class (each half)")
    ax.set_ylabel("agreement of two disjoint halves")
    ax.set_ylim(min(0.0, float(summary[["iou_low", "spearman_low"]].min().min())), 1.0)
    ax.legend(fontsize=7, frameon=False)
    return fig, ax
