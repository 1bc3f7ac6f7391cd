"""Adapters from :class:`~fslib.dfm_search.result.SearchResult` to a ranking registry.

A registry of DFM methods (``fslib.dfm.methods`` after the package restructuring) calls
``rank(model, images, labels, num_classes, config, *, batch_size, device, progress,
checkpoint)`` and expects ``Ranking(scores, masks, info)``: complete per-class scores (higher
= more important), optionally the masks the method chose per threshold, and a JSON cost
record. :func:`rank_function` builds such a function for every method of this package;
:func:`complete_scores` turns a partial result (exact values of the verified units only) into
a complete ranking: verified units first, by their exact value, then the others by the
screen (or tied at ``-inf`` where a method has no screen). The guarantee of a verified
method (its DFM equals the exact one when the candidates hold the exact top set) holds for
thresholds up to the ``top`` it was sized for; larger thresholds fall back on the screen.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from fslib.dfm_search._dfm import dominant_frequency_maps
from fslib.dfm_search.firstorder import first_order_dfms
from fslib.dfm_search.hfss import hfss
from fslib.dfm_search.race import race_dfms
from fslib.dfm_search.result import SearchResult
from fslib.dfm_search.setsearch import set_search
from fslib.dfm_search.verified import verified_dfms

__all__ = ["RANKERS", "complete_scores", "rank_function"]

RANKERS: dict[str, Callable[..., SearchResult]] = {
    "first_order": first_order_dfms, "verified": verified_dfms, "race": race_dfms,
    "set_search": set_search, "hfss": hfss,
}


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


def rank_function(method: str, ranking_cls: type | None = None) -> Callable[..., Any]:
    """``rank(model, images, labels, num_classes, config, *, batch_size, device, progress,
    checkpoint)`` for a method of this package.

    ``config`` needs ``top``, ``patch_size``, ``thresholds`` and ``options`` (a mapping or
    ``(name, value)`` pairs passed to the method as keyword settings). ``ranking_cls`` builds the
    return value from ``(scores, masks, info)``; None: ``fslib.dfm.methods.Ranking``.
    """
    if method not in RANKERS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(RANKERS)}")
    fn = RANKERS[method]

    def rank(model, images, labels, num_classes, config, *, batch_size=None, device="auto", progress=True,
             checkpoint=None):
        options = dict(config.options)
        kw: dict[str, Any] = dict(top=float(config.top), batch_size=batch_size, device=device, progress=progress,
                                  **options)
        if method not in ("set_search", "hfss"):
            kw["patch_size"] = config.patch_size
        elif config.patch_size != 1:
            raise ValueError(f"method {method!r} searches masks of positions; patch_size must be 1, "
                             f"got {config.patch_size}")
        if method in ("set_search", "hfss"):
            kw["checkpoint"] = checkpoint
        result = fn(model, images, labels, num_classes, **kw)
        scores = complete_scores(result)
        if result.maps is None:  # the method chose its masks at its own size
            masks = {float(t): result.dfms for t in config.thresholds if float(t) == float(config.top)}
            if len(masks) != 1:
                raise ValueError(f"method {method!r} returns masks of size top={config.top}; "
                                 f"thresholds must include it, got {config.thresholds}")
        else:
            masks = {float(t): dominant_frequency_maps(scores, float(t)) for t in config.thresholds}
        info = {k: v for k, v in result.provenance.items()}
        cls = ranking_cls
        if cls is None:
            from fslib.dfm.methods import Ranking as cls  # available once this package lives in fslib.dfm
        return cls(scores, masks, info)

    rank.__doc__ = f"{method}: {fn.__doc__.splitlines()[0] if fn.__doc__ else ''}"
    return rank
