"""Training with the paper's recipe, evaluation, and the learning-dynamics measurements.

:class:`TrainConfig` holds the recipe of the official code as its defaults (SGD lr 0.01,
momentum 0.9, Nesterov, weight decay 1e-4, ReduceLROnPlateau(0.1) on validation loss,
batch 64, a random 90/10 train/validation split, Pad(4) + flip + RandomResizedCrop).
:class:`Trainer` runs it on data held in memory as uint8 tensors: every batch is indexed,
augmented with tensor ops (:mod:`fslib.augment`) and normalised on the fly.
:mod:`fslib.runs` wraps it in a content-addressed cache; chapters call
``runs.get_or_train(cfg)`` rather than this module.

Determinism: every random draw comes from generators seeded by ``(seed, epoch)``: the
shuffle and augmentation of an epoch from an explicit ``torch.Generator``, dropout from the
global generator re-seeded at the start of each epoch (inside ``torch.random.fork_rng``, so
the caller's RNG state is untouched). A run resumed from the checkpoint of epoch ``e``
therefore repeats epoch ``e + 1`` exactly as an uninterrupted run would, and the checkpoint
needs no RNG state. ``torch.use_deterministic_algorithms(True, warn_only=True)`` is on
while a :class:`Trainer` builds and trains (and restored afterwards). Results are
reproducible for a fixed device and thread count.

Learning dynamics: :class:`TrackingRecorder` evaluates the model every ``track_every``
iterations on named test sets (:func:`track_set`), per class; :func:`learned_first` reads
"when was each class learned" off that table and :func:`relative_confusion` computes the
paper's band-stop Delta matrix.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from fslib import augment as aug
from fslib import models
from fslib.constants import normalization
from fslib.data import LabeledImages
from fslib.device import resolve_device

__all__ = [
    "SCHEDULERS", "PRECISIONS", "TrainConfig", "TrainData", "load_data", "Trainer", "TrackingRecorder", "track_set",
    "predict", "evaluate", "uses_channels_last", "confusion_matrix", "relative_confusion", "learned_first",
    "learned_first_summary", "deterministic",
]

SCHEDULERS = ("plateau", "onecycle", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")
# Images per forward pass in evaluation. On a 2-core CPU a channels-last ResNet18 x0.25 in
# fp32 scores 1,900-2,100 img/s at 128 against 1,200-1,400 at 512; on a GPU
# larger batches would be faster, and every function takes ``batch_size``.
EVAL_BATCH = 128
Hook = Callable[[int, nn.Module], None]
"""``hook(step, model)``: called before the first step (step 0) and after every optimiser step."""


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class TrainConfig:
    """One training run; the defaults are the official code's recipe.

    Every field is a JSON value, so the config hashes stably (:mod:`fslib.runs`). Lists
    given for tuple fields (e.g. from YAML) are turned into tuples.
    """

    dataset: str = "cifar10"             # fslib.data.load name (syn_b1..4, cifar10, imagenette, ...)
    model: str = "resnet18"              # fslib.models name; paper: CIFAR-style ResNet18
    width: float = 1.0                   # channel multiplier; paper: 1.0
    epochs: int = 200                    # paper: up to 200
    max_iters: int | None = None         # stop after this many optimiser steps (dynamics runs)
    batch_size: int = 64                 # paper: 64
    lr: float = 0.01                     # paper: SGD lr 0.01 (the peak lr for onecycle)
    momentum: float = 0.9                # paper: 0.9
    nesterov: bool = True                # paper: Nesterov
    weight_decay: float = 1e-4           # paper: 1e-4
    scheduler: str = "plateau"           # paper: ReduceLROnPlateau on val loss; also onecycle/cosine/constant
    plateau_factor: float = 0.1          # paper: 0.1
    plateau_patience: int = 10           # epochs; torch default, as the official code
    label_smoothing: float = 0.0         # paper: none
    augment: str = "official"            # paper: Pad(4)+HFlip+RandomResizedCrop; "flipcrop"; "none"
    pad: int = 4                         # pixels of zero padding; paper: Pad(4)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range; paper: torchvision default
    extra_augment: str = "none"          # none | autoaugment | augmix | ... (fslib.augment.EXTRA_AUGMENTS)
    extra_augment_chunk: int = 1         # images sharing one random extra-augmentation op (1 = per image, as PIL)
    channels_last: bool = False          # NHWC memory layout: same maths, ~1.2-1.4x faster on CPU for narrow models
    precision: str = "fp32"              # "bf16": forward and loss under torch.autocast(bfloat16), ~2x faster on CPU; paper: fp32
    n_train: int | None = None           # class-balanced subset of the training split (None = all)
    n_test: int | None = None            # class-balanced subset of the test split (None = all)
    resolution: int | None = None        # square input size for imagenette (64/112/224); None = native
    data_seed: int = 0                   # seed of the dataset subset (and synthetic draw), fixed across training seeds
    val_fraction: float = 0.1            # paper: random 90/10 train/validation split
    seed: int = 0                        # split, initial weights, shuffling, augmentation, dropout
    track_every: int = 0                 # evaluate tracking sets every k iterations (0 = off)
    track_until: int = 0                 # ... up to this iteration (paper: 500 synthetic, 1,200 natural)
    track_sets: tuple[str, ...] = ()     # e.g. "test", "bandpass:3", "bandstop:1,2" (see track_set)

    def __post_init__(self) -> None:
        from fslib.data import DATASETS

        for name in ("crop_scale", "track_sets"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        trainable = [n for n, s in DATASETS.items() if "train" in s.splits]
        if self.dataset not in trainable:
            raise ValueError(f"unknown training dataset {self.dataset!r}; valid: {', '.join(trainable)}")
        if self.model not in models.MODELS:
            raise ValueError(f"unknown model {self.model!r}; valid: {', '.join(models.MODELS)}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; valid: {', '.join(SCHEDULERS)}")
        if self.augment not in aug.AUGMENTS:
            raise ValueError(f"unknown augment {self.augment!r}; valid: {', '.join(aug.AUGMENTS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.extra_augment not in aug.EXTRA_AUGMENTS:
            raise ValueError(f"unknown extra_augment {self.extra_augment!r}; valid: {', '.join(aug.EXTRA_AUGMENTS)}")
        checks = {
            "width": self.width > 0, "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 2,
            "lr": self.lr > 0, "momentum": 0 <= self.momentum < 1, "weight_decay": self.weight_decay >= 0,
            "plateau_factor": 0 < self.plateau_factor < 1, "plateau_patience": self.plateau_patience >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1, "pad": self.pad >= 0,
            "extra_augment_chunk": self.extra_augment_chunk >= 1, "val_fraction": 0 <= self.val_fraction < 1,
            "track_every": self.track_every >= 0, "track_until": self.track_until >= 0,
            "crop_scale": len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
            "max_iters": self.max_iters is None or self.max_iters >= 1,
            "n_train": self.n_train is None or self.n_train >= 1, "n_test": self.n_test is None or self.n_test >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid TrainConfig value(s): {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")
        if self.scheduler == "plateau" and self.val_fraction == 0:
            raise ValueError("scheduler='plateau' steps on validation loss and needs val_fraction > 0")
        if self.track_every and not self.track_sets:
            raise ValueError("track_every > 0 needs track_sets, e.g. ('test', 'bandstop:1,2')")
        for name in self.track_sets:
            _parse_track_set(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; valid: {', '.join(sorted(known))}")
        return cls(**d)

    @property
    def per_step_scheduler(self) -> bool:
        return self.scheduler in ("onecycle", "cosine")


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Turn on ``torch.use_deterministic_algorithms`` (warn-only) and restore it afterwards.

    The NaN filling of uninitialised memory that comes with it (a debugging aid, 8 % of a
    training step on a CPU) is switched off: it does not change any result.
    """
    import torch.utils.deterministic as tud

    was, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = tud.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    tud.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn)
        tud.fill_uninitialized_memory = fill


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class TrainData:
    """The three splits of one run, uint8 images in memory."""

    train: LabeledImages
    val: LabeledImages | None
    test: LabeledImages

    @property
    def num_classes(self) -> int:
        return self.test.num_classes


def _subset(data: LabeledImages, index: torch.Tensor, split: str) -> LabeledImages:
    return LabeledImages(data.images[index], data.labels[index], data.classes, data.name, split, data.source,
                         {"index": index})


def load_data(cfg: TrainConfig, loader: Callable[..., LabeledImages] | None = None, progress: bool = True) -> TrainData:
    """Load the training and test splits and make the seeded train/validation split.

    Parameters
    ----------
    cfg : TrainConfig
    loader : callable like :func:`fslib.data.load` (tests pass a fake one)
    progress : bool

    Returns
    -------
    TrainData; ``val`` holds ``round(val_fraction * N)`` training images chosen with
    ``cfg.seed`` (as the official code's ``random_split``), ``None`` when val_fraction is 0.
    """
    if loader is None:
        from fslib.data import load as loader
    kw: dict[str, Any] = {"seed": cfg.data_seed, "progress": progress}
    if cfg.resolution is not None:
        kw["resolution"] = cfg.resolution
    full = loader(cfg.dataset, "train", n=cfg.n_train, **kw)
    test = loader(cfg.dataset, "test", n=cfg.n_test, **kw)
    n_val = int(round(cfg.val_fraction * len(full)))
    if len(full) - n_val < cfg.batch_size:
        raise ValueError(f"{len(full) - n_val} training images after the validation split is fewer than "
                         f"batch_size={cfg.batch_size}")
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(cfg.seed))
    val = _subset(full, perm[:n_val].sort().values, "val") if n_val else None
    train = _subset(full, perm[n_val:].sort().values, "train")
    return TrainData(train, val, test)


# --------------------------------------------------------------------------- evaluation
def uses_channels_last(model: nn.Module) -> bool:
    """Whether the model's convolution weights are stored channels-last (NHWC)."""
    return any(p.ndim == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
               for p in model.parameters())


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = EVAL_BATCH,
    device: str | torch.device = "auto",
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Logits of ``model`` in eval mode (its previous mode is restored).

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W)
        Already-normalised float model input; or, when ``mean``/``std`` are given, raw
        images (uint8, or float in [0, 1]) normalised batch by batch.
    precision : "fp32", or "bf16" for forwards under ``torch.autocast(bfloat16)`` (the
        tracking of a bf16 training run; final evaluations use fp32)

    Returns
    -------
    Tensor, shape (N, num_classes), float32, on the CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    dev = resolve_device(device)
    if mean is None and not images.is_floating_point():
        raise TypeError(f"images are {images.dtype}: pass mean/std (or normalise first, e.g. run.normalize)")
    was_training = model.training
    channels_last = uses_channels_last(model)
    model.eval()
    try:
        outs = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(dev)
            x = aug.normalize(x, mean, std) if mean is not None else x.to(torch.float32)
            if x.ndim == 4 and channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                outs.append(model(x).float().cpu())
        return torch.cat(outs) if outs else torch.empty(0, 0)
    finally:
        model.train(was_training)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> np.ndarray:
    """Counts ``M[i, j]`` of images of class ``i`` predicted as ``j``, int64 ``(C, C)``."""
    lab = torch.as_tensor(labels).long().flatten().cpu()
    pred = torch.as_tensor(predictions).long().flatten().cpu()
    if lab.shape != pred.shape:
        raise ValueError(f"{lab.numel()} labels but {pred.numel()} predictions")
    return torch.bincount(lab * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes).numpy()


def _scores(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class accuracy (recall) and false-positive rate from a confusion matrix."""
    per_class = confusion.sum(axis=1)
    correct = np.diag(confusion)
    acc = np.divide(correct, per_class, out=np.full(len(correct), np.nan), where=per_class > 0)
    negatives = per_class.sum() - per_class
    fp = confusion.sum(axis=0) - correct
    fpr = np.divide(fp, negatives, out=np.full(len(correct), np.nan), where=negatives > 0)
    return acc, fpr


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    batch_size: int = EVAL_BATCH,
    device: str | torch.device = "auto",
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Accuracy, per-class accuracy, confusion matrix and mean loss.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), normalised float (or raw with ``mean``/``std``)
    labels : Tensor, shape (N,), int64
    precision : as :func:`predict`

    Returns
    -------
    dict with ``acc`` (float), ``per_class_acc`` (ndarray (C,), NaN for an absent class),
    ``fpr`` (ndarray (C,), share of other-class images predicted as the class),
    ``confusion`` (ndarray (C, C) int64, rows = true class), ``loss`` (float, mean
    cross-entropy) and ``predictions`` (Tensor (N,) int64).
    """
    logits = predict(model, images, batch_size, device, mean=mean, std=std, precision=precision)
    labels = torch.as_tensor(labels).long().cpu()
    pred = logits.argmax(dim=1)
    conf = confusion_matrix(labels, pred, num_classes)
    per_class, fpr = _scores(conf)
    return {
        "acc": float((pred == labels).float().mean()),
        "per_class_acc": per_class,
        "fpr": fpr,
        "confusion": conf,
        "loss": float(F.cross_entropy(logits, labels)),
        "predictions": pred,
    }


def relative_confusion(pred_original, pred_bandstop, labels, num_classes: int) -> np.ndarray:
    """The paper's relative confusion matrix of a band-stop test.

    ``Delta[i, j] = (Pred_bandstop[i, j] - Pred_original[i, j]) / N_i * 100``, where
    ``Pred[i, j]`` counts images of class ``i`` predicted as ``j`` and ``N_i`` is the number
    of images of class ``i``. Rows sum to 0; the diagonal is the accuracy change in points.

    Parameters
    ----------
    pred_original, pred_bandstop : Tensor, shape (N,) predicted labels or (N, C) logits
    labels : Tensor, shape (N,)
    num_classes : int

    Returns
    -------
    ndarray, shape (C, C), float64, percentage points.

    >>> relative_confusion(torch.tensor([0, 1]), torch.tensor([1, 1]), torch.tensor([0, 1]), 2).tolist()
    [[-100.0, 100.0], [0.0, 0.0]]
    """
    def as_pred(p):
        p = torch.as_tensor(p)
        return p.argmax(dim=1) if p.ndim == 2 else p

    orig = confusion_matrix(labels, as_pred(pred_original), num_classes).astype(np.float64)
    stop = confusion_matrix(labels, as_pred(pred_bandstop), num_classes).astype(np.float64)
    n = orig.sum(axis=1, keepdims=True)
    if (n == 0).any():
        raise ValueError(f"classes {np.flatnonzero(n[:, 0] == 0).tolist()} have no images")
    return (stop - orig) / n * 100.0


# --------------------------------------------------------------------------- tracking
def _parse_track_set(name: str) -> tuple[str, tuple[int, ...]]:
    valid = "'test', 'bandpass:K[,K]' or 'bandstop:J[,K]' with bands in 1..4"
    if name == "test":
        return "test", ()
    kind, _, rest = name.partition(":")
    if kind not in ("bandpass", "bandstop") or not rest:
        raise ValueError(f"unknown tracking set {name!r}; valid: {valid}")
    try:
        bands = tuple(int(b) for b in rest.split(","))
    except ValueError:
        raise ValueError(f"unknown tracking set {name!r}; valid: {valid}") from None
    if not bands or any(b not in (1, 2, 3, 4) for b in bands) or len(set(bands)) != len(bands):
        raise ValueError(f"unknown tracking set {name!r}; valid: {valid}")
    return kind, tuple(sorted(bands))


def track_set(name: str, test: LabeledImages) -> torch.Tensor:
    """Images of a named tracking set, built from the test split.

    ``"test"`` is the test split itself; ``"bandpass:K[,K]"`` keeps only the given bands and
    ``"bandstop:J[,K]"`` removes them (bands of :mod:`fslib.spectral`). For the synthetic
    sets the variants come from :func:`fslib.synthetic.variant` (DC kept, clipped, uint8),
    the same images the chapters' band-stop tests use; for other datasets from
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
        from fslib import synthetic

        images, labels = synthetic.variant(test.name, kind, bands, "test", n=len(test), seed=int(test.extra["seed"]))
        if not torch.equal(labels, test.labels):
            raise ValueError(f"synthetic.variant({test.name!r}) labels do not match the test split in use")
        return images
    from fslib import spectral

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


def learned_first(
    tracking: pd.DataFrame,
    threshold: float = 0.8,
    *,
    set: str = "test",
    max_fpr: float | None = 0.1,
    sustained: bool = False,
) -> pd.DataFrame:
    """The iteration at which each class is first learned.

    Definition: the first recorded iteration ``t`` at which the class's accuracy on the
    tracking set ``set`` is at least ``threshold`` and, when ``max_fpr`` is given, at most
    ``max_fpr`` of the other classes' images are predicted as this class. The FPR condition
    keeps a class from counting as learned while the model simply predicts it for
    everything (early in training one class often gets 100 % accuracy that way). With
    ``sustained=True`` the conditions must also hold at every later recorded iteration.
    A class never learned within the record gets NaN.

    Parameters
    ----------
    tracking : DataFrame with columns iteration, set, class, accuracy, fpr (and
        optionally ``seed``, one group per seed)

    Returns
    -------
    DataFrame with columns ``class``, ``iteration`` (float, NaN if never) and ``seed``
    when the input has one.
    """
    df = tracking[tracking["set"] == set]
    if df.empty:
        raise ValueError(f"no tracking rows for set {set!r}; sets present: {sorted(tracking['set'].unique())}")
    keys = ["seed", "class"] if "seed" in df.columns else ["class"]
    ok = df["accuracy"] >= threshold
    if max_fpr is not None:
        ok &= df["fpr"] <= max_fpr
    df = df.assign(ok=ok).sort_values(keys + ["iteration"])
    out = []
    for key, group in df.groupby(keys, sort=True):
        flags = group["ok"].to_numpy()
        if sustained:  # holds from here to the end: reverse cumulative AND
            flags = np.logical_and.accumulate(flags[::-1])[::-1]
        hit = np.flatnonzero(flags)
        key = key if isinstance(key, tuple) else (key,)
        out.append((*key, float(group["iteration"].to_numpy()[hit[0]]) if hit.size else math.nan))
    return pd.DataFrame(out, columns=keys + ["iteration"])


def learned_first_summary(first: pd.DataFrame) -> pd.DataFrame:
    """Mean +- std over seeds of :func:`learned_first` (seeds where the class was never
    learned are left out of the mean and counted in ``n_never``); std is the sample std."""
    g = first.groupby("class")["iteration"]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(), "n_seeds": g.size(),
                         "n_never": g.apply(lambda s: int(s.isna().sum()))}).reset_index()


# --------------------------------------------------------------------------- training
def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63)


class Trainer:
    """The training loop of one :class:`TrainConfig` on one :class:`TrainData`.

    Parameters
    ----------
    cfg : TrainConfig
    data : TrainData
    device : "auto", "cpu", "cuda", ...
    hooks : callables ``hook(step, model)`` run before the first step and after every
        optimiser step (e.g. evaluation on extra test sets); a :class:`TrackingRecorder`
        for ``cfg.track_sets`` is added automatically when ``cfg.track_every > 0``.
    progress : bool, tqdm bar over iterations showing loss and accuracy

    Use :meth:`fit`; :meth:`state_dict` / :meth:`load_state_dict` checkpoint everything a
    resumed run needs (model, optimiser, scheduler, counters, history, tracking rows).
    """

    def __init__(self, cfg: TrainConfig, data: TrainData, device="auto", hooks: Sequence[Hook] = (), progress: bool = True):
        self.cfg, self.data, self.progress = cfg, data, progress
        self.device = resolve_device(device)
        self.mean, self.std = normalization(cfg.dataset)
        n = len(data.train)
        self.steps_per_epoch = n // cfg.batch_size  # full batches only: BatchNorm needs > 1 image
        if self.steps_per_epoch == 0:
            raise ValueError(f"{n} training images is fewer than batch_size={cfg.batch_size}")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_iters is not None:
            self.total_steps = min(self.total_steps, cfg.max_iters)
        with deterministic(), self._own_rng():
            torch.manual_seed(cfg.seed)
            self.model = models.build(cfg.model, data.num_classes, width=cfg.width).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        self.scheduler = self._make_scheduler()
        self.epoch = 0  # epochs completed
        self.step = 0   # optimiser steps completed
        self.history: list[dict[str, float]] = []
        self.recorder: TrackingRecorder | None = None
        if cfg.track_every > 0:
            sets = {name: track_set(name, data.test) for name in cfg.track_sets}
            self.recorder = TrackingRecorder(sets, data.test.labels, data.num_classes, cfg.track_every,
                                             cfg.track_until, self.mean, self.std, self.device,
                                             precision=cfg.precision)
        self.hooks = ([self.recorder] if self.recorder else []) + list(hooks)

    def _own_rng(self):
        """Seed torch's global generators inside without changing the caller's RNG state."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    def _make_scheduler(self):
        cfg, opt = self.cfg, self.optimizer
        if cfg.scheduler == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.plateau_factor,
                                                              patience=cfg.plateau_patience)
        if cfg.scheduler == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=self.total_steps)
        if cfg.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.total_steps)
        return None

    @property
    def done(self) -> bool:
        return self.epoch >= self.cfg.epochs or self.step >= self.total_steps

    # ---- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, loadable with ``torch.load(weights_only=True)``."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "epoch": self.epoch,
            "step": self.step,
            "history": [dict(r) for r in self.history],
            "tracking": {k: list(v) for k, v in self.recorder.rows.items()} if self.recorder else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = [dict(r) for r in state["history"]]
        if self.recorder is not None:
            self.recorder.rows = {k: list(state["tracking"].get(k, [])) for k in TrackingRecorder.COLUMNS}

    # ---- loop
    def _train_epoch(self, bar) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        seed = _epoch_seed(cfg.seed, self.epoch)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed + 1)  # dropout (AlexNet) draws from the global generator
        order = torch.randperm(len(self.data.train), generator=gen)
        images, labels = self.data.train.images, self.data.train.labels
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for b in range(self.steps_per_epoch):
            if self.step >= self.total_steps:
                break
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            y = labels[idx]
            x = aug.augment_batch(images[idx], y, gen, kind=cfg.augment, extra=cfg.extra_augment, pad=cfg.pad,
                                  scale=tuple(cfg.crop_scale), chunk=cfg.extra_augment_chunk)
            x, y = aug.normalize(x.to(self.device), self.mean, self.std), y.to(self.device)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if cfg.per_step_scheduler:
                self.scheduler.step()
            self.step += 1
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update(1)
            bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
            for hook in self.hooks:
                hook(self.step, model)
        return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "iterations": seen // cfg.batch_size}

    def fit(self, on_epoch_end: Callable[["Trainer"], None] | None = None) -> "Trainer":
        """Train until ``cfg.epochs`` or ``cfg.max_iters``; ``on_epoch_end(self)`` after each epoch."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress, unit="it",
                   desc=f"{cfg.model} x{cfg.width:g} on {cfg.dataset}")
        with deterministic(), self._own_rng(), bar:
            if self.step == 0:
                for hook in self.hooks:
                    hook(0, self.model)
            while not self.done:
                t0, c0 = time.perf_counter(), time.process_time()
                lr = self.optimizer.param_groups[0]["lr"]
                row: dict[str, float] = {"epoch": self.epoch + 1, "lr": lr, **self._train_epoch(bar)}
                if self.data.val is not None:
                    r = evaluate(self.model, self.data.val.images, self.data.val.labels, self.data.num_classes,
                                 device=self.device, mean=self.mean, std=self.std)
                    row.update(val_loss=r["loss"], val_acc=r["acc"])
                    if cfg.scheduler == "plateau":
                        self.scheduler.step(r["loss"])
                else:
                    row.update(val_loss=math.nan, val_acc=math.nan)
                self.epoch += 1
                row.update(step=self.step, seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
                self.history.append(row)
                if on_epoch_end is not None:
                    on_epoch_end(self)
        self.model.eval()
        return self

    def history_frame(self) -> pd.DataFrame:
        """One row per epoch: epoch, lr, train_loss, train_acc, iterations, val_loss, val_acc, step,
        seconds (wall clock) and cpu_seconds (CPU time of the process, all threads)."""
        return pd.DataFrame(self.history)
