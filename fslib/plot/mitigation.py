"""Figures of chapter 8 (mitigation): what became of each class's shortcut after retraining."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from fslib.plot.common import Axes, AxesArg, Figure, axes_grid, new_axes

__all__ = ["shortcut_shift", "outcome_bars"]

_OUTCOME_COLORS = {"kept": "tab:red", "moved": "tab:orange", "removed": "tab:green", "new": "tab:purple"}


def shortcut_shift(data: Mapping[str, pd.DataFrame], ax: AxesArg = None, *, paper_tpr: float = 0.6) -> tuple[Figure, np.ndarray]:
    """Per class, the TPR of the source DFMs on the source model, of the same (old) DFMs on the
    retrained model, and of the DFMs recomputed on it: one panel per retrained model.

    Parameters
    ----------
    data : mapping model name -> :func:`fslib.mitigation.shortcut_outcomes` table (columns
        name, tpr_before, old_tpr, new_tpr, shortcut_before, old_shortcut, new_shortcut, outcome)
    ax : one axes per model, or None
    paper_tpr : dashed line of the paper-style rule

    Returns
    -------
    (Figure, ndarray of Axes). Filled markers pass the shortcut test (TPR above the null);
    each class's outcome is written above it (k kept, m moved, r removed, n new).
    """
    n = len(data)
    fig, axes = axes_grid(ax, 1, n, (4.2 * n, 3.4), sharey=True)
    axes = axes[0]
    series = (("tpr_before", "shortcut_before", "s", "gray", "source DFMs, source model"),
              ("old_tpr", "old_shortcut", "X", "tab:red", "source DFMs, retrained model"),
              ("new_tpr", "new_shortcut", "o", "tab:blue", "recomputed DFMs, retrained model"))
    for a, (title, t) in zip(axes, data.items()):
        x = np.arange(len(t))
        for (key, flag, marker, color, label), off in zip(series, (-0.22, 0.0, 0.22)):
            passed = t[flag].to_numpy(bool)
            y = t[key].to_numpy(float)
            a.scatter(x[passed] + off, y[passed], marker=marker, color=color, label=label, s=30, zorder=3)
            a.scatter(x[~passed] + off, y[~passed], marker=marker, facecolors="none", edgecolors=color, s=30, zorder=3)
        for xi, outcome in zip(x, t["outcome"]):
            if outcome in _OUTCOME_COLORS:
                a.annotate(outcome[0], (xi, 1.04), ha="center", fontsize=9, color=_OUTCOME_COLORS[outcome])
        a.axhline(paper_tpr, color="gray", ls="--", lw=1)
        a.set_xticks(x, t["name"].astype(str), rotation=45, ha="right")
        a.set_ylim(0, 1.12)
        a.set_title(str(title), fontsize=9)
    axes[0].set_ylabel("TPR on DFM-filtered images")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, ncol=3, loc="upper center", frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig, axes


def outcome_bars(data: pd.DataFrame, ax: AxesArg = None, *, title: str | None = None) -> tuple[Figure, Axes]:
    """Stacked bars per retrained model: how many classes kept, moved, lost (removed) or gained
    (new) a frequency shortcut.

    Parameters
    ----------
    data : DataFrame indexed by model with integer columns kept, moved, removed, new
        (:func:`fslib.mitigation.outcome_summary`)

    Returns
    -------
    (fig, ax)
    """
    fig, ax = new_axes(ax, figsize=(1.8 + 1.0 * len(data), 3.2))
    x = np.arange(len(data))
    bottom = np.zeros(len(data))
    for key, color in _OUTCOME_COLORS.items():
        values = data[key].to_numpy(float)
        ax.bar(x, values, bottom=bottom, color=color, label=key, width=0.6)
        bottom += values
    ax.set_xticks(x, [str(i) for i in data.index], rotation=20, ha="right")
    ax.set_ylabel("classes")
    ax.legend(fontsize=7, ncol=2, frameon=False)
    if title:
        ax.set_title(title)
    return fig, ax
