"""The exact ablation: per-class loss after removing each frequency (pair) from the model input.

The paper ranks every frequency by how much removing it (with its conjugate partner, from
all colour channels of the normalised model input) raises the cross-entropy on a class's
images. :func:`ablation_loss` computes exactly what the official script computes, but fast:
it scores every class from the same forward passes (per-class means of per-image losses),
evaluates each conjugate pair (or block) once (:mod:`fslib.dfm.units`), removes a frequency
from a whole batch by subtracting its real sinusoid (the spectrum is computed once per
image), runs under ``torch.inference_mode`` and checkpoints partial sums.

Where this differs from the official script (``Evaluation/test_rank.py``), on purpose:

* Its loss for class ``c`` is, per batch of 100, the cross-entropy of logits multiplied by a
  0/1 class indicator (other images count as ``log C``), summed over batches: an increasing
  affine function of the class's summed loss when batches are full, so the ranking is the
  same as with the per-class mean used here.
* It removes the partner only when both the row and the column index are non-zero, so on
  row 0 and column 0 it removes half of a pair's sinusoid; here the partner is always removed.
* With ``patch_size = 2`` its "conjugate block" of rows ``[2r, 2r + 1]`` is
  ``[224 - 2r, 225 - 2r]``, one row off the true conjugate ``[223 - 2r, 224 - 2r]`` (the
  filtered image is then not real and its real part is taken); here the true block is used.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fslib import artefacts, distributed
from fslib.artefacts import ArtefactDamaged
from fslib.device import resolve_device
from fslib.dfm.units import _removed_components, _sinusoid_basis, ablation_units
from fslib.inference import eval_mode
from fslib.io import digest
from fslib.spectral import fft_centred


def _auto_batch_size(c: int, h: int, w: int, itemsize: int, device: torch.device, budget: int = 1 << 25) -> int:
    """Images per forward: the ablated inputs stay under ``budget`` bytes (32 MiB), and at
    most 64 on a CPU (a CIFAR-10 ResNet18 x0.25 on 2 cores: 6.4 s for 20 images x 1,024
    ablations at 64, 7.4 s at 256) or 1024 on an accelerator."""
    cap = 64 if device.type == "cpu" else 1024
    return int(max(1, min(cap, budget // (c * h * w * itemsize))))


def _check_inputs(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  model: torch.nn.Module | None = None) -> torch.Tensor:
    """Labels as int64 on the CPU, after checking images, labels, that every class has an image
    and (given ``model``) the dtypes. When the labels do not fit ``num_classes`` and that
    count is not the model's number of outputs, the error says so (one probe forward)."""
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor (N, C, H, W) already normalised for the model, "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    param = next((p for p in model.parameters() if p.is_floating_point()), None) if model is not None else None
    if param is not None and images.dtype != param.dtype:
        raise TypeError(f"images are {images.dtype} but the model's parameters are {param.dtype}; the computation "
                        f"runs in one dtype: pass images.to({param.dtype}) (or convert the model)")
    bad = (~torch.isfinite(images)).sum().item()
    if bad:
        first = int((~torch.isfinite(images)).flatten(1).any(1).nonzero()[0])
        raise ValueError(f"images hold {bad} NaN or infinite values (first in image {first}); every loss would be "
                         "NaN. Remove or repair those images")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    labels = labels.long().cpu()
    try:
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
        _check_counts(torch.bincount(labels, minlength=num_classes))
    except ValueError:
        if model is not None and len(images):
            _probe(model, images[:1], num_classes)  # a wrong num_classes is the likelier mistake: name it
        raise
    return labels


def _probe(model: torch.nn.Module, x: torch.Tensor, num_classes: int) -> None:
    param = next(model.parameters(), None)
    with eval_mode(model), torch.inference_mode():
        _logits(model, x.to(param.device) if param is not None else x, num_classes)


def _logits(model: torch.nn.Module, x: torch.Tensor, num_classes: int, given: str = "num_classes={}") -> torch.Tensor:
    """``model(x)``, checked to be ``(len(x), num_classes)`` logits (``given`` says where the count came from)."""
    out = model(x)
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise ValueError(f"the model returns logits of shape {tuple(out.shape)} for {len(x)} images, but "
                         f"{given.format(num_classes)}: the number of classes must be the model's number of outputs "
                         f"({out.shape[-1] if out.ndim == 2 else 'it does not return (N, classes) logits'})")
    return out


@torch.inference_mode()
def class_losses(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
) -> torch.Tensor:
    """Mean cross-entropy per class on the unmodified images, float64 ``(num_classes,)``.

    The reference level of :func:`ablation_loss`: a removal that does not matter leaves it.
    """
    labels = _check_inputs(images, labels, num_classes, model)
    dev = resolve_device(device)
    model.to(dev)
    bs = batch_size or _auto_batch_size(*images.shape[1:], images.element_size(), dev)
    sums = torch.zeros(num_classes, dtype=torch.float64)
    with eval_mode(model, cpu_channels_last=True):
        for start in range(0, len(images), bs):
            lab = labels[start : start + bs]
            logits = _logits(model, images[start : start + bs].to(dev), num_classes)
            loss = F.cross_entropy(logits, lab.to(dev), reduction="none").double().cpu()
            sums.index_add_(0, lab, loss)
    counts = torch.bincount(labels, minlength=num_classes).double()
    _check_counts(counts)
    return sums / counts


def _check_counts(counts: torch.Tensor) -> None:
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"classes {empty} have no images; every class needs at least one")


def _load_checkpoint(path: Path, fingerprint: dict, n_units: int, num_classes: int):
    """Partial sums and done flags of a checkpoint, or None when it was damaged (then moved aside, warned)."""
    try:
        data = artefacts.load_npz(path)
        stored = json.loads(str(data["fingerprint"]))
        sums, done = torch.from_numpy(data["sums"]), torch.from_numpy(data["done"])
    except (ArtefactDamaged, KeyError, ValueError) as exc:
        artefacts.discard(exc, path, "the ablation starts from the beginning.", stacklevel=4)
        return None
    differs = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
    if differs:
        detail = ", ".join(f"{k}: checkpoint {stored.get(k)!r} vs now {fingerprint.get(k)!r}" for k in differs)
        raise ValueError(
            f"checkpoint {path} was made with different inputs ({detail}); delete it or pass another path"
        )
    if sums.shape != (n_units, num_classes) or done.shape != (n_units,):
        raise ValueError(f"checkpoint {path} has sums {tuple(sums.shape)}, expected {(n_units, num_classes)}")
    return sums, done


def ablation_loss(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    patch_size: int = 1,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: float = 60.0,
) -> torch.Tensor:
    """Per-class loss after removing each frequency (pair) from the model's input.

    Entry ``[c, r, s]`` is the mean cross-entropy over the images of class ``c`` after
    removing, from every channel of every image, the frequency at centred position
    ``(r, s)`` together with its conjugate partner ``((2 (H//2) - r) % H, (2 (W//2) - s) % W)``
    (which is ``((H - r) % H, (W - s) % W)`` for even sizes; for odd sizes ``(H - r) % H``
    would not be the conjugate, so the true conjugate is used). The map has the same value at
    both members of a pair. With ``patch_size = p > 1`` a ``p x p`` block and its true
    conjugate block are removed together and the value fills the block; see
    :func:`ablation_units` for the grid, the edges and the units evaluated once.

    The result equals the direct computation (mask the centred spectrum, inverse FFT, real
    part, forward, per-class mean) up to floating-point rounding, but every class is scored
    from the same forward passes and the removal is a subtraction of the pair's sinusoid,
    computed for a whole batch of (unit, image) combinations at once.

    Under ``torchrun`` (:mod:`fslib.distributed`) the units are shared among the ranks in the
    batches a single process would form, each rank checkpoints its own share (``checkpoint``
    with ``.rankRofW`` before the suffix), and the partial maps are summed: every rank returns
    the map a single process computes.

    Parameters
    ----------
    model : nn.Module
        Maps ``(B, C, H, W)`` to logits ``(B, num_classes)``. Evaluated in eval mode (its
        previous mode is restored) on ``device``, where it is moved.
    images : Tensor, shape (N, C, H, W), float
        Exactly what the model takes (already normalised); the computation runs in its dtype,
        which must be the dtype of the model's parameters (TypeError naming both otherwise:
        nothing is converted behind your back). NaN or infinite values are a ValueError.
    labels : Tensor, shape (N,), int
        Every class in ``0..num_classes-1`` needs at least one image.
    num_classes : int
        The number of the model's outputs (checked at the first forward: ValueError).
    patch_size : int
        1 (single frequencies, the paper's 32x32 setting) or p > 1 (p x p blocks).
    batch_size : int or None
        Images per forward pass (ablated copies). ``None``: as many as keep the ablated
        inputs under 32 MiB, at most 64 on a CPU and 1024 on an accelerator. Each forward
        holds ``K`` units applied to ``G`` images, ``G = min(N, batch_size)`` and
        ``K = batch_size // G``.
    device : str or torch.device
        ``"auto"``: CUDA when present, else CPU.
    progress : bool
        Show a tqdm bar over the units.
    checkpoint : path or None
        ``.npz`` file for partial sums. Saved atomically at most every ``checkpoint_every``
        seconds, at the end, and when the loop is interrupted (Ctrl-C or an error: every
        finished unit is kept); resumed when present. It records a fingerprint of the model
        parameters, images, labels, ``num_classes``, ``patch_size`` and dtype; a checkpoint
        made with anything different raises ``ValueError`` naming what differs. It carries a
        digest record (:mod:`fslib.artefacts`): a damaged one is moved aside with a warning
        and the ablation starts from the beginning.
    checkpoint_every : float
        Seconds between checkpoint saves.

    Returns
    -------
    Tensor, shape (num_classes, H, W), float64, centred layout.
    """
    labels = _check_inputs(images, labels, num_classes, model)
    n, c, h, w = images.shape
    counts = torch.bincount(labels, minlength=num_classes).double()
    _check_counts(counts)
    units = ablation_units(h, w, patch_size)
    n_units = len(units)
    dev = resolve_device(device)
    bs = batch_size or _auto_batch_size(c, h, w, images.element_size(), dev)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    g = min(n, bs)
    k = max(1, bs // g)

    sums = torch.zeros(n_units, num_classes, dtype=torch.float64)
    done = torch.zeros(n_units, dtype=torch.bool)
    rank, world_size = distributed.world()
    # Units go to ranks in whole chunks of k (chunk i to rank i % world_size): every chunk is the
    # batch a single process would form, so the sharded maps equal the single-process maps.
    chunk_of = torch.arange(n_units) // k
    mine = chunk_of % world_size == rank
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and world_size > 1:  # one checkpoint per rank, resumed by the same rank
        ckpt = ckpt.with_name(f"{ckpt.stem}.rank{rank}of{world_size}{ckpt.suffix}")
    fingerprint = None
    if ckpt is not None:
        fingerprint = {
            "model": digest(model),
            "images": digest(images),
            "labels": digest(labels),
            "num_classes": int(num_classes),
            "patch_size": int(patch_size),
            "dtype": str(images.dtype),
        }
        if ckpt.exists():
            sums, done = _load_checkpoint(ckpt, fingerprint, n_units, num_classes) or (sums, done)

    def save() -> None:
        if ckpt is not None:
            artefacts.save_npz(ckpt, sums=sums.numpy(), done=done.numpy(), fingerprint=np.array(json.dumps(fingerprint)))

    todo = (~done & mine).nonzero().flatten()
    model.to(dev)
    groups = [(start, min(start + g, n)) for start in range(0, n, g)]
    # Spectra of every image are computed once and reused by every unit, when they fit.
    cache_spectra = n * c * h * w * 2 * images.element_size() <= (1 << 30)
    spectra_cache: dict[int, torch.Tensor] = {}
    onehot = F.one_hot(labels, num_classes).double()  # (N, num_classes)
    last_save = time.monotonic()
    unit_name = "pair" if patch_size == 1 else "block"
    total = int(mine.sum())
    bar = tqdm(total=total, initial=total - len(todo), disable=not progress or rank > 0, desc="ablation",
               unit=unit_name)
    chunks = [todo[chunk_of[todo] == i] for i in torch.unique(chunk_of[todo]).tolist()] if len(todo) else []
    finished = 0
    try:
        with eval_mode(model, cpu_channels_last=True), torch.inference_mode():
            for chunk in chunks:
                pos = units.positions[chunk].to(dev)
                wts = units.weights[chunk].to(dev)
                basis = _sinusoid_basis(units.positions[chunk], h, w, images.dtype, dev)  # (K, 2M, HW)
                part = torch.zeros(len(chunk), num_classes, dtype=torch.float64)
                for start, stop in groups:
                    x = images[start:stop].to(dev)
                    spec = spectra_cache.get(start)
                    if spec is None:
                        spec = fft_centred(x).reshape(stop - start, c, h * w)
                        if cache_spectra:
                            spectra_cache[start] = spec
                    comp = _removed_components(spec, pos, wts, basis)  # (K, G, C, HW)
                    inputs = (x[None] - comp.reshape(len(chunk), stop - start, c, h, w)).reshape(-1, c, h, w)
                    lab = labels[start:stop].to(dev)
                    loss = F.cross_entropy(_logits(model, inputs, num_classes), lab.repeat(len(chunk)), reduction="none")
                    part += loss.double().cpu().reshape(len(chunk), -1) @ onehot[start:stop]
                # a chunk's sums count only once all its images are in, so a save at any moment is consistent
                sums[chunk] += part
                done[chunk] = True
                finished += len(chunk)
                bar.update(len(chunk))
                if ckpt is not None and time.monotonic() - last_save >= checkpoint_every:
                    save()
                    last_save = time.monotonic()
    except BaseException:  # an interruption (Ctrl-C) or a crash keeps every finished unit for the resume
        if finished:
            save()
        raise
    finally:
        bar.close()
    if len(todo):
        save()
    if world_size > 1:  # every unit was computed by exactly one rank: the sum is the whole map
        distributed.all_reduce_sum(sums)
    means = (sums / counts).T  # (num_classes, U)
    return means[:, units.owner.flatten()].reshape(num_classes, h, w)
