"""Dominant Frequency Maps (DFMs) and the frequency-shortcut test.

The paper ranks every frequency by how much removing it (with its conjugate partner, from
all colour channels of the normalised model input) raises the cross-entropy on a class's
images; the top 5 % of positions form the class's Dominant Frequency Map. A class whose
DFM-filtered images are still recognised (high TPR, low FPR) has a frequency shortcut.

This module computes exactly what the official script computes, but fast:

* :func:`ablation_loss` scores every class from the same forward passes (per-class means
  of per-image losses), evaluates each conjugate pair (or block) once, removes a frequency
  from a whole batch by subtracting its real sinusoid (the spectrum is computed once per
  image), runs under ``torch.inference_mode`` and checkpoints partial sums.
* :func:`dominant_frequency_maps` thresholds the loss maps into conjugate-symmetric masks.
* :func:`evaluate_dfms` applies each class's DFM to every image and reports TPR / FPR with
  bootstrap intervals and a null baseline of random masks with the same radial profile.
* :func:`save_dfms` / :func:`load_dfms` keep maps in ``.npz`` with a JSON provenance record.
* For trained runs (:mod:`fslib.runs`): :func:`rank_score_split` (rank on some images,
  score on others), :func:`run_dfms` and :func:`run_shortcut_test` (both cached under
  ``cache_dir("dfms")``), :func:`shortcut_analysis` (the three in a row, the book's
  protocol) and :func:`threshold_sweep` (the paper's 1, 5, 10, 20 %).
* Describing DFMs: :func:`planted_overlap` (against planted or ADCS positions, with
  chance levels), :func:`planted_targets` (the synthetic sets' design),
  :func:`dfm_profile` (band shares, radius, axes) and :func:`example_filtered` (Fig. 1).

Positions are in the centred layout of :mod:`fslib.spectral` (DC at ``(H // 2, W // 2)``).

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
* It thresholds with ``>=`` the value at rank ``int(top * H * W)``, so ties (both members
  of a pair, whole blocks) can overshoot the count; see :func:`dominant_frequency_maps`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fslib.device import resolve_device
from fslib.io import load_npz, save_npz, to_jsonable
from fslib.spectral import (
    conjugate_index,
    conjugate_pairs,
    fft_centred,
    ifft_centred,
    radial_bins,
    symmetrize_mask,
)

__all__ = [
    "DFMConfig",
    "AblationUnits",
    "ablation_units",
    "ablation_loss",
    "class_losses",
    "dominant_frequency_maps",
    "evaluate_dfms",
    "split_indices",
    "iou",
    "save_dfms",
    "load_dfms",
    "SavedDFMs",
    "rank_score_split",
    "dfm_cache_path",
    "run_dfms",
    "run_shortcut_test",
    "threshold_sweep",
    "ShortcutAnalysis",
    "VERDICTS",
    "shortcut_verdict",
    "shortcut_analysis",
    "planted_overlap",
    "planted_targets",
    "dfm_profile",
    "example_filtered",
]

PAPER_THRESHOLDS = (0.01, 0.05, 0.10, 0.20)


@dataclass(frozen=True)
class DFMConfig:
    """Settings of a DFM analysis; defaults are the paper's (official code's) values."""

    top: float = 0.05                        # paper: top 5 % of the H x W positions
    thresholds: tuple = PAPER_THRESHOLDS     # official code saves DFMs at 1, 5, 10, 20 %
    patch_size: int = 1                      # official default 1; paper likely 2 at 224 px
    rank_on: str = "same"                    # official: rank and score on the same test images
    n_boot: int = 1000                       # bootstrap resamples for the TPR / FPR intervals
    n_null: int = 100                        # random same-profile masks per class (null)
    paper_tpr: float = 0.6                   # follow-up paper: TPR >= 0.6 is a strong shortcut

    def __post_init__(self) -> None:
        if self.rank_on not in ("same", "split"):
            raise ValueError(f"rank_on must be 'same' or 'split', got {self.rank_on!r}")
        _check_top(self.top)
        for t in self.thresholds:
            _check_top(t)
        if not (isinstance(self.patch_size, int) and self.patch_size >= 1):
            raise ValueError(f"patch_size must be a positive int, got {self.patch_size!r}")


# --------------------------------------------------------------------------- units
@dataclass(frozen=True)
class AblationUnits:
    """The sets of positions removed together by :func:`ablation_loss`.

    Attributes
    ----------
    positions : Tensor, shape (U, M), int64
        Flat centred indices ``r * W + s`` of one member of every conjugate pair in the
        removed set of each unit (padded with 0 where ``weights`` is 0).
    weights : Tensor, shape (U, M), float64
        2 for a pair whose partner is another position (its sinusoid counts twice), 1 for a
        self-conjugate position, 0 for padding.
    owner : Tensor, shape (H, W), int64
        The unit whose value fills each position of the loss map.
    size : Tensor, shape (U,), int64
        Number of positions each unit removes (both members of every pair).
    """

    positions: torch.Tensor
    weights: torch.Tensor
    owner: torch.Tensor
    size: torch.Tensor

    def __len__(self) -> int:
        return int(self.positions.shape[0])


def ablation_units(h: int, w: int, patch_size: int = 1) -> AblationUnits:
    """Enumerate the removals of an ``H x W`` spectrum, each evaluated once.

    ``patch_size = 1``: one unit per conjugate pair, in the order of
    :func:`fslib.spectral.conjugate_pairs`; both members own the unit's value.

    ``patch_size = p > 1``: the centred layout is cut into blocks on a grid of stride ``p``
    starting at centred index 0 (as in the official code). When ``H`` or ``W`` is not a
    multiple of ``p`` the last row / column of blocks is truncated to the remaining
    ``H % p`` rows / ``W % p`` columns. A unit removes a block ``B`` together with its true
    conjugate block ``conj(B)`` (the position-wise partners of ``B``, which may overlap ``B``
    or straddle several grid blocks); its value fills ``B``. Blocks whose removed sets
    coincide (``conj(B1) == B2``) form one unit, evaluated once, whose value fills both.
    For even ``p`` the mirror of a grid block is never a grid block (the mirror centre, DC,
    is a position, not a block edge), so the loss map is block-constant but, unlike for
    ``p = 1``, not conjugate-symmetric.

    Note on odd sizes: the true conjugate of centred index ``k`` is ``(2 * (n // 2) - k) % n``
    (see :mod:`fslib.spectral`), which equals ``(n - k) % n`` only for even ``n``.

    >>> u = ablation_units(32, 32)
    >>> len(u), int(u.size.sum())       # 514 pairs cover the 1024 positions once
    (514, 1024)
    >>> len(ablation_units(8, 8, 2))    # 16 blocks, none its own mirror
    16
    """
    if not (isinstance(patch_size, int) and patch_size >= 1):
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    if patch_size > min(h, w):
        raise ValueError(f"patch_size={patch_size} exceeds the image size {h}x{w}")
    if patch_size == 1:
        pairs = conjugate_pairs(h, w)
        rep = pairs[:, 0] * w + pairs[:, 1]
        partner = pairs[:, 2] * w + pairs[:, 3]
        self_conj = rep == partner
        owner = torch.empty(h * w, dtype=torch.long)
        idx = torch.arange(len(pairs))
        owner[rep] = idx
        owner[partner] = idx
        return AblationUnits(
            positions=rep[:, None],
            weights=torch.where(self_conj, 1.0, 2.0).to(torch.float64)[:, None],
            owner=owner.reshape(h, w),
            size=torch.where(self_conj, 1, 2).long(),
        )
    rows_c = conjugate_index(h).tolist()
    cols_c = conjugate_index(w).tolist()
    keys: dict[tuple[int, ...], int] = {}
    members: list[list[int]] = []
    owner = torch.empty(h, w, dtype=torch.long)
    for r0 in range(0, h, patch_size):
        rows = range(r0, min(r0 + patch_size, h))
        for s0 in range(0, w, patch_size):
            cols = range(s0, min(s0 + patch_size, w))
            block = {r * w + s for r in rows for s in cols}
            mirror = {rows_c[r] * w + cols_c[s] for r in rows for s in cols}
            key = tuple(sorted(block | mirror))
            if key not in keys:
                keys[key] = len(members)
                members.append(list(key))
            owner[r0 : r0 + patch_size, s0 : s0 + patch_size] = keys[key]
    reps, wts, sizes = [], [], []
    for flat in members:
        rep, wt = [], []
        for q in flat:
            partner = rows_c[q // w] * w + cols_c[q % w]
            if q <= partner:
                rep.append(q)
                wt.append(1.0 if q == partner else 2.0)
        reps.append(rep)
        wts.append(wt)
        sizes.append(len(flat))
    m = max(len(r) for r in reps)
    positions = torch.zeros(len(reps), m, dtype=torch.long)
    weights = torch.zeros(len(reps), m, dtype=torch.float64)
    for i, (rep, wt) in enumerate(zip(reps, wts)):
        positions[i, : len(rep)] = torch.tensor(rep)
        weights[i, : len(wt)] = torch.tensor(wt)
    return AblationUnits(positions, weights, owner, torch.tensor(sizes))


def _sinusoid_basis(units_pos: torch.Tensor, h: int, w: int, dtype, device) -> torch.Tensor:
    """``cat(cos, sin)`` of the centred frequencies at flat positions, ``(K, 2M, H*W)``.

    Phases are reduced modulo ``H * W`` in integers first, so they stay exact at any size.
    """
    fr = (units_pos // w - h // 2).to(torch.int64)  # (K, M) frequencies in cycles per image
    fs = (units_pos % w - w // 2).to(torch.int64)
    y = torch.arange(h, dtype=torch.int64)
    x = torch.arange(w, dtype=torch.int64)
    turns = (fr[..., None, None] * y[:, None] * w + fs[..., None, None] * x[None, :] * h) % (h * w)
    theta = (2 * math.pi / (h * w)) * turns.to(torch.float64).reshape(*units_pos.shape, h * w)
    return torch.cat([torch.cos(theta), torch.sin(theta)], dim=1).to(device=device, dtype=dtype)


def _removed_components(
    spectra: torch.Tensor, positions: torch.Tensor, weights: torch.Tensor, basis: torch.Tensor
) -> torch.Tensor:
    """Real image components of K removal sets for G images, ``(K, G, C, H*W)``.

    For a real image with centred spectrum X, a conjugate pair {q, q'} contributes
    ``2 Re(X[q] e_q) / (HW)`` and a self-conjugate position ``Re(X[q] e_q) / (HW)``.
    """
    g, c, hw = spectra.shape
    k, m = positions.shape
    coef = spectra[:, :, positions.reshape(-1)].reshape(g, c, k, m)  # (G, C, K, M) complex
    scale = (weights / hw).to(spectra.real.dtype)  # (K, M)
    a = torch.cat([coef.real * scale, -coef.imag * scale], dim=-1)  # (G, C, K, 2M)
    a = a.permute(2, 0, 1, 3).reshape(k, g * c, 2 * m)
    return torch.bmm(a, basis).reshape(k, g, c, hw)


# --------------------------------------------------------------------------- fingerprints
def _tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _model_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(_tensor_digest(t).encode())
    return h.hexdigest()[:16]


def _auto_batch_size(c: int, h: int, w: int, itemsize: int, device: torch.device, budget: int = 1 << 25) -> int:
    """Images per forward: the ablated inputs stay under ``budget`` bytes (32 MiB), and at
    most 64 on a CPU (a CIFAR-10 ResNet18 x0.25 on 2 cores: 6.4 s for 20 images x 1,024
    ablations at 64, 7.4 s at 256) or 1024 on an accelerator."""
    cap = 64 if device.type == "cpu" else 1024
    return int(max(1, min(cap, budget // (c * h * w * itemsize))))


def _check_inputs(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor (N, C, H, W) already normalised for the model, "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    labels = labels.long().cpu()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return labels


def _to_channels_last(module, args):
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.ndim == 4
                 else a for a in args)


class _EvalMode:
    """Put a model in eval mode for a block and restore its previous mode afterwards.

    On a CPU, a model with 2-D convolutions also runs in the channels-last memory layout
    for the block (its 4-D weights are converted, and a forward pre-hook converts its
    inputs): inference of the book's ResNets ran about 1.4 times faster that way on the
    book's CPU (PyTorch 2.x, oneDNN). Only the layout changes, not the values; the weights
    get their previous layout back on exit.
    """

    def __init__(self, model: torch.nn.Module):
        self.model, self.was_training = model, model.training
        self.hook = None
        self.converted = False

    def __enter__(self):
        self.model.eval()
        convs = [m.weight for m in self.model.modules() if isinstance(m, torch.nn.Conv2d)]
        if convs and convs[0].device.type == "cpu":
            if convs[0].is_contiguous():  # not channels-last yet: convert for the block
                self.model.to(memory_format=torch.channels_last)
                self.converted = True
            self.hook = self.model.register_forward_pre_hook(_to_channels_last)

    def __exit__(self, *exc):
        if self.hook is not None:
            self.hook.remove()
        if self.converted:
            self.model.to(memory_format=torch.contiguous_format)
        self.model.train(self.was_training)


# --------------------------------------------------------------------------- ablation
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
    labels = _check_inputs(images, labels, num_classes)
    dev = resolve_device(device)
    model.to(dev)
    bs = batch_size or _auto_batch_size(*images.shape[1:], images.element_size(), dev)
    sums = torch.zeros(num_classes, dtype=torch.float64)
    with _EvalMode(model):
        for start in range(0, len(images), bs):
            lab = labels[start : start + bs]
            logits = model(images[start : start + bs].to(dev))
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
    data = load_npz(path)
    stored = json.loads(str(data["fingerprint"]))
    differs = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
    if differs:
        detail = ", ".join(f"{k}: checkpoint {stored.get(k)!r} vs now {fingerprint.get(k)!r}" for k in differs)
        raise ValueError(
            f"checkpoint {path} was made with different inputs ({detail}); delete it or pass another path"
        )
    sums = torch.from_numpy(data["sums"])
    done = torch.from_numpy(data["done"])
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

    Parameters
    ----------
    model : nn.Module
        Maps ``(B, C, H, W)`` to logits ``(B, num_classes)``. Evaluated in eval mode (its
        previous mode is restored) on ``device``, where it is moved.
    images : Tensor, shape (N, C, H, W), float
        Exactly what the model takes (already normalised); the computation runs in its dtype.
    labels : Tensor, shape (N,), int
        Every class in ``0..num_classes-1`` needs at least one image.
    num_classes : int
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
        seconds and at the end; resumed when present. It records a fingerprint of the model
        parameters, images, labels, ``num_classes``, ``patch_size`` and dtype; a checkpoint
        made with anything different raises ``ValueError`` naming what differs.
    checkpoint_every : float
        Seconds between checkpoint saves.

    Returns
    -------
    Tensor, shape (num_classes, H, W), float64, centred layout.
    """
    labels = _check_inputs(images, labels, num_classes)
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
    ckpt = Path(checkpoint) if checkpoint is not None else None
    fingerprint = None
    if ckpt is not None:
        fingerprint = {
            "model": _model_digest(model),
            "images": _tensor_digest(images),
            "labels": _tensor_digest(labels),
            "num_classes": int(num_classes),
            "patch_size": int(patch_size),
            "dtype": str(images.dtype),
        }
        if ckpt.exists():
            sums, done = _load_checkpoint(ckpt, fingerprint, n_units, num_classes)

    def save() -> None:
        if ckpt is not None:
            save_npz(ckpt, sums=sums.numpy(), done=done.numpy(), fingerprint=np.array(json.dumps(fingerprint)))

    todo = (~done).nonzero().flatten()
    model.to(dev)
    groups = [(start, min(start + g, n)) for start in range(0, n, g)]
    # Spectra of every image are computed once and reused by every unit, when they fit.
    cache_spectra = n * c * h * w * 2 * images.element_size() <= (1 << 30)
    spectra_cache: dict[int, torch.Tensor] = {}
    onehot = F.one_hot(labels, num_classes).double()  # (N, num_classes)
    last_save = time.monotonic()
    unit_name = "pair" if patch_size == 1 else "block"
    bar = tqdm(total=n_units, initial=n_units - len(todo), disable=not progress, desc="ablation", unit=unit_name)
    with _EvalMode(model), torch.inference_mode():
        for chunk in todo.split(k) if len(todo) else ():
            pos = units.positions[chunk].to(dev)
            wts = units.weights[chunk].to(dev)
            basis = _sinusoid_basis(units.positions[chunk], h, w, images.dtype, dev)  # (K, 2M, HW)
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
                loss = F.cross_entropy(model(inputs), lab.repeat(len(chunk)), reduction="none")
                sums[chunk] += loss.double().cpu().reshape(len(chunk), -1) @ onehot[start:stop]
            done[chunk] = True
            bar.update(len(chunk))
            if ckpt is not None and time.monotonic() - last_save >= checkpoint_every:
                save()
                last_save = time.monotonic()
    bar.close()
    if len(todo):
        save()
    means = (sums / counts).T  # (num_classes, U)
    return means[:, units.owner.flatten()].reshape(num_classes, h, w)


# --------------------------------------------------------------------------- thresholds
def _check_top(top: float) -> None:
    if not (isinstance(top, (int, float)) and 0 < top <= 1):
        raise ValueError(f"top must be a fraction in (0, 1], e.g. 0.05 for 5 %, got {top!r}")


def dominant_frequency_maps(loss_maps: torch.Tensor, top: float = 0.05) -> torch.Tensor:
    """Keep the top fraction of positions by loss: the Dominant Frequency Maps.

    Positions are ranked as conjugate pairs (the unit that is removed together), by the
    larger of the two members' values (equal for ``patch_size = 1`` maps; for block maps a
    pair is scored by the best removal that contained it). Pairs are taken in order of
    decreasing loss, ties broken by the flat index of the pair's representative (the
    smaller flat index), until adding the next pair would exceed ``round(top * H * W)``
    positions (round half up), counting both members of each pair. So the count is exactly
    the target, or one less when the next pair in rank order would overshoot by one; a
    pair is never split and later pairs are not searched for a single self-conjugate fill.

    Parameters
    ----------
    loss_maps : Tensor, shape (C, H, W) or (H, W)
    top : float
        Fraction of the ``H * W`` positions; the paper uses 0.01, 0.05, 0.10, 0.20.

    Returns
    -------
    Tensor, bool, the shape of ``loss_maps``; conjugate-symmetric.

    >>> m = torch.zeros(1, 4, 4); m[0, 1, 1] = m[0, 3, 3] = 1.0   # one pair
    >>> d = dominant_frequency_maps(m, top=2 / 16)
    >>> d[0].nonzero().tolist()
    [[1, 1], [3, 3]]
    """
    _check_top(top)
    squeeze = loss_maps.ndim == 2
    maps = loss_maps[None] if squeeze else loss_maps
    if maps.ndim != 3:
        raise ValueError(f"loss_maps must have shape (C, H, W) or (H, W), got {tuple(loss_maps.shape)}")
    if torch.isnan(maps).any():
        raise ValueError("loss_maps contain NaN")
    cls, h, w = maps.shape
    target = int(math.floor(top * h * w + 0.5))
    pairs = conjugate_pairs(h, w)
    size = torch.where((pairs[:, :2] == pairs[:, 2:]).all(1), 1, 2)
    flat = maps.reshape(cls, h * w).double().cpu()
    rep, partner = pairs[:, 0] * w + pairs[:, 1], pairs[:, 2] * w + pairs[:, 3]
    score = torch.maximum(flat[:, rep], flat[:, partner])  # (C, P), pairs in flat-index order
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    taken = torch.cumsum(size[order], dim=1) <= target  # sizes > 0, so this is a prefix
    out = torch.zeros(cls, h * w, dtype=torch.bool)
    for i in range(cls):
        chosen = order[i][taken[i]]
        out[i, rep[chosen]] = True
        out[i, partner[chosen]] = True
    out = out.reshape(cls, h, w).to(loss_maps.device)
    return out[0] if squeeze else out


def iou(dfm_a: torch.Tensor, dfm_b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of two sets of DFMs, per class.

    Parameters
    ----------
    dfm_a, dfm_b : Tensor, shape (C, H, W), bool

    Returns
    -------
    Tensor, shape (C,), float64; 1.0 where both maps are empty (identical sets).

    >>> a = torch.tensor([[[True, True], [False, False]]])
    >>> iou(a, torch.tensor([[[True, False], [True, False]]])).tolist()
    [0.3333333333333333]
    """
    if dfm_a.shape != dfm_b.shape:
        raise ValueError(f"DFM shapes differ: {tuple(dfm_a.shape)} vs {tuple(dfm_b.shape)}")
    a, b = dfm_a.bool().flatten(-2), dfm_b.bool().flatten(-2)
    inter = (a & b).sum(-1).double()
    union = (a | b).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def split_indices(labels: torch.Tensor, fraction: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split image indices per class into a ranking part and a scoring part.

    The official code ranks frequencies and scores the DFMs on the same test images, which
    flatters the TPR; ranking on ``rank`` and scoring on ``score`` avoids that.

    Parameters
    ----------
    labels : Tensor, shape (N,), int
    fraction : float
        Share of each class's images used for ranking (rounded, at least 1 and at most
        all but 1 when a class has two or more images).

    Returns
    -------
    (rank, score) : two sorted int64 index tensors that partition ``0..N-1``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction!r}")
    labels = labels.long().cpu()
    gen = torch.Generator().manual_seed(seed)
    rank = []
    for cls in torch.unique(labels).tolist():
        idx = (labels == cls).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        take = min(max(1, round(fraction * len(idx))), max(1, len(idx) - 1))
        rank.append(idx[:take])
    rank_idx = torch.sort(torch.cat(rank)).values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[rank_idx] = False
    return rank_idx, keep.nonzero().flatten()


# --------------------------------------------------------------------------- evaluation
def _null_masks(dfm: torch.Tensor, n_null: int, gen: torch.Generator) -> torch.Tensor:
    """Random conjugate-symmetric masks with the DFM's count in every integer radius bin.

    Within each bin the DFM's self-conjugate positions and its two-member pairs are replaced
    by as many random ones of the same kind, so the count and radial profile match exactly.
    Returns bool ``(n_null, H, W)``.
    """
    h, w = dfm.shape
    pairs = conjugate_pairs(h, w)
    rep, partner = pairs[:, 0] * w + pairs[:, 1], pairs[:, 2] * w + pairs[:, 3]
    single = rep == partner
    bins = radial_bins(h, w).flatten()[rep]
    chosen = dfm.flatten().cpu()[rep]
    out = torch.zeros(n_null, h * w, dtype=torch.bool)
    for b in torch.unique(bins[chosen]).tolist():
        for kind in (single, ~single):
            pool = ((bins == b) & kind).nonzero().flatten()
            need = int((chosen[pool]).sum())
            if need == 0:
                continue
            pick = torch.rand(n_null, len(pool), generator=gen).argsort(dim=1)[:, :need]
            sel = pool[pick]  # (n_null, need) pair indices
            rows = torch.arange(n_null)[:, None].expand_as(sel)
            out[rows, rep[sel]] = True
            out[rows, partner[sel]] = True
    return out.reshape(n_null, h, w)


@torch.inference_mode()
def _predict_filtered(model, spectra, masks, dev, bs) -> torch.Tensor:
    """Predictions for every (mask, image) combination, int64 ``(K, G)``.

    spectra : (G, C, H, W) complex; masks : (K, H, W) bool, conjugate-symmetric.
    """
    g = spectra.shape[0]
    k_step = max(1, bs // g)
    preds = []
    for start in range(0, len(masks), k_step):
        m = masks[start : start + k_step].to(dev)
        x = ifft_centred(spectra[None] * m[:, None, None]).reshape(-1, *spectra.shape[1:])
        preds.append(model(x.to(spectra.real.dtype)).argmax(1).reshape(len(m), g))
    return torch.cat(preds).cpu()


def evaluate_dfms(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    dfms: torch.Tensor,
    *,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    n_boot: int = 1000,
    n_null: int = 100,
    seed: int = 0,
    paper_tpr: float = 0.6,
    progress: bool = True,
) -> pd.DataFrame:
    """The shortcut test: TPR / FPR of each class on images filtered by its DFM.

    Class ``i``'s DFM is applied to every image (``filter_frequencies``: keep only the DFM's
    frequencies, all channels); ``TPR_i`` = class-``i`` images predicted ``i`` / ``P_i``,
    ``FPR_i`` = other images predicted ``i`` / ``N_i``. Intervals are 95 % percentile
    bootstrap intervals over images (for a proportion, resampling the ``P_i`` outcomes with
    replacement is a binomial draw, which is how it is computed). The null baseline applies
    ``n_null`` random conjugate-symmetric masks with the same number of positions in every
    integer radius bin as the DFM to the class-``i`` images. A class is a ``shortcut`` class
    when its TPR exceeds the null's 95th percentile; ``paper_rule`` is ``TPR >= 0.6``.

    Parameters
    ----------
    model : nn.Module
    images : Tensor, shape (N, C, H, W), float, as the model takes them (normalised)
    labels : Tensor, shape (N,), int
    dfms : Tensor, shape (num_classes, H, W), bool
    batch_size, device, progress : as in :func:`ablation_loss`
    n_boot : int
        Bootstrap resamples (0 leaves the interval columns NaN).
    n_null : int
        Random masks per class (0 leaves the null columns NaN and ``shortcut`` False).
    seed : int
        Seeds the null masks and the bootstrap.
    paper_tpr : float
        Threshold of the paper-style rule.

    Returns
    -------
    DataFrame, one row per class, columns: class, baseline_acc, tpr, tpr_lo, tpr_hi, fpr,
    fpr_lo, fpr_hi, null_tpr_p95, null_tpr_mean, shortcut, paper_rule, n_freq.
    """
    num_classes = dfms.shape[0]
    labels = _check_inputs(images, labels, num_classes)
    if dfms.ndim != 3 or dfms.shape[1:] != images.shape[2:]:
        raise ValueError(f"dfms must have shape ({num_classes}, H, W) = images' H, W, got {tuple(dfms.shape)}")
    counts = torch.bincount(labels, minlength=num_classes)
    _check_counts(counts)
    dev = resolve_device(device)
    model.to(dev)
    n, c, h, w = images.shape
    bs = batch_size or _auto_batch_size(c, h, w, images.element_size(), dev)
    masks = symmetrize_mask(dfms.cpu())  # filter_frequencies keeps a position or its partner
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    preds = torch.empty(num_classes, n, dtype=torch.long)  # prediction under class i's DFM
    base = torch.empty(n, dtype=torch.long)
    g = min(n, bs)
    bar = tqdm(total=n * (num_classes + 1) + n * n_null, disable=not progress, desc="shortcut test", unit="img")
    with _EvalMode(model), torch.inference_mode():
        for start in range(0, n, g):
            x = images[start : start + g].to(dev)
            base[start : start + g] = model(x).argmax(1).cpu()
            spec = fft_centred(x)
            preds[:, start : start + g] = _predict_filtered(model, spec, masks, dev, bs)
            bar.update(len(x) * (num_classes + 1))
        null_tpr = torch.full((num_classes, max(n_null, 1)), float("nan"), dtype=torch.float64)
        if n_null > 0:
            for i in range(num_classes):
                null = _null_masks(masks[i], n_null, gen)
                idx = (labels == i).nonzero().flatten()
                hits = torch.zeros(n_null, dtype=torch.float64)
                for start in range(0, len(idx), g):
                    part = idx[start : start + g]
                    spec = fft_centred(images[part].to(dev))
                    hits += (_predict_filtered(model, spec, null, dev, bs) == i).double().sum(1)
                    bar.update(len(part) * n_null)
                null_tpr[i] = hits / len(idx)
    bar.close()

    rows = []
    for i in range(num_classes):
        pos = labels == i
        p_i, n_i = int(pos.sum()), int((~pos).sum())
        tp = int((preds[i][pos] == i).sum())
        fp = int((preds[i][~pos] == i).sum())
        tpr, fpr = tp / p_i, (fp / n_i if n_i else float("nan"))
        if n_boot > 0:
            tb = rng.binomial(p_i, tpr, size=n_boot) / p_i
            tpr_lo, tpr_hi = np.quantile(tb, [0.025, 0.975])
            if n_i:
                fb = rng.binomial(n_i, fpr, size=n_boot) / n_i
                fpr_lo, fpr_hi = np.quantile(fb, [0.025, 0.975])
            else:
                fpr_lo = fpr_hi = float("nan")
        else:
            tpr_lo = tpr_hi = fpr_lo = fpr_hi = float("nan")
        nt = null_tpr[i].numpy()
        p95 = float(np.quantile(nt, 0.95)) if n_null > 0 else float("nan")
        rows.append(
            {
                "class": i,
                "baseline_acc": float((base[pos] == i).double().mean()),
                "tpr": tpr,
                "tpr_lo": float(tpr_lo),
                "tpr_hi": float(tpr_hi),
                "fpr": fpr,
                "fpr_lo": float(fpr_lo),
                "fpr_hi": float(fpr_hi),
                "null_tpr_p95": p95,
                "null_tpr_mean": float(nt.mean()) if n_null > 0 else float("nan"),
                "shortcut": bool(n_null > 0 and tpr > p95),
                "paper_rule": bool(tpr >= paper_tpr),
                "n_freq": int(masks[i].sum()),
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- storage
class SavedDFMs(NamedTuple):
    """What :func:`load_dfms` returns."""

    loss_maps: torch.Tensor  # (C, H, W) float64
    dfms: dict  # {top: bool (C, H, W)}
    provenance: dict


def save_dfms(
    path: str | os.PathLike,
    loss_maps: torch.Tensor,
    dfms: Mapping[float, torch.Tensor],
    provenance: dict,
) -> None:
    """Save loss maps and DFMs to ``.npz`` (atomically) with a JSON provenance record.

    Parameters
    ----------
    path : path of the ``.npz``
    loss_maps : Tensor, shape (C, H, W)
    dfms : mapping from threshold (e.g. 0.05) to bool Tensor (C, H, W)
    provenance : dict
        JSON-ready record: model run, images, patch size, ... The thresholds are added.
        Stored inside the archive as a unicode string array, so no pickle is needed.
    """
    if not isinstance(dfms, Mapping):
        raise TypeError(f"dfms must be a mapping {{top: (C, H, W) bool tensor}}, got {type(dfms).__name__}")
    arrays = {"loss_maps": loss_maps.detach().cpu().double().numpy()}
    tops = []
    for top, dfm in dfms.items():
        _check_top(top)
        if dfm.shape != loss_maps.shape:
            raise ValueError(f"DFM for top={top} has shape {tuple(dfm.shape)}, loss maps {tuple(loss_maps.shape)}")
        arrays[f"dfm_{len(tops)}"] = dfm.detach().cpu().bool().numpy()
        tops.append(float(top))
    record = dict(to_jsonable(provenance))
    record["thresholds"] = tops
    arrays["provenance"] = np.array(json.dumps(record, sort_keys=True))
    save_npz(path, **arrays)


def load_dfms(path: str | os.PathLike) -> SavedDFMs:
    """Load what :func:`save_dfms` wrote (``allow_pickle=False``)."""
    data = load_npz(path)
    record = json.loads(str(data["provenance"]))
    dfms = {top: torch.from_numpy(data[f"dfm_{i}"]) for i, top in enumerate(record["thresholds"])}
    return SavedDFMs(torch.from_numpy(data["loss_maps"]), dfms, record)


# --------------------------------------------------------------------------- runs: cached DFMs and tests
def rank_score_split(labels: torch.Tensor, n_rank: int, n_score: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint class-balanced index sets: images to rank DFMs on and images to score them on.

    The official code ranks and scores on the same test images, which flatters the TPR; the
    book ranks on one part of a split and scores on another. The ranking set depends only on
    ``labels``, ``n_rank`` and ``seed`` (not on ``n_score``), so chapters that rank on the
    same number of images share the cached DFMs of :func:`run_dfms`.

    Parameters
    ----------
    labels : Tensor, shape (N,), int
    n_rank, n_score : int
        Total sizes; each is spread evenly over the classes present (the first classes get
        one more image when it does not divide).
    seed : int

    Returns
    -------
    (rank, score) : sorted int64 index tensors, disjoint.

    >>> r, s = rank_score_split(torch.tensor([0, 0, 0, 1, 1, 1]), 2, 4)
    >>> len(r), len(s), set(r.tolist()) & set(s.tolist())
    (2, 4, set())
    """
    for name, n in (("n_rank", n_rank), ("n_score", n_score)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    labels = labels.long().cpu()
    classes = torch.unique(labels).tolist()
    gen = torch.Generator().manual_seed(seed)
    per = {name: [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
           for name, n in (("rank", n_rank), ("score", n_score))}
    rank, score = [], []
    for i, c in enumerate(classes):
        idx = (labels == c).nonzero().flatten()
        need = per["rank"][i] + per["score"][i]
        if need > len(idx):
            raise ValueError(f"class {c} has {len(idx)} images, fewer than the {need} needed for "
                             f"n_rank={n_rank}, n_score={n_score}")
        idx = idx[torch.randperm(len(idx), generator=gen)]
        rank.append(idx[: per["rank"][i]])
        score.append(idx[per["rank"][i] : need])
    return torch.sort(torch.cat(rank)).values, torch.sort(torch.cat(score)).values


def _digest(t: torch.Tensor) -> str:
    """16 hex digits of the sha256 of a tensor's bytes (the key format of ``fslib.ood``)."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _run_classes(run, images: torch.Tensor) -> int:
    """Number of logits of ``run.model`` (one forward of one image)."""
    with torch.inference_mode():
        params = next(run.model.parameters(), None)
        probe = run.normalize(images[:1])
        with _EvalMode(run.model):
            out = run.model(probe.to(params.device) if params is not None else probe)
    return int(out.shape[1])


def _check_uint8(images: torch.Tensor, who: str) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"{who} takes raw uint8 images (N, C, H, W) (it normalises them with run.normalize), "
                        f"got {images.dtype} {tuple(images.shape)}")


def dfm_cache_path(run, images: torch.Tensor, labels: torch.Tensor, patch_size: int = 1) -> Path:
    """Where :func:`run_dfms` keeps the DFMs of ``run`` ranked on ``images``:
    ``cache_dir("dfms")/<run folder>-<images digest>-<labels digest>-p<patch_size>.npz``."""
    from fslib.paths import cache_dir

    return cache_dir("dfms") / f"{Path(run.path).name}-{_digest(images)}-{_digest(labels.long().cpu())}-p{patch_size}.npz"


def run_dfms(
    run,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    thresholds=PAPER_THRESHOLDS,
    patch_size: int = 1,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> SavedDFMs:
    """Loss maps and DFMs of a trained run, computed once and kept in the cache.

    :func:`ablation_loss` on ``run.normalize(images)``, thresholded at every value of
    ``thresholds`` (:func:`dominant_frequency_maps`) and saved with :func:`save_dfms` at
    :func:`dfm_cache_path`: the key is the run folder (its config hash and the fslib
    version), a digest of the images and of the labels, and ``patch_size``. The threshold is
    not part of the key: a threshold missing from a cached file is derived from its stored
    loss maps (no new ablation) and added to the file. An interrupted ablation resumes from
    a checkpoint beside the file. The batch size and device change only the rounding of the
    losses, so they are not part of the key either.

    Parameters
    ----------
    run : fslib.runs.Run (anything with ``model``, ``normalize`` and ``path``)
    images : Tensor, shape (N, C, H, W), uint8, the ranking images
    labels : Tensor, shape (N,), int, every class present
    thresholds : fractions of positions kept (paper: 1, 5, 10, 20 %)
    patch_size, batch_size, device, progress : as in :func:`ablation_loss`

    Returns
    -------
    SavedDFMs: ``loss_maps`` (C, H, W) float64, ``dfms`` {threshold: bool (C, H, W)},
    ``provenance`` (run, image and label digests, counts, patch size, thresholds, and for a
    file this function computed: ``seconds`` of the ablation, ``units``, ``forwards``).
    """
    _check_uint8(images, "run_dfms")
    for t in thresholds:
        _check_top(t)
    labels = labels.long().cpu()
    path = dfm_cache_path(run, images, labels, patch_size)
    if path.exists():
        saved = load_dfms(path)
        missing = [float(t) for t in thresholds if float(t) not in saved.dfms]
        if not missing:
            return saved
        maps = {**saved.dfms, **{t: dominant_frequency_maps(saved.loss_maps, t) for t in missing}}
        provenance = {k: v for k, v in saved.provenance.items() if k != "thresholds"}
        save_dfms(path, saved.loss_maps, maps, provenance)
        return load_dfms(path)
    num_classes = _run_classes(run, images)
    partial = path.with_name(path.stem + ".partial.npz")
    start = time.perf_counter()
    loss = ablation_loss(run.model, run.normalize(images), labels, num_classes, patch_size=patch_size,
                         batch_size=batch_size, device=device, progress=progress, checkpoint=partial)
    seconds = time.perf_counter() - start
    units = len(ablation_units(images.shape[2], images.shape[3], patch_size))
    maps = {float(t): dominant_frequency_maps(loss, t) for t in thresholds}
    provenance = {"run": Path(run.path).name, "images": _digest(images), "labels": _digest(labels),
                  "n_images": len(labels), "counts": torch.bincount(labels, minlength=num_classes).tolist(),
                  "patch_size": patch_size, "seconds": seconds, "units": units, "forwards": units * len(labels)}
    save_dfms(path, loss, maps, provenance)
    partial.unlink(missing_ok=True)
    return load_dfms(path)


def run_shortcut_test(
    run,
    images: torch.Tensor,
    labels: torch.Tensor,
    dfms: torch.Tensor,
    *,
    n_boot: int = 1000,
    n_null: int = 100,
    seed: int = 0,
    paper_tpr: float = 0.6,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """:func:`evaluate_dfms` of a trained run on raw images, cached as a CSV.

    The key is the run folder, digests of the images, labels and DFMs, and ``n_boot``,
    ``n_null``, ``seed`` and ``paper_tpr`` (the file lives beside :func:`run_dfms`'s). The
    images are normalised with ``run.normalize`` before filtering, as the official code
    filters the normalised model input.

    Parameters
    ----------
    run : fslib.runs.Run
    images : Tensor, shape (N, C, H, W), uint8, the scoring images
    labels : Tensor, shape (N,), int
    dfms : Tensor, shape (num_classes, H, W), bool
    n_boot, n_null, seed, paper_tpr, batch_size, device, progress : as in :func:`evaluate_dfms`

    Returns
    -------
    DataFrame, as :func:`evaluate_dfms`.
    """
    from fslib.io import atomic_write_text, stable_hash
    from fslib.paths import cache_dir

    _check_uint8(images, "run_shortcut_test")
    labels = labels.long().cpu()
    dfms = dfms.bool().cpu()
    key = stable_hash({"images": _digest(images), "labels": _digest(labels), "dfms": _digest(dfms),
                       "shape": list(dfms.shape), "n_boot": n_boot, "n_null": n_null, "seed": seed,
                       "paper_tpr": paper_tpr})
    path = cache_dir("dfms") / f"{Path(run.path).name}-test-{key}.csv"
    if path.exists():
        return pd.read_csv(path)
    table = evaluate_dfms(run.model, run.normalize(images), labels, dfms, batch_size=batch_size, device=device,
                          n_boot=n_boot, n_null=n_null, seed=seed, paper_tpr=paper_tpr, progress=progress)
    atomic_write_text(path, table.to_csv(index=False))
    return table


def threshold_sweep(run, images: torch.Tensor, labels: torch.Tensor, dfms: Mapping[float, torch.Tensor],
                    **kwargs) -> pd.DataFrame:
    """The shortcut test at several thresholds: :func:`run_shortcut_test` for each DFM set.

    Parameters
    ----------
    run, images, labels : as in :func:`run_shortcut_test`
    dfms : mapping threshold (e.g. 0.05) -> bool Tensor (num_classes, H, W)
    **kwargs : passed to :func:`run_shortcut_test`

    Returns
    -------
    DataFrame, the tables stacked with a ``top`` column first.
    """
    if not isinstance(dfms, Mapping) or not dfms:
        raise ValueError("dfms must be a non-empty mapping {threshold: (C, H, W) bool tensor}")
    tables = []
    for top in sorted(dfms):
        _check_top(top)
        t = run_shortcut_test(run, images, labels, dfms[top], **kwargs)
        t.insert(0, "top", float(top))
        tables.append(t)
    return pd.concat(tables, ignore_index=True)


@dataclass(frozen=True)
class ShortcutAnalysis:
    """What :func:`shortcut_analysis` returns.

    Attributes
    ----------
    rank, score : Tensor, int64, indices of the ranking and the scoring images
    saved : SavedDFMs, the loss maps and the DFMs at every threshold (from :func:`run_dfms`)
    top : float, the threshold of ``dfms`` and ``table``
    table : DataFrame, :func:`run_shortcut_test` of the ``top`` DFMs on the scoring images
    """

    rank: torch.Tensor
    score: torch.Tensor
    saved: SavedDFMs
    top: float
    table: pd.DataFrame

    @property
    def dfms(self) -> torch.Tensor:
        """The DFMs at ``top``, bool ``(num_classes, H, W)``."""
        return self.saved.dfms[self.top]


def shortcut_analysis(
    run,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    n_rank: int,
    n_score: int,
    top: float = 0.05,
    thresholds=PAPER_THRESHOLDS,
    patch_size: int = 1,
    n_null: int = 100,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> ShortcutAnalysis:
    """The book's protocol for one model: rank DFMs on some images, score them on others.

    :func:`rank_score_split` draws ``n_rank`` ranking and ``n_score`` disjoint scoring
    images (class-balanced, ``seed``); :func:`run_dfms` ranks the frequencies on the first
    and :func:`run_shortcut_test` tests the ``top`` DFMs on the second. Both are cached.

    Parameters
    ----------
    run : fslib.runs.Run
    images : Tensor, shape (N, C, H, W), uint8; labels : Tensor, shape (N,), int
    n_rank, n_score : int, numbers of ranking and scoring images
    top : float, the threshold tested (paper: 0.05); it is added to ``thresholds``
    thresholds, patch_size : as in :func:`run_dfms`
    n_null, n_boot, seed : as in :func:`evaluate_dfms` (``seed`` also draws the split)
    batch_size, device, progress : as in :func:`ablation_loss`

    Returns
    -------
    ShortcutAnalysis
    """
    _check_top(top)
    rank, score = rank_score_split(labels, n_rank, n_score, seed)
    tops = tuple(dict.fromkeys([*(float(t) for t in thresholds), float(top)]))
    saved = run_dfms(run, images[rank], labels[rank], thresholds=tops, patch_size=patch_size,
                     batch_size=batch_size, device=device, progress=progress)
    table = run_shortcut_test(run, images[score], labels[score], saved.dfms[float(top)], n_boot=n_boot,
                              n_null=n_null, seed=seed, batch_size=batch_size, device=device, progress=progress)
    return ShortcutAnalysis(rank, score, saved, float(top), table)


VERDICTS = ("holds", "partly", "does not hold")


def shortcut_verdict(table: pd.DataFrame, paper_tpr: float = 0.6, max_fpr: float = 0.1) -> tuple[str, pd.Series]:
    """The book's reading of a shortcut-test table for claim 3 of the paper.

    A class has a *strong* frequency shortcut when its DFM alone beats the null
    (``shortcut``), reaches the paper-style ``TPR >= paper_tpr`` and keeps ``FPR <= max_fpr``
    (the DFM does not pull other classes' images into the class). The claim "holds" when at
    least one class has a strong shortcut, "partly" when some class beats its null but none
    is strong, and "does not hold" when no class beats its null.

    Parameters
    ----------
    table : DataFrame from :func:`evaluate_dfms` (columns tpr, fpr, shortcut)
    paper_tpr, max_fpr : float

    Returns
    -------
    (verdict, strong) : one of :data:`VERDICTS`, and a bool Series (one per row)

    >>> t = pd.DataFrame({"tpr": [0.9, 0.7], "fpr": [0.05, 0.3], "shortcut": [True, True]})
    >>> shortcut_verdict(t)[0], shortcut_verdict(t)[1].tolist()
    ('holds', [True, False])
    """
    strong = table["shortcut"].astype(bool) & (table["tpr"] >= paper_tpr) & (table["fpr"] <= max_fpr)
    if strong.any():
        return VERDICTS[0], strong
    return (VERDICTS[1] if table["shortcut"].astype(bool).any() else VERDICTS[2]), strong


# --------------------------------------------------------------------------- describing DFMs
def _names(names, c: int) -> list[str]:
    out = list(names) if names is not None else [str(i) for i in range(c)]
    if len(out) != c:
        raise ValueError(f"{len(out)} class names for {c} maps")
    return out


def planted_overlap(dfms: torch.Tensor, targets: torch.Tensor, classes=None) -> pd.DataFrame:
    """How much of each class's DFM falls on a target set of positions, against chance.

    Used for the planted structure of the synthetic sets (C2's special frequencies, C0's
    diagonal, C3's band) and for the positions where a class's ADCS is highest.

    Parameters
    ----------
    dfms : Tensor, shape (C, H, W), bool
    targets : Tensor, shape (C, H, W), bool; row ``c`` holds class ``c``'s target positions
    classes : names of the C classes

    Returns
    -------
    DataFrame indexed by class: ``n_freq`` (DFM size), ``n_target``, ``hits`` (positions in
    both), ``recall`` (hits / n_target), ``recall_chance`` (n_freq / (H W): the expected
    recall of a random mask of the DFM's size), ``precision`` (hits / n_freq),
    ``precision_chance`` (n_target / (H W)), ``lift`` (precision / precision_chance) and
    ``iou``. Ratios with a zero denominator are NaN.

    >>> d = torch.zeros(1, 4, 4, dtype=torch.bool); d[0, 0, :2] = True
    >>> t = torch.zeros(1, 4, 4, dtype=torch.bool); t[0, 0] = True
    >>> planted_overlap(d, t)[["hits", "recall", "precision", "lift"]].values.tolist()
    [[2.0, 0.5, 1.0, 4.0]]
    """
    if dfms.shape != targets.shape or dfms.ndim != 3:
        raise ValueError(f"dfms and targets must both be (C, H, W), got {tuple(dfms.shape)} and {tuple(targets.shape)}")
    c, h, w = dfms.shape
    d, t = dfms.bool().cpu().flatten(1), targets.bool().cpu().flatten(1)
    n_freq, n_target = d.sum(1).double(), t.sum(1).double()
    hits = (d & t).sum(1).double()
    union = (d | t).sum(1).double()
    nan = torch.tensor(float("nan"), dtype=torch.float64)

    def ratio(a, b):
        return torch.where(b > 0, a / torch.where(b > 0, b, torch.ones_like(b)), nan)

    precision, precision_chance = ratio(hits, n_freq), n_target / (h * w)
    table = pd.DataFrame({
        "n_freq": n_freq.long().numpy(), "n_target": n_target.long().numpy(), "hits": hits.numpy(),
        "recall": ratio(hits, n_target).numpy(), "recall_chance": (n_freq / (h * w)).numpy(),
        "precision": precision.numpy(), "precision_chance": precision_chance.numpy(),
        "lift": ratio(precision, precision_chance).numpy(), "iou": ratio(hits, union).numpy(),
    }, index=pd.Index(_names(classes, c), name="class"))
    return table


def planted_targets(name: str) -> torch.Tensor:
    """Where each class of a synthetic set was built to be distinctive, bool ``(4, H, W)``.

    C0: the ``u = v`` diagonal (its thin 45-degree lines); C1: everything outside band k
    (no DC); C2: its special frequencies; C3: band k (no DC). From
    :func:`fslib.synthetic.special_frequencies` and :func:`fslib.synthetic.class_support`.
    """
    from fslib import synthetic

    masks = synthetic.class_support(name).clone()
    for c, positions in synthetic.special_frequencies(name).items():
        masks[c] = False
        rows, cols = torch.tensor(positions).T
        masks[c, rows, cols] = True
    return masks


def dfm_profile(dfms: torch.Tensor, classes=None, reference: bool = True) -> pd.DataFrame:
    """Where each DFM sits in the spectrum: its share of positions in each band, and more.

    Parameters
    ----------
    dfms : Tensor, shape (C, H, W), bool
    classes : names of the C classes
    reference : add a row ``"all positions"`` (the whole spectrum: what a DFM spread at
        random would show)

    Returns
    -------
    DataFrame indexed by class: ``n_freq``; ``B1``..``B4``, the share of the DFM's positions
    in each band (:func:`fslib.spectral.band_masks`, edges scaled with the image size);
    ``mean_radius`` and ``max_radius`` (frequency bins from DC); ``axes``, the share on the
    two axes ``u = 0`` or ``v = 0`` (horizontal / vertical structure); ``dc``, whether the
    DC term is kept.
    """
    from fslib.spectral import BANDS, band_masks, radius_grid

    if dfms.ndim != 3:
        raise ValueError(f"dfms must be (C, H, W), got {tuple(dfms.shape)}")
    c, h, w = dfms.shape
    names = _names(classes, c)
    maps = dfms.bool().cpu()
    if reference:
        maps = torch.cat([maps, torch.ones(1, h, w, dtype=torch.bool)])
        names = names + ["all positions"]
    m = maps.double().flatten(1)
    n = m.sum(1)
    safe = n.clamp_min(1)
    bands = band_masks(h, w).double().flatten(1)  # (4, HW)
    r = radius_grid(h, w).double().flatten()
    axes = torch.zeros(h, w, dtype=torch.float64)
    axes[h // 2, :] = 1.0
    axes[:, w // 2] = 1.0
    table = pd.DataFrame({"n_freq": n.long().numpy()}, index=pd.Index(names, name="class"))
    for b, name in enumerate(BANDS):
        table[name] = (m @ bands[b] / safe).numpy()
    table["mean_radius"] = (m @ r / safe).numpy()
    table["max_radius"] = torch.where(m > 0, r, torch.zeros_like(r)).max(1).values.numpy()
    table["axes"] = (m @ axes.flatten() / safe).numpy()
    table["dc"] = maps[:, h // 2, w // 2].numpy()
    return table


@torch.inference_mode()
def example_filtered(run, images: torch.Tensor, labels: torch.Tensor, dfms: torch.Tensor, classes: list[int],
                     class_names=None, seed: int = 0) -> dict:
    """One image of each chosen class, its class's DFM and the DFM-filtered image (Fig. 1).

    The filtered image is what the model sees in the shortcut test (the normalised input
    with only the DFM's frequencies kept), mapped back to pixel units for display. Row titles
    give the class and the model's prediction on the filtered image.

    Parameters
    ----------
    run : fslib.runs.Run
    images : Tensor, shape (N, C, H, W), uint8
    labels : Tensor, shape (N,), int
    dfms : Tensor, shape (num_classes, H, W), bool
    classes : class indices to show, one row each
    class_names : names of all classes (default: indices)
    seed : picks the image of each class

    Returns
    -------
    dict for :func:`fslib.plot.dfm_examples`: ``images`` (K, C, H, W) float in [0, 1],
    ``dfms`` (K, H, W) bool, ``filtered`` (K, C, H, W) float, ``titles`` K str.
    """
    from fslib.constants import normalization
    from fslib.spectral import filter_frequencies

    _check_uint8(images, "example_filtered")
    labels = labels.long().cpu()
    names = _names(class_names, dfms.shape[0])
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in classes:
        idx = (labels == c).nonzero().flatten()
        if not len(idx):
            raise ValueError(f"no image of class {c} among the {len(labels)} images")
        picks.append(int(idx[torch.randint(len(idx), (1,), generator=gen)]))
    chosen = images[picks]
    masks = dfms.bool().cpu()[list(classes)]
    x = run.normalize(chosen)
    kept = filter_frequencies(x, masks)
    params = next(run.model.parameters(), None)
    with _EvalMode(run.model):
        preds = run.model(kept.to(params.device) if params is not None else kept).argmax(1).cpu().tolist()
    mean, std = normalization(run.config.dataset)
    back = kept * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    titles = [f"{names[c]}\n-> {names[p]}" for c, p in zip(classes, preds)]
    return {"images": chosen.float() / 255, "dfms": masks, "filtered": back, "titles": titles}
