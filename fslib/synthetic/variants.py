"""Band-pass and band-stop versions of the synthetic test sets, and where each class was built
to be distinctive (the planted targets that DFMs are checked against).
"""

from __future__ import annotations

from typing import Sequence

import torch

from fslib import spectral
from fslib.synthetic.generator import SyntheticConfig, class_support, load, special_frequencies

VARIANT_KINDS = ("bandpass", "bandstop")


_BAND_SETS = tuple((b,) for b in (1, 2, 3, 4)) + spectral.BAND_PAIRS


VARIANTS = tuple((kind, bands) for kind in VARIANT_KINDS for bands in _BAND_SETS)


def _check_bands(bands: Sequence[int]) -> tuple[int, ...]:
    try:
        key = tuple(sorted(int(b) for b in bands))
    except (TypeError, ValueError):
        key = None
    if key not in _BAND_SETS:
        valid = ", ".join(str(b) for b in _BAND_SETS)
        raise ValueError(f"unknown bands {bands!r}; valid: one band or a pair of distinct bands: {valid}")
    return key


def _variant_mask(kind: str, bands: tuple[int, ...], size: int) -> torch.Tensor:
    if kind not in VARIANT_KINDS:
        raise ValueError(f"unknown variant kind {kind!r}; valid: {', '.join(VARIANT_KINDS)}")
    selected = spectral.bands_mask(size, size, bands)
    keep = selected if kind == "bandpass" else ~selected
    keep[size // 2, size // 2] = True  # DC always kept: the 0.5 grey level must survive uint8
    return keep


def variant(
    name: str,
    kind: str,
    bands: Sequence[int],
    split: str = "test",
    n: int | None = None,
    seed: int = 0,
    *,
    config: SyntheticConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Band-pass or band-stop version of a split (the paper's band-stop tests).

    Parameters
    ----------
    name, split, n, seed, config : as in :func:`load`
    kind : str, ``"bandpass"`` (keep only ``bands``) or ``"bandstop"`` (remove ``bands``)
    bands : sequence of int, one band or a pair of distinct bands in 1..4, e.g. ``(1,)``, ``(1, 2)``

    Returns
    -------
    images : Tensor, shape (n, 3, 32, 32), uint8
        ``round(255 * clip(filter_frequencies(x, keep), 0, 1))``. The DC term is kept in
        both kinds (the mean grey level; without it half of every pattern would clip).
    labels : Tensor, shape (n,), int64
    """
    key = _check_bands(bands)
    keep = _variant_mask(kind, key, (config or SyntheticConfig()).size)
    images, labels = load(name, split, n, seed, config=config)
    filtered = spectral.filter_frequencies(images.to(torch.float64) / 255.0, keep)
    return torch.round(filtered.clamp(0.0, 1.0) * 255).to(torch.uint8), labels


def planted_targets(name: str) -> torch.Tensor:
    """Where each class of a synthetic set was built to be distinctive, bool ``(4, H, W)``.

    C0: the ``u = v`` diagonal (its thin 45-degree lines); C1: everything outside band k
    (no DC); C2: its special frequencies; C3: band k (no DC). From
    :func:`~fslib.synthetic.special_frequencies` and :func:`~fslib.synthetic.class_support`.
    """
    masks = class_support(name).clone()
    for c, positions in special_frequencies(name).items():
        masks[c] = False
        rows, cols = torch.tensor(positions).T
        masks[c, rows, cols] = True
    return masks
