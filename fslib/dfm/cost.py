"""What a shortcut analysis will cost, before it starts.

:func:`estimate` mirrors :func:`fslib.dfm.shortcut_analysis`: it draws the same ranking and
scoring images, asks the search method how many forward passes its ranking takes (the cost
function registered beside it, :func:`fslib.dfm.methods.method_cost`), counts the forward
passes of the shortcut test at every threshold (:func:`shortcut_test_forwards`), looks in the cache
for what is already done (finished DFMs, a partial checkpoint, finished test tables), and
turns forward passes into seconds with a timed probe of the model
(:func:`seconds_per_forward`), plus what the method measures it spends besides them (the
exact ranking times its removal of each unit's sinusoids, which dominates at large patch
sizes: about two thirds of the ranking time at 224 px with 16 x 16 blocks).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd
import torch

from fslib.device import resolve_device
from fslib.dfm.ablation import _auto_batch_size
from fslib.dfm.config import DFMConfig
from fslib.dfm.methods import method_cost
from fslib.dfm.protocol import _check_uint8, _num_logits, dfm_cache_path, shortcut_test_path, split_for
from fslib.dfm.store import load_dfms
from fslib.inference import Analysable, eval_mode
from fslib.io import load_npz


def shortcut_test_forwards(n_images: int, num_classes: int, n_null: int) -> int:
    """Image forward passes of one shortcut test (:func:`fslib.dfm.evaluate_dfms`).

    Every image unfiltered and under every class's DFM (``num_classes + 1``), and every
    image of class ``c`` under ``n_null`` random masks of class ``c``.

    >>> shortcut_test_forwards(100, 10, 20)
    3100
    """
    return int(n_images) * (int(num_classes) + 1 + int(n_null))


@torch.inference_mode()
def seconds_per_forward(model: torch.nn.Module, image_shape: Sequence[int], *, batch_size: int | None = None,
                        device: str | torch.device = "auto", reps: int = 1) -> tuple[float, int]:
    """Seconds per image of the model's forward pass, timed on random input.

    A warm-up forward of a few images, then ``reps`` timed batches of ``batch_size``, in
    eval mode as the ablation runs it (channels-last on a CPU). One batch of 55 images takes
    a few seconds for a 224-px ResNet18 on 2 CPU cores.

    Parameters
    ----------
    model : nn.Module
    image_shape : (C, H, W) of the model input
    batch_size : images per forward; ``None``: the ablation's default for this size and device
    device : str or torch.device
    reps : timed batches

    Returns
    -------
    (seconds per image, batch size used)
    """
    c, h, w = (int(v) for v in image_shape)
    dev = resolve_device(device)
    bs = int(batch_size or _auto_batch_size(c, h, w, 4, dev))
    model.to(dev)
    x = torch.randn(bs, c, h, w, generator=torch.Generator().manual_seed(0)).to(dev)
    with eval_mode(model, cpu_channels_last=True):
        model(x[: min(bs, 8)])
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        for _ in range(reps):
            model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    return (time.perf_counter() - start) / (reps * bs), bs


def format_seconds(seconds: float | None) -> str:
    """``"45 s"``, ``"3.2 min"``, ``"5.1 h"``, or ``"unknown"``.

    >>> format_seconds(45.2), format_seconds(192), format_seconds(18360), format_seconds(None)
    ('45 s', '3.2 min', '5.1 h', 'unknown')
    """
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Stage:
    """One step of an analysis: its forward passes still to run and their time.

    ``forwards`` and ``seconds`` are ``None`` when the method registered no cost function;
    ``status`` is ``"to run"``, ``"cached"``, ``"resumes (p % done)"`` or ``"no estimate"``.
    """

    name: str
    forwards: int | None
    seconds: float | None
    status: str
    detail: str = ""


@dataclass(frozen=True)
class CostEstimate:
    """What :func:`estimate` returns; ``str()`` gives the table the command prints.

    Attributes
    ----------
    stages : the ranking, then the shortcut test at each threshold
    seconds_per_forward : float, from the timed probe (NaN without a probe)
    batch_size : int, images per forward in the probe
    device : str
    threads : int, CPU threads torch uses
    """

    stages: tuple[Stage, ...]
    seconds_per_forward: float
    batch_size: int
    device: str
    threads: int

    @property
    def total_seconds(self) -> float | None:
        """Sum over the stages, ``None`` when a stage has no estimate."""
        if any(s.seconds is None for s in self.stages):
            return None
        return float(sum(s.seconds for s in self.stages))

    def table(self) -> pd.DataFrame:
        """One row per stage: stage, status, forwards, seconds, detail."""
        return pd.DataFrame([{"stage": s.name, "status": s.status, "forwards": s.forwards, "seconds": s.seconds,
                              "detail": s.detail} for s in self.stages])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (provenance)."""
        return {"stages": self.table().to_dict("records"), "seconds_per_forward": self.seconds_per_forward,
                "batch_size": self.batch_size, "device": self.device, "threads": self.threads,
                "total_seconds": self.total_seconds}

    def __str__(self) -> str:
        probe = (f"{1000 * self.seconds_per_forward:.2f} ms per image forward (timed probe, batch {self.batch_size}, "
                 f"{self.device}, {self.threads} threads)")
        rows = [("stage", "status", "forwards", "time"), *(
            (s.name, s.status, "-" if s.forwards is None else f"{s.forwards:,}", format_seconds(s.seconds))
            for s in self.stages)]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"cost estimate: {probe}"]
        lines += ["  " + "  ".join(c.ljust(w) if i != 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                  for r in rows]
        details = [f"  {s.name}: {s.detail}" for s in self.stages if s.detail]
        total = self.total_seconds
        lines += details + [f"  total: {format_seconds(total)}"
                            + ("" if total is not None else " (a method without a cost function)")]
        return "\n".join(lines)


def _ranking_stage(subject: Analysable, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   config: DFMConfig, spf: float, device, batch_size: int | None) -> tuple[Stage, Any]:
    """The ranking's stage, and the cached DFMs when they are all there (else None)."""
    name = f"ranking ({config.method}, patch {config.patch_size})"
    path = dfm_cache_path(subject, images, labels, config)
    if path.exists():
        saved = load_dfms(path)
        if all(t in saved.dfms for t in config.all_thresholds) or not saved.provenance.get("masks_from_method"):
            return Stage(name, 0, 0.0, "cached", str(path)), saved
    left, status = 1.0, "to run"
    partial = path.with_name(path.stem + ".partial.npz")
    if partial.exists():
        try:
            done = load_npz(partial).get("done")
        except (OSError, ValueError):
            done = None
        if done is not None and done.size:
            left = 1.0 - float(done.mean())
        status = "resumes" + (f" ({100 * (1 - left):.0f} % done)" if done is not None else " from a checkpoint")
    cost = method_cost(config, tuple(images.shape[1:]), len(labels), num_classes, device=device, batch_size=batch_size,
                       probe=not math.isnan(spf))
    if cost is None:
        return Stage(name, None, None, "no estimate", f"method {config.method!r} registers no cost function"), None
    forwards = int(round(cost.forwards * left))
    detail = cost.detail + (f"; + {format_seconds(cost.seconds * left)} besides the forward passes" if cost.seconds else "")
    return Stage(name, forwards, forwards * spf + cost.seconds * left, status, detail), None


def estimate(
    subject: Analysable,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    n_rank: int,
    n_score: int,
    config: DFMConfig = DFMConfig(),
    same_images: bool = False,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    probe: bool = True,
) -> CostEstimate:
    """What :func:`fslib.dfm.shortcut_analysis` (with :func:`fslib.dfm.shortcut_test_sweep`
    at every threshold of ``config.all_thresholds``) will cost with these arguments.

    Parameters
    ----------
    subject, images, labels, n_rank, n_score, config, same_images, batch_size, device :
        as in :func:`fslib.dfm.shortcut_analysis`
    probe : bool
        Time the model (:func:`seconds_per_forward`); ``False`` leaves the seconds NaN
        (forward counts only).

    Returns
    -------
    CostEstimate
    """
    _check_uint8(images, "estimate")
    labels = labels.long().cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the analysis itself warns about same_images
        rank, score = split_for(labels, n_rank, n_score, config.seed, same_images)
    num_classes = _num_logits(subject, images)
    dev = resolve_device(device)
    if probe:
        spf, bs = seconds_per_forward(subject.model, images.shape[1:], batch_size=batch_size, device=dev)
    else:
        spf, bs = float("nan"), int(batch_size or _auto_batch_size(*images.shape[1:], 4, dev))
    stages = []
    rank_stage, saved = _ranking_stage(subject, images[rank], labels[rank], num_classes, config, spf, dev, batch_size)
    stages.append(rank_stage)
    forwards = shortcut_test_forwards(len(score), num_classes, config.n_null)
    for top in config.all_thresholds:
        done = saved is not None and top in saved.dfms and shortcut_test_path(
            subject, images[score], labels[score], saved.dfms[top], config).exists()
        stages.append(Stage(f"shortcut test, top {100 * top:g} %", 0 if done else forwards, 0.0 if done else forwards * spf,
                            "cached" if done else "to run",
                            "" if done else f"{len(score):,} images x ({num_classes} classes + 1 + {config.n_null} null masks)"))
    return CostEstimate(tuple(stages), spf, bs, str(dev), torch.get_num_threads())
