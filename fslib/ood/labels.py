"""Label spaces: a 10-way model scored on the classes an out-of-distribution set shares with it.

:class:`RestrictedLogits` and :func:`map_predictions` let a model answer only among the
shared classes; :func:`map_labels` translates an OOD set's labels into the model's.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class RestrictedLogits(nn.Module):
    """A classifier that answers only among some of its classes.

    ``forward(x) = model(x)[:, classes]``: logit ``j`` is the wrapped model's logit for class
    ``classes[j]``, so ``argmax`` picks the most likely *allowed* class. This is how a 10-way
    CIFAR-10 model is scored on the 7 texture-vs-shape classes that have a CIFAR-10
    counterpart (the other 3 CIFAR-10 classes cannot be right, so they are not allowed to be
    wrong either), in the spirit of Geirhos et al.'s mapping of 1000-way ImageNet models
    onto 16 classes (they aggregate fine classes; with one class per coarse class here, the
    restriction is the same thing).

    Parameters
    ----------
    model : nn.Module, maps ``(B, C, H, W)`` to logits ``(B, K)``
    classes : sequence of int, distinct indices into the ``K`` logits
    """

    def __init__(self, model: nn.Module, classes: Sequence[int]) -> None:
        super().__init__()
        idx = [int(c) for c in classes]
        if not idx or len(set(idx)) != len(idx) or min(idx) < 0:
            raise ValueError(f"classes must be distinct non-negative indices, got {list(classes)}")
        self.model = model
        self.register_buffer("classes", torch.tensor(idx, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if int(self.classes.max()) >= logits.shape[1]:
            raise ValueError(f"classes {self.classes.tolist()} exceed the model's {logits.shape[1]} logits")
        return logits.index_select(1, self.classes.to(logits.device))


def map_labels(labels: torch.Tensor, mapping: Sequence[int]) -> torch.Tensor:
    """Translate labels of one label space into another; unmapped labels become -1.

    Parameters
    ----------
    labels : Tensor, shape (N,), int, indices into ``mapping``
    mapping : sequence of int, ``mapping[i]`` is the target index of source class ``i`` or -1

    Returns
    -------
    Tensor, shape (N,), int64

    >>> map_labels(torch.tensor([0, 2, 1]), [5, -1, 7]).tolist()
    [5, 7, -1]
    """
    table = torch.as_tensor(list(mapping), dtype=torch.long)
    labels = labels.long().cpu()
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(table)):
        raise ValueError(f"labels must lie in 0..{len(table) - 1} for a mapping of {len(table)} classes, "
                         f"got range {int(labels.min())}..{int(labels.max())}")
    return table[labels]


def map_predictions(logits: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Argmax over the allowed classes only, returned in the model's label space.

    Parameters
    ----------
    logits : Tensor, shape (N, K)
    classes : sequence of int, allowed indices into the ``K`` logits

    Returns
    -------
    Tensor, shape (N,), int64, each entry one of ``classes``.

    >>> map_predictions(torch.tensor([[0.0, 9.0, 1.0, 2.0]]), [0, 2, 3]).tolist()
    [3]
    """
    idx = torch.as_tensor(list(classes), dtype=torch.long, device=logits.device)
    if logits.ndim != 2 or int(idx.max()) >= logits.shape[1] or int(idx.min()) < 0:
        raise ValueError(f"logits must be (N, K) with K > max(classes) = {int(idx.max())}, got {tuple(logits.shape)}")
    return idx[logits.index_select(1, idx).argmax(1)].cpu()


def _check_same_length(**tensors: torch.Tensor) -> None:
    lengths = {k: int(v.shape[0]) for k, v in tensors.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")
