"""Datasets by name: every dataset the book uses loads the same way.

``load(name, split)`` returns a :class:`LabeledImages` of uint8 images. Synthetic sets
(``syn_b1``..``syn_b4``) come from :mod:`fslib.synthetic`; natural-image sets are prepared
once from the local archives (``$FSLIB_DATA``) or the official downloads.
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
