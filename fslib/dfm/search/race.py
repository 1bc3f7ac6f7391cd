"""A race over images: exact ablation on growing image subsets, pruning units between rounds.

A class's exact loss map is a mean over its images, and most units are far from the DFM's
threshold on any image: a few images suffice to see that they will not make the top. The race
(successive halving, as in bandit best-arm identification) evaluates the live units exactly on
the first few images of each class, keeps the best ones, evaluates the survivors on more
images, and so on; the last round takes every remaining image, so the survivors' values are
the exact class means (the same numbers as :func:`fslib.dfm.ablation_loss`, up to rounding)
and the DFM is thresholded from them (:func:`fslib.dfm.search.verified.dfms_from_partial`).
It is therefore a verified search whose screen is the exact ablation on a subset of images:
its DFM equals the exact one whenever the survivors hold the exact top set
(:func:`fslib.dfm.search.verified.contains_exact_top`).

Every live unit of a class is evaluated on the same images, so their partial sums compare
like for like: an image on which every removal hurts lifts all units alike.

Two optional uses of a first-order screen (:func:`fslib.dfm.search.firstorder.first_order_unit_losses`,
one or a few backward passes per image): a prefilter (``prefilter < 1``) drops the screen's
lowest units before the first round, and a control variate (``control=True``) ranks the live
units between rounds by ``mean over all images of the estimate + mean over the seen images of
(exact - estimate)``: where the estimate tracks the exact loss image by image, the residual
varies less than the loss, so a few images rank better. Neither changes the final values.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from fslib.device import resolve_device
from fslib.dfm.search.firstorder import ESTIMATORS, first_order_unit_losses
from fslib.dfm.search.result import PassCounter, SearchResult, check_fraction, check_inputs
from fslib.dfm.search.subset import ablation_batch_size, unit_image_losses
from fslib.dfm.search.verified import dfm_unit_count, dfms_from_partial
from fslib.dfm.units import ablation_units
from fslib.inference import eval_mode
from fslib.spectral import fft_centred

__all__ = ["DEFAULT_SCHEDULE", "race_dfms", "race_cost"]

# (share of each class's images seen by the end of the round, survivors as a multiple of the
# DFM's unit count); the last round takes every image. Chosen on the book's CIFAR-10 ResNet18
# (benchmarks/dfm_search.py): about a quarter of the exact cost at 20 images per class.
DEFAULT_SCHEDULE: tuple[tuple[float, float], ...] = ((0.1, 8.0), (0.2, 4.0))


def _check_schedule(schedule) -> list[tuple[float, float]]:
    out = []
    last_f, last_k = 0.0, math.inf
    for item in schedule:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"schedule entries must be (image share, survivors multiple) pairs, got {item!r}")
        f, k = float(item[0]), float(item[1])
        if not (last_f < f < 1) or not (0 < k <= last_k):
            raise ValueError(f"schedule must have image shares increasing in (0, 1) and survivor multiples "
                             f"positive and non-increasing, got {list(schedule)!r}")
        out.append((f, k))
        last_f, last_k = f, k
    return out


def _round_ends(n: int, schedule: list[tuple[float, float]]) -> list[int]:
    """Cumulative image counts at the end of each round (at least one new image per round)."""
    ends, prev = [], 0
    for f, _ in schedule:
        end = min(n, max(prev + 1, math.ceil(f * n)))
        ends.append(end)
        prev = end
    return ends


def race_cost(n_per_class: int, n_units: int, dfm_units: int, schedule=DEFAULT_SCHEDULE,
              prefilter: float = 1.0) -> float:
    """Forward passes per image of :func:`race_dfms` for one class of ``n_per_class`` images
    (without the prefilter's screen), e.g. to size a schedule in advance."""
    sched = _check_schedule(schedule)
    ends = _round_ends(n_per_class, sched)
    alive = max(1, math.ceil(prefilter * n_units))
    total, prev = 0, 0
    for end, (_, k) in zip(ends, sched):
        total += alive * (end - prev)
        prev = end
        alive = min(alive, math.ceil(k * dfm_units))
    total += alive * (n_per_class - prev)
    return total / n_per_class


def race_dfms(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    top: float = 0.05,
    patch_size: int = 1,
    schedule: Sequence[tuple[float, float]] = DEFAULT_SCHEDULE,
    prefilter: float = 1.0,
    control: bool = False,
    screen: str = "logit",
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> SearchResult:
    """Verified DFMs from a race over images (see the module docstring).

    Parameters
    ----------
    model, images, labels, num_classes, patch_size, batch_size, device, progress :
        as in :func:`fslib.dfm.ablation_loss`
    top : float in (0, 1), the DFM size
    schedule : sequence of ``(share, multiple)``: after the round that has seen ``share`` of a
        class's images, keep the ``multiple x dfm_unit_count`` best units
    prefilter : float in (0, 1], share of the units (by the rectified first-order ``screen``, as
        :func:`fslib.dfm.search.verified.verified_dfms`) that enter the race; 1 keeps all
    control : bool, rank between rounds with the screen as a control variate
    screen : ``"tangent"`` or ``"logit"``, the first-order estimator of ``prefilter`` and
        ``control`` (not computed when neither is used)
    seed : int, the order in which each class's images enter the race

    Returns
    -------
    SearchResult: ``maps`` exact losses of the survivors (NaN elsewhere), ``dfms``;
    ``extras["candidates"]`` the survivors, bool (C, U); provenance ``method="race"``.
    """
    top = check_fraction(top)
    labels = check_inputs(images, labels, num_classes)
    sched = _check_schedule(schedule)
    if isinstance(prefilter, bool) or not isinstance(prefilter, (int, float)) or not 0 < prefilter <= 1:
        raise ValueError(f"prefilter must be a share of the units in (0, 1], got {prefilter!r}")
    if screen not in ESTIMATORS:
        raise ValueError(f"screen must be one of {ESTIMATORS}, got {screen!r}")
    n, c, h, w = images.shape
    units = ablation_units(h, w, patch_size)
    n_dfm = dfm_unit_count(h, w, patch_size, top)
    dev = resolve_device(device)
    model.to(dev)
    bs = ablation_batch_size(c, h, w, images.element_size(), dev, batch_size)
    counter = PassCounter(model)
    start = time.perf_counter()
    alive = torch.ones(num_classes, len(units), dtype=torch.bool)
    fo = None
    if prefilter < 1 or control:
        loss0, fo = first_order_unit_losses(model, images, labels, num_classes, patch_size=patch_size,
                                            estimator=screen, batch_size=batch_size, device=device, progress=progress,
                                            counter=counter)
    if prefilter < 1:
        onehot = torch.nn.functional.one_hot(labels, num_classes).double()
        increase = (fo - loss0[:, None]).clamp_min(0)  # rectified, as verified_dfms' screen
        scores = (onehot.T @ increase) / onehot.sum(0)[:, None]  # (C, U)
        keep = max(1, math.ceil(prefilter * len(units)))
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :keep]
        alive = torch.zeros_like(alive).scatter(1, order, True)
    gen = torch.Generator().manual_seed(seed)
    values = torch.full((num_classes, len(units)), float("nan"), dtype=torch.float64)
    bar = tqdm(total=num_classes, disable=not progress, desc="race", unit="class")
    with eval_mode(model, cpu_channels_last=True), counter:
        for k in range(num_classes):
            idx = (labels == k).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)]
            spectra = fft_centred(images[idx]).reshape(len(idx), c, h * w)
            ids = alive[k].nonzero().flatten()
            sums = torch.zeros(len(ids), dtype=torch.float64)
            fo_k = fo[idx][:, ids] if control else None  # (n_c, live units), image order of the race
            prev = 0
            for end, (_, mult) in zip(_round_ends(len(idx), sched) + [len(idx)], sched + [(1.0, 0.0)]):
                if end > prev:
                    part = idx[prev:end]
                    sums += unit_image_losses(model, images[part], labels[part], units, ids, bs, dev,
                                              spectra[prev:end]).sum(1)
                    prev = end
                if end < len(idx):  # prune: same images for every live unit, so sums compare
                    keep = min(len(ids), math.ceil(mult * n_dfm))
                    rank = sums / end
                    if control:
                        rank = fo_k.mean(0) + rank - fo_k[:end].mean(0)
                    order = torch.sort(rank, descending=True, stable=True).indices[:keep]
                    order = order.sort().values
                    ids, sums = ids[order], sums[order]
                    fo_k = fo_k[:, order] if control else None
            values[k, ids] = sums / len(idx)
            alive[k] = False
            alive[k, ids] = True
            bar.update(1)
    bar.close()
    maps, dfms = dfms_from_partial(values, units, top)
    seconds = time.perf_counter() - start
    settings = {"top": top, "patch_size": patch_size, "schedule": [list(s) for s in sched],
                "prefilter": float(prefilter), "control": bool(control),
                "screen": screen if (prefilter < 1 or control) else None, "seed": seed}
    provenance = {"method": "race", "settings": settings, "seconds": seconds, "n_images": n, "units": len(units),
                  **counter.record(n)}
    return SearchResult(maps, dfms, provenance, {"candidates": alive})
