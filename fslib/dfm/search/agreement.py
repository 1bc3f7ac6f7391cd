"""How far a fast search is from the exact ablation: per-class rank agreement and DFM overlap.

A fast method is judged against the exact ranking of the same model on the same images:

* :func:`unit_spearman`: per class, the Spearman correlation of the method's unit scores
  with the exact unit losses (one value per removal unit, as :func:`fslib.dfm.ablation_units`
  groups the positions; a pair counts once, not twice);
* :func:`agreement`: that, with the intersection over union of the two top-``top`` DFMs
  (:func:`fslib.dfm.iou`), per class;
* :func:`error_by_radius`: where a method's estimate of a removal's effect goes wrong, ring
  by ring from DC, and how much of the exact DFMs each ring holds;
* :func:`method_summary`: one row per method of cost (forward-equivalents per ranking image
  and its ratio to the exact one, seconds), agreement (median and minimum over classes) and
  shortcut test (mean TPR / FPR on held-out images, classes beating the null, strong ones).

Scores that a method did not produce for every unit (a mask-only method) give NaN Spearman.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from fslib.dfm.search.subset import map_to_units
from fslib.dfm.select import dominant_frequency_maps, iou
from fslib.dfm.units import ablation_units
from fslib.spectral import radius_grid

__all__ = ["unit_spearman", "agreement", "error_by_radius", "method_summary"]

RINGS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, float("inf"))  # ring edges in frequency bins from DC


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), 1-based."""
    return pd.Series(values).rank(method="average").to_numpy()


def unit_spearman(scores: torch.Tensor, exact: torch.Tensor, patch_size: int = 1) -> np.ndarray:
    """Per-class Spearman correlation of two score maps over the removal units.

    Parameters
    ----------
    scores, exact : Tensor, shape (C, H, W), higher = more important; non-finite entries of
        ``scores`` (unscored units) are left out of their class's correlation
    patch_size : int, the units (:func:`fslib.dfm.ablation_units`)

    Returns
    -------
    ndarray (C,), float; NaN for a class with fewer than 3 scored units or constant scores.

    >>> m = torch.arange(2 * 8 * 8, dtype=torch.float64).reshape(2, 8, 8)
    >>> unit_spearman(m, m).round(6).tolist()
    [1.0, 1.0]
    """
    if scores.shape != exact.shape or scores.ndim != 3:
        raise ValueError(f"scores and exact must be (C, H, W) maps of one shape, got {tuple(scores.shape)} and "
                         f"{tuple(exact.shape)}")
    units = ablation_units(scores.shape[1], scores.shape[2], patch_size)
    a = map_to_units(scores.double().cpu(), units).numpy()
    b = map_to_units(exact.double().cpu(), units).numpy()
    out = np.full(len(a), np.nan)
    for k in range(len(a)):
        ok = np.isfinite(a[k]) & np.isfinite(b[k])
        if ok.sum() >= 3 and np.ptp(a[k][ok]) > 0 and np.ptp(b[k][ok]) > 0:
            out[k] = np.corrcoef(_ranks(a[k][ok]), _ranks(b[k][ok]))[0, 1]
    return out


def agreement(scores: torch.Tensor | None, dfms: torch.Tensor, exact: torch.Tensor, top: float = 0.05,
              patch_size: int = 1, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-class agreement of a method with the exact ablation.

    Parameters
    ----------
    scores : Tensor (C, H, W) or None, the method's scores (None or a mask-only method's 0/1
        scores: Spearman is NaN)
    dfms : Tensor, shape (C, H, W), bool, the method's DFMs at ``top``
    exact : Tensor, shape (C, H, W), the exact loss maps (:func:`fslib.dfm.ablation_loss`)
    top : float, the DFM size of the exact DFMs compared with
    patch_size : int
    class_names : names for the ``name`` column (default: the class indices)

    Returns
    -------
    DataFrame, one row per class: ``name``, ``spearman``, ``iou``.
    """
    c = exact.shape[0]
    if dfms.shape != exact.shape:
        raise ValueError(f"dfms must have the exact maps' shape {tuple(exact.shape)}, got {tuple(dfms.shape)}")
    masks_only = scores is None or bool(((scores == 0) | (scores == 1)).all())
    sp = np.full(c, np.nan) if masks_only else unit_spearman(scores, exact, patch_size)
    ov = iou(dfms.bool().cpu(), dominant_frequency_maps(exact.double().cpu(), top)).numpy()
    names = list(class_names) if class_names is not None else list(range(c))
    return pd.DataFrame({"name": names, "spearman": sp, "iou": ov})


def error_by_radius(estimate: torch.Tensor, exact: torch.Tensor, base: torch.Tensor, top: float = 0.05,
                    edges: Sequence[float] = RINGS) -> pd.DataFrame:
    """Where an estimate of the removal effects goes wrong, ring by ring from DC.

    Parameters
    ----------
    estimate, exact : Tensor, shape (C, H, W), estimated and exact class loss after each removal
    base : Tensor, shape (C,), the class losses without removal (:func:`fslib.dfm.class_losses`)
    top : float, the DFM size
    edges : increasing ring edges in frequency bins (a ring is ``edges[i] <= r < edges[i + 1]``)

    Returns
    -------
    DataFrame, one row per non-empty ring (``ring`` "a-b"): ``positions`` (per class),
    ``rel_error`` (median over classes and positions of ``|est - exact| / |exact increase|``,
    increases taken over ``base``), ``exact_dfm_share`` (share of the exact DFM positions in the
    ring), ``recall`` (share of those the estimate's own DFM also holds; NaN where none).
    """
    if estimate.shape != exact.shape or exact.ndim != 3 or base.shape != exact.shape[:1]:
        raise ValueError(f"need estimate and exact (C, H, W) and base (C,), got {tuple(estimate.shape)}, "
                         f"{tuple(exact.shape)} and {tuple(base.shape)}")
    est, ex = estimate.double().cpu(), exact.double().cpu()
    inc = ex - base.double().cpu()[:, None, None]
    err = (est - ex).abs() / inc.abs().clamp_min(1e-12)
    r = radius_grid(ex.shape[1], ex.shape[2]).double()
    d_ex = dominant_frequency_maps(ex, top)
    d_est = dominant_frequency_maps(est.nan_to_num(nan=float("-inf")), top)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        ring = (r >= lo) & (r < hi)
        if not ring.any():
            continue
        hit = d_ex & ring
        rows.append({"ring": f"{lo:g}-{hi:g}", "positions": int(ring.sum()),
                     "rel_error": float(err[:, ring].nanmedian()),
                     "exact_dfm_share": float(hit.sum() / max(1, int(d_ex.sum()))),
                     "recall": float((hit & d_est).sum() / hit.sum()) if hit.any() else float("nan")})
    return pd.DataFrame(rows)


def method_summary(provenance: Mapping[str, Mapping], agreements: Mapping[str, pd.DataFrame],
                   tables: Mapping[str, pd.DataFrame], *, exact: str = "exact", paper_tpr: float = 0.6,
                   max_fpr: float = 0.1) -> pd.DataFrame:
    """One row per method: cost, agreement with the exact ranking, and the shortcut test.

    Parameters
    ----------
    provenance : method -> provenance record of its ranking (``forward_equivalents``, or
        ``forwards`` and ``n_images`` for an exact ranking cached before it was recorded; ``seconds``)
    agreements : method -> :func:`agreement` table (the exact method may be missing)
    tables : method -> shortcut-test table (:func:`fslib.dfm.evaluate_dfms`) on held-out images
    exact : the key of the exact method, the reference of the cost ratios
    paper_tpr, max_fpr : a *strong* shortcut beats its null, has ``TPR >= paper_tpr`` and
        ``FPR <= max_fpr`` (:func:`fslib.report.shortcut_verdict`'s rule)

    Returns
    -------
    DataFrame indexed by method: ``fwd_eq`` (per ranking image), ``x_exact`` (its ratio to the
    exact method's), ``seconds``, ``spearman_median``, ``spearman_min``, ``iou_median``,
    ``iou_min``, ``tpr``, ``fpr`` (means over classes), ``n_freq`` (mean DFM size),
    ``n_shortcut`` (classes beating the null), ``n_low_fpr`` (those with ``FPR <= max_fpr``),
    ``n_strong``.
    """
    if exact not in provenance:
        raise ValueError(f"the exact method {exact!r} must be among the methods: {', '.join(provenance)}")
    ref = _fwd_eq(provenance[exact])
    rows = {}
    for name, prov in provenance.items():
        t, a = tables[name], agreements.get(name)
        strong = t["shortcut"].astype(bool) & (t["tpr"] >= paper_tpr) & (t["fpr"] <= max_fpr)
        fe = _fwd_eq(prov)
        rows[name] = {
            "fwd_eq": fe, "x_exact": fe / ref, "seconds": float(prov.get("seconds", np.nan)),
            "spearman_median": float(a["spearman"].median()) if a is not None else np.nan,
            "spearman_min": float(a["spearman"].min()) if a is not None else np.nan,
            "iou_median": float(a["iou"].median()) if a is not None else np.nan,
            "iou_min": float(a["iou"].min()) if a is not None else np.nan,
            "tpr": float(t["tpr"].mean()), "fpr": float(t["fpr"].mean()), "n_freq": float(t["n_freq"].mean()),
            "n_shortcut": int(t["shortcut"].astype(bool).sum()),
            "n_low_fpr": int((t["shortcut"].astype(bool) & (t["fpr"] <= max_fpr)).sum()), "n_strong": int(strong.sum()),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def _fwd_eq(prov: Mapping) -> float:
    """Forward-equivalents per ranking image of a provenance record."""
    if "forward_equivalents" in prov:
        return float(prov["forward_equivalents"])
    return float(prov["forwards"]) / float(prov["n_images"])
