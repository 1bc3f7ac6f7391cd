"""Split-half stability of DFMs: a property of the class, or of the images it was ranked on?

If a DFM is a property of the class, ranking the frequencies on two disjoint sets of images
of the same size gives the same DFM. The ranking here is the search method of a
:class:`~fslib.dfm.config.DFMConfig` (the paper's exact ablation by default):

* :func:`chunk_indices` cuts every class's images into disjoint class-balanced chunks;
  chunk 0 is the ranking set :func:`~fslib.dfm.protocol.rank_score_split` draws for the
  same seed and size, so a chapter's cached ranking is reused;
* :func:`chunk_loss_maps` ranks every chunk (:func:`~fslib.dfm.protocol.run_dfms`, cached);
* the loss map of a union of chunks is the mean of their maps, since a loss map is a
  per-class mean and every chunk holds the same number of images per class;
* :func:`split_half` draws random splits of the chunks into two disjoint halves of ``k``
  chunks each and compares the halves' DFMs (IoU of the top maps) and their rankings
  (Spearman correlation over the ablation units); :func:`split_half_summary` gives the
  mean and the 2.5-97.5 % range over the splits for each half size.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from fslib.dfm.config import DFMConfig
from fslib.dfm.protocol import run_dfms
from fslib.dfm.select import dominant_frequency_maps, iou
from fslib.dfm.units import ablation_units
from fslib.inference import Analysable

__all__ = ["chunk_indices", "chunk_loss_maps", "spearman", "split_half", "split_half_summary"]


def chunk_indices(labels: torch.Tensor, per_class: int, n_chunks: int, seed: int = 0) -> list[torch.Tensor]:
    """Disjoint class-balanced chunks of image indices, ``per_class`` images of every class each.

    Every class's images are permuted as :func:`~fslib.dfm.protocol.rank_score_split`
    permutes them for ``seed``; chunk ``k`` takes positions ``k * per_class`` to
    ``(k + 1) * per_class`` of each permutation. Chunk 0 is therefore
    ``rank_score_split(labels, per_class * C, n_score, seed)[0]`` for any ``n_score``.

    Parameters
    ----------
    labels : Tensor, shape (N,), int
    per_class : images of each class per chunk
    n_chunks : number of chunks
    seed : int

    Returns
    -------
    list of ``n_chunks`` sorted int64 index tensors, each of ``per_class * C`` images.

    >>> chunks = chunk_indices(torch.tensor([0, 1, 0, 1, 0, 1]), 1, 3)
    >>> sorted(torch.cat(chunks).tolist()), [len(c) for c in chunks]
    ([0, 1, 2, 3, 4, 5], [2, 2, 2])
    """
    if per_class < 1 or n_chunks < 1:
        raise ValueError(f"need per_class >= 1 and n_chunks >= 1, got {per_class}, {n_chunks}")
    labels = labels.long().cpu()
    gen = torch.Generator().manual_seed(seed)
    chunks: list[list[torch.Tensor]] = [[] for _ in range(n_chunks)]
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        if per_class * n_chunks > len(idx):
            raise ValueError(f"class {c} has {len(idx)} images, fewer than the {per_class * n_chunks} needed for "
                             f"{n_chunks} chunks of {per_class}")
        idx = idx[torch.randperm(len(idx), generator=gen)]
        for k in range(n_chunks):
            chunks[k].append(idx[k * per_class:(k + 1) * per_class])
    return [torch.sort(torch.cat(parts)).values for parts in chunks]


def chunk_loss_maps(subject: Analysable, images: torch.Tensor, labels: torch.Tensor, chunks: Sequence[torch.Tensor],
                    *, config: DFMConfig = DFMConfig(), batch_size: int | None = None,
                    device: str | torch.device = "auto", progress: bool = True) -> torch.Tensor:
    """The ranked loss map of every chunk (:func:`~fslib.dfm.protocol.run_dfms`, cached).

    Parameters
    ----------
    subject : fslib.inference.Analysable
    images : Tensor, shape (N, C, H, W), uint8; labels : Tensor, shape (N,), int
    chunks : index tensors, e.g. from :func:`chunk_indices`
    config, batch_size, device, progress : as in :func:`~fslib.dfm.protocol.run_dfms`

    Returns
    -------
    Tensor, shape (K, num_classes, H, W), float64: the method's scores per chunk.
    """
    if not chunks:
        raise ValueError("need at least one chunk")
    return torch.stack([run_dfms(subject, images[idx], labels[idx], config=config, batch_size=batch_size,
                                 device=device, progress=progress).loss_maps for idx in chunks])


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(x, dim=-1), dim=-1).to(torch.float64)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation along the last axis (ties in arbitrary order).

    >>> float(spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0])))
    0.5
    """
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    return (ra * rb).sum(-1) / torch.sqrt((ra ** 2).sum(-1) * (rb ** 2).sum(-1))


def split_half(loss_maps: torch.Tensor, halves: Sequence[int], n_splits: int = 50, *, top: float = 0.05,
               patch_size: int = 1, seed: int = 0) -> pd.DataFrame:
    """DFM agreement between two disjoint halves of the chunks, for several half sizes.

    Split 0 takes the chunks in order (chunks ``0..k-1`` against ``k..2k-1``, so the first
    half holds chunk 0); the others draw a random permutation of the chunks. The map of a
    half is the mean of its chunks' maps.

    Parameters
    ----------
    loss_maps : Tensor, shape (K, C, H, W): per-chunk maps of :func:`chunk_loss_maps`
    halves : chunks per half to compare, each ``k`` with ``2 k <= K``
    n_splits : splits per half size
    top : share of positions in a DFM (:func:`~fslib.dfm.select.dominant_frequency_maps`)
    patch_size : of the ablation units; the Spearman correlation runs over the units (one
        value per conjugate pair or block), not over the positions that repeat it
    seed : of the random splits

    Returns
    -------
    DataFrame with columns chunks (per half), split, class, iou, spearman; one row per
    half size, split and class.
    """
    k_all, c, h, w = loss_maps.shape
    bad = [k for k in halves if not 1 <= int(k) <= k_all // 2]
    if bad or not halves:
        raise ValueError(f"chunks per half must lie in 1..{k_all // 2} for {k_all} chunks, got {list(halves)}")
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    units = ablation_units(h, w, patch_size).positions[:, 0]
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for k in (int(k) for k in halves):
        for split in range(n_splits):
            order = torch.arange(k_all) if split == 0 else torch.randperm(k_all, generator=gen)
            a, b = loss_maps[order[:k]].mean(0), loss_maps[order[k:2 * k]].mean(0)
            overlap = iou(dominant_frequency_maps(a, top), dominant_frequency_maps(b, top))
            rho = spearman(a.flatten(1)[:, units], b.flatten(1)[:, units])
            rows += [(k, split, cls, float(overlap[cls]), float(rho[cls])) for cls in range(c)]
    return pd.DataFrame(rows, columns=["chunks", "split", "class", "iou", "spearman"])


def split_half_summary(table: pd.DataFrame, per_class: int) -> pd.DataFrame:
    """Mean over classes per split, then the mean and 2.5-97.5 % range over the splits.

    Parameters
    ----------
    table : output of :func:`split_half`
    per_class : images per class in a chunk

    Returns
    -------
    DataFrame indexed by ``per_class`` images per half and class, with columns iou,
    iou_low, iou_high, spearman, spearman_low, spearman_high, splits.
    """
    per_split = table.groupby(["chunks", "split"])[["iou", "spearman"]].mean()
    g = per_split.groupby("chunks")
    out = pd.DataFrame({"iou": g["iou"].mean(), "iou_low": g["iou"].quantile(0.025),
                        "iou_high": g["iou"].quantile(0.975), "spearman": g["spearman"].mean(),
                        "spearman_low": g["spearman"].quantile(0.025), "spearman_high": g["spearman"].quantile(0.975),
                        "splits": g.size()})
    out.index = pd.Index(np.asarray(out.index) * int(per_class), name="per_class")
    return out
