"""Fourier conventions, frequency bands and frequency filtering.

Conventions (used by every module of fslib and every chapter of the book)
-------------------------------------------------------------------------
* Images are tensors of shape ``(N, C, H, W)``. ``uint8`` images are read as ``x / 255``.
* Spectra are **centred**: ``fftshift(fft2(x))`` over the last two axes, so the DC term sits
  at ``(H // 2, W // 2)``. Centred index ``k`` on an axis of length ``n`` is the frequency
  ``k - n // 2`` (cycles per image).
* The conjugate partner of centred index ``k`` is ``(2 * (n // 2) - k) % n``. For the even
  sizes the book uses this is ``(n - k) % n``; for odd sizes it is ``n - 1 - k``. A real
  image has ``X[partner] == conj(X[k])``.
* The radius of a position is its Euclidean distance from DC in frequency bins.
* Bands follow the paper at 32x32: B1 = [0, 4), B2 = [4, 8), B3 = [8, 12), B4 = [12, inf).
  For other sizes the edges scale with the shorter side: ``edge_k = k * min(H, W) / 8``
  (quarters of the Nyquist radius ``min(H, W) / 2``), e.g. 28, 56, 84 at 224x224.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator, Sequence

import torch

BANDS = ("B1", "B2", "B3", "B4")
BAND_PAIRS: tuple[tuple[int, int], ...] = tuple(itertools.combinations((1, 2, 3, 4), 2))
"""The six pairs of bands a band-stop test removes, (1, 2) ... (3, 4)."""
BAND_SET_KINDS = ("bandpass", "bandstop")


def band_set_name(kind: str, bands: Sequence[int]) -> str:
    """The one spelling of a band-pass or band-stop set: ``"bandstop:1,2"``, ``"bandpass:3"``.

    Used as the name of a tracking set (``TrainConfig.track_sets``), of a test set and of a
    table row; :func:`band_set_label` turns it into display text.

    >>> band_set_name("bandstop", (2, 1)), band_set_name("bandpass", [3])
    ('bandstop:1,2', 'bandpass:3')
    """
    if kind not in BAND_SET_KINDS:
        raise ValueError(f"unknown band-set kind {kind!r}; valid: {', '.join(BAND_SET_KINDS)}")
    key = tuple(sorted(int(b) for b in bands))
    if not key or any(b not in (1, 2, 3, 4) for b in key) or len(set(key)) != len(key):
        raise ValueError(f"bands must be distinct values in 1..4, got {list(bands)}")
    return f"{kind}:{','.join(map(str, key))}"


def parse_band_set(name: str) -> tuple[str, tuple[int, ...]]:
    """``"bandstop:1,2"`` -> ``("bandstop", (1, 2))``; the inverse of :func:`band_set_name`.

    >>> parse_band_set("bandpass:4")
    ('bandpass', (4,))
    """
    valid = "'bandpass:K[,K]' or 'bandstop:J[,K]' with distinct bands in 1..4"
    kind, _, rest = str(name).partition(":")
    try:
        bands = tuple(int(b) for b in rest.split(","))
        return kind, tuple(int(b) for b in band_set_name(kind, bands).partition(":")[2].split(","))
    except ValueError:
        raise ValueError(f"unknown band set {name!r}; valid: {valid}") from None


def band_set_label(name: str) -> str:
    """Display text of a band set: ``"bandstop:1,2"`` -> ``"B1+B2 removed"``, ``"bandpass:3"`` ->
    ``"B3 only"``; any other name (``"test"``, ``"none"``) is returned as it is.

    >>> band_set_label("bandstop:1,2"), band_set_label("bandpass:3"), band_set_label("test")
    ('B1+B2 removed', 'B3 only', 'test')
    """
    if ":" not in str(name):
        return str(name)
    kind, bands = parse_band_set(name)
    return "+".join(f"B{b}" for b in bands) + (" only" if kind == "bandpass" else " removed")


# --------------------------------------------------------------------------- transforms
def as_float(images: torch.Tensor) -> torch.Tensor:
    """Floating view of ``images``: ``uint8`` becomes ``float32`` in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)  # in place on the fresh copy: one pass fewer
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    return images


def fft_centred(images: torch.Tensor) -> torch.Tensor:
    """Centred 2-D spectrum over the last two axes.

    >>> x = torch.ones(1, 1, 4, 4)
    >>> fft_centred(x)[0, 0, 2, 2].real.item()   # all energy at DC = (H//2, W//2)
    16.0
    """
    return torch.fft.fftshift(torch.fft.fft2(as_float(images)), dim=(-2, -1))


def ifft_centred(spectrum: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft_centred`, real part (input must be conjugate-symmetric)."""
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real


def amplitude_spectrum(images: torch.Tensor) -> torch.Tensor:
    """``|fft_centred(images)|``, same shape as ``images`` (per channel)."""
    return fft_centred(images).abs()


# --------------------------------------------------------------------------- geometry
def conjugate_index(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Centred index of the conjugate partner of every centred index on an axis of length n.

    >>> conjugate_index(4).tolist()
    [0, 3, 2, 1]
    >>> conjugate_index(5).tolist()
    [4, 3, 2, 1, 0]
    """
    k = torch.arange(n, device=device)
    return (2 * (n // 2) - k) % n


def conjugate_mirror(maps: torch.Tensor) -> torch.Tensor:
    """``out[..., r, s] = maps[..., partner(r), partner(s)]`` in the centred layout."""
    h, w = maps.shape[-2:]
    rows = conjugate_index(h, maps.device)
    cols = conjugate_index(w, maps.device)
    return maps.index_select(-2, rows).index_select(-1, cols)


def radius_grid(h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Distance from DC of every centred position, float32 ``(H, W)``.

    >>> radius_grid(4, 4)[2, 2].item(), radius_grid(4, 4)[0, 2].item()
    (0.0, 2.0)
    """
    u = torch.arange(h, device=device, dtype=torch.float32) - h // 2
    v = torch.arange(w, device=device, dtype=torch.float32) - w // 2
    return torch.sqrt(u[:, None] ** 2 + v[None, :] ** 2)


def band_edges(h: int, w: int) -> tuple[float, float, float]:
    """Inner edges of B2, B3, B4: ``(4, 8, 12)`` at 32x32, scaled by ``min(H, W) / 32``."""
    step = min(h, w) / 8.0
    return (step, 2 * step, 3 * step)


def _band_index(band: int | str) -> int:
    if isinstance(band, str):
        key = band.upper()
        if key not in BANDS:
            raise ValueError(f"unknown band {band!r}; valid: {', '.join(BANDS)} or 1..4")
        return BANDS.index(key)
    if band not in (1, 2, 3, 4):
        raise ValueError(f"unknown band {band!r}; valid: {', '.join(BANDS)} or 1..4")
    return band - 1


def band_mask(h: int, w: int, band: int | str, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool ``(H, W)`` mask of band ``band`` (1..4 or ``"B1"``..``"B4"``).

    >>> int(band_mask(32, 32, 1).sum())   # positions with radius < 4
    45
    """
    i = _band_index(band)
    r = radius_grid(h, w, device)
    edges = (0.0, *band_edges(h, w), math.inf)
    return (r >= edges[i]) & (r < edges[i + 1])


def band_masks(h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool ``(4, H, W)``: the four band masks, which partition the spectrum."""
    return torch.stack([band_mask(h, w, b, device) for b in (1, 2, 3, 4)])


def bands_mask(h: int, w: int, bands: Sequence[int | str], device=None) -> torch.Tensor:
    """Union of several bands, bool ``(H, W)``."""
    out = torch.zeros(h, w, dtype=torch.bool, device=device)
    for b in bands:
        out |= band_mask(h, w, b, device)
    return out


def conjugate_pairs(h: int, w: int) -> torch.Tensor:
    """Unique conjugate pairs of an ``H x W`` centred spectrum.

    Returns
    -------
    pairs : Tensor, shape (P, 4), int64
        Rows ``(r, s, r', s')``: a representative position and its partner. Every position
        occurs in exactly one row; self-conjugate positions (DC and, for even sizes, the
        Nyquist points) have ``(r', s') == (r, s)``. Rows are in row-major order of the
        representative, which is the smaller flat index of the two.

    >>> conjugate_pairs(32, 32).shape[0]   # (1024 - 4) / 2 + 4
    514
    """
    rows = conjugate_index(h)[:, None].expand(h, w)
    cols = conjugate_index(w)[None, :].expand(h, w)
    flat = torch.arange(h * w).reshape(h, w)
    partner_flat = rows * w + cols
    keep = flat <= partner_flat
    r, s = torch.nonzero(keep, as_tuple=True)
    return torch.stack([r, s, rows[r, s], cols[r, s]], dim=1)


def symmetrize_mask(mask: torch.Tensor) -> torch.Tensor:
    """Make a 0/1 mask conjugate-symmetric by keeping a position if it or its partner is kept."""
    m = mask.to(torch.bool)
    return m | conjugate_mirror(m)


# --------------------------------------------------------------------------- filtering
def filter_frequencies(images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Keep only the frequencies of a 0/1 mask; always returns real images.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8 or float
    keep : Tensor, shape (H, W) or (N, H, W), 0/1 or bool, centred layout
        Made conjugate-symmetric (a position is kept when it or its partner is), so the
        result is real.

    Returns
    -------
    Tensor, shape (N, C, H, W), the floating dtype of ``images`` (float32 for uint8),
    on the device of ``images``. Values are not clipped.

    >>> x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    >>> torch.allclose(filter_frequencies(x, torch.ones(8, 8)), x)
    True
    """
    x = as_float(images)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(x.shape)}")
    n, _, h, w = x.shape
    if keep.shape[-2:] != (h, w) or keep.ndim not in (2, 3) or (keep.ndim == 3 and keep.shape[0] != n):
        raise ValueError(f"keep must have shape ({h}, {w}) or ({n}, {h}, {w}), got {tuple(keep.shape)}")
    mask = symmetrize_mask(keep.to(x.device)).to(x.dtype)
    mask = mask[:, None] if mask.ndim == 3 else mask
    return ifft_centred(fft_centred(x) * mask).to(x.dtype)


def band_pass(images: torch.Tensor, bands: Sequence[int | str]) -> torch.Tensor:
    """Keep only the given bands (DC belongs to B1)."""
    h, w = images.shape[-2:]
    return filter_frequencies(images, bands_mask(h, w, bands, images.device))


def band_stop(images: torch.Tensor, bands: Sequence[int | str]) -> torch.Tensor:
    """Remove the given bands. The DC term is always kept, so mean brightness survives."""
    h, w = images.shape[-2:]
    keep = ~bands_mask(h, w, bands, images.device)
    keep[h // 2, w // 2] = True
    return filter_frequencies(images, keep)


# --------------------------------------------------------------------------- statistics
def amplitude_batches(
    images: torch.Tensor,
    *,
    batch_size: int = 2048,
    per_channel: bool = False,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    device: torch.device | str | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Stream the amplitude spectra of ``images`` batch by batch.

    The one FFT loop behind :func:`class_average_spectra` and the per-image statistics of
    :mod:`fslib.metrics`, so large sets never sit in memory as complex spectra.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8 or float
    batch_size : int
    per_channel : bool
        Keep the channel axis (``(B, C, H, W)``) instead of averaging the channels'
        amplitude spectra (``(B, H, W)``).
    normalize : (mean, std) or None
        Per-channel statistics applied as ``(x - mean) / std`` to the ``[0, 1]`` images
        before the FFT (what a model sees); ``None`` leaves the images as they are.
    device : device or None
        Where the FFTs run (each batch is moved there); ``None`` = the images' device.

    Yields
    ------
    start : int, index of the batch's first image
    amplitude : Tensor, shape (B, H, W) or (B, C, H, W), float (float32 for uint8), on ``device``

    >>> x = torch.ones(5, 3, 4, 4)
    >>> [(s, tuple(a.shape)) for s, a in amplitude_batches(x, batch_size=2)]
    [(0, (2, 4, 4)), (2, (2, 4, 4)), (4, (1, 4, 4))]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = images.device if device is None else torch.device(device)
    if normalize is not None:
        mean, std = (torch.as_tensor(v, dtype=torch.float32, device=device)[:, None, None] for v in normalize)
        if mean.shape[0] != images.shape[1] or std.shape[0] != images.shape[1]:
            raise ValueError(f"normalize needs {images.shape[1]} means and stds, got {tuple(normalize)}")
    for start in range(0, images.shape[0], batch_size):
        x = as_float(images[start : start + batch_size].to(device))
        if normalize is not None:
            x = (x - mean.to(x.dtype)) / std.to(x.dtype)
        # |.| and the channel mean commute with fftshift (a permutation), so shift the real
        # result rather than the complex spectrum: the same numbers, about a third faster.
        amp = torch.fft.fft2(x).abs()
        yield start, torch.fft.fftshift(amp if per_channel else amp.mean(dim=1), dim=(-2, -1))


def class_average_spectra(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    batch_size: int = 2048,
    per_channel: bool = False,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Mean amplitude spectrum per class, averaged over images and colour channels.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8 or float
    labels : Tensor, shape (N,), int
    num_classes : int
    batch_size : int
    per_channel : bool
        Keep the colour channels apart: the result is ``(num_classes, C, H, W)``.
    normalize : (mean, std) or None
        Per-channel ``(x - mean) / std`` before the FFT (see :func:`amplitude_batches`).
    device : device or None
        Where the FFTs run; ``None`` = the images' device. The result is always on the CPU.

    Returns
    -------
    Tensor, shape (num_classes, H, W) (or (num_classes, C, H, W) with ``per_channel``),
    float64, centred layout. Streams over batches so large datasets (CIFAR-10's 50,000
    images) never sit in memory as complex spectra.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    h, w = images.shape[-2:]
    shape = (num_classes, images.shape[1], h, w) if per_channel else (num_classes, h, w)
    sums = torch.zeros(shape, dtype=torch.float64)
    counts = torch.bincount(labels.cpu().long(), minlength=num_classes)
    if counts.numel() > num_classes:
        raise ValueError(f"labels contain {counts.numel() - 1} >= num_classes={num_classes}")
    batches = amplitude_batches(images, batch_size=batch_size, per_channel=per_channel, normalize=normalize, device=device)
    for start, amp in batches:
        lab = labels[start : start + amp.shape[0]].cpu().long()
        sums.index_add_(0, lab, amp.to(torch.float64).cpu())
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"classes {empty} have no images")
    return sums / counts.to(torch.float64).reshape(-1, *[1] * (len(shape) - 1))


def energy_fraction(
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    exclude_dc: bool = True,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Share of each image's spectral energy that lies inside each mask.

    Energy is ``|F(u, v)|^2`` of the centred spectrum summed over colour channels, computed
    in float64 (uint8 images read as ``x / 255``). The one "energy inside a set of
    frequencies" of the library: per band (:func:`band_energy_fraction`), inside a class's DFM
    (whether its shortcut frequencies are *present* in an image, whatever the model does with
    them), inside planted positions.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8 or float
    masks : Tensor, shape (K, H, W), bool or 0/1
    exclude_dc : bool
        Leave the DC term out of numerator and denominator (mean brightness is not texture
        or shape, and would dominate the total).
    batch_size : int
        Images per FFT (complex128 spectra are large).

    Returns
    -------
    Tensor, shape (N, K), float64 in [0, 1] (0 for an image without non-DC energy).

    >>> x = torch.zeros(1, 1, 4, 4); x[0, 0, :, ::2] = 1.0   # energy at DC and (u, v) = (0, +-2)
    >>> m = torch.zeros(1, 4, 4, dtype=torch.bool); m[0, 2, 0] = True
    >>> energy_fraction(x, m).tolist()
    [[1.0]]
    """
    if images.ndim != 4 or masks.ndim != 3 or masks.shape[1:] != images.shape[2:]:
        raise ValueError(f"need images (N, C, H, W) and masks (K, H, W) with the same H, W, got "
                         f"{tuple(images.shape)} and {tuple(masks.shape)}")
    h, w = images.shape[-2:]
    weights = masks.to(torch.float64).cpu()
    if exclude_dc:
        weights = weights.clone()
        weights[:, h // 2, w // 2] = 0.0
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        x = x.to(torch.float64) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float64)
        power = (fft_centred(x).abs() ** 2).sum(1).cpu()  # (B, H, W)
        if exclude_dc:
            power[:, h // 2, w // 2] = 0.0
        total = power.flatten(1).sum(1, keepdim=True)
        inside = torch.einsum("bhw,khw->bk", power, weights)
        out.append(torch.where(total > 0, inside / total.clamp_min(1e-300), torch.zeros_like(inside)))
    return torch.cat(out) if out else torch.zeros(0, masks.shape[0], dtype=torch.float64)


def band_energy_fraction(images: torch.Tensor, *, exclude_dc: bool = True) -> torch.Tensor:
    """Fraction of each image's spectral energy in each band: :func:`energy_fraction` of the
    four :func:`band_masks`.

    Returns
    -------
    Tensor, shape (N, 4), float64; rows sum to 1 (0 for a constant image with exclude_dc).
    """
    h, w = images.shape[-2:]
    return energy_fraction(images, band_masks(h, w), exclude_dc=exclude_dc)


def radial_bins(h: int, w: int, device=None) -> torch.Tensor:
    """Integer radius (rounded) of every centred position, int64 ``(H, W)``."""
    return torch.round(radius_grid(h, w, device)).long()


def radial_profile(maps: torch.Tensor) -> torch.Tensor:
    """Mean of ``maps`` over positions with the same rounded radius.

    Parameters
    ----------
    maps : Tensor, shape (..., H, W)

    Returns
    -------
    Tensor, shape (..., R) with ``R = max rounded radius + 1``; entry ``k`` averages the
    positions whose radius rounds to ``k``.
    """
    h, w = maps.shape[-2:]
    bins = radial_bins(h, w, maps.device).flatten()
    nbins = int(bins.max()) + 1
    flat = maps.reshape(-1, h * w).to(torch.float64)
    sums = torch.zeros(flat.shape[0], nbins, dtype=torch.float64, device=maps.device)
    sums.index_add_(1, bins, flat)
    counts = torch.bincount(bins, minlength=nbins).to(torch.float64)
    return (sums / counts).reshape(*maps.shape[:-2], nbins)
