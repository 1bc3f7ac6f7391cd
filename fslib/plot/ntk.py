"""Figures of chapter 10 (neural tangent kernels): the Gaussian mixture, NTK spectra,
fitted eigen-components against the kernel prediction, the shortcut weight after training,
predicted per-class learning curves and per-frequency kernel weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from fslib.plot.common import axes_grid, new_axes

__all__ = [
    "component_curves",
    "eigen_spectra",
    "frequency_weight_maps",
    "mixture_scatter",
    "predicted_class_curves",
    "shortcut_sweep",
]


def _panels(ax, n: int, size=(3.2, 2.6), **kw):
    """``n`` axes in one row: new, or the given ones (:func:`fslib.plot.common.axes_grid`)."""
    fig, axes = axes_grid(ax, 1, n, (size[0] * n + 0.6, size[1]), **kw)
    return fig, axes[0]


def mixture_scatter(data, ax=None, *, directions: torch.Tensor | None = None,
                    direction_labels: Sequence[str] | None = None):
    """The Gaussian mixture in its signal plane (core axis, shortcut axis).

    Parameters
    ----------
    data : :class:`fslib.ntk_linear.Mixture`
    ax : None or an Axes
    directions : Tensor (K, D) or None, unit directions drawn as arrows from 0 (e.g. the
        top NTK eigen-directions), their first two coordinates
    direction_labels : K labels for the arrows

    Returns
    -------
    (fig, ax)
    """
    fig, ax = new_axes(ax, figsize=(4.2, 4.0))
    x = data.x.detach().cpu().numpy()
    y, aligned = data.y.cpu().numpy(), data.aligned.cpu().numpy()
    for label, colour in ((1.0, "tab:blue"), (-1.0, "tab:orange")):
        for keep, marker, name in ((aligned, "o", "aligned"), (~aligned, "x", "conflicting")):
            sel = keep & (y == label)
            ax.scatter(x[sel, 0], x[sel, 1], s=10 if marker == "o" else 28, marker=marker, color=colour,
                       alpha=0.45 if marker == "o" else 0.95, label=f"y = {label:+.0f}, {name} ({int(sel.sum())})")
    if directions is not None:
        d = directions.detach().cpu().numpy()
        reach = 0.9 * np.abs(x[:, :2]).max()
        names = list(direction_labels) if direction_labels is not None else [f"v{i + 1}" for i in range(len(d))]
        for vec, name in zip(d, names):
            ax.annotate("", xy=(reach * vec[0], reach * vec[1]), xytext=(0, 0),
                        arrowprops={"arrowstyle": "->", "lw": 1.8, "color": "black"})
            ax.text(1.05 * reach * vec[0], 1.05 * reach * vec[1], name, fontsize=9, ha="center", va="center")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("core axis x[0]")
    ax.set_ylabel("shortcut axis x[1]")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=7, loc="lower right")
    return fig, ax


def eigen_spectra(data: Mapping[str, torch.Tensor], ax=None, *, k: int = 40):
    """Eigenvalues of several kernels, each divided by its sum (the share of the trace).

    Parameters
    ----------
    data : mapping label -> eigenvalues (N,), descending (:func:`fslib.ntk.ntk_eigen`)
    ax : None or an Axes
    k : number of eigenvalues shown

    Returns
    -------
    (fig, ax)
    """
    fig, ax = new_axes(ax, figsize=(4.5, 3.0))
    for label, lam in data.items():
        lam = torch.as_tensor(lam).double().cpu()
        share = (lam / lam.sum()).numpy()[:k]
        ax.plot(np.arange(1, len(share) + 1), share, marker="o", ms=3, lw=1.2, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue rank i")
    ax.set_ylabel("lambda_i / sum lambda")
    ax.legend(fontsize=7)
    return fig, ax


def component_curves(data: pd.DataFrame, ax=None):
    """Fitted share of the top eigen-components during training, measured and predicted.

    Parameters
    ----------
    data : DataFrame with columns model, step, component (1, 2, ...), measured (the
        trained network, :func:`fslib.ntk_linear.fitted_components`) and predicted
        (``1 - exp(-lr lambda_i t)``)
    ax : None or a sequence of one Axes per model

    Returns
    -------
    (fig, axes)
    """
    models = list(dict.fromkeys(data["model"]))
    fig, axes = _panels(ax, len(models), sharey=True)
    colours = plt.get_cmap("tab10")
    for a, model in zip(axes, models):
        sub = data[data["model"] == model]
        for j, (comp, g) in enumerate(sub.groupby("component", sort=True)):
            a.plot(g["step"], g["predicted"], color=colours(j), lw=1.5, label=f"u{comp}: 1 - exp(-lr lambda t)")
            a.plot(g["step"], g["measured"], "o", color=colours(j), ms=3.5, label=f"u{comp}: trained")
        a.set_title(model, fontsize=9)
        a.set_xlabel("gradient-descent step")
    axes[0].set_ylabel("share of the component fitted")
    axes[0].legend(fontsize=7)
    return fig, axes


def shortcut_sweep(data: pd.DataFrame, ax=None):
    """Shortcut weight over core weight of the converged linear model against the
    within-cluster noise.

    Parameters
    ----------
    data : DataFrame with columns noise, rho (conflicting share), ratio and kind
        (``"population"``: a line, anything else: markers)
    ax : None or an Axes

    Returns
    -------
    (fig, ax)
    """
    fig, ax = new_axes(ax, figsize=(4.5, 3.0))
    colours = plt.get_cmap("viridis")
    rhos = sorted(data["rho"].unique())
    for j, rho in enumerate(rhos):
        colour = colours(j / max(len(rhos) - 1, 1))
        for kind, g in data[data["rho"] == rho].groupby("kind"):
            g = g.sort_values("noise")
            if kind == "population":
                ax.plot(g["noise"], g["ratio"], color=colour, lw=1.5, label=f"rho = {rho:g}")
            else:
                ax.plot(g["noise"], g["ratio"], "o", color=colour, ms=5, mfc="none", label=f"rho = {rho:g}, {kind}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("within-cluster standard deviation")
    ax.set_ylabel("w_shortcut / w_core after training")
    ax.legend(fontsize=7)
    return fig, ax


def predicted_class_curves(data: pd.DataFrame, ax=None, *, class_names: Sequence[str] | None = None,
                           threshold: float | None = None, rows: str = "kernel", cols: str = "dataset"):
    """Per-class accuracy of kernel models over (log) kernel time, one panel per
    (row, column) pair; pairs without data are left blank.

    Parameters
    ----------
    data : DataFrame with columns ``rows``, ``cols``, iteration (the time), class, accuracy
        (:func:`fslib.ntk_flow.class_curves` with the two label columns added)
    ax : None or a sequence of at least ``n_rows * n_cols`` axes
    class_names : names of the classes
    threshold : dashed line at this accuracy
    rows, cols : the columns that split the panels

    Returns
    -------
    (fig, axes) with axes of shape (n_rows, n_cols)
    """
    row_keys, col_keys = list(dict.fromkeys(data[rows])), list(dict.fromkeys(data[cols]))
    if ax is None:
        fig, axes = plt.subplots(len(row_keys), len(col_keys), figsize=(2.5 * len(col_keys) + 0.6, 2.1 * len(row_keys) + 0.4),
                                 squeeze=False, sharex=True, sharey=True)
    else:
        axes = np.asarray(ax, dtype=object).reshape(-1)
        if axes.size < len(row_keys) * len(col_keys):
            raise ValueError(f"need {len(row_keys) * len(col_keys)} axes, got {axes.size}")
        fig, axes = axes[0].figure, axes[: len(row_keys) * len(col_keys)].reshape(len(row_keys), len(col_keys))
    colours = plt.get_cmap("tab10")
    for i, r in enumerate(row_keys):
        for j, c in enumerate(col_keys):
            a = axes[i, j]
            sub = data[(data[rows] == r) & (data[cols] == c) & (data["iteration"] > 0)]
            if sub.empty:
                a.axis("off")
                continue
            for k, (cls, g) in enumerate(sub.groupby("class", sort=True)):
                label = class_names[int(cls)] if class_names is not None else f"C{int(cls)}"
                a.plot(g["iteration"], g["accuracy"], color=colours(k), lw=1.3, label=label)
            if threshold is not None:
                a.axhline(threshold, color="black", ls="--", lw=0.8)
            a.set_xscale("log")
            a.set_ylim(-0.02, 1.02)
            a.set_title(f"{r}\n{c}", fontsize=8)
            if i == len(row_keys) - 1:
                a.set_xlabel("kernel time lr t")
        axes[i, 0].set_ylabel("held-out accuracy")
    axes[0, 0].legend(fontsize=7)
    return fig, axes


def frequency_weight_maps(data: Mapping[str, torch.Tensor], ax=None, *, log: bool = True):
    """Non-negative per-frequency maps (centred layout), one panel each, own colour scale.

    Parameters
    ----------
    data : mapping title -> Tensor (H, W)
    ax : None or one Axes per map
    log : log10 colour scale (zeros shown at the smallest positive value)

    Returns
    -------
    (fig, axes)
    """
    fig, axes = _panels(ax, len(data), size=(2.3, 2.3))
    for a, (title, m) in zip(axes, data.items()):
        img = torch.as_tensor(m).double().cpu().numpy()
        if log:
            positive = img[img > 0]
            img = np.log10(np.maximum(img, positive.min() if positive.size else 1e-12))
        a.imshow(img, cmap="magma", interpolation="nearest")
        a.set_title(title, fontsize=8)
        a.set_xticks([])
        a.set_yticks([])
    return fig, axes
