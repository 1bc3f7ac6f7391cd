"""The geometric training transforms, batched on uint8 tensors: the official Pad + flip +
RandomResizedCrop, the classic flip + crop, or none (see :mod:`fslib.augment`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENTS = ("official", "flipcrop", "none")


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
