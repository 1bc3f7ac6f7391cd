"""Set search: for each class, the mask of a given size that best passes the shortcut test.

The paper ranks single frequencies and keeps the top 5 %; HFSS searches sets of frequencies
but scores them by the class's loss alone, so a mask that makes the model call *every* image
class ``c`` scores as well as a real shortcut (on a 32-px CIFAR model the released code's
masks reached TPR 1.00 at FPR 1.00 for one class). This search optimises the test itself:

    J_c(mask) = TPR_c(mask) - penalty * FPR_c(mask)   (+ a soft tie-breaker)

over conjugate-symmetric masks of exactly the DFM's size (``round(top * H * W)`` positions,
or one less when the pair structure forces it, as :func:`fslib.dfm.dominant_frequency_maps`),
with TPR and FPR measured on the ranking images. ``penalty = 1`` is Youden's J: a mask that
turns every image into class ``c`` scores 0, no better than an empty one.

Algorithm (coarse to fine, seeded, class-parallel):

1. Seeds: each class's top-``top`` pairs by a seed map (by default the first-order
   ``"tangent"`` map, one backward pass per image; any ``(C, H, W)`` map can be given, e.g. an
   exact or verified map) and the low-pass disc of the same size. Every seed is scored for
   every class; each class starts from its best.
2. Levels: the centred spectrum is cut into cells of ``b x b`` positions, ``b`` halving from
   ``H / 4`` down to ``H / 32`` (32 px: 8, 4, 2, 1). At each level, ``rounds`` rounds; in a
   round each class proposes ``proposals`` masks, each moving ``n_sel / 2^(level + 1)``
   pairs of its current mask (at least one) out of one cell into another, the destination cell
   drawn in favour of high seed scores and the pairs within it the seed's best (half of the
   time) or random ones.
3. Every proposal of every class is scored for every class in one pass over the images
   (:func:`fslib.dfm.search.maskscore.score_masks`); each class keeps the best mask it has
   seen, whoever proposed it.

The cost is ``3 (seed map) + (C + 1) (seeds) + levels * rounds * proposals * C`` forward
passes per image (about 3 + 11 + 4 * 3 * 4 * 10 = 494 at 32 px with 10 classes, close to the
exact ablation's 514), shown by a progress bar; a checkpoint file keeps the state after every round.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fslib.device import resolve_device
from fslib.dfm.search.firstorder import ESTIMATORS, first_order_loss
from fslib.dfm.search.maskscore import score_masks
from fslib.dfm.search.result import PassCounter, SearchResult, check_fraction, check_inputs, check_maps
from fslib.dfm.search.subset import ablation_batch_size
from fslib.io import load_npz, save_npz
from fslib.spectral import conjugate_pairs, fft_centred, radius_grid

__all__ = ["default_levels", "pair_masks_to_maps", "set_search"]


def default_levels(h: int, w: int) -> tuple[int, ...]:
    """Cell sizes from ``min(H, W) / 4`` halving to ``max(1, min(H, W) / 32)``: (8, 4, 2, 1) at 32 px,
    (56, 28, 14, 7) at 224 px."""
    n = min(h, w)
    out, b = [], max(1, n // 4)
    while b >= max(1, n // 32):
        out.append(b)
        if b == 1:
            break
        b //= 2
    return tuple(out)


def pair_masks_to_maps(sel: torch.Tensor, pairs: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pair selections ``(K, P)`` bool to conjugate-symmetric masks ``(K, H, W)`` bool."""
    rep, partner = pairs[:, 0] * w + pairs[:, 1], pairs[:, 2] * w + pairs[:, 3]
    out = torch.zeros(sel.shape[0], h * w, dtype=torch.bool)
    out[:, rep] = sel
    out[:, partner] |= sel
    return out.reshape(-1, h, w)


def _fill(sel: np.ndarray, order: np.ndarray, size: np.ndarray, target: int) -> np.ndarray:
    """Add pairs in ``order`` (skipping taken ones and ones that overshoot) until the count is
    ``target`` or ``target - 1`` and no remaining pair fits."""
    count = int(size[sel].sum())
    for p in order:
        if count >= target:
            break
        if not sel[p] and count + size[p] <= target:
            sel[p] = True
            count += int(size[p])
    return sel


def _seed_selection(scores: np.ndarray, size: np.ndarray, target: int) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    return _fill(np.zeros(len(scores), dtype=bool), order, size, target)


def _propose(sel: np.ndarray, rank: np.ndarray, cell: np.ndarray, size: np.ndarray, target: int,
             level: int, rng: np.random.Generator) -> np.ndarray:
    """Move some pairs of ``sel`` out of one occupied cell into another cell."""
    n_sel = int(sel.sum())
    move = max(1, math.ceil(n_sel / 2 ** (level + 1)))
    occupied = np.unique(cell[sel])
    src = rng.choice(occupied)
    members = np.flatnonzero(sel & (cell == src))
    drop = rng.choice(members, size=min(move, len(members)), replace=False)
    new = sel.copy()
    new[drop] = False
    free = ~new
    free[drop] = False  # a move goes elsewhere
    cells = np.unique(cell[free])
    if len(cells) == 0:
        return sel
    best = np.array([rank[free & (cell == c)].max() for c in cells])
    weight = 0.2 / len(cells) + 0.8 * best**4 / max(1e-12, float((best**4).sum()))
    dst = rng.choice(cells, p=weight / weight.sum())
    pool = np.flatnonzero(free & (cell == dst))
    if rng.random() < 0.5:
        pool = pool[np.argsort(-rank[pool], kind="stable")]
    else:
        pool = rng.permutation(pool)
    new = _fill(new, pool, size, target)
    if int(size[new].sum()) < target - 1:  # the destination cell was too small: fill from anywhere by rank
        rest = np.flatnonzero(free & ~new)
        new = _fill(new, rest[np.argsort(-rank[rest], kind="stable")], size, target)
    return new


def set_search(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    top: float = 0.05,
    penalty: float = 1.0,
    seed_maps: torch.Tensor | None = None,
    screen: str = "tangent",
    levels: tuple[int, ...] | None = None,
    rounds: int = 3,
    proposals: int = 4,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
) -> SearchResult:
    """Per class, a conjugate-symmetric mask of size ``top`` maximising ``TPR - penalty * FPR``.

    Parameters
    ----------
    model : nn.Module, evaluated in eval mode
    images : Tensor, shape (N, C, H, W), float, normalised; labels : Tensor (N,), int
    num_classes : int
    top : float in (0, 1), mask size as a share of the H x W positions
    penalty : float >= 0, weight of the FPR (1: Youden's J; 0: HFSS-like, no penalty)
    seed_maps : Tensor (num_classes, H, W) or None; None: :func:`first_order_loss` with ``screen``
    screen : ``"tangent"`` or ``"logit"``, the seed estimator when ``seed_maps`` is None
    levels : cell sizes, coarse to fine (None: :func:`default_levels`)
    rounds, proposals : rounds per level, proposals per class per round
    seed : int, seeds every random draw
    batch_size, device, progress : as in :func:`fslib.dfm.ablation_loss`
    checkpoint : path or None, an ``.npz`` holding the state after each round (resumed when
        present with the same settings and sizes)

    Returns
    -------
    SearchResult: ``maps`` None, ``dfms`` the best masks; ``extras["objective"]``,
    ``extras["tpr"]``, ``extras["fpr"]`` (C,) on the ranking images and ``extras["seed_maps"]``;
    provenance ``method="set_search"``.
    """
    top = check_fraction(top)
    labels = check_inputs(images, labels, num_classes)
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or penalty < 0:
        raise ValueError(f"penalty must be a number >= 0, got {penalty!r}")
    for name, v in (("rounds", rounds), ("proposals", proposals)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    n, c, h, w = images.shape
    levels = tuple(levels) if levels is not None else default_levels(h, w)
    if not levels or any((not isinstance(b, int)) or b < 1 for b in levels):
        raise ValueError(f"levels must be positive int cell sizes, got {levels!r}")
    dev = resolve_device(device)
    model.to(dev)
    bs = ablation_batch_size(c, h, w, images.element_size(), dev, batch_size)
    counter = PassCounter(model)
    start = time.perf_counter()
    given = seed_maps is not None
    if seed_maps is None:
        if screen not in ESTIMATORS:
            raise ValueError(f"screen must be one of {ESTIMATORS}, got {screen!r}")
        seed_maps = first_order_loss(model, images, labels, num_classes, estimator=screen, batch_size=batch_size,
                                     device=device, progress=progress, counter=counter)
    smap = check_maps(seed_maps, num_classes, h, w, "seed_maps")

    pairs = conjugate_pairs(h, w)
    rep = (pairs[:, 0] * w + pairs[:, 1]).numpy()
    partner = (pairs[:, 2] * w + pairs[:, 3]).numpy()
    size = np.where(rep == partner, 1, 2)
    target = int(math.floor(top * h * w + 0.5))
    flat = smap.flatten(1).numpy()
    pscore = np.maximum(flat[:, rep], flat[:, partner])  # (C, P)
    rank = np.argsort(np.argsort(pscore, axis=1, kind="stable"), axis=1) / max(1, pscore.shape[1] - 1)
    radius = radius_grid(h, w).flatten().numpy()[rep]

    spectra = fft_centred(images)
    counts = torch.bincount(labels, minlength=num_classes)

    def evaluate(sel: np.ndarray) -> torch.Tensor:
        masks = pair_masks_to_maps(torch.from_numpy(sel), pairs, h, w)
        with counter:
            sc = score_masks(model, images, labels, num_classes, masks, batch_size=bs, device=dev, spectra=spectra)
        return sc.objective(penalty, counts=counts), sc

    ckpt = Path(checkpoint) if checkpoint is not None else None
    fingerprint = json.dumps({"n": n, "shape": [c, h, w], "top": top, "penalty": penalty, "levels": list(levels),
                              "rounds": rounds, "proposals": proposals, "seed": seed, "classes": num_classes})
    rng = np.random.default_rng(seed)
    step = 0
    if ckpt is not None and ckpt.exists():
        state = load_npz(ckpt)
        if str(state["fingerprint"]) != fingerprint:
            raise ValueError(f"checkpoint {ckpt} was made with other settings; delete it or pass another path")
        current, best = state["current"], torch.from_numpy(state["best"])
        tpr, fpr = torch.from_numpy(state["tpr"]), torch.from_numpy(state["fpr"])
        step = int(state["step"])
        rng.bit_generator.state = json.loads(str(state["rng"]))
    else:
        seeds = np.stack([_seed_selection(pscore[k], size, target) for k in range(num_classes)]
                         + [_seed_selection(-radius, size, target)])
        obj, sc = evaluate(seeds)
        pick = obj.argmax(0)  # (C,) best seed for each class
        diag = torch.arange(num_classes)
        current, best = seeds[pick.numpy()], obj[pick, diag]
        tpr, fpr = sc.tpr[pick, diag], sc.fpr[pick, diag]

    cells = [((pairs[:, 0] // b) * (w // b + 1) + pairs[:, 1] // b).numpy() for b in levels]
    total = len(levels) * rounds
    bar = tqdm(total=total, initial=step, disable=not progress, desc="set search", unit="round")
    while step < total:
        level = step // rounds
        props = np.stack([_propose(current[k], rank[k], cells[level], size, target, level, rng)
                          for k in range(num_classes) for _ in range(proposals)])
        obj, sc = evaluate(props)
        cand_best, cand_idx = obj.max(0)
        better = cand_best > best
        for k in better.nonzero().flatten().tolist():
            j = int(cand_idx[k])
            current[k], best[k], tpr[k], fpr[k] = props[j], cand_best[k], sc.tpr[j, k], sc.fpr[j, k]
        step += 1
        bar.update(1)
        if ckpt is not None:
            save_npz(ckpt, current=current, best=best.numpy(), tpr=tpr.numpy(), fpr=fpr.numpy(), step=np.array(step),
                     rng=np.array(json.dumps(rng.bit_generator.state)), fingerprint=np.array(fingerprint))
    bar.close()
    dfms = pair_masks_to_maps(torch.from_numpy(current), pairs, h, w)
    seconds = time.perf_counter() - start
    settings = {"top": top, "penalty": float(penalty), "levels": list(levels), "rounds": rounds,
                "proposals": proposals, "seed": seed, "seed_maps": "given" if given else screen}
    provenance = {"method": "set_search", "settings": settings, "seconds": seconds, "n_images": n,
                  **counter.record(n)}
    extras = {"objective": best, "tpr": tpr, "fpr": fpr, "seed_maps": smap}
    return SearchResult(None, dfms, provenance, extras)
