"""Search results of trained runs, computed once and kept in the cache.

:func:`run_search` is to the methods of :mod:`fslib.dfm_search` what
:func:`fslib.dfm.run_dfms` is to the exact ablation: it normalises raw images with the run's
statistics, calls the method and saves the :class:`~fslib.dfm_search.result.SearchResult` under
``cache_dir("dfms")``. The key holds the run folder, digests of the images and labels, the
method and every setting passed, so two methods or two settings never share a file; the
provenance record gets the same fields. Long searches (set search, HFSS) checkpoint beside the
file and resume after an interruption.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import torch

from fslib.dfm_search._dfm import eval_mode
from fslib.dfm_search.firstorder import first_order_dfms
from fslib.dfm_search.hfss import hfss
from fslib.dfm_search.race import race_dfms
from fslib.dfm_search.result import SearchResult, load_result, save_result
from fslib.dfm_search.setsearch import set_search
from fslib.dfm_search.verified import verified_dfms
from fslib.io import stable_hash, to_jsonable

__all__ = ["METHODS", "search_cache_path", "run_search"]

METHODS = {"first_order": first_order_dfms, "verified": verified_dfms, "race": race_dfms,
           "set_search": set_search, "hfss": hfss}
"""Method name -> function ``(model, images, labels, num_classes, **settings) -> SearchResult``."""


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _check(method: str, settings: dict) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    params = inspect.signature(METHODS[method]).parameters
    allowed = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY
               and p not in ("device", "progress", "checkpoint", "batch_size")]
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for method {method!r}; valid: {', '.join(allowed)}")


def search_cache_path(run, images: torch.Tensor, labels: torch.Tensor, method: str, **settings) -> Path:
    """``cache_dir("dfms")/<run folder>-<method>-<key>.npz``, the key hashing the image and label
    digests, the method and ``settings``."""
    from fslib.paths import cache_dir

    _check(method, settings)
    key = stable_hash({"images": _digest(images), "labels": _digest(labels.long().cpu()), "method": method,
                       "settings": to_jsonable(settings)})
    return cache_dir("dfms") / f"{Path(run.path).name}-{method}-{key}.npz"


def run_search(run, images: torch.Tensor, labels: torch.Tensor, method: str, *,
               device: str | torch.device = "auto", progress: bool = True, **settings) -> SearchResult:
    """A search method on a trained run's raw images, cached.

    Parameters
    ----------
    run : fslib.runs.Run (anything with ``model``, ``normalize`` and ``path``)
    images : Tensor, shape (N, C, H, W), uint8, the ranking images
    labels : Tensor, shape (N,), int, every class present
    method : one of :data:`METHODS`
    device, progress : passed to the method (not part of the key)
    **settings : the method's keyword settings (e.g. ``top``, ``candidates``, ``penalty``)

    Returns
    -------
    SearchResult, with ``run``, ``images`` and ``labels`` digests added to the provenance.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"run_search takes raw uint8 images (N, C, H, W) (it normalises them with run.normalize), "
                        f"got {images.dtype} {tuple(images.shape)}")
    labels = labels.long().cpu()
    path = search_cache_path(run, images, labels, method, **settings)
    if path.exists():
        return load_result(path)
    x = run.normalize(images)
    params = next(run.model.parameters(), None)
    with torch.inference_mode(), eval_mode(run.model):
        probe = x[:1].to(params.device) if params is not None else x[:1]
        num_classes = int(run.model(probe).shape[1])
    extra = {}
    if "checkpoint" in inspect.signature(METHODS[method]).parameters:
        extra["checkpoint"] = path.with_name(path.stem + ".partial.npz")
    result = METHODS[method](run.model, x, labels, num_classes, device=device, progress=progress, **settings, **extra)
    provenance = {**result.provenance, "run": Path(run.path).name, "images": _digest(images),
                  "labels": _digest(labels), "n_images": len(labels)}
    result = SearchResult(result.maps, result.dfms, provenance, result.extras)
    save_result(path, result)
    if "checkpoint" in extra:
        extra["checkpoint"].unlink(missing_ok=True)
    return result
