"""The registry of search methods: how the frequencies of each class are ranked.

A method is a function ``rank(model, images, labels, num_classes, config, *, batch_size,
device, progress, checkpoint) -> Ranking``. It sees the normalised model input and the
labels of the ranking images and returns per-class score maps in the centred layout (higher:
more important to the class, e.g. the loss after removal), and optionally the masks it chose
itself (a set search chooses masks, not scores). :func:`fslib.dfm.run_dfms` calls the method
named by :attr:`fslib.dfm.DFMConfig.method` and caches what it returns under a key that
includes the method and its options.

``"exact"`` is the paper's ranking (:func:`fslib.dfm.ablation_loss`); other methods register
themselves with :func:`register_method` (those of :mod:`fslib.dfm.search` when :mod:`fslib.dfm`
is imported). ``info["forward_equivalents"]`` is a method's cost per ranking image (one
image through a forward pass is 1, through a backward pass 2).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import torch

from fslib.dfm.ablation import ablation_loss
from fslib.dfm.units import ablation_units

if TYPE_CHECKING:  # annotations only: the config module imports this registry
    from fslib.dfm.config import DFMConfig


class Ranking(NamedTuple):
    """What a search method returns.

    Attributes
    ----------
    scores : Tensor, shape (C, H, W), float64, centred layout; higher means more important
    masks : dict threshold -> bool Tensor (C, H, W), or None to threshold ``scores`` with
        :func:`fslib.dfm.dominant_frequency_maps`
    info : dict, JSON-ready cost record (``units``, ``forwards`` per image, ...)
    """

    scores: torch.Tensor
    masks: dict[float, torch.Tensor] | None
    info: dict[str, Any]


Method = Callable[..., Ranking]


def _exact(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
           config: DFMConfig, *, batch_size: int | None, device, progress: bool,
           checkpoint: str | os.PathLike | None) -> Ranking:
    """The paper's ranking: :func:`~fslib.dfm.ablation_loss` of every unit."""
    loss = ablation_loss(model, images, labels, num_classes, patch_size=config.patch_size, batch_size=batch_size,
                         device=device, progress=progress, checkpoint=checkpoint)
    units = len(ablation_units(images.shape[2], images.shape[3], config.patch_size))
    return Ranking(loss, None, {"units": units, "forwards": units * len(labels), "forward_equivalents": units})


METHODS: dict[str, Method] = {"exact": _exact}


def register_method(name: str, fn: Method) -> None:
    """Make ``fn`` available as ``DFMConfig(method=name)``.

    Raises ValueError when ``name`` is already taken by another function.
    """
    if name in METHODS and METHODS[name] is not fn:
        raise ValueError(f"DFM method {name!r} is already registered; valid new names exclude {', '.join(METHODS)}")
    METHODS[name] = fn
