"""Verified DFMs: screen every unit cheaply, ablate only the top candidates exactly.

A DFM is decided by the exact class losses of a few units (the top 5 % of positions), so the
exact ablation of all units is mostly spent on units that are nowhere near the top. A
verified search (1) scores every unit with a cheap *screen*, (2) keeps the ``candidates x``
DFM-size best units of each class and (3) ablates those exactly on that class's images
(:func:`fslib.dfm.search.subset.ablation_loss_subset`). The DFM is then thresholded from the
exact values of the candidates alone.

Guarantee: the verified DFM of a class equals the exact DFM
(:func:`fslib.dfm.dominant_frequency_maps` of :func:`fslib.dfm.ablation_loss`) whenever the
candidates hold the class's *exact top set* (:func:`exact_top_units`): every unit whose exact
value reaches the value of the first pair the exact DFM leaves out. A pair's score is the
largest value over its members' units; verified scores never exceed exact ones, and for
every pair that reaches that value the unit giving it is a candidate, so the ranked prefix,
ties and stopping point are the same. :func:`contains_exact_top` reports, where the full exact
maps exist, for which classes this holds.

Screens: ``"tangent"`` and ``"logit"`` (:mod:`fslib.dfm.search.firstorder`) or any
``(C, H, W)`` map given as ``screen_maps`` (higher = more important), e.g. an exact ablation
of coarse blocks. :func:`fslib.dfm.search.race.race_dfms` is a verified search whose screen is
the exact ablation on a growing subset of the images.
"""

from __future__ import annotations

import math
import time

import torch

from fslib.dfm.search.firstorder import ESTIMATORS, first_order_loss
from fslib.dfm.search.result import PassCounter, SearchResult, check_fraction, check_inputs, check_maps
from fslib.dfm.search.subset import ablation_loss_subset, map_to_units, units_to_map
from fslib.dfm.select import dominant_frequency_maps
from fslib.dfm.units import ablation_units
from fslib.spectral import conjugate_mirror, conjugate_pairs

__all__ = ["dfm_unit_count", "select_candidates", "dfms_from_partial", "verified_dfms", "exact_top_units",
           "contains_exact_top"]


def dfm_unit_count(h: int, w: int, patch_size: int, top: float) -> int:
    """Units a DFM of ``top`` needs on average: ``ceil(top * U)`` (``U`` units fill ``H W``
    positions, so a unit fills ``H W / U`` of them; 26 of 514 pairs at 32 px and 5 %)."""
    return max(1, math.ceil(top * len(ablation_units(h, w, patch_size))))


def select_candidates(scores: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` highest-scoring units of each class, bool ``(C, U)`` (ties: lower index first).

    >>> select_candidates(torch.tensor([[0.1, 0.9, 0.5]]), 2).tolist()
    [[False, True, True]]
    """
    if not 1 <= n <= scores.shape[1]:
        raise ValueError(f"the number of candidates must lie in 1..{scores.shape[1]} (units), got {n}")
    order = torch.sort(scores.double().nan_to_num(nan=float("-inf")), dim=1, descending=True, stable=True).indices
    out = torch.zeros_like(scores, dtype=torch.bool)
    return out.scatter(1, order[:, :n], True)


def dfms_from_partial(values: torch.Tensor, units, top: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss maps and DFMs from exact values of some units (NaN elsewhere).

    Returns ``(maps, dfms)``: ``maps`` ``(C, H, W)`` float64 with NaN at unevaluated units;
    ``dfms`` ranks evaluated units only (unevaluated positions count as ``-inf``). Raises when a
    class has fewer scored positions (evaluated, or partner of an evaluated one) than the DFM
    needs.
    """
    maps = units_to_map(values, units)
    h, w = maps.shape[1:]
    need = int(math.floor(top * h * w + 0.5))
    scored = ~torch.isnan(maps)
    have = (scored | conjugate_mirror(scored)).flatten(1).sum(1)  # a pair is scored by either member
    if (have < need).any():
        bad = (have < need).nonzero().flatten().tolist()
        raise ValueError(f"classes {bad} have fewer evaluated positions ({have.min().item()}) than the DFM needs "
                         f"({need}); raise the number of candidates")
    return maps, dominant_frequency_maps(maps.nan_to_num(nan=float("-inf")), top)


def verified_dfms(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    top: float = 0.05,
    patch_size: int = 1,
    screen: str = "tangent",
    candidates: float = 4.0,
    rectify: bool = True,
    screen_maps: torch.Tensor | None = None,
    logits: int | None = None,
    adaptive: bool = False,
    max_candidates: float = 8.0,
    step: float = 0.5,
    z: float = 2.0,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> SearchResult:
    """DFMs from an exact ablation of the screen's top candidates only.

    With ``adaptive=True`` the number of candidates is chosen per class: after the first
    ``candidates x`` DFM-size units are verified, a straight line ``exact ~ a + b * screen`` is
    fitted to the verified units below the top half-DFM (the extreme top, e.g. DC, would
    dominate the fit), and while some unverified unit's upper bound ``a + b * screen + z *
    sigma`` (``sigma`` the residual spread) reaches the current DFM threshold (the exact value of
    the first unit beyond the DFM's unit count), the next ``step x`` DFM-size units by screen
    are verified, up to ``max_candidates x``. A class whose screen tracks the exact values
    stops early; one whose screen does not gets more candidates. The guarantee is unchanged.

    Parameters
    ----------
    model, images, labels, num_classes, patch_size, batch_size, device, progress :
        as in :func:`fslib.dfm.ablation_loss`
    top : float in (0, 1), the DFM size (paper: 0.05)
    screen : ``"tangent"``, ``"logit"`` (first-order estimators) or ``"maps"`` (use ``screen_maps``)
    candidates : float > 0, candidates per class as a multiple of :func:`dfm_unit_count`
        (4: 104 of the 514 pairs at 32 px and 5 %, about a fifth of the exact cost)
    rectify : bool, rank by the rectified first-order screen
        (:func:`fslib.dfm.search.firstorder.first_order_loss`): per image, estimated decreases
        count as no change; on a trained CIFAR-10 ResNet18 it held the exact top set where the
        signed estimate did not
    screen_maps : Tensor (num_classes, H, W) or None, the screen for ``screen="maps"``
    logits : int or None, logits the ``"logit"`` screen tracks (None: all)
    adaptive, max_candidates, step, z : the adaptive rule above

    Returns
    -------
    SearchResult: ``maps`` exact class losses at verified units (NaN elsewhere), ``dfms``;
    ``extras["screen"]`` the screen map, ``extras["candidates"]`` bool (C, U);
    provenance ``method="verified"``.
    """
    top = check_fraction(top)
    labels = check_inputs(images, labels, num_classes)
    if screen not in (*ESTIMATORS, "maps"):
        raise ValueError(f"screen must be one of {(*ESTIMATORS, 'maps')}, got {screen!r}")
    if isinstance(candidates, bool) or not isinstance(candidates, (int, float)) or not candidates > 0:
        raise ValueError(f"candidates must be a positive multiple of the DFM size, got {candidates!r}")
    n, _, h, w = images.shape
    units = ablation_units(h, w, patch_size)
    counter = PassCounter(model)
    start = time.perf_counter()
    if screen == "maps":
        if screen_maps is None:
            raise ValueError("screen='maps' needs screen_maps, a (num_classes, H, W) tensor")
        smap = check_maps(screen_maps, num_classes, h, w, "screen_maps")
    else:
        smap = first_order_loss(model, images, labels, num_classes, patch_size=patch_size, estimator=screen,
                                logits=logits, rectify=rectify, batch_size=batch_size, device=device,
                                progress=progress, counter=counter)
    n_dfm = dfm_unit_count(h, w, patch_size, top)
    n_cand = min(len(units), math.ceil(candidates * n_dfm))
    scores = map_to_units(smap, units)
    chosen = select_candidates(scores, n_cand)
    kw = dict(patch_size=patch_size, batch_size=batch_size, device=device, progress=progress, counter=counter)
    values = ablation_loss_subset(model, images, labels, num_classes, chosen, **kw)
    while adaptive:
        more = _more_candidates(values, scores, chosen, n_dfm, min(len(units), math.ceil(max_candidates * n_dfm)),
                                max(1, math.ceil(step * n_dfm)), z)
        if not more.any():
            break
        values = torch.where(more, ablation_loss_subset(model, images, labels, num_classes, more, **kw), values)
        chosen |= more
    maps, dfms = dfms_from_partial(values, units, top)
    seconds = time.perf_counter() - start
    settings = {"top": top, "patch_size": patch_size, "screen": screen, "candidates": float(candidates),
                "logits": logits, "rectify": bool(rectify) if screen != "maps" else None}
    if adaptive:
        settings.update(adaptive=True, max_candidates=float(max_candidates), step=float(step), z=float(z))
    provenance = {"method": "verified", "settings": settings, "seconds": seconds, "n_images": n,
                  "n_candidates": chosen.sum(1).tolist(), "units": len(units), **counter.record(n)}
    return SearchResult(maps, dfms, provenance, {"screen": smap, "candidates": chosen})


def _more_candidates(values: torch.Tensor, scores: torch.Tensor, chosen: torch.Tensor, n_dfm: int, cap: int,
                     step: int, z: float, tail: float = 0.5) -> torch.Tensor:
    """Which units to verify next, bool ``(C, U)``: the adaptive rule of :func:`verified_dfms`."""
    more = torch.zeros_like(chosen)
    for k in range(chosen.shape[0]):
        n_have = int(chosen[k].sum())
        if n_have >= cap or n_have == chosen.shape[1]:
            continue
        v, s = values[k][chosen[k]], scores[k][chosen[k]]
        ranked = v.sort(descending=True).values
        thr = ranked[min(len(ranked) - 1, n_dfm)]
        fit = v <= ranked[min(len(ranked) - 1, int(tail * n_dfm))]
        rest = scores[k].masked_fill(chosen[k], float("-inf"))
        if int(fit.sum()) >= 3:
            a = torch.stack([torch.ones_like(s[fit]), s[fit]], 1)
            coef = torch.linalg.lstsq(a, v[fit][:, None]).solution.flatten()
            sigma = (v[fit] - a @ coef).std()
            upper = coef[0] + coef[1] * rest[~chosen[k]] + z * sigma
            if not bool((upper >= thr).any()):
                continue
        order = torch.sort(rest, descending=True, stable=True).indices[: min(step, cap - n_have)]
        more[k, order] = True
    return more & ~chosen


def exact_top_units(loss_maps: torch.Tensor, top: float, patch_size: int = 1) -> torch.Tensor:
    """The units a verified search must evaluate to reproduce the exact DFM, bool ``(C, U)``.

    Every unit whose exact value is at least the score of the first conjugate pair that the
    exact DFM leaves out (all units when it leaves none out). Ties at that value are included,
    so the set can be larger than the DFM.

    Parameters
    ----------
    loss_maps : Tensor, shape (C, H, W), the exact maps of :func:`fslib.dfm.ablation_loss`
    top : float, the DFM size
    patch_size : int, the units of ``loss_maps``
    """
    top = check_fraction(top)
    c, h, w = loss_maps.shape
    units = ablation_units(h, w, patch_size)
    values = map_to_units(loss_maps, units)
    dfm = dominant_frequency_maps(loss_maps, top).flatten(1)
    pairs = conjugate_pairs(h, w)
    rep, partner = pairs[:, 0] * w + pairs[:, 1], pairs[:, 2] * w + pairs[:, 3]
    flat = loss_maps.double().flatten(1)
    score = torch.maximum(flat[:, rep], flat[:, partner])  # (C, P)
    left_out = ~dfm[:, rep]
    thresh = torch.where(left_out, score, torch.full_like(score, float("-inf"))).max(1).values  # (C,)
    return values >= thresh[:, None]


def contains_exact_top(candidates: torch.Tensor, loss_maps: torch.Tensor, top: float,
                       patch_size: int = 1) -> torch.Tensor:
    """Per class, whether ``candidates`` (bool ``(C, U)``) hold the exact top set, bool ``(C,)``."""
    need = exact_top_units(loss_maps, top, patch_size)
    if candidates.shape != need.shape:
        raise ValueError(f"candidates must have shape {tuple(need.shape)}, got {tuple(candidates.shape)}")
    return (need & ~candidates.bool().cpu()).sum(1) == 0
