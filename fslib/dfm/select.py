"""Selecting Dominant Frequency Maps: the top fraction of positions of a loss (or score) map.

:func:`dominant_frequency_maps` thresholds loss maps into conjugate-symmetric masks (the
paper's 1, 5, 10 and 20 %); :func:`iou` compares two sets of maps. Unlike the official
script, which thresholds with ``>=`` the value at rank ``int(top * H * W)`` so that ties
(both members of a pair, whole blocks) can overshoot the count, the count here is exact (see
:func:`dominant_frequency_maps`).
"""

from __future__ import annotations

import math

import torch

from fslib.dfm.config import _check_top
from fslib.spectral import conjugate_pairs


def dominant_frequency_maps(loss_maps: torch.Tensor, top: float = 0.05) -> torch.Tensor:
    """Keep the top fraction of positions by loss: the Dominant Frequency Maps.

    Positions are ranked as conjugate pairs (the unit that is removed together), by the
    larger of the two members' values (equal for ``patch_size = 1`` maps; for block maps a
    pair is scored by the best removal that contained it). Pairs are taken in order of
    decreasing loss, ties broken by the flat index of the pair's representative (the
    smaller flat index), until adding the next pair would exceed ``round(top * H * W)``
    positions (round half up), counting both members of each pair. So the count is exactly
    the target, or one less when the next pair in rank order would overshoot by one; a
    pair is never split and later pairs are not searched for a single self-conjugate fill.

    Parameters
    ----------
    loss_maps : Tensor, shape (C, H, W) or (H, W)
    top : float
        Fraction of the ``H * W`` positions; the paper uses 0.01, 0.05, 0.10, 0.20.

    Returns
    -------
    Tensor, bool, the shape of ``loss_maps``; conjugate-symmetric.

    >>> m = torch.zeros(1, 4, 4); m[0, 1, 1] = m[0, 3, 3] = 1.0   # one pair
    >>> d = dominant_frequency_maps(m, top=2 / 16)
    >>> d[0].nonzero().tolist()
    [[1, 1], [3, 3]]
    """
    _check_top(top)
    squeeze = loss_maps.ndim == 2
    maps = loss_maps[None] if squeeze else loss_maps
    if maps.ndim != 3:
        raise ValueError(f"loss_maps must have shape (C, H, W) or (H, W), got {tuple(loss_maps.shape)}")
    if torch.isnan(maps).any():
        raise ValueError("loss_maps contain NaN")
    cls, h, w = maps.shape
    target = int(math.floor(top * h * w + 0.5))
    pairs = conjugate_pairs(h, w)
    size = torch.where((pairs[:, :2] == pairs[:, 2:]).all(1), 1, 2)
    flat = maps.reshape(cls, h * w).double().cpu()
    rep, partner = pairs[:, 0] * w + pairs[:, 1], pairs[:, 2] * w + pairs[:, 3]
    score = torch.maximum(flat[:, rep], flat[:, partner])  # (C, P), pairs in flat-index order
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    taken = torch.cumsum(size[order], dim=1) <= target  # sizes > 0, so this is a prefix
    out = torch.zeros(cls, h * w, dtype=torch.bool)
    for i in range(cls):
        chosen = order[i][taken[i]]
        out[i, rep[chosen]] = True
        out[i, partner[chosen]] = True
    out = out.reshape(cls, h, w).to(loss_maps.device)
    return out[0] if squeeze else out


def iou(dfm_a: torch.Tensor, dfm_b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of two sets of DFMs, per class.

    Parameters
    ----------
    dfm_a, dfm_b : Tensor, shape (C, H, W), bool

    Returns
    -------
    Tensor, shape (C,), float64; 1.0 where both maps are empty (identical sets).

    >>> a = torch.tensor([[[True, True], [False, False]]])
    >>> iou(a, torch.tensor([[[True, False], [True, False]]])).tolist()
    [0.3333333333333333]
    """
    if dfm_a.shape != dfm_b.shape:
        raise ValueError(f"DFM shapes differ: {tuple(dfm_a.shape)} vs {tuple(dfm_b.shape)}")
    a, b = dfm_a.bool().flatten(-2), dfm_b.bool().flatten(-2)
    inter = (a & b).sum(-1).double()
    union = (a | b).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
