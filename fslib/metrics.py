"""ADCS, the paper's class-wise frequency statistic, and what the book derives from it.

ADCS (Averaged Difference of Class Spectra, Wang et al. 2023) marks, for every class ``c``
and frequency ``(u, v)``, against how many other classes the class's mean amplitude is
larger:

``E_c(u, v)`` = mean over the images of class ``c`` of ``|F_x(u, v)|`` (centred spectrum),
``ADCS_c(u, v) = sum_{j != c} sign(E_c(u, v) - E_j(u, v))``, in ``[-(C-1), C-1]``.

Two variants (``variant=``):

``"paper"`` (default)
    The formula above. RGB images: ``E_c`` averages the amplitude spectra of the three
    channels (``|F|`` per channel, then the channel mean); classes are compared through
    their **mean** spectra, so unequal class sizes do not matter. ``sign(0) = 0``.
``"official"``
    A transcription of the official script (``Evaluation/compute_ADCS.py``): per-channel
    **sums** of ``|F|`` over the images of each class; for every pair ``(c, j)``,
    *including* ``j = c``, the RGB difference ``E_c - E_j`` is converted to grey with the
    weights ``(0.2989, 0.5870, 0.1140)``, then ``> 0`` counts ``+1`` and ``<= 0`` counts
    ``-1``. With no ties this is the paper's map (grey-weighted) minus 1, in
    ``[-C, C-2]``. Sums equal means times a common factor only when classes have the same
    size (the paper's balanced test sets); on unbalanced sets the bigger class wins more
    comparisons. The script also resizes ImageNet images to 224x224 and normalises them;
    here the maps are computed on the images as given (``normalize=`` applies a dataset's
    statistics when wanted).

Everything streams over batches through :func:`fslib.spectral.amplitude_batches` (one FFT
loop for the whole library).

How stable an ADCS map is under resampling the images is :mod:`fslib.stability`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from fslib import spectral
from fslib.device import resolve_device

VARIANTS = ("paper", "official")


GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # official script's rgb2gray (ITU-R BT.601 luma)


Normalize = tuple[Sequence[float], Sequence[float]] | None


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown ADCS variant {variant!r}; valid: {', '.join(VARIANTS)}")


def _check_inputs(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if num_classes < 2:
        raise ValueError(f"ADCS compares classes: num_classes must be >= 2, got {num_classes}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got [{int(labels.min())}, {int(labels.max())}]")


def adcs_range(num_classes: int, variant: str = "paper") -> tuple[int, int]:
    """Smallest and largest possible ADCS value: ``(-(C-1), C-1)`` or ``(-C, C-2)``.

    >>> adcs_range(10), adcs_range(10, "official")
    ((-9, 9), (-10, 8))
    """
    _check_variant(variant)
    return (-(num_classes - 1), num_classes - 1) if variant == "paper" else (-num_classes, num_classes - 2)


def class_mean_spectra(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    batch_size: int = 2048,
    normalize: Normalize = None,
    device: str | torch.device = "auto",
) -> torch.Tensor:
    """``E_c``: the mean amplitude spectrum of every class (centred).

    RGB is handled by averaging the per-channel amplitude spectra: ``|F|`` of each channel,
    then the mean over channels, then the mean over the images of the class. Streams over
    batches (:func:`fslib.spectral.class_average_spectra`).

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8 (read as ``x / 255``) or float
    labels : Tensor, shape (N,), int in ``[0, num_classes)``
    num_classes : int
    batch_size : int
    normalize : (mean, std) or None
        Per-channel ``(x - mean) / std`` before the FFT.
    device : str or device, where the FFTs run (``"auto"``: CUDA when present)

    Returns
    -------
    Tensor, shape (num_classes, H, W), float64, on the CPU.

    >>> x = torch.zeros(2, 3, 4, 4); x[1] = 1.0
    >>> class_mean_spectra(x, torch.tensor([0, 1]), 2)[:, 2, 2].tolist()   # DC = sum of pixels
    [0.0, 16.0]
    """
    _check_inputs(images, labels, num_classes)
    return spectral.class_average_spectra(
        images, labels, num_classes, batch_size=batch_size, normalize=normalize, device=resolve_device(device)
    )


def _grey(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Official ``rgb2gray`` along ``dim`` (which must have length 3)."""
    if x.shape[dim] != 3:
        raise ValueError(f"the official variant needs RGB (3 channels), got {x.shape[dim]}")
    w = torch.tensor(GREY_WEIGHTS, dtype=x.dtype, device=x.device)
    shape = [1] * x.ndim
    shape[dim] = 3
    return (x * w.reshape(shape)).sum(dim=dim)


def adcs_from_spectra(spectra: torch.Tensor, variant: str = "paper") -> torch.Tensor:
    """ADCS maps from class spectra.

    Parameters
    ----------
    spectra : Tensor
        ``"paper"``: shape (C, H, W), the class mean spectra ``E_c``.
        ``"official"``: shape (C, 3, H, W), per-channel class spectra (sums in the script).
        A leading batch axis is allowed: (B, C, H, W) or (B, C, 3, H, W).
    variant : {"paper", "official"}

    Returns
    -------
    Tensor, int64, shape (C, H, W) (or (B, C, H, W)).

    >>> E = torch.tensor([1.0, 3.0, 2.0]).reshape(3, 1, 1)
    >>> adcs_from_spectra(E)[:, 0, 0].tolist()
    [-2, 2, 0]
    """
    _check_variant(variant)
    if variant == "paper":
        if spectra.ndim not in (3, 4):
            raise ValueError(f"paper variant needs spectra of shape (C, H, W), got {tuple(spectra.shape)}")
        cdim = spectra.ndim - 3
        diff = spectra.unsqueeze(cdim + 1) - spectra.unsqueeze(cdim)  # [..., c, j] = E_c - E_j
        return torch.sign(diff).sum(dim=cdim + 1).to(torch.int64)  # j = c adds sign(0) = 0
    if spectra.ndim not in (4, 5):
        raise ValueError(f"official variant needs per-channel spectra (C, 3, H, W), got {tuple(spectra.shape)}")
    cdim = spectra.ndim - 4
    out = []
    for c in range(spectra.shape[cdim]):  # one class at a time: (C, 3, H, W) differences
        diff = spectra.select(cdim, c).unsqueeze(cdim) - spectra  # E_c - E_j for every j, RGB
        grey = _grey(diff, dim=cdim + 1)
        out.append(torch.where(grey > 0, 1, -1).sum(dim=cdim))
    return torch.stack(out, dim=cdim).to(torch.int64)


def _official_spectra(images, labels, num_classes, batch_size, normalize, device) -> torch.Tensor:
    """Per-channel class **sums** of ``|F|``, float64 (C, 3, H, W), as the script."""
    means = spectral.class_average_spectra(
        images, labels, num_classes, batch_size=batch_size, per_channel=True, normalize=normalize, device=device
    )
    counts = torch.bincount(labels.cpu().long(), minlength=num_classes).to(torch.float64)
    return means * counts[:, None, None, None]


def adcs(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    variant: str = "paper",
    *,
    batch_size: int = 2048,
    normalize: Normalize = None,
    device: str | torch.device = "auto",
) -> torch.Tensor:
    """ADCS map of every class.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8 or float
    labels : Tensor, shape (N,), int in ``[0, num_classes)``
    num_classes : int
    variant : {"paper", "official"}
        ``"paper"``: ``sum_{j != c} sign(E_c - E_j)`` on the channel-averaged class **mean**
        spectra, in ``[-(C-1), C-1]``. ``"official"``: the official script: per-channel
        class **sums**, grey of the RGB difference (0.2989, 0.5870, 0.1140), ``j = c``
        included, ``<= 0`` counts -1; in ``[-C, C-2]``. See the module docstring.
    batch_size : int
    normalize : (mean, std) or None
        Per-channel ``(x - mean) / std`` before the FFT (the script normalises its inputs).
    device : str or device, where the FFTs run (``"auto"``: CUDA when present)

    Returns
    -------
    Tensor, shape (num_classes, H, W), int64, centred layout, on the CPU.
    """
    _check_variant(variant)
    _check_inputs(images, labels, num_classes)
    if variant == "paper":
        spectra = class_mean_spectra(images, labels, num_classes, batch_size=batch_size, normalize=normalize, device=device)
        return adcs_from_spectra(spectra)
    spectra = _official_spectra(images, labels, num_classes, batch_size, normalize, resolve_device(device))
    return adcs_from_spectra(spectra, "official")


def adcs_radial_profile(adcs_map: torch.Tensor) -> torch.Tensor:
    """Mean ADCS of every class at every integer radius.

    Parameters
    ----------
    adcs_map : Tensor, shape (C, H, W)

    Returns
    -------
    Tensor, shape (C, R), float64: entry ``[c, k]`` averages the positions whose distance
    from DC rounds to ``k`` (:func:`fslib.spectral.radial_profile`).
    """
    return spectral.radial_profile(adcs_map.to(torch.float64))


def adcs_band_means(adcs_map: torch.Tensor, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean ADCS of every class inside each band B1..B4.

    Parameters
    ----------
    adcs_map : Tensor, shape (C, H, W)
    class_names : names of the C class_names (default ``"0"``, ``"1"``, ...)

    Returns
    -------
    DataFrame indexed by class with one column per band.
    """
    c, h, w = adcs_map.shape
    masks = spectral.band_masks(h, w).to(torch.float64)  # (4, H, W)
    means = torch.einsum("chw,bhw->cb", adcs_map.to(torch.float64), masks) / masks.sum(dim=(1, 2))
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    return pd.DataFrame(means.numpy(), index=pd.Index(names, name="class"), columns=list(spectral.BANDS))


def adcs_distinctiveness(
    adcs_map: torch.Tensor,
    class_names: Sequence[str] | None = None,
    variant: str = "paper",
) -> pd.DataFrame:
    """How distinctive each class's spectrum is, one row per class, ranked.

    Columns
    -------
    class : name
    mean_adcs : mean ADCS over all positions divided by ``C - 1`` (in [-1, 1] for the paper
        variant; for the official one the map is first shifted by +1 so both read alike)
    top_fraction : fraction of positions where the class beats every other class
        (``ADCS = C - 1``; official ``C - 2``)
    bottom_fraction : fraction of positions where every other class beats it
    positive_fraction : fraction of positions with ADCS > 0 (paper-variant scale)
    top_band : band holding most of the class's top positions ("-" when it has none)
    top_band_share : share of the class's top positions inside ``top_band`` (1 = all of
        them in one band; 0 when it has none)
    rank : 1 = most distinctive, by ``top_fraction`` then ``mean_adcs``

    ``top_fraction`` measures how much of the spectrum a class owns, not how simple its
    content is; ``top_band_share`` and ``bottom_fraction`` tell a band-limited class (owns
    one band, loses everywhere else) from a broadband one.

    Parameters
    ----------
    adcs_map : Tensor, shape (C, H, W), int
    class_names : names of the C class_names
    variant : {"paper", "official"}, the variant that produced ``adcs_map``
    """
    _check_variant(variant)
    c, h, w = adcs_map.shape
    paper_scale = adcs_map.to(torch.float64) + (1.0 if variant == "official" else 0.0)
    top = paper_scale == c - 1
    band_of_top = torch.einsum("chw,bhw->cb", top.to(torch.float64), spectral.band_masks(h, w).to(torch.float64))
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} ADCS maps")
    table = pd.DataFrame(
        {
            "class": names,
            "mean_adcs": (paper_scale.mean(dim=(1, 2)) / (c - 1)).numpy(),
            "top_fraction": top.to(torch.float64).mean(dim=(1, 2)).numpy(),
            "bottom_fraction": (paper_scale == -(c - 1)).to(torch.float64).mean(dim=(1, 2)).numpy(),
            "positive_fraction": (paper_scale > 0).to(torch.float64).mean(dim=(1, 2)).numpy(),
            "top_band": [spectral.BANDS[int(i)] if t > 0 else "-" for i, t in zip(band_of_top.argmax(1), band_of_top.sum(1))],
            "top_band_share": (band_of_top.max(1).values / band_of_top.sum(1).clamp_min(1)).numpy(),
        }
    )
    table = table.sort_values(["top_fraction", "mean_adcs"], ascending=False, kind="stable")
    table["rank"] = np.arange(1, c + 1)
    return table.reset_index(drop=True)


def adcs_inside(
    adcs_map: torch.Tensor,
    masks: torch.Tensor,
    class_names: Sequence[str] | None = None,
    variant: str = "paper",
) -> pd.DataFrame:
    """ADCS of each class inside its own set of positions (a planted region, a DFM, ...).

    Parameters
    ----------
    adcs_map : Tensor, shape (C, H, W), int
    masks : Tensor, shape (C, H, W) or (H, W), bool; row ``c`` selects class ``c``'s positions
    class_names : names of the C class_names
    variant : {"paper", "official"}, the variant that produced ``adcs_map``

    Returns
    -------
    DataFrame indexed by class: ``n_positions``, ``mean_adcs`` (raw values of the map;
    NaN for an empty mask), ``top_fraction`` (share of the positions where the class beats
    every other class).
    """
    c = adcs_map.shape[0]
    m = masks.to(torch.bool).expand_as(adcs_map)
    top = adcs_map == adcs_range(c, variant)[1]
    n = m.sum(dim=(1, 2)).to(torch.float64)
    with np.errstate(invalid="ignore"):
        mean = ((adcs_map * m).sum(dim=(1, 2)) / n).numpy()
        top_fraction = ((top & m).sum(dim=(1, 2)) / n).numpy()
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    return pd.DataFrame(
        {"n_positions": n.to(torch.int64).numpy(), "mean_adcs": mean, "top_fraction": top_fraction},
        index=pd.Index(names, name="class"),
    )


def adcs_global_order(adcs_map: torch.Tensor, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """How far the maps are explained by one global ordering of the class_names.

    If every class's spectrum were one shared spectrum times a class factor (overall
    contrast), the class_names would keep the same order at every frequency and ADCS would be
    ``2 r_c - (C - 1)`` everywhere, with ``r_c`` the class's rank. Here ``r_c`` is the rank
    of the class's mean ADCS (ties broken by class index), and the table reports the share
    of positions where the map equals (``match``) or is within one swap of (``within_one``,
    ``|difference| <= 2``) that constant. Works for either variant: the official map is a
    constant shift of the same comparisons.

    Parameters
    ----------
    adcs_map : Tensor, shape (C, H, W), int
    class_names : names of the C class_names

    Returns
    -------
    DataFrame indexed by class: ``global_value`` (on the map's own scale), ``match``,
    ``within_one``.
    """
    c = adcs_map.shape[0]
    mean = adcs_map.to(torch.float64).mean(dim=(1, 2))
    rank = torch.argsort(torch.argsort(mean, stable=True), stable=True)  # 0 = lowest mean
    shift = torch.round(mean.mean()).to(torch.int64)  # 0 for the paper map, -1 for the official one
    value = 2 * rank - (c - 1) + shift
    diff = (adcs_map - value[:, None, None]).abs()
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    return pd.DataFrame(
        {
            "global_value": value.numpy(),
            "match": (diff == 0).to(torch.float64).mean(dim=(1, 2)).numpy(),
            "within_one": (diff <= 2).to(torch.float64).mean(dim=(1, 2)).numpy(),
        },
        index=pd.Index(names, name="class"),
    )


def adcs_positive_mask(adcs_map: torch.Tensor, level: int | None = None, variant: str = "paper") -> torch.Tensor:
    """Positions where a class's ADCS reaches ``level``: what chapter 4 overlaps with DFMs.

    Parameters
    ----------
    adcs_map : Tensor, shape (C, H, W), int
    level : int or None
        Keep ``ADCS >= level``. ``None`` = the maximum possible value (the class beats
        every other class: ``C - 1``, official ``C - 2``).
    variant : {"paper", "official"}

    Returns
    -------
    Tensor, shape (C, H, W), bool.

    >>> a = torch.tensor([[[2, 0]], [[-2, 0]], [[0, 0]]])
    >>> adcs_positive_mask(a)[:, 0].tolist()
    [[True, False], [False, False], [False, False]]
    """
    lo, hi = adcs_range(adcs_map.shape[0], variant)
    level = hi if level is None else level
    if not lo <= level <= hi:
        raise ValueError(f"level {level} outside the {variant} ADCS range [{lo}, {hi}]")
    return adcs_map >= level
