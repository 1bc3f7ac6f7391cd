"""The fast search methods as entries of the :data:`fslib.dfm.METHODS` registry.

:func:`fslib.dfm.run_dfms` calls ``rank(model, images, labels, num_classes, config, *,
batch_size, device, progress, checkpoint)`` and expects a :class:`fslib.dfm.Ranking`:
complete per-class scores (higher = more important), optionally the masks the method chose
per threshold, and a JSON cost record. :func:`rank_function` builds such a function for
every method of this package and :func:`register_all` registers them under their names
(``"first_order"``, ``"verified"``, ``"race"``, ``"set_search"``, ``"hfss"``); the method's
keyword settings come from ``DFMConfig.options`` and so are part of the cache key.

:func:`complete_scores` turns a partial result (exact values of the verified units only) into
a complete ranking: verified units first, by their exact value, then the others by the
screen (or tied at ``-inf`` where a method has no screen). The guarantee of a verified
method (its DFM equals the exact one when the candidates hold the exact top set) holds for
thresholds up to the ``top`` it was sized for; larger thresholds fall back on the screen.
Mask methods (set search, HFSS) choose one mask per class at ``config.top``; their config
must have ``thresholds=(top,)``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from fslib.dfm.methods import Cost, Ranking, register_method
from fslib.dfm.search.firstorder import first_order_dfms
from fslib.dfm.search.hfss import hfss
from fslib.dfm.search.race import race_dfms
from fslib.dfm.search.result import SearchResult
from fslib.dfm.search.setsearch import set_search
from fslib.dfm.search.subset import map_to_units
from fslib.dfm.search.verified import select_candidates, verified_dfms
from fslib.dfm.select import dominant_frequency_maps
from fslib.dfm.units import ablation_units

__all__ = ["RANKERS", "MASK_METHODS", "COSTS", "complete_scores", "first_order_cost", "rank_function", "register_all",
           "verified_units"]

RANKERS: dict[str, Callable[..., SearchResult]] = {
    "first_order": first_order_dfms, "verified": verified_dfms, "race": race_dfms,
    "set_search": set_search, "hfss": hfss,
}
MASK_METHODS = ("set_search", "hfss")  # choose masks at one size, no scores of every unit


def complete_scores(result: SearchResult) -> torch.Tensor:
    """A complete ``(C, H, W)`` float64 ranking from a result: its maps where finite; elsewhere
    the screen (``extras["screen"]``) shifted below every finite value, or ``-inf``. Mask-only
    results (set search, HFSS) score 1 inside their mask and 0 outside."""
    if result.maps is None:
        return result.dfms.double()
    maps = result.maps.double()
    known = torch.isfinite(maps)
    if known.all():
        return maps
    out = torch.full_like(maps, float("-inf"))
    screen = result.extras.get("screen")
    for k in range(maps.shape[0]):
        if screen is not None and known[k].any():
            s = screen[k].double()
            floor = maps[k][known[k]].min() - 1.0
            out[k] = floor - (s.max() - s)  # unverified, ordered by the screen, below all verified
        out[k][known[k]] = maps[k][known[k]]
    return out


def verified_units(scores: torch.Tensor, n_candidates: list[int], patch_size: int = 1) -> torch.Tensor:
    """The units a verified search ablated exactly, bool ``(C, U)``, from its complete scores.

    :func:`complete_scores` puts every verified unit above every unverified one, so the
    ``n_candidates[c]`` best units of class ``c`` (the provenance's ``n_candidates``) are its
    verified units.
    """
    c, h, w = scores.shape
    if len(n_candidates) != c:
        raise ValueError(f"n_candidates must have one count per class ({c}), got {len(n_candidates)}")
    units = map_to_units(scores, ablation_units(h, w, patch_size))
    return torch.cat([select_candidates(units[k : k + 1], int(n)) for k, n in enumerate(n_candidates)])


def rank_function(method: str) -> Callable[..., Ranking]:
    """``rank(model, images, labels, num_classes, config, *, batch_size, device, progress,
    checkpoint)`` for a method of this package.

    ``config`` is a :class:`fslib.dfm.DFMConfig`; its ``options`` are passed to the method as
    keyword settings (an unknown one raises the method's ``TypeError``).
    """
    if method not in RANKERS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(RANKERS)}")
    fn = RANKERS[method]

    def rank(model, images, labels, num_classes, config, *, batch_size=None, device="auto", progress=True,
             checkpoint=None) -> Ranking:
        kw: dict[str, Any] = dict(top=float(config.top), batch_size=batch_size, device=device, progress=progress,
                                  **config.option)
        if method in MASK_METHODS:
            if config.patch_size != 1:
                raise ValueError(f"method {method!r} searches masks of positions; patch_size must be 1, "
                                 f"got {config.patch_size}")
            extra = sorted({float(t) for t in config.thresholds} - {float(config.top)})
            if extra:
                raise ValueError(f"method {method!r} chooses one mask per class at top={config.top}; "
                                 f"use thresholds=({config.top},), got thresholds {config.thresholds}")
            kw["checkpoint"] = checkpoint
        else:
            kw["patch_size"] = config.patch_size
        result = fn(model, images, labels, num_classes, **kw)
        scores = complete_scores(result)
        if result.maps is None:  # the method chose its masks at its own size
            masks = {float(config.top): result.dfms.bool()}
        else:
            masks = {float(t): dominant_frequency_maps(scores, float(t)) for t in config.thresholds}
            masks[float(config.top)] = result.dfms.bool()
        info = {k: v for k, v in result.provenance.items() if k not in ("method", "seconds")}
        return Ranking(scores, masks, info)

    rank.__doc__ = f"{method}: {fn.__doc__.splitlines()[0] if fn.__doc__ else ''}"
    return rank


def first_order_cost(config, image_shape: tuple, n_images: int, num_classes: int, *, device="cpu",
                     batch_size: int | None = None, probe: bool = False) -> Cost:
    """Forward-equivalents of :func:`first_order_dfms`: per image and path step, one forward
    pass and one backward pass (2) per tracked output (the loss for ``"tangent"``; the tracked
    logits for ``"logit"``).

    >>> from fslib.dfm.config import DFMConfig
    >>> first_order_cost(DFMConfig(method="first_order"), (3, 32, 32), 100, 10).forwards
    300
    """
    opts = dict(config.option)
    tracked = 1
    if opts.get("estimator", "tangent") == "logit":
        tracked = num_classes if opts.get("logits") is None else min(int(opts["logits"]), num_classes)
    per_image = int(opts.get("steps", 1)) * (1 + 2 * tracked)
    return Cost(per_image * n_images, f"{per_image} forward-equivalents x {n_images:,} images")


COSTS: dict[str, Callable[..., Cost]] = {"first_order": first_order_cost}
"""Cost functions of the methods whose cost is known before they run (:func:`fslib.dfm.cost.estimate`);
the verified, raced and set searches adapt their work to what they find and have none."""


def register_all() -> None:
    """Register every method of this package in :data:`fslib.dfm.METHODS` (idempotent)."""
    for name in RANKERS:
        if name not in _REGISTERED:
            _REGISTERED[name] = rank_function(name)
        register_method(name, _REGISTERED[name], COSTS.get(name))


_REGISTERED: dict[str, Callable[..., Ranking]] = {}
