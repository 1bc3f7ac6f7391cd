"""Texture randomisation without style-transfer weights: the book's stand-in for Stylized-ImageNet.

The paper trains one ResNet18 on Stylized-ImageNet (SIN, Geirhos et al. 2019): every
training image re-rendered by AdaIN style transfer in the texture of a random painting, so
that texture stops predicting the class. AdaIN needs pretrained VGG encoder / decoder weights
that cannot be obtained offline, so the book uses a **substitute** that randomises texture
with no weights at all:

**amplitude swap.** The Fourier phase of an image carries most of its shapes and edges, the
amplitude spectrum most of its texture, contrast and colour statistics (Oppenheim & Lim
1981). Replacing an image's amplitude spectrum by another image's while keeping its own
phase produces an image with the same layout and the other image's "texture energy" per
frequency. The same operation is the core of Amplitude-Phase Recombination (APR, Chen et
al. 2021) and, restricted to low frequencies, of Fourier Domain Adaptation (FDA, Yang &
Soatto 2020).

It is *not* SIN: it swaps power spectra, not local texture statistics of a painting, and the
partner comes from the same training batch (so from CIFAR-10, not from art). It does make
the amplitude of any frequency a poor class cue, which is the property that matters for
frequency shortcuts, and chapter 6 reports it under its own name.
"""

from __future__ import annotations

import torch

__all__ = ["draw_partners", "mix_amplitude", "amplitude_swap", "ampswap_augment", "AMPSWAP_P", "AMPSWAP_ALPHA"]

AMPSWAP_P = 0.5      # share of training images re-textured (SIN trains on stylised images only; see chapter 6)
AMPSWAP_ALPHA = 1.0  # full amplitude swap, as APR


def _check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def draw_partners(n: int, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Which image lends its amplitude spectrum to which.

    Each of the ``n`` images is selected with probability ``p``; every image is given a
    partner by one random cyclic order of the batch, so no selected image is its own partner
    (when ``n >= 2``). Unselected images are their own partner.

    Parameters
    ----------
    n : int
        Batch size.
    generator : torch.Generator
        CPU generator; the only source of randomness.
    p : float
        Probability that an image is changed, in [0, 1].

    Returns
    -------
    Tensor, shape (n,), int64, on the CPU: ``partners[i]`` is the image whose amplitude
    image ``i`` receives (``i`` itself when unchanged).

    >>> g = torch.Generator().manual_seed(0)
    >>> draw_partners(4, g, p=0.0).tolist()
    [0, 1, 2, 3]
    """
    _check_fraction("p", p)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    identity = torch.arange(n)
    # Draw both random tensors unconditionally, so the stream consumed does not depend on p.
    selected = torch.rand(n, generator=generator) < p
    order = torch.randperm(n, generator=generator)
    cyclic = torch.empty(n, dtype=torch.long)
    cyclic[order] = order.roll(-1)  # image order[j] takes from order[j + 1]: no fixed points
    return torch.where(selected, cyclic, identity)


def mix_amplitude(images: torch.Tensor, source: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Give every image (a mix of) the amplitude spectrum of ``source``, keeping its phase.

    Per channel and per frequency: ``|X'| = (1 - alpha) |X| + alpha |S|`` and
    ``angle(X') = angle(X)``, then the inverse FFT. Amplitudes of real images are symmetric
    and phases antisymmetric, so ``X'`` is conjugate-symmetric and the result is real. The
    DC term is an amplitude too, so the mean colour moves toward the source's.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), float
        Not clipped or rescaled here (see :func:`amplitude_swap` for uint8 and clipping).
    source : Tensor, shape (N, C, H, W), float
        Image ``i`` of ``source`` lends its amplitude to image ``i`` of ``images``.
    alpha : float
        Weight of the source amplitude in [0, 1]; 1 is a full swap, 0 the identity.

    Returns
    -------
    Tensor, shape (N, C, H, W), the dtype of ``images``.

    >>> x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    >>> torch.allclose(mix_amplitude(x, x.flip(0), alpha=0.0), x)
    True
    """
    _check_fraction("alpha", alpha)
    if not images.is_floating_point() or not source.is_floating_point():
        raise TypeError(f"images and source must be floating point, got {images.dtype} and {source.dtype}")
    if images.ndim != 4 or source.shape != images.shape:
        raise ValueError(f"images and source must share one (N, C, H, W) shape, "
                         f"got {tuple(images.shape)} and {tuple(source.shape)}")
    spec = torch.fft.fft2(images)
    amp = torch.fft.fft2(source.to(images.dtype)).abs()
    if alpha < 1.0:
        amp = (1.0 - alpha) * spec.abs() + alpha * amp
    # exp(i * angle) via X / |X|; where |X| = 0 the phase is undefined and angle() gives 0.
    phase = torch.polar(torch.ones_like(amp), torch.angle(spec))
    return torch.fft.ifft2(amp * phase).real.to(images.dtype)


def amplitude_swap(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    alpha: float = 1.0,
    p: float = 0.5,
    clip: bool = True,
) -> torch.Tensor:
    """Texture randomisation for a training batch: the book's substitute for SIN.

    A random fraction ``p`` of the batch (each image independently) receives the Fourier
    amplitude spectrum of another image of the same batch (or a mix with weight ``alpha``),
    per channel, while keeping its own phase; see :func:`draw_partners` and
    :func:`mix_amplitude`. Unselected images are returned unchanged, bit for bit.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8 or float
        A uint8 batch is processed as ``x / 255`` and returned as uint8 (rounded, clipped to
        0..255). A float batch is processed as it is; with ``clip`` it is taken to lie in
        [0, 1] and the changed images are clipped to [0, 1]. Pass ``clip=False`` for a
        normalised batch.
    generator : torch.Generator
        CPU generator: the result is a deterministic function of the batch and its state.
    alpha : float
        Weight of the partner's amplitude in [0, 1] (1: full swap, as APR).
    p : float
        Probability that an image is changed, in [0, 1] (0: the identity).
    clip : bool
        Clip float outputs to [0, 1] (uint8 outputs are always clipped to 0..255).

    Returns
    -------
    Tensor, shape (N, C, H, W), the dtype and device of ``images``.

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    >>> y = amplitude_swap(x, g, p=1.0)
    >>> y.dtype, y.shape
    (torch.uint8, torch.Size([4, 3, 8, 8]))
    """
    _check_fraction("alpha", alpha)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    partners = draw_partners(images.shape[0], generator, p)
    changed = (partners != torch.arange(images.shape[0])).nonzero().flatten()
    if len(changed) == 0:
        return images.clone()
    dev = images.device
    idx, src_idx = changed.to(dev), partners[changed].to(dev)
    x = images if images.is_floating_point() else images.to(torch.float32) / 255.0
    mixed = mix_amplitude(x[idx], x[src_idx], alpha)
    out = images.clone()
    if images.dtype == torch.uint8:
        out[idx] = (mixed * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    else:
        out[idx] = mixed.clamp_(0.0, 1.0) if clip else mixed
    return out


def ampswap_augment(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, chunk: int = 1) -> torch.Tensor:
    """``extra_augment="ampswap"``: :func:`amplitude_swap` with ``p=AMPSWAP_P, alpha=AMPSWAP_ALPHA``.

    The signature of :data:`fslib.augment.ExtraAugment`; ``labels`` and ``chunk`` are unused
    (every image already gets its own draw, and partners are drawn regardless of class).

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8
    labels : Tensor, shape (N,)
    generator : torch.Generator (CPU)
    chunk : int, ignored

    Returns
    -------
    Tensor, shape (N, C, H, W), uint8.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"ampswap_augment works on uint8 training batches, got {images.dtype}")
    return amplitude_swap(images, generator, alpha=AMPSWAP_ALPHA, p=AMPSWAP_P)
