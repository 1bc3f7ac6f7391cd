"""DFM-X (Wang et al., ICCVW 2023): train a model on images filtered to *another* class's DFM.

The Dominant Frequency Maps of a first model tell which frequencies it uses as shortcuts.
DFM-X trains a second model so that those frequencies alone do not reveal a class: with
probability ``p`` an image of class ``y`` is replaced by its filtered version that keeps only
the DFM of another class ``m != y`` (DC kept), and its label stays ``y``. The filter acts on
the normalised model input, after the geometric augmentation, where the official code applies
it (registered as the input augmentation ``"dfmx"``, :mod:`fslib.augment.inputs`).

The source DFMs are part of the training config, and so of the run hash: they are stored once
in a small content-addressed store (:func:`store_dfms` writes ``cache_dir("dfmx")/<digest>.npz``
and returns the digest) and named by that digest in ``TrainConfig.input_augment_options``::

    key = dfmx.store_dfms(analysis.dfms, provenance={"source": run.cache_key})
    cfg = TrainConfig(..., input_augment="dfmx", input_augment_options={"masks": key, "p": 0.3})

Other DFMs give another digest, hence another run. Differences from the released code
(github.com/nis-research/dfmX-augmentation, ``train.py``, ``dataset/CIFAR.py``):

* ``draw="other"`` (default) draws ``m`` uniformly among the ``K - 1`` other classes, so an
  image is augmented with probability ``p``, as the paper states. The released code draws ``m``
  among all ``K`` classes and leaves the image unchanged when ``m == y``: its real rate is
  ``p (K - 1) / K`` (0.27 for p = 0.3); ``draw="official"`` reproduces that.
* The filter works on the last two axes only. The released ``filter`` calls ``ifftshift`` on
  the whole (C, H, W) tensor, which also rolls the colour channels: every DFM-X image of the
  official training is channel-permuted (GBR). Not reproduced.
* Masks are made conjugate-symmetric (a position is kept when it or its partner is), so the
  filtered image is exactly real and its spectrum is zero outside the (symmetrised) DFM. The
  released DFMs are not symmetric and the code takes the real part, which keeps an unpaired
  position at half amplitude together with its partner. fslib's own DFMs are symmetric already.
* Every draw comes from the training loop's seeded generator, batched (the released code
  draws from torch's global RNG, per image, in a Python loop).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
import torch

from fslib.augment.inputs import register_input_augment
from fslib.io import digest, load_npz, save_npz, to_jsonable
from fslib.paths import cache_dir
from fslib.spectral import fft_centred, ifft_centred, symmetrize_mask

DFMX_P = 0.3
"""Probability that a training image is filtered; official default (``--p 0.3``)."""

DRAWS = ("other", "official")
"""How the other class is drawn: among the K - 1 other classes (the paper), or among all K with
``m == y`` left unchanged (the released code: rate ``p (K - 1) / K``)."""


def check_dfms(dfms: torch.Tensor, num_classes: int | None = None,
               size: tuple[int, int] | None = None) -> torch.Tensor:
    """Validate a set of DFMs and return it as a bool tensor ``(K, H, W)`` on the CPU.

    Parameters
    ----------
    dfms : Tensor, shape (K, H, W), bool or 0/1 values, centred layout (DC at (H // 2, W // 2))
    num_classes : int or None, the K the training data has
    size : (H, W) or None, the image size the masks must match

    >>> check_dfms(torch.ones(2, 4, 4), num_classes=3)
    Traceback (most recent call last):
    ...
    ValueError: DFM-X needs one DFM per class: got 2 DFMs of shape (2, 4, 4), the data has 3 classes
    """
    if not isinstance(dfms, torch.Tensor) or dfms.ndim != 3 or dfms.shape[0] < 2:
        shape = tuple(dfms.shape) if isinstance(dfms, torch.Tensor) else type(dfms).__name__
        raise ValueError(f"DFMs must be a tensor (K, H, W) with K >= 2 classes, got {shape}")
    if dfms.dtype != torch.bool and not bool(((dfms == 0) | (dfms == 1)).all()):
        raise ValueError(f"DFMs must be bool or 0/1 masks, got {dfms.dtype} values outside {{0, 1}}")
    if num_classes is not None and dfms.shape[0] != num_classes:
        raise ValueError(f"DFM-X needs one DFM per class: got {dfms.shape[0]} DFMs of shape {tuple(dfms.shape)}, "
                         f"the data has {num_classes} classes")
    if size is not None and tuple(dfms.shape[1:]) != tuple(size):
        raise ValueError(f"DFMs of size {tuple(dfms.shape[1:])} cannot filter images of size {tuple(size)}: "
                         "they must come from a model trained at the same resolution")
    return dfms.detach().cpu().bool()


def store_dfms(dfms: torch.Tensor, provenance: dict[str, Any] | None = None) -> str:
    """Keep a set of DFMs in the content-addressed store and return its key (a digest).

    The file is ``cache_dir("dfmx")/<key>.npz`` (the masks and a JSON provenance record, no
    pickle); storing the same masks again returns the same key and leaves the file as it is.

    Parameters
    ----------
    dfms : Tensor, shape (K, H, W), bool or 0/1 (:func:`check_dfms`)
    provenance : JSON-ready dict (source model, DFM settings, ...), or None

    Returns
    -------
    str, 16 hex digits: the digest of the bool masks.
    """
    masks = check_dfms(dfms)
    key = digest(masks)
    path = cache_dir("dfmx") / f"{key}.npz"
    if not path.exists():
        record = json.dumps(to_jsonable(provenance or {}), sort_keys=True)
        save_npz(path, masks=masks.numpy(), provenance=np.array(record))
    return key


@functools.lru_cache(maxsize=8)
def _load(key: str, root: str) -> tuple[torch.Tensor, str]:
    path = cache_dir("dfmx") / f"{key}.npz"
    if not path.exists():
        raise ValueError(f"no DFMs with key {key!r} in the DFM-X store {path.parent}; store the source DFMs first "
                         "with fslib.augment.dfmx.store_dfms(dfms) (it returns the key)")
    data = load_npz(path)
    masks = torch.from_numpy(data["masks"]).bool()
    if digest(masks) != key:
        raise ValueError(f"{path} holds DFMs whose digest is {digest(masks)}, not {key}: the file was altered")
    return masks, str(data["provenance"])


def load_stored_dfms(key: str) -> tuple[torch.Tensor, dict[str, Any]]:
    """The DFMs stored under ``key`` (bool ``(K, H, W)``) and their provenance record.

    Loaded once per process and cache root; the digest of the file's masks is checked.
    """
    masks, record = _load(str(key), str(cache_dir("dfmx")))
    return masks.clone(), json.loads(record)


def draw_classes(labels: torch.Tensor, num_classes: int, generator: torch.Generator, p: float = DFMX_P,
                 draw: str = "other") -> torch.Tensor:
    """Which images DFM-X filters, and with whose DFM.

    Parameters
    ----------
    labels : Tensor, shape (N,), int, values in [0, num_classes)
    num_classes : int, K
    generator : torch.Generator (CPU)
    p : float in [0, 1]
    draw : "other" or "official" (:data:`DRAWS`)

    Returns
    -------
    Tensor, shape (N,), int64 on the CPU: the class ``m != y`` whose DFM filters the image,
    or -1 for an image left unchanged.

    >>> m = draw_classes(torch.zeros(1000, dtype=torch.long), 10, torch.Generator().manual_seed(0), p=0.3)
    >>> bool((m != 0).all()), 0.25 < float((m >= 0).float().mean()) < 0.35
    (True, True)
    """
    if draw not in DRAWS:
        raise ValueError(f"unknown DFM-X draw {draw!r}; valid: {', '.join(DRAWS)}")
    if isinstance(p, bool) or not (isinstance(p, (int, float)) and 0 <= p <= 1):
        raise ValueError(f"DFM-X probability p must be in [0, 1], got {p!r}")
    y = labels.detach().long().cpu()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) to match the {num_classes} DFMs, "
                         f"got values {int(y.min())}..{int(y.max())}")
    u = torch.rand(len(y), generator=generator)
    if draw == "other":
        m = torch.randint(num_classes - 1, (len(y),), generator=generator)
        m = m + (m >= y).long()  # uniform over the K - 1 classes other than y
        chosen = u < p
    else:
        m = torch.randint(num_classes, (len(y),), generator=generator)
        chosen = (u < p) & (m != y)
    return torch.where(chosen, m, torch.full_like(m, -1))


def filter_with_dfms(x: torch.Tensor, dfms: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Keep only the frequencies of ``dfms[chosen[i]]`` (DC kept) in image ``i``; -1 leaves it as is.

    Parameters
    ----------
    x : Tensor, shape (N, C, H, W), float (the normalised model input)
    dfms : Tensor, shape (K, H, W), bool (made conjugate-symmetric here)
    chosen : Tensor, shape (N,), int, a class index or -1

    Returns
    -------
    Tensor like ``x`` (a new tensor; the filtered images are real, not clipped).
    """
    dfms = check_dfms(dfms, size=tuple(x.shape[-2:]))
    h, w = x.shape[-2:]
    keep = symmetrize_mask(dfms)
    keep[:, h // 2, w // 2] = True  # DC kept, as the released code (one of its DFMs lacks it)
    sel = (chosen >= 0).nonzero().flatten()
    out = x.clone()
    if len(sel):
        masks = keep[chosen[sel]].to(device=x.device, dtype=x.dtype)  # (S, H, W)
        idx = sel.to(x.device)
        out[idx] = ifft_centred(fft_centred(x[idx]) * masks[:, None]).to(x.dtype)
    return out


def dfmx_augment(x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, *, masks: str,
                 p: float = DFMX_P, draw: str = "other") -> torch.Tensor:
    """The ``"dfmx"`` input augmentation: :func:`draw_classes` then :func:`filter_with_dfms`.

    Parameters
    ----------
    x : Tensor, shape (N, C, H, W), float, the normalised model input
    labels : Tensor, shape (N,), int (unchanged: DFM-X keeps every label)
    generator : torch.Generator (CPU)
    masks : str, the key of the source DFMs in the store (:func:`store_dfms`)
    p, draw : as :func:`draw_classes`
    """
    dfms, _ = load_stored_dfms(masks)
    check_dfms(dfms, size=tuple(x.shape[-2:]))
    chosen = draw_classes(labels, dfms.shape[0], generator, p=p, draw=draw)
    return filter_with_dfms(x, dfms, chosen)


register_input_augment("dfmx", dfmx_augment)
