"""What every search method returns, how its cost is counted, and shared input checks.

Every method of :mod:`fslib.dfm.search` returns a :class:`SearchResult`: per-class maps
(``(C, H, W)`` float64, where the method produces values), DFMs (``(C, H, W)`` bool,
conjugate-symmetric) and a provenance record naming the method, its settings, the seconds it
took and its cost in *forward-equivalents per image* (see :class:`PassCounter`).

Cost convention: one image through the model's forward pass is one forward-equivalent; one
image through a backward pass (to the input) counts as two, the usual rule of thumb for
convolutional networks (a backward pass computes the gradients with respect to both the
activations and the weights; here only the input gradient is needed, but PyTorch computes
both). The counts are made by a forward hook on the model, so every method is counted
the same way; the benchmark also reports seconds measured side by side.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fslib.io import load_npz, save_npz, to_jsonable

__all__ = ["SearchResult", "PassCounter", "save_result", "load_result", "check_inputs", "check_fraction",
           "check_model_gradient"]


@dataclass(frozen=True)
class SearchResult:
    """The common result of a frequency-shortcut search.

    Attributes
    ----------
    maps : Tensor, shape (C, H, W), float64, or None
        Per-class values in the centred layout where the method produces them: the (estimated
        or exact) class loss after removing each unit for ablation-type methods (higher = the
        unit matters more), NaN at positions a method did not evaluate; None for methods that
        only return masks (set search, HFSS).
    dfms : Tensor, shape (C, H, W), bool
        One conjugate-symmetric mask per class.
    provenance : dict
        JSON-ready: ``method``, ``settings``, ``seconds``, ``forward_equivalents`` (per image),
        ``forwards`` and ``backwards`` (image passes in all), ``n_images`` and method-specific
        fields.
    extras : dict of str -> Tensor
        Method-specific arrays (e.g. the screen map and the verified units of a verified
        search, the objective of each set-search mask).
    """

    maps: torch.Tensor | None
    dfms: torch.Tensor
    provenance: dict
    extras: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.provenance.get("method"))


class PassCounter:
    """Count image passes through a model while the block runs.

    A forward hook on the model adds the batch size of every forward call to ``forwards``;
    code that runs a backward pass adds its batch size to ``backwards`` with
    :meth:`add_backward`. ``forward_equivalents = forwards + 2 * backwards``.

    >>> m = torch.nn.Linear(2, 1)
    >>> with PassCounter(m) as pc:
    ...     _ = m(torch.zeros(5, 2))
    >>> pc.forwards, pc.forward_equivalents
    (5, 5)
    """

    BACKWARD_COST = 2

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.forwards = 0
        self.backwards = 0
        self._hook = None

    def _count(self, module, args, output) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.ndim >= 1:
            self.forwards += int(x.shape[0])

    def __enter__(self) -> "PassCounter":
        self._hook = self.model.register_forward_hook(self._count)
        return self

    def __exit__(self, *exc) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def add_backward(self, n: int) -> None:
        self.backwards += int(n)

    @property
    def forward_equivalents(self) -> int:
        return self.forwards + self.BACKWARD_COST * self.backwards

    def record(self, n_images: int) -> dict:
        """``forwards``, ``backwards`` and ``forward_equivalents`` per image (``n_images``)."""
        return {"forwards": self.forwards, "backwards": self.backwards,
                "forward_equivalents": self.forward_equivalents / max(1, n_images)}


# --------------------------------------------------------------------------- checks
def check_fraction(value: float, name: str = "top") -> float:
    """``value`` must lie strictly between 0 and 1 (a fraction of the H x W positions)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < 1) or math.isnan(value):
        raise ValueError(f"{name} must be a fraction in (0, 1), e.g. 0.05 for 5 %, got {value!r}")
    return float(value)


def check_inputs(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Validate normalised float images ``(N, C, H, W)`` and labels ``(N,)``; every class needs
    an image. Returns the labels as int64 on the CPU."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, C, H, W) already normalised for the model, got {got}")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must have shape ({images.shape[0]},) to match the images, got {got}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    labels = labels.long().cpu()
    if labels.numel() == 0:
        raise ValueError("no images given")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    empty = (torch.bincount(labels, minlength=num_classes) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"classes {empty} have no images; every class needs at least one")
    return labels


def check_maps(maps: torch.Tensor, num_classes: int, h: int, w: int, name: str = "maps") -> torch.Tensor:
    """A ``(num_classes, H, W)`` tensor, returned as float64 on the CPU."""
    if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != (num_classes, h, w):
        got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"{name} must have shape ({num_classes}, {h}, {w}) (classes, image height, width), got {got}")
    return maps.detach().double().cpu()


def check_model_gradient(grad: torch.Tensor | None, output: torch.Tensor) -> None:
    """Raise a clear error when the model gives no usable input gradient."""
    if grad is None or not output.requires_grad:
        raise ValueError(
            "the model's output does not depend differentiably on its input (no input gradient): "
            "first-order methods need a model whose forward pass is differentiable (not run under "
            "torch.no_grad / inference_mode and not detaching its input)"
        )
    if not torch.isfinite(grad).all():
        raise ValueError("the model's input gradient contains NaN or inf")


# --------------------------------------------------------------------------- storage
def save_result(path: str | os.PathLike, result: SearchResult) -> None:
    """Save a :class:`SearchResult` to ``.npz`` atomically (no pickle; provenance as JSON)."""
    import json

    arrays: dict[str, Any] = {"dfms": result.dfms.detach().cpu().bool().numpy(),
                              "provenance": np.array(json.dumps(to_jsonable(result.provenance), sort_keys=True))}
    if result.maps is not None:
        arrays["maps"] = result.maps.detach().cpu().double().numpy()
    for key, value in result.extras.items():
        arrays[f"extra_{key}"] = value.detach().cpu().numpy()
    save_npz(path, **arrays)


def load_result(path: str | os.PathLike) -> SearchResult:
    """Load what :func:`save_result` wrote."""
    import json

    data = load_npz(Path(path))
    maps = torch.from_numpy(data["maps"]) if "maps" in data else None
    extras = {k[len("extra_"):]: torch.from_numpy(v) for k, v in data.items() if k.startswith("extra_")}
    return SearchResult(maps, torch.from_numpy(data["dfms"]), json.loads(str(data["provenance"])), extras)
