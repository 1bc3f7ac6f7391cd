"""Dominant Frequency Maps (DFMs) and the frequency-shortcut test.

The paper ranks every frequency by how much removing it (with its conjugate partner, from
all colour channels of the normalised model input) raises the cross-entropy on a class's
images; the top 5 % of positions form the class's Dominant Frequency Map. A class whose
DFM-filtered images are still recognised (high TPR, low FPR) has a frequency shortcut.

* :mod:`~fslib.dfm.config`: :class:`DFMConfig`, the settings of an analysis (method, threshold,
  patch size, null, bootstrap), part of every cache key.
* :mod:`~fslib.dfm.units` and :mod:`~fslib.dfm.ablation`: the exact ablation
  (:func:`ablation_loss`), as the official script computes it but fast.
* :mod:`~fslib.dfm.methods`: the registry of search methods (``"exact"`` and the faster
  ones), each returning ranked maps in the same layout, with an optional cost function.
* :mod:`~fslib.dfm.cost`: what an analysis will cost before it starts (the methods' counts
  of forward passes and a timed probe forward).
* :mod:`~fslib.dfm.select`: :func:`dominant_frequency_maps` (thresholds) and :func:`iou`.
* :mod:`~fslib.dfm.shortcut_test`: :func:`evaluate_dfms`, TPR / FPR with bootstrap intervals
  and a same-profile random-mask null.
* :mod:`~fslib.dfm.store`: :func:`save_dfms` / :func:`load_dfms` (``.npz`` + JSON provenance).
* :mod:`~fslib.dfm.protocol`: the book's protocol for any :class:`fslib.inference.Analysable`
  (rank on some images, score on others, cached): :func:`shortcut_analysis`.
* :mod:`~fslib.dfm.describe`: where DFMs sit in the spectrum and what they overlap.
* :mod:`~fslib.dfm.search`: the fast search methods (first-order maps, verified DFMs, races,
  set search, HFSS), registered in ``METHODS`` on import.
* :mod:`~fslib.dfm.split_half`: do two disjoint ranking sets give the same DFM?

Positions are in the centred layout of :mod:`fslib.spectral` (DC at ``(H // 2, W // 2)``).
"""

from fslib.artefacts import ArtefactDamaged, ArtefactWarning
from fslib.dfm import search  # noqa: E402,F401  registers the fast methods in METHODS
from fslib.dfm.ablation import ablation_loss, class_losses
from fslib.dfm.config import PAPER_THRESHOLDS, DFMConfig
from fslib.dfm.describe import dfm_profile, example_filtered, planted_overlap
from fslib.dfm.methods import ESTIMATES, METHODS, Cost, Ranking, method_cost, register_method
from fslib.dfm.protocol import (
    ShortcutAnalysis,
    dfm_cache_path,
    rank_score_split,
    run_dfms,
    run_shortcut_test,
    shortcut_analysis,
    shortcut_test_path,
    shortcut_test_sweep,
    split_for,
)
from fslib.dfm.select import dominant_frequency_maps, iou
from fslib.dfm.shortcut_test import evaluate_dfms
from fslib.dfm.split_half import chunk_indices, chunk_loss_maps, spearman, split_half, split_half_summary
from fslib.dfm.store import SavedDFMs, load_dfms, save_dfms
from fslib.dfm.units import AblationUnits, ablation_units

__all__ = [
    "PAPER_THRESHOLDS", "DFMConfig", "METHODS", "ESTIMATES", "Cost", "Ranking", "register_method", "method_cost",
    "AblationUnits", "ablation_units",
    "ablation_loss", "class_losses", "dominant_frequency_maps", "iou", "evaluate_dfms", "SavedDFMs", "save_dfms",
    "load_dfms", "rank_score_split", "split_for", "dfm_cache_path", "shortcut_test_path", "run_dfms",
    "run_shortcut_test", "shortcut_test_sweep",
    "ShortcutAnalysis", "shortcut_analysis", "planted_overlap", "dfm_profile", "example_filtered",
    "ArtefactDamaged", "ArtefactWarning", "chunk_indices", "chunk_loss_maps", "spearman", "split_half",
    "split_half_summary",
]
