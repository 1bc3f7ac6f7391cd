"""Augmentations of the normalised model input: applied after the pixel augmentations and the
normalisation, on float tensors, where an augmentation needs the exact model input (for example a
Fourier filter of the normalised image, as DFM-X applies it).

A registered function is ``fn(x, labels, generator, **options) -> x``: ``x`` float
``(N, C, H, W)`` as the model takes it, ``labels`` ``(N,)``, ``generator`` a seeded CPU
``torch.Generator``, and the options of ``TrainConfig.input_augment_options``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

InputAugment = Callable[..., torch.Tensor]


def _none(x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, **options: Any) -> torch.Tensor:
    return x


INPUT_AUGMENTS: dict[str, InputAugment] = {"none": _none}
"""Input augmentations by name (``TrainConfig.input_augment``)."""


def register_input_augment(name: str, fn: InputAugment) -> None:
    """Make ``fn`` available as ``TrainConfig(input_augment=name)``; a taken name raises ValueError.

    >>> register_input_augment("none", _none)  # the same function again is fine
    """
    if name in INPUT_AUGMENTS and INPUT_AUGMENTS[name] is not fn:
        raise ValueError(f"input augmentation {name!r} is already registered; taken: {', '.join(INPUT_AUGMENTS)}")
    INPUT_AUGMENTS[name] = fn


def input_augment(x: torch.Tensor, labels: torch.Tensor, name: str, generator: torch.Generator,
                  options: dict[str, Any] | None = None) -> torch.Tensor:
    """Apply the input augmentation ``name`` to a normalised float batch ``(N, C, H, W)``."""
    if name not in INPUT_AUGMENTS:
        raise ValueError(f"unknown input augmentation {name!r}; valid: {', '.join(INPUT_AUGMENTS)}")
    return x if name == "none" else INPUT_AUGMENTS[name](x, labels, generator, **(options or {}))
