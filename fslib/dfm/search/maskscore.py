"""Score many frequency masks on the same images, every class at once.

A mask search (:mod:`fslib.dfm.search.setsearch`, :mod:`fslib.dfm.search.hfss`) proposes
masks and needs, for each, how the model responds when only the mask's frequencies are kept
in *every* image: the shortcut test's TPR and FPR of every class (as
:func:`fslib.dfm.evaluate_dfms`), soft versions of both (mean softmax probability of the
class on its own and on other images) and the class-wise cross-entropy (HFSS's criterion).
One forward pass per (mask, image) yields all of them for all classes: a mask proposed for
one class is scored for every class in the same pass.

Filtering is done as in :func:`fslib.spectral.filter_frequencies`: the centred spectrum of the
normalised input times the 0/1 mask, inverse FFT, real part. Masks are used as given (a mask
that is not conjugate-symmetric gives the real part of a complex image, as the released HFSS
code does); the searches here only propose symmetric masks unless asked to reproduce HFSS's
mirror.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fslib import distributed
from fslib.inference import eval_mode
from fslib.spectral import fft_centred, ifft_centred

__all__ = ["MaskScores", "score_masks"]


@dataclass(frozen=True)
class MaskScores:
    """Per (mask, class) statistics on the filtered images, each float64 ``(K, num_classes)``.

    tpr : share of the class's images predicted as the class
    fpr : share of the other images predicted as the class
    soft_pos : mean softmax probability of the class on its own images
    soft_neg : mean softmax probability of the class on the other images
    loss : mean cross-entropy on the class's images (HFSS's class-wise loss)
    """

    tpr: torch.Tensor
    fpr: torch.Tensor
    soft_pos: torch.Tensor
    soft_neg: torch.Tensor
    loss: torch.Tensor

    def objective(self, penalty: float = 1.0, tiebreak: float | None = None,
                  counts: torch.Tensor | None = None) -> torch.Tensor:
        """``TPR - penalty * FPR`` plus a small soft tie-breaker, ``(K, num_classes)``.

        The tie-breaker ``tiebreak * (soft_pos - penalty * soft_neg)`` orders masks with equal
        hard rates; by default its weight is ``0.1 / max(P_c, N_c)`` per class (``counts`` the
        class sizes), under the hard rates' resolution of one image.
        """
        hard = self.tpr - penalty * self.fpr
        soft = self.soft_pos - penalty * self.soft_neg
        if tiebreak is None:
            if counts is None:
                raise ValueError("objective needs the class sizes (counts) or an explicit tiebreak weight")
            n = counts.double()
            tiebreak_t = 0.1 / torch.maximum(n, n.sum() - n)
            return hard + tiebreak_t[None] * soft
        return hard + tiebreak * soft


@torch.inference_mode()
def score_masks(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    masks: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    spectra: torch.Tensor | None = None,
) -> MaskScores:
    """Filter every image with every mask, forward, and collect :class:`MaskScores`.

    Parameters
    ----------
    model : nn.Module (put in eval mode here, restored afterwards)
    images : Tensor, shape (N, C, H, W), float, normalised
    labels : Tensor, shape (N,), int64, every class present
    num_classes : int
    masks : Tensor, shape (K, H, W), bool or 0/1
    batch_size : int, images per forward
    device : torch.device
    spectra : Tensor, shape (N, C, H, W), complex, or None (computed here)

    Returns
    -------
    MaskScores

    Notes
    -----
    Under ``torchrun`` (:mod:`fslib.distributed`) the groups of images are shared among the
    ranks and the sums added with one all-reduce, so the set search and HFSS, which score
    every proposal with this function, run sharded by images and every rank sees the same
    scores (equal to one process's up to the order of the sums) and so proposes the same masks.
    """
    n = images.shape[0]
    k_all = masks.shape[0]
    onehot = F.one_hot(labels.cpu(), num_classes).double()  # (N, C)
    counts = onehot.sum(0)
    pos_hits = torch.zeros(k_all, num_classes, dtype=torch.float64)
    neg_hits = torch.zeros_like(pos_hits)
    pos_soft = torch.zeros_like(pos_hits)
    neg_soft = torch.zeros_like(pos_hits)
    loss = torch.zeros_like(pos_hits)
    g = min(n, batch_size)
    k_step = max(1, batch_size // g)
    rank, world_size = distributed.world()
    with eval_mode(model, cpu_channels_last=True):
        for gs in list(range(0, n, g))[rank::world_size]:  # under torchrun: every world_size-th group of images
            x = images[gs : gs + g].to(device)
            y = labels[gs : gs + g].to(device)
            oh = onehot[gs : gs + g]
            spec = spectra[gs : gs + g].to(device) if spectra is not None else fft_centred(x)
            for ks in range(0, k_all, k_step):
                m = masks[ks : ks + k_step].to(device=device, dtype=spec.real.dtype)
                inputs = ifft_centred(spec[None] * m[:, None, None]).to(x.dtype).reshape(-1, *x.shape[1:])
                logits = model(inputs).double()
                prob = logits.softmax(1).reshape(len(m), len(x), num_classes).cpu()
                pred = F.one_hot(logits.argmax(1), num_classes).double().reshape(len(m), len(x), num_classes).cpu()
                ce = F.cross_entropy(logits, y.repeat(len(m)), reduction="none").reshape(len(m), len(x)).cpu()
                rows = slice(ks, ks + len(m))
                pos_hits[rows] += (pred * oh).sum(1)
                neg_hits[rows] += (pred * (1 - oh)).sum(1)
                pos_soft[rows] += (prob * oh).sum(1)
                neg_soft[rows] += (prob * (1 - oh)).sum(1)
                loss[rows] += ce.double() @ oh
    sums = distributed.all_reduce_sum(torch.stack([pos_hits, neg_hits, pos_soft, neg_soft, loss]))
    pos_hits, neg_hits, pos_soft, neg_soft, loss = sums  # every rank: the sums over all images
    neg = (n - counts).clamp_min(1)
    return MaskScores(pos_hits / counts, neg_hits / neg, pos_soft / counts, neg_soft / neg, loss / counts)
