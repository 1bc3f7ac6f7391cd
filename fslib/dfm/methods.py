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

A method may also register a cost function, ``estimate(config, image_shape, n_images,
num_classes, *, device, batch_size, probe) -> Cost``: how many image forward passes
(forward-equivalents: count a backward pass as two) it will run, and, when ``probe`` is
true, the seconds it spends besides them (measured on the device: for the exact ranking the
subtraction of each unit's sinusoids, which dominates at large patch sizes).
:func:`fslib.dfm.cost.estimate` adds the forward passes timed by a probe of the model, so
``python -m fslib shortcuts --dry-run`` can say what an analysis will cost before it starts
(:func:`method_cost`; ``None`` for a method without a cost function).
"""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import torch

from fslib.device import resolve_device, synchronize
from fslib.dfm.ablation import _auto_batch_size, ablation_loss
from fslib.dfm.units import _removed_components, _sinusoid_basis, ablation_units
from fslib.spectral import fft_centred

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
    seconds : float, time spent besides the forward passes (0 when not measured)
    """

    forwards: int
    detail: str = ""
    seconds: float = 0.0


Method = Callable[..., Ranking]
Estimator = Callable[..., Cost]


def _exact(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
           config: DFMConfig, *, batch_size: int | None, device, progress: bool,
           checkpoint: str | os.PathLike | None) -> Ranking:
    """The paper's ranking: :func:`~fslib.dfm.ablation_loss` of every unit."""
    loss = ablation_loss(model, images, labels, num_classes, patch_size=config.patch_size, batch_size=batch_size,
                         device=device, progress=progress, checkpoint=checkpoint)
    units = len(ablation_units(images.shape[2], images.shape[3], config.patch_size))
    return Ranking(loss, None, {"units": units, "forwards": units * len(labels), "forward_equivalents": units})


@torch.inference_mode()
def _exact_removal_seconds(config: DFMConfig, image_shape: tuple, n_images: int, device, batch_size: int | None) -> float:
    """Seconds the exact ablation spends removing frequencies (not in a probe of the model):
    the sinusoid basis of one chunk of units and its subtraction from one group of images,
    timed on random input, times the chunks and groups :func:`~fslib.dfm.ablation_loss` runs."""
    c, h, w = image_shape
    dev = resolve_device(device)
    units = ablation_units(h, w, config.patch_size)
    bs = batch_size or _auto_batch_size(c, h, w, 4, dev)
    g = min(n_images, bs)
    chunk = torch.arange(min(max(1, bs // g), len(units)))
    x = torch.randn(g, c, h, w, generator=torch.Generator().manual_seed(0)).to(dev)
    spec = fft_centred(x).reshape(g, c, h * w)
    pos, wts = units.positions[chunk].to(dev), units.weights[chunk].to(dev)
    ticks = [time.perf_counter()]
    basis = _sinusoid_basis(units.positions[chunk], h, w, x.dtype, dev)
    ticks.append(time.perf_counter())
    _ = x[None] - _removed_components(spec, pos, wts, basis).reshape(len(chunk), g, c, h, w)
    synchronize(dev)
    ticks.append(time.perf_counter())
    chunks, groups = math.ceil(len(units) / len(chunk)), math.ceil(n_images / g)
    return chunks * ((ticks[1] - ticks[0]) + groups * (ticks[2] - ticks[1]))


def _exact_cost(config: DFMConfig, image_shape: tuple, n_images: int, num_classes: int, *, device="cpu",
                batch_size: int | None = None, probe: bool = False) -> Cost:
    """One forward per (unit, image): the units of :func:`~fslib.dfm.ablation_units`; with
    ``probe``, the timed removal of the units' frequencies besides."""
    units = len(ablation_units(image_shape[-2], image_shape[-1], config.patch_size))
    seconds = _exact_removal_seconds(config, tuple(image_shape), n_images, device, batch_size) if probe else 0.0
    return Cost(units * n_images, f"{units:,} units x {n_images:,} images", seconds)


METHODS: dict[str, Method] = {"exact": _exact}
ESTIMATES: dict[str, Estimator] = {"exact": _exact_cost}


def register_method(name: str, fn: Method, estimate: Estimator | None = None) -> None:
    """Make ``fn`` available as ``DFMConfig(method=name)``, with its cost function if given.

    ``estimate(config, image_shape, n_images, num_classes, *, device, batch_size, probe) -> Cost``
    counts the image forward passes of a ranking of ``n_images`` images of shape
    ``(C, H, W)`` and, when ``probe`` is true, measures the seconds the method spends besides
    them; without one the cost estimate of :mod:`fslib.dfm.cost` says the method gives none.

    Raises ValueError when ``name`` is already taken by another function.
    """
    if name in METHODS and METHODS[name] is not fn:
        raise ValueError(f"DFM method {name!r} is already registered; valid new names exclude {', '.join(METHODS)}")
    METHODS[name] = fn
    if estimate is not None:
        ESTIMATES[name] = estimate


def method_cost(config: DFMConfig, image_shape: tuple, n_images: int, num_classes: int, *, device="cpu",
                batch_size: int | None = None, probe: bool = False) -> Cost | None:
    """The registered cost of ranking ``n_images`` images with ``config.method``, or ``None``.

    >>> from fslib.dfm.config import DFMConfig
    >>> method_cost(DFMConfig(), (3, 32, 32), 10, 10)
    Cost(forwards=5140, detail='514 units x 10 images', seconds=0.0)
    """
    fn = ESTIMATES.get(config.method)
    if fn is None:
        return None
    return fn(config, tuple(image_shape), int(n_images), int(num_classes), device=device, batch_size=batch_size,
              probe=probe)
