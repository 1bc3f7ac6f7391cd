"""Stability of maps estimated from images: does the map change when the images do?

A class-wise map computed from a finite set of images (an ADCS map, a DFM) is only a property
of the class if another draw of images gives the same map. :func:`adcs_stability` resamples
each class's images with replacement and reports how often the sign of ADCS agrees with the
reference map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from fslib import spectral
from fslib.device import resolve_device
from fslib.metrics import Normalize, _check_inputs, _check_variant, _grey


@dataclass(frozen=True)
class ADCSStability:
    """Bootstrap stability of the sign of ADCS.

    Attributes
    ----------
    reference : Tensor, shape (C, H, W), int64, ADCS of the (sub)set that was resampled
    agreement : Tensor, shape (C, H, W), float64, fraction of resamples whose
        ``sign(ADCS)`` equals ``sign(reference)`` at each position
    table : DataFrame, one row per class: ``agree_all`` (fraction of positions agreeing in
        every resample), ``agree_95`` (in at least 95 % of them), ``mean_agreement``,
        ``n_images`` (images of the class that were resampled)
    n_boot : int
    """

    reference: torch.Tensor
    agreement: torch.Tensor
    table: pd.DataFrame
    n_boot: int


def _per_image_amplitudes(images: torch.Tensor, variant: str, batch_size: int, normalize: Normalize,
                          device: torch.device) -> torch.Tensor:
    """(N, H*W) float64: channel-mean ``|F|`` (paper) or grey-weighted ``|F|`` (official).

    Grey weighting of the per-image amplitudes equals the script's grey of class-sum
    differences because ``rgb2gray`` is linear (exact up to rounding).
    """
    n, _, h, w = images.shape
    out = torch.empty(n, h * w, dtype=torch.float64)
    per_channel = variant == "official"
    batches = spectral.amplitude_batches(images, batch_size=batch_size, per_channel=per_channel,
                                         normalize=normalize, device=device)
    for start, amp in batches:
        amp = _grey(amp.to(torch.float64), dim=1) if per_channel else amp.to(torch.float64)
        out[start : start + amp.shape[0]] = amp.reshape(amp.shape[0], -1).cpu()
    return out


def adcs_stability(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    variant: str = "paper",
    *,
    n_boot: int = 50,
    seed: int = 0,
    n_stability: int | None = None,
    class_names: Sequence[str] | None = None,
    batch_size: int = 2048,
    normalize: Normalize = None,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> ADCSStability:
    """How stable the sign of ADCS is under bootstrap resampling of the images.

    Within each class the images are resampled with replacement ``n_boot`` times (seeded);
    each resample's class spectrum is ``E_c^b = w_b @ A_c / n_c`` with ``w_b`` the
    multinomial counts and ``A_c`` the per-image amplitudes, so no FFT is recomputed.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8 or float
    labels : Tensor, shape (N,), int
    num_classes : int
    variant : {"paper", "official"}
    n_boot : int, number of bootstrap resamples
    seed : int, seeds the subset and the resamples
    n_stability : int or None
        At most this many images per class (a seeded random subset) are kept and resampled,
        to bound memory (``n_stability * H * W * 8`` bytes per class); ``None`` keeps all.
        The reference map is then the subset's ADCS.
    class_names : names for the table
    batch_size : int, FFT batch size
    normalize : (mean, std) or None, as :func:`adcs`
    device : str or device, where the FFTs run (the resampling runs on the CPU)
    progress : bool, show a progress bar over class_names

    Returns
    -------
    ADCSStability
    """
    _check_variant(variant)
    _check_inputs(images, labels, num_classes)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if n_stability is not None and n_stability < 1:
        raise ValueError(f"n_stability must be >= 1 or None, got {n_stability}")
    h, w = images.shape[-2:]
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    labels_cpu = labels.cpu().long()
    ref_spectra = torch.empty(num_classes, h * w, dtype=torch.float64)
    boot_spectra = torch.empty(n_boot, num_classes, h * w, dtype=torch.float64)
    sizes = []
    for c in tqdm(range(num_classes), desc="bootstrap ADCS", disable=not progress):
        idx = (labels_cpu == c).nonzero().flatten()
        if idx.numel() == 0:
            raise ValueError(f"class {c} has no images")
        if n_stability is not None and idx.numel() > n_stability:
            idx = idx[torch.randperm(idx.numel(), generator=gen)[:n_stability]].sort().values
        amps = _per_image_amplitudes(images[idx.to(images.device)], variant, batch_size, normalize, dev)  # (n_c, P)
        n_c = amps.shape[0]
        draws = torch.randint(n_c, (n_boot, n_c), generator=gen)
        ones = torch.ones(n_boot, n_c, dtype=torch.float64)
        counts = torch.zeros(n_boot, n_c, dtype=torch.float64).scatter_add_(1, draws, ones)
        # Official sums over a class of unchanged size n_c: a common factor per class, the
        # same for every resample, so the script's sums are the means times n_c.
        scale = 1.0 / n_c if variant == "paper" else 1.0
        ref_spectra[c] = amps.sum(0) * scale
        boot_spectra[:, c] = (counts @ amps) * scale
        sizes.append(n_c)
    reference = _adcs_from_flat(ref_spectra, variant).reshape(num_classes, h, w)
    agree = torch.zeros(num_classes, h * w, dtype=torch.float64)
    ref_sign = torch.sign(reference.reshape(num_classes, -1))
    for b in range(n_boot):  # one resample at a time keeps memory at (C, C, H*W)
        agree += (torch.sign(_adcs_from_flat(boot_spectra[b], variant)) == ref_sign).to(torch.float64)
    agreement = (agree / n_boot).reshape(num_classes, h, w)
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    table = pd.DataFrame(
        {
            "class": names,
            "agree_all": (agreement == 1.0).to(torch.float64).mean(dim=(1, 2)).numpy(),
            "agree_95": (agreement >= 0.95).to(torch.float64).mean(dim=(1, 2)).numpy(),
            "mean_agreement": agreement.mean(dim=(1, 2)).numpy(),
            "n_images": sizes,
        }
    )
    return ADCSStability(reference=reference, agreement=agreement, table=table, n_boot=n_boot)


def _adcs_from_flat(spectra: torch.Tensor, variant: str) -> torch.Tensor:
    """ADCS of grey/channel-mean class spectra (C, P): paper rule, or the official threshold."""
    diff = spectra[:, None] - spectra[None]  # (C, C, P): E_c - E_j
    if variant == "paper":
        return torch.sign(diff).sum(dim=1).to(torch.int64)
    return torch.where(diff > 0, 1, -1).sum(dim=1).to(torch.int64)
