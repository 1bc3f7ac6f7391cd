"""The registry of search methods: how the frequencies of each class are ranked.

A method is a function ``rank(model, images, labels, num_classes, config, *, batch_size,
device, progress, checkpoint) -> Ranking``. It sees the normalised model input and the
labels of the ranking images and returns per-class score maps in the centred layout (higher:
more important to the class, e.g. the loss after removal), and optionally the masks it chose
itself (a set search chooses masks, not scores). :func:`fslib.dfm.run_dfms` calls the method
named by :attr:`fslib.dfm.DFMConfig.method` and caches what it returns under a key that
includes the method and its options.

``"exact"`` is the paper's ranking (:func:`fslib.dfm.ablation_loss`); other methods register
themselves with :func:`register_method`.

A method may also register a cost function, ``estimate(config, image_shape, n_images,
num_classes) -> Cost``: how many image forward passes (forward-equivalents: count a backward
pass as two) it will run. :func:`fslib.dfm.cost.estimate` turns that into seconds with a
timed probe forward of the model, so ``python -m fslib shortcuts --dry-run`` can say what an
analysis will cost before it starts (:func:`method_cost`; ``None`` for a method without one).
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


class Cost(NamedTuple):
    """What a method's cost function returns.

    Attributes
    ----------
    forwards : int, image forward passes (forward-equivalents) the ranking will run
    detail : str, how that count comes about (e.g. ``"514 units x 100 images"``)
    """

    forwards: int
    detail: str = ""


Method = Callable[..., Ranking]
Estimator = Callable[["DFMConfig", tuple, int, int], Cost]


def _exact(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
           config: DFMConfig, *, batch_size: int | None, device, progress: bool,
           checkpoint: str | os.PathLike | None) -> Ranking:
    """The paper's ranking: :func:`~fslib.dfm.ablation_loss` of every unit."""
    loss = ablation_loss(model, images, labels, num_classes, patch_size=config.patch_size, batch_size=batch_size,
                         device=device, progress=progress, checkpoint=checkpoint)
    units = len(ablation_units(images.shape[2], images.shape[3], config.patch_size))
    return Ranking(loss, None, {"units": units, "forwards": units * len(labels)})


def _exact_cost(config: DFMConfig, image_shape: tuple, n_images: int, num_classes: int) -> Cost:
    """One forward per (unit, image): the units of :func:`~fslib.dfm.ablation_units`."""
    units = len(ablation_units(image_shape[-2], image_shape[-1], config.patch_size))
    return Cost(units * n_images, f"{units:,} units x {n_images:,} images")


METHODS: dict[str, Method] = {"exact": _exact}
ESTIMATES: dict[str, Estimator] = {"exact": _exact_cost}


def register_method(name: str, fn: Method, estimate: Estimator | None = None) -> None:
    """Make ``fn`` available as ``DFMConfig(method=name)``, with its cost function if given.

    ``estimate(config, image_shape, n_images, num_classes) -> Cost`` counts the image
    forward passes of a ranking of ``n_images`` images of shape ``(C, H, W)``; without one
    the cost estimate of :mod:`fslib.dfm.cost` says the method gives none.

    Raises ValueError when ``name`` is already taken by another function.
    """
    if name in METHODS and METHODS[name] is not fn:
        raise ValueError(f"DFM method {name!r} is already registered; valid new names exclude {', '.join(METHODS)}")
    METHODS[name] = fn
    if estimate is not None:
        ESTIMATES[name] = estimate


def method_cost(config: DFMConfig, image_shape: tuple, n_images: int, num_classes: int) -> Cost | None:
    """The registered cost of ranking ``n_images`` images with ``config.method``, or ``None``.

    >>> from fslib.dfm.config import DFMConfig
    >>> method_cost(DFMConfig(), (3, 32, 32), 10, 10)
    Cost(forwards=5140, detail='514 units x 10 images')
    """
    fn = ESTIMATES.get(config.method)
    return None if fn is None else fn(config, tuple(image_shape), int(n_images), int(num_classes))
