"""Running a model for evaluation: the one way fslib turns images into logits.

* :func:`normalize`: raw images (uint8 or float in [0, 1]) to model input, ``(x - mean) / std``.
* :func:`eval_mode`: a block in which a model is in eval mode (its previous mode restored),
  its inputs follow its memory layout, and optionally a CPU model runs channels-last.
* :func:`predict` and :func:`evaluate`: batched logits, accuracy, per-class accuracy and
  false-positive rate, confusion matrix and loss (:func:`confusion_matrix`).
* :class:`Analysable`: what "a model to analyse" is (model, normalisation, class names, a
  cache key), satisfied by the book's runs and by :class:`Classifier` for any model.

The DFM ablations (:mod:`fslib.dfm`), the training loop's validation (:mod:`fslib.train`),
the tracking records (:mod:`fslib.tracking`) and every chapter go through these.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fslib.device import resolve_device
from fslib.io import digest, stable_hash

PRECISIONS = ("fp32", "bf16")

# Images per forward pass in evaluation. On a 2-core CPU a channels-last ResNet18 x0.25 in
# fp32 scores 1,900-2,100 img/s at 128 against 1,200-1,400 at 512; on a GPU
# larger batches would be faster, and every function takes ``batch_size``.
EVAL_BATCH = 128


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Model input from raw images: ``(x - mean) / std`` per channel.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8 (read as ``x / 255``) or float in [0, 1]
    mean, std : sequences of C floats

    Returns
    -------
    Tensor, shape (N, C, H, W), float32, on the device of ``images``.
    """
    if images.dtype == torch.uint8:
        x = images.to(torch.float32).div_(255.0)
    elif images.is_floating_point():
        x = images.to(torch.float32)
    else:
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def uses_channels_last(model: nn.Module) -> bool:
    """Whether the model's convolution weights are stored channels-last (NHWC)."""
    return any(p.ndim == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
               for p in model.parameters())


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.ndim == 4
                 else a for a in args)


@contextlib.contextmanager
def eval_mode(model: nn.Module, *, cpu_channels_last: bool = False) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for a block and restore its previous mode afterwards.

    Inside the block a model whose convolution weights are channels-last (NHWC) gets its 4-D
    inputs in that layout too (a forward pre-hook converts them), so a model trained
    channels-last is evaluated exactly as it was trained. With ``cpu_channels_last=True`` a
    model with 2-D convolutions on a CPU is also converted to channels-last for the block
    (and back on exit): inference of the book's ResNets ran about 1.4 times faster that way
    on the book's CPU (PyTorch 2.x, oneDNN). Only the layout changes, not the maths.

    >>> m = nn.Linear(2, 2).train()
    >>> with eval_mode(m):
    ...     m.training
    False
    >>> m.training
    True
    """
    was_training = model.training
    converted = False
    model.eval()
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    if cpu_channels_last and convs and convs[0].device.type == "cpu" and convs[0].is_contiguous():
        model.to(memory_format=torch.channels_last)
        converted = True
    hook = model.register_forward_pre_hook(_to_channels_last) if uses_channels_last(model) else None
    try:
        yield model
    finally:
        if hook is not None:
            hook.remove()
        if converted:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = EVAL_BATCH,
    device: str | torch.device = "auto",
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Logits of ``model`` in eval mode (its previous mode is restored).

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W)
        Already-normalised float model input; or, when ``mean``/``std`` are given, raw
        images (uint8, or float in [0, 1]) normalised batch by batch.
    precision : "fp32", or "bf16" for forwards under ``torch.autocast(bfloat16)`` (the
        tracking of a bf16 training run; final evaluations use fp32)

    Returns
    -------
    Tensor, shape (N, num_classes), float32, on the CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    dev = resolve_device(device)
    if mean is None and not images.is_floating_point():
        raise TypeError(f"images are {images.dtype}: pass mean/std (or normalise first, e.g. run.normalize)")
    with eval_mode(model):
        outs = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(dev)
            x = normalize(x, mean, std) if mean is not None else x.to(torch.float32)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                outs.append(model(x).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0, 0)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> np.ndarray:
    """Counts ``M[i, j]`` of images of class ``i`` predicted as ``j``, int64 ``(C, C)``."""
    lab = torch.as_tensor(labels).long().flatten().cpu()
    pred = torch.as_tensor(predictions).long().flatten().cpu()
    if lab.shape != pred.shape:
        raise ValueError(f"{lab.numel()} labels but {pred.numel()} predictions")
    return torch.bincount(lab * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes).numpy()


def _scores(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class accuracy (recall) and false-positive rate from a confusion matrix."""
    per_class = confusion.sum(axis=1)
    correct = np.diag(confusion)
    acc = np.divide(correct, per_class, out=np.full(len(correct), np.nan), where=per_class > 0)
    negatives = per_class.sum() - per_class
    fp = confusion.sum(axis=0) - correct
    fpr = np.divide(fp, negatives, out=np.full(len(correct), np.nan), where=negatives > 0)
    return acc, fpr


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    batch_size: int = EVAL_BATCH,
    device: str | torch.device = "auto",
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Accuracy, per-class accuracy, confusion matrix and mean loss.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), normalised float (or raw with ``mean``/``std``)
    labels : Tensor, shape (N,), int64
    precision : as :func:`predict`

    Returns
    -------
    dict with ``acc`` (float), ``per_class_acc`` (ndarray (C,), NaN for an absent class),
    ``fpr`` (ndarray (C,), share of other-class images predicted as the class),
    ``confusion`` (ndarray (C, C) int64, rows = true class), ``loss`` (float, mean
    cross-entropy) and ``predictions`` (Tensor (N,) int64).
    """
    logits = predict(model, images, batch_size, device, mean=mean, std=std, precision=precision)
    labels = torch.as_tensor(labels).long().cpu()
    pred = logits.argmax(dim=1)
    conf = confusion_matrix(labels, pred, num_classes)
    per_class, fpr = _scores(conf)
    return {
        "acc": float((pred == labels).float().mean()),
        "per_class_acc": per_class,
        "fpr": fpr,
        "confusion": conf,
        "loss": float(F.cross_entropy(logits, labels)),
        "predictions": pred,
    }


@runtime_checkable
class Analysable(Protocol):
    """A model to analyse: what the DFM protocol and the shortcut command need of it.

    The book's trained runs (:class:`fslib.runs.Run`) satisfy it, and :class:`Classifier`
    makes one of any classifier.

    Attributes
    ----------
    model : nn.Module, maps normalised ``(N, C, H, W)`` input to logits ``(N, num_classes)``
    mean, std : per-channel statistics of the input normalisation
    class_names : names of the classes in label order
    cache_key : str, identifies the model's weights and preprocessing in cache file names
    """

    model: nn.Module

    @property
    def mean(self) -> tuple[float, ...]: ...

    @property
    def std(self) -> tuple[float, ...]: ...

    @property
    def class_names(self) -> tuple[str, ...]: ...

    @property
    def cache_key(self) -> str: ...

    def normalize(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Classifier:
    """Any classifier with its input normalisation and class names: an :class:`Analysable`.

    Parameters
    ----------
    model : nn.Module, normalised ``(N, C, H, W)`` input to logits ``(N, len(class_names))``
    mean, std : per-channel normalisation, e.g. ImageNet's
        ``(0.485, 0.456, 0.406)``, ``(0.229, 0.224, 0.225)``
    class_names : names of the classes in label order
    key : str or None; ``None`` derives it from a digest of the weights and the normalisation,
        so a retrained model never reuses another model's cached DFMs

    >>> c = Classifier(nn.Linear(4, 2), (0.5,), (0.25,), ("cat", "dog"))
    >>> c.normalize(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)).flatten().tolist()
    [2.0, 2.0, 2.0, 2.0]
    """

    model: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    key: str | None = None

    def __post_init__(self) -> None:
        self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        self.class_names = tuple(str(c) for c in self.class_names)
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std need one value per channel each, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if not self.class_names:
            raise ValueError("class_names must name at least one class")

    @property
    def cache_key(self) -> str:
        if self.key is not None:
            return self.key
        return f"model-{stable_hash({'weights': digest(self.model), 'mean': self.mean, 'std': self.std})}"

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Model input from raw images ``(N, C, H, W)`` (uint8, or float in [0, 1])."""
        return normalize(images, self.mean, self.std)

    def predict(self, images: torch.Tensor, batch_size: int = EVAL_BATCH, device: str | torch.device = "auto"
                ) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of raw images (normalised batch by batch)."""
        return predict(self.model, images, batch_size, device, mean=self.mean, std=self.std)
