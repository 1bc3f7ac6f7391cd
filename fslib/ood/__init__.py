"""Out-of-distribution tests: texture vs shape, synthetic transfer, and shortcut transfer.

The paper's fourth claim is that frequency shortcuts learned in distribution also fire on
out-of-distribution (OOD) images, where a shortcut feature that happens to be present gives
an illusion of generalisation. The computations behind chapter 5:

* :mod:`~fslib.ood.labels`: a 10-way CIFAR-10 (or ImageNet-10) model answers among the
  classes an OOD set shares with it (:class:`RestrictedLogits`, :func:`map_predictions`).
* :mod:`~fslib.ood.cue_conflict`: accuracy by shape label and by texture label, and the
  texture bias of Geirhos et al. (2019) on the texture-vs-shape stimuli.
* :mod:`~fslib.ood.transfer`: models x test sets accuracy matrices, and whether the
  in-distribution DFMs still work on OOD images (:func:`shortcut_transfer`,
  :func:`transfer_summary`, :func:`transfer_by_protocol`, :func:`imagenet_sct_table`).

Label conventions: ``labels`` of an OOD set are always given in the *model's* label space
(e.g. CIFAR-10 indices), converted from the OOD set's own classes with :func:`map_labels`.
"""

from fslib.ood.cue_conflict import cue_conflict_by_class, cue_conflict_scores, stimuli_table
from fslib.ood.labels import RestrictedLogits, map_labels, map_predictions
from fslib.ood.transfer import (
    accuracy_table,
    imagenet_sct_table,
    shortcut_transfer,
    synthetic_test_sets,
    transfer_by_protocol,
    transfer_matrix,
    transfer_summary,
)

__all__ = [
    "RestrictedLogits", "map_labels", "map_predictions", "cue_conflict_scores", "cue_conflict_by_class",
    "stimuli_table", "accuracy_table", "transfer_matrix", "synthetic_test_sets", "shortcut_transfer",
    "transfer_summary", "transfer_by_protocol", "imagenet_sct_table",
]
