"""Finding frequency shortcuts fast: search methods beside the exact ablation of :mod:`fslib.dfm`.

Every method takes ``(model, images, labels, num_classes)`` (normalised float images, as
:func:`fslib.dfm.ablation_loss`) and returns a :class:`SearchResult`: maps ``(C, H, W)``
float64 where meaningful, DFMs ``(C, H, W)`` bool and conjugate-symmetric, and a provenance
record (method, settings, seconds, forward-equivalents per image). Importing :mod:`fslib.dfm`
registers them all in :data:`fslib.dfm.METHODS` (:mod:`~fslib.dfm.search.registry`), so
``DFMConfig(method="verified", options={"candidates": 4})`` runs through
:func:`fslib.dfm.run_dfms` and :func:`fslib.dfm.shortcut_analysis`, cached by method and settings.

* :func:`first_order_dfms` / :func:`first_order_loss`: every removal estimated from one
  backward pass per image (``"tangent"``) or one per logit (``"logit"``, exact softmax).
* :func:`verified_dfms`: a screen, then the exact ablation of the top candidates only.
* :func:`race_dfms`: exact ablation on growing image subsets with pruning (a verified search
  whose screen is exact on a few images).
* :func:`set_search`: per class, the mask of a given size that maximises ``TPR - FPR``.
* :func:`hfss`: the hierarchical search of Wang et al. (CVPR 2025), defects fixed.
* :func:`exact_top_units`, :func:`contains_exact_top`: when a verified DFM must be exact.
* :func:`agreement`, :func:`unit_spearman`, :func:`method_summary`: how far a method is from the
  exact ranking, and what it costs.
"""

from fslib.dfm.search.agreement import agreement, error_by_radius, method_summary, unit_spearman
from fslib.dfm.search.firstorder import first_order_dfms, first_order_loss, first_order_unit_losses
from fslib.dfm.search.hfss import hfss, hfss_candidates
from fslib.dfm.search.race import race_dfms
from fslib.dfm.search.registry import MASK_METHODS, RANKERS, complete_scores, register_all, verified_units
from fslib.dfm.search.result import PassCounter, SearchResult, load_result, save_result
from fslib.dfm.search.setsearch import set_search
from fslib.dfm.search.subset import ablation_loss_subset
from fslib.dfm.search.verified import contains_exact_top, exact_top_units, verified_dfms

register_all()

__all__ = [
    "SearchResult", "PassCounter", "save_result", "load_result", "first_order_loss", "first_order_dfms",
    "first_order_unit_losses", "ablation_loss_subset", "verified_dfms", "race_dfms", "exact_top_units",
    "contains_exact_top", "set_search", "hfss", "hfss_candidates", "RANKERS", "MASK_METHODS", "complete_scores",
    "register_all", "verified_units", "agreement", "unit_spearman", "method_summary", "error_by_radius",
]
