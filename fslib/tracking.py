"""Learning-dynamics tracking: per-class accuracy on named test sets during training.

:class:`TrackingRecorder` is the hook a :class:`~fslib.train.Trainer` calls after every
optimiser step; it evaluates the model every ``track_every`` iterations on the sets named
in ``TrainConfig.track_sets`` (:func:`track_set`: the test split, and its band-pass and
band-stop versions, spelt as :func:`fslib.spectral.band_set_name`).
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn as nn

from fslib import spectral, synthetic
from fslib.images import LabeledImages
from fslib.inference import EVAL_BATCH, evaluate
from fslib.spectral import parse_band_set


def _parse_track_set(name: str) -> tuple[str, tuple[int, ...]]:
    """``"test"`` -> ``("test", ())``; a band set -> :func:`fslib.spectral.parse_band_set`."""
    if name == "test":
        return "test", ()
    try:
        return parse_band_set(name)
    except ValueError:
        raise ValueError(f"unknown tracking set {name!r}; valid: 'test', 'bandpass:K[,K]' or 'bandstop:J[,K]' "
                         "with distinct bands in 1..4") from None


def track_set(name: str, test: LabeledImages) -> torch.Tensor:
    """Images of a named tracking set, built from the test split.

    ``"test"`` is the test split itself; ``"bandpass:K[,K]"`` keeps only the given bands and
    ``"bandstop:J[,K]"`` removes them (bands of :mod:`fslib.spectral`). For the synthetic
    sets the variants come from :func:`fslib.synthetic.variant` (DC kept, clipped, uint8),
    the same images the chapters' band-stop tests use, made with the generator settings
    that made ``test`` (``test.extra["config"]``, set by :func:`fslib.synthetic.load_labeled`); for other datasets from
    :func:`fslib.spectral.band_pass` / :func:`~fslib.spectral.band_stop` (float in about
    [0, 1], not clipped). Labels are those of ``test``.

    Returns
    -------
    Tensor, shape (N, C, H, W), uint8 or float (raw, not normalised).
    """
    kind, bands = _parse_track_set(name)
    if kind == "test":
        return test.images
    if test.name.startswith("syn_b") and test.extra.get("seed") is not None:
        images, labels = synthetic.variant(test.name, kind, bands, "test", n=len(test), seed=int(test.extra["seed"]),
                                           config=test.extra.get("config"))
        if not torch.equal(labels, test.labels):
            raise ValueError(f"synthetic.variant({test.name!r}) labels do not match the test split in use")
        return images
    fn = spectral.band_pass if kind == "bandpass" else spectral.band_stop
    return fn(test.images, bands)


class TrackingRecorder:
    """Hook that records per-class accuracy on named test sets every ``every`` iterations.

    Parameters
    ----------
    sets : dict name -> Tensor (N, C, H, W), raw images (uint8 or float in [0, 1])
    labels : Tensor, shape (N,), shared by every set
    num_classes : int
    every, until : int, record at steps 0, every, 2 * every, ... <= until
    mean, std : normalisation of the model input
    device, batch_size : for the forward passes (:data:`EVAL_BATCH`)
    precision : "fp32" or "bf16" (autocast), as the training steps of the run

    ``rows`` holds the table as columns (iteration, set, class, accuracy, fpr), saved in
    checkpoints so that a resumed run keeps the rows recorded before the interruption. The
    model is evaluated in eval mode (BatchNorm running statistics), then put back in train mode.
    """

    COLUMNS = ("iteration", "set", "class", "accuracy", "fpr")

    def __init__(self, sets: dict[str, torch.Tensor], labels: torch.Tensor, num_classes: int, every: int, until: int,
                 mean, std, device="auto", batch_size: int = EVAL_BATCH, precision: str = "fp32") -> None:
        self.sets, self.labels, self.num_classes = sets, labels, num_classes
        self.every, self.until, self.mean, self.std = every, until, mean, std
        self.device, self.batch_size, self.precision = device, batch_size, precision
        self.rows: dict[str, list] = {c: [] for c in self.COLUMNS}

    def __call__(self, step: int, model: nn.Module) -> None:
        if self.every <= 0 or step % self.every or step > self.until:
            return
        for name, images in self.sets.items():
            r = evaluate(model, images, self.labels, self.num_classes, self.batch_size, self.device,
                         mean=self.mean, std=self.std, precision=self.precision)
            for c in range(self.num_classes):
                for key, value in zip(self.COLUMNS, (step, name, c, float(r["per_class_acc"][c]), float(r["fpr"][c]))):
                    self.rows[key].append(value)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(self.COLUMNS))
