"""A learnable toy image set (the red level encodes the class), shared by the training tests."""

import torch

from fslib.images import LabeledImages


def toy_set(n, split, size=8, num_classes=4, seed=0):
    """Images whose red level encodes the class (learnable), plus noise."""
    g = torch.Generator().manual_seed(seed + (split == "test"))
    labels = torch.arange(n) % num_classes
    images = torch.randint(0, 60, (n, 3, size, size), generator=g)
    images[:, 0] += (labels * 60)[:, None, None]
    return LabeledImages(images.to(torch.uint8), labels, tuple("abcd"[:num_classes]), "cifar10", split, "toy")


def toy_loader(name, split, n=None, seed=0, progress=True, **kw):
    """A stand-in for :func:`fslib.data.load`: 96 training and 48 test images."""
    return toy_set(96 if split == "train" else 48, split)
