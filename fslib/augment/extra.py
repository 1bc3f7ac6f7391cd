"""The registry of extra augmentations applied after the geometric ones (AutoAugment, AugMix,
the amplitude swap, and any a user registers), on chunks of images with per-chunk randomness.
"""

from __future__ import annotations

from typing import Callable

import torch

from fslib.augment.ampswap import ampswap_augment

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


def extra_augment(images: torch.Tensor, labels: torch.Tensor, name: str, generator: torch.Generator,
                  chunk: int = 1) -> torch.Tensor:
    """Apply the extra augmentation ``name`` to a uint8 batch ``(N, C, H, W)``."""
    if name not in EXTRA_AUGMENTS:
        raise ValueError(f"unknown extra augmentation {name!r}; valid: {', '.join(EXTRA_AUGMENTS)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return EXTRA_AUGMENTS[name](images, labels, generator, chunk)
