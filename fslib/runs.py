"""Content-addressed training runs: train once, reuse everywhere.

``get_or_train(cfg)`` keys a folder by the hash of the :class:`~fslib.train.TrainConfig`
and the fslib version::

    cache_dir("runs")/<model>-<dataset>-<hash>/
        config.json       the config (and its hash)
        environment.json  versions, device, git commit, threads
        checkpoint.pt     model + optimiser + scheduler + counters + history + tracking,
                          rewritten atomically after every epoch
        history.json/.csv one row per epoch
        tracking.csv      per-class accuracy on the tracking sets (may be empty)
        metrics.json      final test metrics
        DONE              written last: the run is finished

Every file is written with a digest record (``checkpoint.pt.sha256``, ... see
:mod:`fslib.artefacts`) and checked against it when read, so a flipped bit in a checkpoint
is never loaded.

A finished run is loaded without touching the data. An unfinished one resumes from its
last checkpoint and, because every epoch's random draws are seeded by ``(seed, epoch)``,
ends with the same weights as an uninterrupted run. Checkpoints load with
``torch.load(weights_only=True)``; one that is damaged (its digest differs), cannot be read,
or belongs to another config or fslib version, is reported with a :class:`CheckpointWarning`
naming the file and the reason, renamed to ``checkpoint.pt.damaged`` and the run is
retrained from scratch. A damaged record of a finished run (``metrics.json``,
``history.json``, ``tracking.csv``, ``DONE``) costs no training: the finished checkpoint is
evaluated again and the records rewritten. Bad arguments (a device that is not available)
are rejected before the cache is touched. Runs written before digests existed are adopted:
their files are checked by loading them, and their digests recorded (the run hashes are
unchanged).
"""

from __future__ import annotations

import io
import os
import platform
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torchvision

import fslib
from fslib import artefacts, distributed, models
from fslib.artefacts import ArtefactDamaged, ArtefactWarning
from fslib.constants import normalization
from fslib.device import resolve_device
from fslib.inference import EVAL_BATCH, evaluate, normalize, predict
from fslib.io import stable_hash
from fslib.paths import cache_dir, repo_root
from fslib.tracking import TrackingRecorder
from fslib.train import TrainConfig, Trainer, load_data

__all__ = ["Run", "CheckpointWarning", "run_hash", "run_path", "get_or_train", "load_finished", "environment"]

CHECKPOINT_FORMAT = 1


class CheckpointWarning(ArtefactWarning):
    """A run's checkpoint or records could not be used; the run is retrained or re-evaluated."""


# --------------------------------------------------------------------------- the run object
@dataclass
class Run:
    """A trained model with its records.

    Attributes
    ----------
    model : nn.Module, in eval mode on ``device``
    config : TrainConfig
    history : DataFrame, one row per epoch (epoch, lr, train_loss, train_acc, iterations,
        val_loss, val_acc, step, seconds, cpu_seconds)
    tracking : DataFrame (iteration, set, class, accuracy, fpr), empty without tracking
    metrics : dict, test_acc, per_class_acc, test_confusion, epochs, wall_seconds, data_source, ...
    path : Path, the run folder
    device : torch.device
    """

    model: nn.Module
    config: TrainConfig
    history: pd.DataFrame
    tracking: pd.DataFrame
    metrics: dict[str, Any]
    path: Path
    device: torch.device

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the input normalisation (:func:`fslib.constants.normalization`)."""
        return tuple(normalization(self.config.dataset)[0])

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel standard deviation of the input normalisation."""
        return tuple(normalization(self.config.dataset)[1])

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the classes in label order."""
        return tuple(self.metrics["classes"])

    @property
    def cache_key(self) -> str:
        """The run folder's name (model, dataset, config hash): keys the run's cached analyses."""
        return Path(self.path).name

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Model input from raw images ``(N, C, H, W)`` (uint8, or float in [0, 1]): float32,
        normalised with the dataset's mean/std (:func:`fslib.constants.normalization`)."""
        return normalize(images, self.mean, self.std)

    def predict(self, images: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
        """Logits ``(N, num_classes)`` float32 on the CPU.

        ``images`` ``(N, C, H, W)``: uint8 images are normalised for you (batch by batch);
        float images must already be normalised (see :meth:`normalize`).
        """
        if images.dtype == torch.uint8:
            return predict(self.model, images, batch_size, self.device, mean=self.mean, std=self.std)
        return predict(self.model, images, batch_size, self.device)


# --------------------------------------------------------------------------- paths and records
def run_hash(cfg: TrainConfig) -> str:
    """Hash of the config and the fslib version (16 hex digits)."""
    return stable_hash({"config": cfg.to_dict(), "fslib": fslib.__version__})


def run_path(cfg: TrainConfig) -> Path:
    """``cache_dir("runs")/<model>-<dataset>-<hash>`` (not created)."""
    return cache_dir("runs") / f"{cfg.model}-{cfg.dataset}-{run_hash(cfg)}"


def _git(*args: str) -> str | None:
    root = repo_root()
    if root is None:
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device, git commit and thread counts of this process."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "fslib": fslib.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "processes": distributed.world()[1],
        "cpu_count": os.cpu_count(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _meta(cfg: TrainConfig, classes: Sequence[str]) -> dict[str, Any]:
    return {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "fslib_version": fslib.__version__,
            "classes": list(classes)}


def _load_state(file: Path) -> Any:
    """The verified ``torch.load(file, weights_only=True)`` on the CPU (ArtefactDamaged when unusable)."""
    try:
        return artefacts.torch_load(file)
    except ArtefactDamaged as exc:
        if exc.reason.startswith("cannot be read"):
            raise ArtefactDamaged(file, f"it cannot be read with torch.load(weights_only=True) ({exc.reason}); "
                                        "it is truncated, corrupted or not written by fslib") from exc
        raise


def _read_checkpoint(file: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint's state, or None (missing, or damaged: warned and renamed aside)."""
    if not file.exists():
        return None
    try:
        state = _load_state(file)
        if not isinstance(state, dict) or not {"meta", "trainer", "finished"} <= set(state):
            raise ValueError("not an fslib checkpoint (missing meta/trainer/finished)")
        meta = state["meta"]
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        if meta.get("fslib_version") != fslib.__version__:
            raise ValueError(f"written by fslib {meta.get('fslib_version')!r}, this is {fslib.__version__}")
        if meta.get("config") != cfg.to_dict():
            raise ValueError("its config differs from this run's config")
        return state
    except Exception as exc:  # noqa: BLE001 - any failure means "do not use it"
        _discard(file, exc)
        return None


def _discard(file: Path, exc: BaseException) -> None:
    """Warn about an unusable checkpoint (naming it and why) and move it to ``checkpoint.pt.damaged``."""
    if not isinstance(exc, ArtefactDamaged):
        exc = ArtefactDamaged(file, f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}")
    artefacts.discard(exc, file, "the run is retrained from scratch.", CheckpointWarning, stacklevel=4)


def _save_progress(trainer: Trainer, path: Path, finished: bool) -> None:
    state = {"meta": _meta(trainer.cfg, trainer.data.test.classes), "trainer": trainer.state_dict(), "finished": finished}
    artefacts.torch_save(state, path / "checkpoint.pt")
    history = trainer.history_frame()
    artefacts.write_json(path / "history.json", trainer.history)
    artefacts.write_text(path / "history.csv", history.to_csv(index=False))
    tracking = trainer.recorder.frame() if trainer.recorder else pd.DataFrame(columns=list(TrackingRecorder.COLUMNS))
    artefacts.write_text(path / "tracking.csv", tracking.to_csv(index=False))


def _read_tracking(path: Path) -> pd.DataFrame:
    df = artefacts.load(path / "tracking.csv", lambda b: pd.read_csv(io.BytesIO(b)))
    return df if len(df) else pd.DataFrame(columns=list(TrackingRecorder.COLUMNS))


def _starting_weights(cfg: TrainConfig) -> dict[str, torch.Tensor] | None:
    """The model state of the finished run named by ``cfg.init_from`` (its cache key), or None."""
    if cfg.init_from is None:
        return None
    source = cache_dir("runs") / cfg.init_from
    if not (source / "DONE").exists():
        raise ValueError(f"init_from={cfg.init_from!r}: no finished run of that name in {source.parent}; "
                         "train it first (runs.get_or_train) and pass run.cache_key")
    state = _load_state(source / "checkpoint.pt")
    if not isinstance(state, dict) or not state.get("finished"):
        raise ValueError(f"init_from={cfg.init_from!r}: {source / 'checkpoint.pt'} is not a finished fslib run")
    return state["trainer"]["model"]


def _read_finished(path: Path, cfg: TrainConfig) -> tuple[nn.Module, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Model (CPU), history, tracking and metrics of a finished run; ArtefactDamaged names a bad file."""
    for name in ("checkpoint.pt", "metrics.json", "history.json", "tracking.csv"):
        if not (path / name).is_file():
            raise ArtefactDamaged(path / name, "it is missing")
    done = artefacts.read_text(path / "DONE").strip()
    if done != run_hash(cfg):
        raise ArtefactDamaged(path / "DONE", f"it holds {done[:40]!r}, not this run's hash {run_hash(cfg)}")
    file = path / "checkpoint.pt"
    state = _load_state(file)
    if not isinstance(state, dict) or state.get("meta", {}).get("config") != cfg.to_dict() or not state.get("finished"):
        raise ArtefactDamaged(file, "it does not hold the finished run of this config")
    try:
        model = models.build(cfg.model, len(state["meta"]["classes"]), width=cfg.width)
        model.load_state_dict(state["trainer"]["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ArtefactDamaged(file, f"its weights do not fit the model ({type(exc).__name__})") from exc
    history = pd.DataFrame(artefacts.read_json(path / "history.json"))
    return model, history, _read_tracking(path), artefacts.read_json(path / "metrics.json")


# --------------------------------------------------------------------------- public
def load_finished(cfg: TrainConfig, device="auto") -> Run | None:
    """The finished run of ``cfg`` from the cache, or None if it is not finished.

    Raises ValueError for a device that is not available (before reading anything) and
    :class:`fslib.artefacts.ArtefactDamaged`, naming the file, when a file of the run is
    damaged (``get_or_train`` turns that into a warning and a re-evaluation or retrain).
    """
    path = run_path(cfg)
    if not (path / "DONE").exists():
        return None
    dev = resolve_device(device)
    model, history, tracking, metrics = _read_finished(path, cfg)
    model.to(dev).eval()
    if cfg.channels_last:  # the layout it was trained and evaluated in (same maths, same rounding)
        model = model.to(memory_format=torch.channels_last)
    return Run(model, cfg, history, tracking, metrics, path, dev)


def get_or_train(
    cfg: TrainConfig,
    device: str | torch.device = "auto",
    progress: bool = True,
    *,
    loader: Callable[..., Any] | None = None,
    hooks: Sequence[Callable[[int, nn.Module], None]] = (),
) -> Run:
    """The finished run of ``cfg``: from the cache, resumed, or trained now.

    Parameters
    ----------
    cfg : TrainConfig
    device : "auto" (CUDA when present, else CPU), "cpu", "cuda", ...
    progress : bool, tqdm bars (data preparation and training)
    loader : callable like :func:`fslib.data.load` (tests pass a fake one)
    hooks : extra ``hook(step, model)`` callables run during training (not part of the
        cache key: they must only observe; a reused run does not call them)

    Returns
    -------
    Run

    Under ``torchrun`` (:mod:`fslib.distributed`) every rank calls this: they train together
    (DDP), rank 0 alone writes the run folder, and every rank returns the finished run.
    """
    distributed.init_from_env(device)
    dev = resolve_device(distributed.local_device(device))  # bad input fails here, before the cache is touched
    main = distributed.is_main()
    path = run_path(cfg)
    if (path / "DONE").exists():
        try:
            run = load_finished(cfg, dev)
            if run is not None:
                return run
        except ArtefactDamaged as exc:
            distributed.barrier()  # every rank has looked before rank 0 sets the damage aside
            if main:
                _damaged_finished_run(path, exc)
    start = _starting_weights(cfg)
    data = load_data(cfg, loader, progress)
    if main:
        path.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, data, dev, hooks, progress, initial_state=start)
    state = _read_checkpoint(path / "checkpoint.pt", cfg) if main else None  # rank 0 checks (and sets aside)
    distributed.barrier()
    if not main and (path / "checkpoint.pt").exists():  # ... then the others read what it accepted
        state = _load_state(path / "checkpoint.pt")
    if state is not None:
        try:
            trainer.load_state_dict(state["trainer"])
        except Exception as exc:  # noqa: BLE001
            _discard(path / "checkpoint.pt", exc)
            trainer = Trainer(cfg, data, dev, hooks, progress, initial_state=start)
    env = environment(dev)
    if main:
        artefacts.write_json(path / "config.json", {"hash": run_hash(cfg), "config": cfg.to_dict()})
        artefacts.write_json(path / "environment.json", env)

    def save(t: Trainer) -> None:
        if main:
            _save_progress(t, path, finished=False)
        distributed.barrier()  # a rank that fails later finds this epoch's checkpoint on resume

    trainer.fit(on_epoch_end=save)
    if not main:
        distributed.barrier()  # rank 0 evaluates and writes the finished run
        return load_finished(cfg, dev)
    t0 = time.perf_counter()
    mean, std = normalization(cfg.dataset)
    r = evaluate(trainer.model, data.test.images, data.test.labels, data.num_classes, device=dev, mean=mean, std=std)
    history = trainer.history_frame()
    metrics = {
        "test_acc": r["acc"],
        "test_loss": r["loss"],
        "per_class_acc": r["per_class_acc"],
        "test_confusion": r["confusion"],
        "val_acc": float(history["val_acc"].iloc[-1]) if len(history) else None,
        "epochs": trainer.epoch,
        "iterations": trainer.step,
        "train_seconds": float(history["seconds"].sum()) if len(history) else 0.0,
        "train_cpu_seconds": float(history["cpu_seconds"].sum()) if len(history) else 0.0,
        "torch_threads": torch.get_num_threads(),
        "processes": trainer.world_size,
        "wall_seconds": float(history["seconds"].sum()) + time.perf_counter() - t0 if len(history) else 0.0,
        "data_source": data.train.source,
        "classes": list(data.test.classes),
        "n_train": len(data.train),
        "n_val": len(data.val) if data.val is not None else 0,
        "n_test": len(data.test),
        "parameters": models.count_parameters(trainer.model),
    }
    _save_progress(trainer, path, finished=True)
    artefacts.write_json(path / "metrics.json", metrics)
    artefacts.write_json(path / "environment.json", {**env, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    artefacts.write_text(path / "DONE", f"{run_hash(cfg)}\n")
    distributed.barrier()
    return load_finished(cfg, dev)


def _damaged_finished_run(path: Path, exc: ArtefactDamaged) -> None:
    """Warn about a damaged file of a finished run and make the run resumable.

    A damaged checkpoint is moved aside (the run is retrained); a damaged record only
    unmarks the run as finished: resuming from its finished checkpoint trains nothing and
    rewrites the records.
    """
    (path / "DONE").unlink(missing_ok=True)
    artefacts.record_path(path / "DONE").unlink(missing_ok=True)
    if exc.path.name == "checkpoint.pt":
        _discard(exc.path, exc)
        return
    warnings.warn(f"finished run {path}: {exc}; evaluating its finished checkpoint again to rewrite the records "
                  "(no training).", CheckpointWarning, stacklevel=3)
