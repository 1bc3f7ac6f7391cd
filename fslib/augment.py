"""Batched training augmentation on uint8 image tensors, seeded by explicit generators.

The official training transform is ``Pad(4) -> RandomHorizontalFlip -> RandomResizedCrop``
applied to one PIL image at a time. Here the same operations run on a whole batch with
tensor ops: every image still gets its own flip and its own crop box, drawn with the
torchvision sampling rule, but no PIL image is ever decoded in the training loop.

* ``official``: zero ``Pad(pad)``, horizontal flip with probability 1/2, and
  RandomResizedCrop back to the input size with ``scale`` and ratio ``(3/4, 4/3)``. The crop
  is resampled with ``torchvision.ops.roi_align`` (bilinear, averaging ``ceil(crop/size)``
  samples per output pixel when the crop is larger than the output, an antialiased resize
  like PIL's) and rounded back to uint8, as PIL would.
* ``flipcrop``: zero pad, flip, and a random crop of the input size (no rescaling): the
  classic CIFAR augmentation, gentler than RandomResizedCrop for short training.
* ``none``: images unchanged.

Extra augmentations (``EXTRA_AUGMENTS``) run after the geometric ones on uint8 batches, as
the official code inserted AutoAugment/AugMix after RandomResizedCrop. torchvision's v2
transforms draw one random operation per call and apply it to the whole batch; to keep the
per-image randomness of the paper's pipeline they are called on chunks of ``chunk`` images
(1 = per image, the default). The cost of that Python loop is measured in
``benchmarks/train_throughput.py``: per image, AutoAugment adds about 0.3 ms and AugMix
about 1.7 ms of CPU time per 32x32 image (about 10 % and 35 % of a ResNet18-x0.25 training
step); ``chunk=8`` cuts AugMix to about 0.4 ms. The v2 transforms draw from torch's
global generator, so each batch runs inside ``torch.random.fork_rng`` seeded from the
explicit generator: results depend only on that generator and the global RNG state is
left untouched.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from fslib.stylize import ampswap_augment

__all__ = [
    "AUGMENTS", "EXTRA_AUGMENTS", "augment_batch", "geometric", "random_resized_crop_boxes",
    "register_extra_augment", "extra_augment", "normalize",
]

AUGMENTS = ("official", "flipcrop", "none")


# --------------------------------------------------------------------------- normalisation
def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Model input from raw images: ``(x - mean) / std`` per channel.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8 (read as ``x / 255``) or float in [0, 1]
    mean, std : sequences of C floats

    Returns
    -------
    Tensor, shape (N, C, H, W), float32, on the device of ``images``.
    """
    if images.dtype == torch.uint8:
        x = images.to(torch.float32).div_(255.0)
    elif images.is_floating_point():
        x = images.to(torch.float32)
    else:
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


# --------------------------------------------------------------------------- geometry
def random_resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> torch.Tensor:
    """Crop boxes drawn with torchvision's ``RandomResizedCrop.get_params`` rule, batched.

    Each image tries ``attempts`` (area fraction, log-uniform aspect ratio) pairs and keeps
    the first whose rounded box fits; when none fits it falls back to the central crop with
    the aspect ratio clamped to ``ratio``, as torchvision does.

    Returns
    -------
    Tensor, shape (n, 4), int64: rows ``(top, left, h, w)``.
    """
    area = height * width
    s = torch.empty(n, attempts).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(log_r)
    w = torch.round(torch.sqrt(area * s * r)).long()
    h = torch.round(torch.sqrt(area * s / r)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.int8).argmax(dim=1)  # index of the first fitting attempt
    w = w.gather(1, first[:, None]).squeeze(1)
    h = h.gather(1, first[:, None]).squeeze(1)
    u = torch.rand(n, 2, generator=generator)
    top = torch.floor(u[:, 0] * (height - h + 1).clamp_min(1)).long()
    left = torch.floor(u[:, 1] * (width - w + 1).clamp_min(1)).long()
    # central fallback for images where no attempt fitted
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    none = ~ok.any(dim=1)
    h = torch.where(none, torch.full_like(h, fh), h)
    w = torch.where(none, torch.full_like(w, fw), w)
    top = torch.where(none, torch.full_like(top, (height - fh) // 2), top)
    left = torch.where(none, torch.full_like(left, (width - fw) // 2), left)
    return torch.stack([top, left, h, w], dim=1)


def _resize_crops(images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop ``boxes`` (top, left, h, w) out of float ``images`` and resize each to ``size``."""
    from torchvision.ops import roi_align

    n = images.shape[0]
    b = boxes.to(torch.float32)
    rois = torch.stack(
        [torch.arange(n, dtype=torch.float32), b[:, 1], b[:, 0], b[:, 1] + b[:, 3], b[:, 0] + b[:, 2]], dim=1
    ).to(images.device)
    return roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def _integer_crops(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Exact crops of ``size`` at per-image offsets (any dtype), via two gathers."""
    n, c, hp, wp = images.shape
    rows = (top[:, None] + torch.arange(size[0])).to(images.device)  # (N, h)
    cols = (left[:, None] + torch.arange(size[1])).to(images.device)  # (N, w)
    out = images.gather(2, rows[:, None, :, None].expand(n, c, size[0], wp))
    return out.gather(3, cols[:, None, None, :].expand(n, c, size[0], size[1]))


def geometric(
    images: torch.Tensor,
    kind: str,
    generator: torch.Generator,
    *,
    pad: int = 4,
    scale: tuple[float, float] = (0.08, 1.0),
) -> torch.Tensor:
    """Pad, flip and crop a batch, each image with its own random draw.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8
    kind : ``"official"`` (pad + flip + RandomResizedCrop), ``"flipcrop"`` (pad + flip +
        random crop, no rescaling) or ``"none"``
    generator : torch.Generator (CPU) driving every random draw
    pad : int, zero padding on each side before cropping (official: 4)
    scale : (float, float), RandomResizedCrop area fraction range (torchvision default)

    Returns
    -------
    Tensor, shape (N, C, H, W), uint8, on the device of ``images``.
    """
    if kind not in AUGMENTS:
        raise ValueError(f"unknown augment {kind!r}; valid: {', '.join(AUGMENTS)}")
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if kind == "none":
        return images
    n, _, h, w = images.shape
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    x = torch.where(flip[:, None, None, None], images.flip(-1), images)
    x = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x
    hp, wp = h + 2 * pad, w + 2 * pad
    if kind == "flipcrop":
        u = torch.rand(n, 2, generator=generator)
        top = torch.floor(u[:, 0] * (hp - h + 1)).long()
        left = torch.floor(u[:, 1] * (wp - w + 1)).long()
        return _integer_crops(x, top, left, (h, w))
    boxes = random_resized_crop_boxes(n, hp, wp, generator, scale=scale)
    out = _resize_crops(x.to(torch.float32), boxes, (h, w))
    return out.round_().clamp_(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- extra augmentations
ExtraAugment = Callable[[torch.Tensor, torch.Tensor, torch.Generator, int], torch.Tensor]
"""``fn(images_uint8 (N, C, H, W), labels (N,), generator, chunk) -> images_uint8``."""


def _torchvision_v2(factory: Callable[[], Callable]) -> ExtraAugment:
    def apply(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, chunk: int) -> torch.Tensor:
        transform = factory()
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            parts = [transform(images[i : i + chunk]) for i in range(0, images.shape[0], chunk)]
        return torch.cat(parts)

    return apply


def _none(images, labels, generator, chunk):
    return images


def _autoaugment():
    from torchvision.transforms import v2

    return v2.AutoAugment()  # torchvision default policy (ImageNet), as the official code


def _augmix():
    from torchvision.transforms import v2

    return v2.AugMix()  # torchvision defaults: severity 3, width 3, random depth, alpha 1


EXTRA_AUGMENTS: dict[str, ExtraAugment] = {
    "none": _none,
    "autoaugment": _torchvision_v2(_autoaugment),
    "augmix": _torchvision_v2(_augmix),
    "ampswap": ampswap_augment,  # chapter 6's weight-free stand-in for Stylized-ImageNet
}
"""Extra augmentations by name; add more with :func:`register_extra_augment`."""


def register_extra_augment(name: str, fn: ExtraAugment) -> None:
    """Add an extra augmentation ``fn(images_uint8, labels, generator, chunk) -> images_uint8``.

    ``fn`` must draw every random number from ``generator`` (CPU) so that training stays
    deterministic; ``chunk`` is the configured number of images sharing one draw (an
    augmentation that is already per-image may ignore it).
    """
    if name in EXTRA_AUGMENTS and EXTRA_AUGMENTS[name] is not fn:
        raise ValueError(f"extra augmentation {name!r} is already registered")
    EXTRA_AUGMENTS[name] = fn


def extra_augment(images: torch.Tensor, labels: torch.Tensor, name: str, generator: torch.Generator, chunk: int = 1) -> torch.Tensor:
    """Apply the extra augmentation ``name`` to a uint8 batch ``(N, C, H, W)``."""
    if name not in EXTRA_AUGMENTS:
        raise ValueError(f"unknown extra augmentation {name!r}; valid: {', '.join(EXTRA_AUGMENTS)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return EXTRA_AUGMENTS[name](images, labels, generator, chunk)


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    *,
    kind: str = "official",
    extra: str = "none",
    pad: int = 4,
    scale: tuple[float, float] = (0.08, 1.0),
    chunk: int = 1,
) -> torch.Tensor:
    """The whole training augmentation of one batch: :func:`geometric` then the extra one.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8
    labels : Tensor, shape (N,), int64 (for label-aware extra augmentations)
    generator : torch.Generator (CPU)

    Returns
    -------
    Tensor, shape (N, C, H, W), uint8.
    """
    x = geometric(images, kind, generator, pad=pad, scale=scale)
    return extra_augment(x, labels, extra, generator, chunk) if extra != "none" else x
