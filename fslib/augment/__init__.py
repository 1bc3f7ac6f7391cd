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

Modules: :mod:`~fslib.augment.geometric` (official / flipcrop / none),
:mod:`~fslib.augment.extra` (the registry of extra augmentations), :mod:`~fslib.augment.inputs`
(augmentations of the normalised model input), :mod:`~fslib.augment.ampswap` (the amplitude
swap, the book's stand-in for Stylized-ImageNet), :mod:`~fslib.augment.dfmx` (DFM-X, the input
augmentation ``"dfmx"``) and :mod:`~fslib.augment.adversarial` (AAUA and AAD, the training
objective ``"aaua_aad"`` that :mod:`fslib.train` registers).
"""

from __future__ import annotations

import torch

from fslib.augment import adversarial, dfmx  # dfmx registers the input augmentation "dfmx" on import
from fslib.augment.extra import EXTRA_AUGMENTS, ExtraAugment, extra_augment, register_extra_augment
from fslib.augment.geometric import AUGMENTS, geometric, random_resized_crop_boxes
from fslib.augment.inputs import INPUT_AUGMENTS, input_augment, register_input_augment

__all__ = [
    "AUGMENTS", "EXTRA_AUGMENTS", "ExtraAugment", "augment_batch", "geometric", "random_resized_crop_boxes",
    "register_extra_augment", "extra_augment", "INPUT_AUGMENTS", "input_augment", "register_input_augment",
    "adversarial", "dfmx",
]


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
