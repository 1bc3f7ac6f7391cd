"""HFSS, the hierarchical frequency-shortcut search of Wang, Veldhuis and Strisciuglio (CVPR 2025).

Reimplemented from reading the released code (github.com/nis-research/hfss, MIT licence:
``hfss/LSI.py`` ``get_candidates`` and ``get_topn_subpolicies_classwise``,
``hfss/transforms_search_space.py`` ``gen_freqs_list`` / ``sample_frequency`` /
``generate_mask``, ``hfss/utils.py`` ``validate_classwise``); no file of it is copied.

The algorithm, stage by stage (``grids``: cells per side of the centred spectrum, 4, 8, 16, 32
at 32 px and 4, 8, 16, 28, 56, 112 at 224 px, as in the released tables):

* About ``n_candidates`` masks per stage, made ``n_candidates // 3`` times as a triple:
  (A) a random share ``portion`` of the cells of the upper half of the ``g x g`` grid;
  (B) the same on the grid shifted by half a cell (``g + 1`` cells, cropped); (C) the union of
  an A-type and a B-type mask, each at ``portion / 2``. The last stage at 32 px, whose cells
  are single positions, has no shifted grid and makes only A-type masks.
* From the second stage on, each triple is multiplied by a *parent*: one of the previous
  stage's ``top_n`` masks of a random class (one draw of class and rank per triple).
* The upper half is mirrored onto the lower half.
* Every mask filters every image (the centred spectrum of the normalised input times the
  mask, inverse FFT, real part) and is scored for all classes at once by the class-wise
  cross-entropy (:func:`fslib.dfm.search.maskscore.score_masks`); each class keeps its
  ``top_n`` lowest-loss masks, the parents of the next stage. A class's DFM is its rank-1 mask
  of the last stage.

Nothing in the objective penalises a mask that makes the model predict the class for every
image; :mod:`fslib.dfm.search.setsearch` adds that term. Defects of the released code, and
what this module does instead (``mirror="released"`` reproduces the first for comparison):

1. The mirror is off by one: ``mask[223 - r, 223 - s] = mask[r, s]`` instead of the true
   conjugate ``((224 - r) % 224, (224 - s) % 224)``, so no mask is conjugate-symmetric (the
   filtered images are complex and their real part is used) and the DC row is filled from the
   row above it. Fixed (``mirror="conjugate"``): the released mask's values at each pair's
   representative (rows ``0 .. H/2 - 1`` and the left half of rows ``0`` and ``H/2``, i.e. the
   sampled upper half and the DC row as the released mirror fills it) are copied to its true
   conjugate partner. Masks are then exactly conjugate-symmetric.
2. Seeding: ``parse_args`` overwrites any ``seed`` with 42, and the class / parent draws use
   numpy's global generator, which is never seeded, so runs are not reproducible. Here one
   ``numpy.random.Generator(seed)`` makes every draw.
3. The released code supports no CIFAR input (its mean/std table has CIFAR entries, but the
   data loader does not) and applies masks after normalisation in the search but before it in
   some evaluation scripts; here masks always filter the normalised input, as the exact
   ablation and the shortcut test of :mod:`fslib.dfm` do.

``portion="auto"`` picks ``top ** (1 / stages)`` so that the rank-1 masks hold about ``top`` of
the positions (0.47 at 32 px, 0.61 at 224 px, near the paper's "5 % after six stages"); the
released default is 0.8. The masks' sizes vary around that value; they are not exact.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fslib.device import resolve_device
from fslib.dfm.search.maskscore import score_masks
from fslib.dfm.search.result import PassCounter, SearchResult, check_fraction, check_inputs
from fslib.dfm.search.subset import ablation_batch_size
from fslib.io import load_npz, save_npz
from fslib.spectral import conjugate_mirror, fft_centred, symmetrize_mask

__all__ = ["RELEASED_GRIDS", "hfss_grids", "released_mirror", "conjugate_complete", "hfss_candidates", "hfss"]

RELEASED_GRIDS = {224: (4, 8, 16, 28, 56, 112), 128: (4, 8, 16, 32, 64, 128), 64: (4, 8, 16, 32, 64),
                  32: (4, 8, 16, 32)}


def hfss_grids(size: int) -> tuple[int, ...]:
    """Cells per side at each stage: the released table for 32, 64, 128 and 224 px; for other
    sizes (not in the released code) the powers of two from 4 up to ``size`` that divide it.

    >>> hfss_grids(224), hfss_grids(16)
    ((4, 8, 16, 28, 56, 112), (4, 8, 16))
    """
    if size in RELEASED_GRIDS:
        return RELEASED_GRIDS[size]
    grids = tuple(g for g in (4 << i for i in range(12)) if g <= size and size % g == 0)
    if not grids:
        raise ValueError(f"HFSS needs an image side divisible by 4, got {size}")
    return grids


def _upper_cells(g: int) -> int:
    """Rows of the ``g x g`` grid that HFSS samples (``gen_freqs_list``): the upper half, and
    for odd ``g`` the middle row too."""
    return g // 2 if g % 2 == 0 else g // 2 + 1


def _sample_grid(g: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """``int(share * cells)`` distinct random cells of the upper rows of a ``g x g`` grid."""
    rows = _upper_cells(g)
    n_cells = rows * g
    pick = rng.choice(n_cells, size=int(n_cells * share), replace=False)
    grid = np.zeros((g, g), dtype=bool)
    grid[pick // g, pick % g] = True
    return grid


def _pixels(grid: np.ndarray, size: int, shifted: bool) -> np.ndarray:
    """Blow a cell grid up to ``size x size`` positions; a shifted grid (``g + 1`` cells of the
    unshifted size) is cropped by half a cell on each side."""
    if not shifted:
        cell = size // grid.shape[0]
        return np.kron(grid, np.ones((cell, cell), dtype=bool)).astype(bool)
    cell = size // (grid.shape[0] - 1)
    big = np.kron(grid, np.ones((cell, cell), dtype=bool)).astype(bool)
    half = cell // 2
    return big[half : half + size, half : half + size]


def released_mirror(mask: np.ndarray) -> np.ndarray:
    """The released code's mirror: ``out[H-1-r, W-1-s] = mask[r, s]`` for ``r < H/2``."""
    h, w = mask.shape
    out = mask.copy()
    out[h - 1 - np.arange(h // 2)[:, None], w - 1 - np.arange(w)[None, :]] = mask[: h // 2, :]
    return out


def conjugate_complete(mask: np.ndarray) -> np.ndarray:
    """The fix: each pair takes the released mask's value at its representative (the smaller flat
    index), so the result is conjugate-symmetric."""
    h, w = mask.shape
    rel = torch.from_numpy(released_mirror(mask))
    flat = torch.arange(h * w).reshape(h, w)
    is_rep = flat <= conjugate_mirror(flat)
    return torch.where(is_rep, rel, conjugate_mirror(rel)).numpy()


def hfss_candidates(size: int, g: int, portion: float, n_candidates: int, rng: np.random.Generator,
                    parents: np.ndarray | None = None, mirror: str = "conjugate") -> np.ndarray:
    """One stage's candidate masks, bool ``(K, size, size)``.

    Parameters
    ----------
    size : image side; g : cells per side; portion : share of upper cells kept
    n_candidates : masks requested (``n_candidates // 3`` triples; one per draw when ``g == size``)
    rng : numpy Generator
    parents : bool (num_classes, top_n, size, size) of the previous stage, or None (stage 1)
    mirror : ``"conjugate"`` (fixed) or ``"released"`` (the released off-by-one mirror)
    """
    finish = conjugate_complete if mirror == "conjugate" else released_mirror
    out = []
    for _ in range(max(1, n_candidates // 3)):
        parent = None
        if parents is not None:
            parent = parents[rng.integers(parents.shape[0]), rng.integers(parents.shape[1])]
        masks = [_pixels(_sample_grid(g, portion, rng), size, False)]
        if g != size:
            masks.append(_pixels(_sample_grid(g + 1, portion, rng), size, True))
            masks.append(_pixels(_sample_grid(g, portion / 2, rng), size, False)
                         | _pixels(_sample_grid(g + 1, portion / 2, rng), size, True))
        for m in masks:
            out.append(finish(m & parent if parent is not None else m))
    return np.stack(out)


def hfss(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    top: float = 0.05,
    portion: float | str = "auto",
    n_candidates: int = 500,
    top_n: int = 10,
    mirror: str = "conjugate",
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
) -> SearchResult:
    """HFSS's rank-1 masks (see the module docstring).

    Parameters
    ----------
    model : nn.Module, evaluated in eval mode
    images : Tensor, shape (N, C, H, W), float, normalised, square of 32, 64, 128 or 224 px
    labels : Tensor, shape (N,), int; the paper scores a stratified 5 % of the training set
    num_classes : int
    top : float in (0, 1), the intended mask size; only used by ``portion="auto"``
    portion : float in (0, 1] or ``"auto"`` (``top ** (1 / stages)``); released default 0.8
    n_candidates : masks per stage (released: 500)
    top_n : masks each class keeps per stage (released: 10)
    mirror : ``"conjugate"`` (fixed) or ``"released"`` (then ``dfms`` are the released masks
        made symmetric by :func:`fslib.spectral.symmetrize_mask`; ``extras["raw"]`` holds them as
        searched)
    seed : int
    batch_size, device, progress : as in :func:`fslib.dfm.ablation_loss`
    checkpoint : path or None, an ``.npz`` with the state after each stage (resumed when present)

    Returns
    -------
    SearchResult: ``maps`` None, ``dfms`` the rank-1 masks; ``extras["loss"]`` their class-wise
    loss (C,), ``extras["raw"]``; provenance ``method="hfss"``.
    """
    top = check_fraction(top)
    labels = check_inputs(images, labels, num_classes)
    n, c, h, w = images.shape
    if h != w:
        raise ValueError(f"HFSS takes square images, got {h}x{w}")
    grids = hfss_grids(h)
    if portion == "auto":
        portion_v = top ** (1 / len(grids))
    elif isinstance(portion, (int, float)) and not isinstance(portion, bool) and 0 < portion <= 1:
        portion_v = float(portion)
    else:
        raise ValueError(f"portion must be 'auto' or a share in (0, 1], got {portion!r}")
    if mirror not in ("conjugate", "released"):
        raise ValueError(f"mirror must be 'conjugate' (fixed) or 'released', got {mirror!r}")
    for name, v in (("n_candidates", n_candidates), ("top_n", top_n)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    dev = resolve_device(device)
    model.to(dev)
    bs = ablation_batch_size(c, h, w, images.element_size(), dev, batch_size)
    counter = PassCounter(model)
    start = time.perf_counter()
    spectra = fft_centred(images)
    rng = np.random.default_rng(seed)
    parents, best_loss, stage = None, None, 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    fingerprint = json.dumps({"n": n, "shape": [c, h, w], "portion": portion_v, "n_candidates": n_candidates,
                              "top_n": top_n, "mirror": mirror, "seed": seed, "classes": num_classes})
    if ckpt is not None and ckpt.exists():
        state = load_npz(ckpt)
        if str(state["fingerprint"]) != fingerprint:
            raise ValueError(f"checkpoint {ckpt} was made with other settings; delete it or pass another path")
        parents, best_loss, stage = state["parents"], state["loss"], int(state["stage"])
        rng.bit_generator.state = json.loads(str(state["rng"]))
    bar = tqdm(total=len(grids), initial=stage, disable=not progress, desc="HFSS", unit="stage")
    while stage < len(grids):
        cand = hfss_candidates(h, grids[stage], portion_v, n_candidates, rng, parents, mirror)
        with counter:
            sc = score_masks(model, images, labels, num_classes, torch.from_numpy(cand), batch_size=bs,
                             device=dev, spectra=spectra)
        order = torch.sort(sc.loss.T, dim=1, stable=True).indices[:, :top_n]  # (C, top_n), lowest loss first
        parents = cand[order.numpy()]
        best_loss = sc.loss.T.gather(1, order)[:, 0].numpy()
        stage += 1
        bar.update(1)
        if ckpt is not None:
            save_npz(ckpt, parents=parents, loss=best_loss, stage=np.array(stage),
                     rng=np.array(json.dumps(rng.bit_generator.state)), fingerprint=np.array(fingerprint))
    bar.close()
    raw = torch.from_numpy(parents[:, 0])
    dfms = raw if mirror == "conjugate" else symmetrize_mask(raw)
    seconds = time.perf_counter() - start
    settings = {"top": top, "portion": portion_v, "n_candidates": n_candidates, "top_n": top_n, "mirror": mirror,
                "grids": list(grids), "seed": seed}
    provenance = {"method": "hfss", "settings": settings, "seconds": seconds, "n_images": n, **counter.record(n)}
    return SearchResult(None, dfms, provenance, {"loss": torch.from_numpy(best_loss), "raw": raw})
