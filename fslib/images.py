"""Labelled image sets and the data layer's errors: what every dataset loader returns.

:class:`LabeledImages` is the one in-memory form of a labelled image set (uint8 images,
int64 labels, class names, provenance); :class:`DataError` and its subclasses are what a
missing or damaged source raises. Both live here, below :mod:`fslib.data` and
:mod:`fslib.synthetic`, so that neither of those needs the other to describe its result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LabeledImages:
    """A labelled image set held in memory.

    Attributes
    ----------
    images : Tensor, shape (N, 3, H, W), uint8
    labels : Tensor, shape (N,), int64
    classes : tuple of str, class names in label order
    name : str, registry name of the dataset (e.g. ``"cifar10"``)
    split : str
    source : str, where the images came from (e.g. ``"cifar10_jpeg.zip (JPEG q75)"``)
    extra : dict, dataset-specific fields (e.g. texture labels of the cue-conflict stimuli)
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    split: str
    source: str
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class DataError(Exception):
    """Base class of the data layer's errors."""


class DatasetNotFound(DataError, FileNotFoundError):
    """A dataset's files are not where fslib looked; the message says where to put them."""


class ArchiveCorrupt(DataError, ValueError):
    """An archive does not have the expected sha256 (truncated, corrupt or another file), or a
    member fails its zip CRC check while being decoded."""


class NotEnoughSpace(DataError, OSError):
    """The disk holding the cache has not enough free space for what is being written."""
