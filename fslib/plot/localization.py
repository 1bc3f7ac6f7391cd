"""Figures of chapter 9 (where a shortcut lives): block-wise contribution curves and probe curves.

* :func:`layer_curves`: each block's share of the skew's effect when it alone is retrained
  (from :func:`fslib.localization.layer_contributions`), one line per direction, a dot per seed.
* :func:`probe_curves`: linear-probe accuracy per block, one line per model, a dot per seed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from fslib.plot.common import AxesArg, Figure, axes_grid

__all__ = ["layer_curves", "probe_curves"]

DIRECTION_STYLE = {"encode": ("tab:red", "retrain on skewed data, from the clean model (encoding)"),
                   "repair": ("tab:blue", "retrain on clean data, from the skewed model (repair)"),
                   "clean-clean": ("0.55", "control: clean model on clean data"),
                   "skew-skew": ("0.3", "control: skewed model on skewed data")}


def _lines(ax, data: pd.DataFrame, x_of: Mapping[str, int], group: str, value: str, styles: Mapping[str, tuple]) -> None:
    for key, part in data.groupby(group, sort=False):
        colour, label = styles.get(key, (None, str(key)))
        xs = part["block"].map(x_of)
        jitter = (part["seed"].rank(method="dense") - 1) * 0.06 if "seed" in part else 0.0
        ax.scatter(xs + jitter - 0.03, part[value], s=12, color=colour, alpha=0.6, lw=0)
        mean = part.groupby("block", sort=False)[value].mean()
        order = sorted(mean.index, key=x_of.get)
        ax.plot([x_of[b] for b in order], mean[order].values, "-o", ms=4, color=colour, label=label)


def layer_curves(data: pd.DataFrame, ax: AxesArg = None, *, blocks: Sequence[str] | None = None,
                 title: str | None = None) -> tuple[Figure, np.ndarray]:
    """Block-wise contributions to a skew's effect, one panel per test set.

    Parameters
    ----------
    data : DataFrame with columns ``metric`` (test set), ``seed``, ``direction``, ``block``
        and ``share`` (:func:`fslib.localization.layer_contributions`, stacked over metrics)
    blocks : x-axis order (default: order of appearance); ``"all"`` is drawn apart, at the right
    title : put before each panel's title (e.g. the architecture)

    Returns
    -------
    (Figure, ndarray of Axes, shape (1, number of metrics))
    """
    metrics = list(dict.fromkeys(data["metric"]))
    names = list(blocks) if blocks is not None else list(dict.fromkeys(data["block"]))
    x_of = {b: i + (0.6 if b == "all" else 0) for i, b in enumerate(names)}
    fig, axes = axes_grid(ax, 1, len(metrics), (4.6 * len(metrics), 3.4), sharey=True)
    for a, metric in zip(axes[0], metrics):
        part = data[(data["metric"] == metric) & data["block"].isin(names)]
        a.axhline(0, color="0.8", lw=0.8)
        a.axhline(1, color="0.8", lw=0.8, ls="--")
        _lines(a, part, x_of, "direction", "share", DIRECTION_STYLE)
        a.set_xticks(list(x_of.values()), list(x_of))
        a.set_title(f"{title + ': ' if title else ''}{metric} test images", fontsize=9)
        a.set_xlabel("block retrained alone (the rest frozen)")
    axes[0, 0].set_ylabel("share of the skew's accuracy drop")
    axes[0, -1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig, axes


def probe_curves(data: pd.DataFrame, ax: AxesArg = None, *, chance: Mapping[str, float] | None = None,
                 styles: Mapping[str, tuple[str, str]] | None = None) -> tuple[Figure, np.ndarray]:
    """Linear-probe accuracy of each block's features, one panel per task.

    Parameters
    ----------
    data : DataFrame with columns ``model``, ``seed``, ``task``, ``block``, ``depth`` and
        ``accuracy`` (:func:`fslib.localization.probe_table`)
    chance : ``{task: chance accuracy}`` drawn as a dotted line
    styles : ``{model: (colour, label)}``

    Returns
    -------
    (Figure, ndarray of Axes, shape (1, number of tasks))
    """
    tasks = list(dict.fromkeys(data["task"]))
    order = data.drop_duplicates("block").sort_values("depth")["block"].tolist()
    x_of = {b: i for i, b in enumerate(order)}
    fig, axes = axes_grid(ax, 1, len(tasks), (4.2 * len(tasks), 3.2), sharey=True)
    for a, task in zip(axes[0], tasks):
        _lines(a, data[data["task"] == task], x_of, "model", "accuracy", styles or {})
        if chance and task in chance:
            a.axhline(chance[task], color="0.6", ls=":", lw=1, label="chance")
        a.set_xticks(list(x_of.values()), order)
        a.set_title(f"probe for the {task}", fontsize=9)
        a.set_xlabel("features after block")
    axes[0, 0].set_ylabel("held-out probe accuracy")
    axes[0, -1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig, axes
