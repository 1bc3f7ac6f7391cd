"""Training: the paper's recipe as a config, and the deterministic loop that runs it.

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

Extension points, each a config field (and so part of the run hash once set): the training
loss (``objective``, a registry :data:`OBJECTIVES`), an augmentation of the normalised model
input (``input_augment``, :data:`fslib.augment.INPUT_AUGMENTS`), and fine-tuning from another
finished run (``init_from``) with some blocks frozen (``trainable``) or re-initialised
(``reinit``), per-block learning-rate multipliers (``lr_scale``) and the settings of a derived
dataset (``dataset_options``, e.g. the frequency skew of ``cifar10_skew`` or the synthetic
generator's free parameters, :data:`fslib.synthetic.OPTIONS`). Fields added after the first
runs were cached stay out of the hash while they hold their defaults (:meth:`TrainConfig.to_dict`).

Evaluation lives in :mod:`fslib.inference`, the learning-dynamics records in :mod:`fslib.tracking`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import torch
import torch.nn as nn

from fslib import augment as aug
from fslib import data, distributed, models
from fslib.constants import normalization
from fslib.device import resolve_device
from fslib.images import LabeledImages
from fslib.inference import PRECISIONS, evaluate, normalize
from fslib.objectives import OBJECTIVES, Objective, register_objective  # noqa: F401  (train.register_objective)
from fslib.tracking import TrackingRecorder, _parse_track_set, track_set

SCHEDULERS = ("plateau", "onecycle", "cosine", "constant")

Hook = Callable[[int, nn.Module], None]
"""``hook(step, model)``: called before the first step (step 0) and after every optimiser step."""

# Fields added after run hashes were first recorded: left out of to_dict() (so out of every run
# hash) while they hold these defaults, so the cached runs of a built book keep their hashes.
_LATER_FIELDS: dict[str, Any] = {"input_augment": "none", "input_augment_options": (), "objective": "ce",
                                 "objective_options": (), "init_from": None, "trainable": (), "reinit": (),
                                 "dataset_options": (), "lr_scale": ()}


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
    input_augment: str = "none"          # augmentation of the normalised model input (fslib.augment.INPUT_AUGMENTS)
    input_augment_options: tuple[tuple[str, Any], ...] = ()  # its settings, as (name, value) pairs
    objective: str = "ce"                # training loss (OBJECTIVES); paper: cross-entropy
    objective_options: tuple[tuple[str, Any], ...] = ()      # its settings, as (name, value) pairs
    init_from: str | None = None         # cache key of a finished run whose weights start this one (None: random init)
    trainable: tuple[str, ...] = ()      # parameter-name prefixes that train; the rest is frozen (empty: all train)
    reinit: tuple[str, ...] = ()         # with init_from: prefixes that start from a fresh initialisation instead
    dataset_options: tuple[tuple[str, Any], ...] = ()  # data.check_options: all of cifar10_skew's, syn_b*'s changed ones
    lr_scale: tuple[tuple[str, float], ...] = ()       # (prefix, multiplier): those parameters train at lr x multiplier

    def __post_init__(self) -> None:
        for name in ("crop_scale", "track_sets", "trainable", "reinit"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        for name in ("input_augment_options", "objective_options", "dataset_options"):
            value = getattr(self, name)
            if isinstance(value, dict):
                value = value.items()
            object.__setattr__(self, name, tuple(sorted((str(k), v) for k, v in value)))
        scales = self.lr_scale.items() if isinstance(self.lr_scale, dict) else self.lr_scale
        object.__setattr__(self, "lr_scale", tuple((str(k), float(v)) for k, v in scales))
        trainable = [n for n, s in data.DATASETS.items() if "train" in s.splits]
        if self.dataset not in trainable:
            raise ValueError(f"unknown training dataset {self.dataset!r}; valid: {', '.join(trainable)}")
        # cifar10_skew: every setting spelled out; syn_b*: only the changed ones (the default generator stays ())
        object.__setattr__(self, "dataset_options", data.check_options(self.dataset, self.dataset_options))
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
        if self.input_augment not in aug.INPUT_AUGMENTS:
            raise ValueError(f"unknown input_augment {self.input_augment!r}; valid: {', '.join(aug.INPUT_AUGMENTS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; valid: {', '.join(OBJECTIVES)}")
        if self.reinit and self.init_from is None:
            raise ValueError("reinit needs init_from: it names blocks of the starting run to initialise afresh")
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
            "lr_scale": all(v > 0 and math.isfinite(v) for _, v in self.lr_scale)
            and len({k for k, _ in self.lr_scale}) == len(self.lr_scale),
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
        """Plain JSON-ready dict (tuples become lists), the content of the run hash.

        Fields added to the config after the first runs were cached are left out while they
        hold their defaults, so adding a field never changes an existing run's hash.
        """
        def plain(v: Any) -> Any:
            return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

        return {k: plain(v) for k, v in asdict(self).items()
                if not (k in _LATER_FIELDS and getattr(self, k) == _LATER_FIELDS[k])}

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
    loader = data.load if loader is None else loader
    kw: dict[str, Any] = {"seed": cfg.data_seed, "progress": progress}
    if cfg.resolution is not None:
        kw["resolution"] = cfg.resolution
    if cfg.dataset_options:
        kw["options"] = dict(cfg.dataset_options)
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


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63)


class Trainer:
    """The training loop of one :class:`TrainConfig` on one :class:`TrainData`.

    Use :meth:`fit`; :meth:`state_dict` / :meth:`load_state_dict` checkpoint everything a
    resumed run needs (model, optimiser, scheduler, counters, history, tracking rows).

    Parameters
    ----------
    cfg : TrainConfig
    data : TrainData
    device : "auto", "cpu", "cuda", ...
    hooks : callables ``hook(step, model)`` run before the first step and after every
        optimiser step (e.g. evaluation on extra test sets); a :class:`TrackingRecorder`
        for ``cfg.track_sets`` is added automatically when ``cfg.track_every > 0``.
    progress : bool, tqdm bar over iterations showing loss and accuracy

    Notes
    -----
    Several processes (``torchrun``, :mod:`fslib.distributed`): every rank draws the same global
    batch and its augmentation from the same generator and trains on its share of it
    (``batch_size / world_size`` images) with DistributedDataParallel, BatchNorm normalising over
    the global batch; the averaged gradients are those of the whole batch, so the run equals a
    single-process run of the same config up to the order of floating-point sums. Tracking runs
    on rank 0 only; validation on every rank (the plateau scheduler must step alike).
    """

    def __init__(self, cfg: TrainConfig, data: TrainData, device="auto", hooks: Sequence[Hook] = (), progress: bool = True,
                 initial_state: dict[str, torch.Tensor] | None = None):
        self.cfg, self.data, self.progress = cfg, data, progress
        self.device = resolve_device(distributed.local_device(device))
        self.rank, self.world_size = distributed.world()
        if cfg.batch_size % self.world_size:
            raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the {self.world_size} processes "
                             "(each trains on an equal share of every global batch)")
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
        if (cfg.init_from is None) != (initial_state is None):
            raise ValueError(f"init_from={cfg.init_from!r} needs the starting run's model state (initial_state), "
                             "and initial_state needs init_from: fslib.runs.get_or_train passes both")
        if initial_state is not None:
            self._start_from(initial_state)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.frozen = self._freeze()
        self.net = self._distribute()  # what the training step calls: the model, or its DDP wrapper
        self.optimizer = torch.optim.SGD(self._param_groups(), lr=cfg.lr, momentum=cfg.momentum,
                                         nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        self.scheduler = self._make_scheduler()
        self.epoch = 0  # epochs completed
        self.step = 0   # optimiser steps completed
        self.history: list[dict[str, float]] = []
        self.recorder: TrackingRecorder | None = None
        if cfg.track_every > 0 and distributed.is_main():
            sets = {name: track_set(name, data.test) for name in cfg.track_sets}
            self.recorder = TrackingRecorder(sets, data.test.labels, data.num_classes, cfg.track_every,
                                             cfg.track_until, self.mean, self.std, self.device,
                                             precision=cfg.precision)
        self.hooks = ([self.recorder] if self.recorder else []) + list(hooks)

    def _matching(self, prefixes: Sequence[str], what: str) -> set[str]:
        """Parameter and buffer names under the given prefixes; a prefix matching nothing is an error."""
        names = list(self.model.state_dict())
        chosen = set()
        for prefix in prefixes:
            hit = {n for n in names if n == prefix or n.startswith(prefix + ".")}
            if not hit:
                tops = sorted({n.split(".")[0] for n in names})
                raise ValueError(f"{what} prefix {prefix!r} matches no parameter of {self.cfg.model}; "
                                 f"valid blocks: {', '.join(tops)}")
            chosen |= hit
        return chosen

    def _start_from(self, state: dict[str, torch.Tensor]) -> None:
        """Load the starting run's weights, except the ``reinit`` blocks (they keep this run's seeded init)."""
        fresh = self._matching(self.cfg.reinit, "reinit")
        own = self.model.state_dict()
        if set(state) != set(own):
            raise ValueError(f"init_from={self.cfg.init_from!r} holds another architecture: its state has "
                             f"{len(state)} entries, {self.cfg.model} x{self.cfg.width:g} has {len(own)}")
        self.model.load_state_dict({k: (own[k] if k in fresh else v) for k, v in state.items()})

    def _freeze(self) -> list[nn.Module]:
        """Freeze every parameter outside ``cfg.trainable``; return the modules that are entirely frozen
        (they stay in eval mode while training, so their BatchNorm statistics do not move either)."""
        if not self.cfg.trainable:
            return []
        keep = self._matching(self.cfg.trainable, "trainable")
        for name, p in self.model.named_parameters():
            p.requires_grad_(name in keep)
        return [m for m in self.model.modules()  # modules with weights or statistics of their own, none trainable
                if (list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)))
                and not any(p.requires_grad for p in m.parameters(recurse=False))]

    def _distribute(self) -> nn.Module:
        """Alone: the model. Under torchrun: BatchNorm over the global batch, wrapped in DDP."""
        if self.world_size == 1:
            return self.model
        self.model = distributed.sync_batchnorm(self.model, self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _param_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups: one at ``cfg.lr``, one per ``cfg.lr_scale`` entry at
        ``lr x multiplier`` (frozen parameters in none; a parameter under two prefixes is an error)."""
        scale_of: dict[str, float] = {}
        for prefix, factor in self.cfg.lr_scale:
            for name in self._matching([prefix], "lr_scale"):
                if name in scale_of:
                    raise ValueError(f"lr_scale prefixes overlap at {name!r}: give each parameter one multiplier")
                scale_of[name] = factor
        groups: dict[float, list[nn.Parameter]] = {1.0: []}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                groups.setdefault(scale_of.get(name, 1.0), []).append(p)
        return [{"params": ps, "lr": self.cfg.lr * f} for f, ps in groups.items() if ps]

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
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                       total_steps=self.total_steps)
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
        for m in self.frozen:
            m.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        for b in range(self.steps_per_epoch):
            if self.step >= self.total_steps:
                break
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            y = labels[idx]
            x = aug.augment_batch(images[idx], y, gen, kind=cfg.augment, extra=cfg.extra_augment, pad=cfg.pad,
                                  scale=tuple(cfg.crop_scale), chunk=cfg.extra_augment_chunk)
            x, y = normalize(x.to(self.device), self.mean, self.std), y.to(self.device)
            if cfg.input_augment != "none":
                x = aug.input_augment(x, y, cfg.input_augment, gen, dict(cfg.input_augment_options))
            if self.world_size > 1:  # every rank drew the whole batch (same generator state); train on a share
                share = cfg.batch_size // self.world_size
                x, y = x[self.rank * share : (self.rank + 1) * share], y[self.rank * share : (self.rank + 1) * share]
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                loss, logits = OBJECTIVES[cfg.objective](self.net, x, y, cfg, gen)
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
        if self.world_size > 1:  # the epoch's statistics of the whole global batches
            totals = distributed.all_reduce_sum(torch.tensor([loss_sum, correct, seen], dtype=torch.float64))
            loss_sum, correct, seen = float(totals[0]), int(totals[1]), int(totals[2])
        return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "iterations": seen // cfg.batch_size}

    def fit(self, on_epoch_end: Callable[["Trainer"], None] | None = None) -> "Trainer":
        """Train until ``cfg.epochs`` or ``cfg.max_iters``; ``on_epoch_end(self)`` after each epoch."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress or self.rank > 0, unit="it",
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
