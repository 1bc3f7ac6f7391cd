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

:func:`ranking_extrapolation` answers the question before the model exists: what the exact
ablation and the verified search (:func:`fslib.dfm.search.verified_dfms`) would cost for a
model of this architecture at another resolution (e.g. 224 px), from the exact ablation's
inner loop (:func:`ablation_rate`) and the verified search's first-order screen
(:func:`screen_seconds`) timed on random input of that size: the cost does not depend on the
weights. :data:`GPU_MEASURED` records what the same searches took on a GPU elsewhere.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd
import torch

from fslib.device import resolve_device, synchronize
from fslib.dfm.ablation import _auto_batch_size
from fslib.dfm.config import DFMConfig
from fslib.dfm.methods import method_cost
from fslib.dfm.protocol import _check_uint8, _num_logits, dfm_cache_path, shortcut_test_path, split_for
from fslib.dfm.search.firstorder import first_order_loss
from fslib.dfm.search.registry import first_order_cost
from fslib.dfm.search.subset import ablation_batch_size, unit_image_losses
from fslib.dfm.search.verified import dfm_unit_count
from fslib.dfm.store import load_dfms
from fslib.dfm.units import ablation_units
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
        synchronize(dev)
        start = time.perf_counter()
        for _ in range(reps):
            model(x)
        synchronize(dev)
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


GPU_MEASURED: dict[str, float] = {"exact_s_per_image_224": 3.35, "verified_s_100_images_224": 70.5}
"""Measured elsewhere, not by this code on this machine: ``benchmarks/gpu_check.py`` on one
NVIDIA H200 (torch 2.11, CUDA 13, 2026-11-30; README, "The GPU path, measured"), an untrained
torchvision ResNet18 at 224 px with 2 x 2 blocks (12,544 units per image): the exact ablation
took 3.35 s per image, the verified search (4.8 x the DFM size checked exactly) 70.5 s for
100 images."""


def _check_timing_args(image_shape: Sequence[int], n: int, what: str) -> tuple[int, int, int]:
    if len(image_shape) != 3 or any(isinstance(v, bool) or int(v) < 1 for v in image_shape):
        raise ValueError(f"image_shape must be (C, H, W) of positive sizes, got {tuple(image_shape)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} must be a positive int, got {n!r}")
    c, h, w = (int(v) for v in image_shape)
    return c, h, w


@torch.inference_mode()
def ablation_rate(model: torch.nn.Module, image_shape: Sequence[int], *, patch_size: int = 1, n_units: int = 16,
                  n_images: int = 4, min_seconds: float = 2.0, batch_size: int | None = None,
                  device: str | torch.device = "auto") -> float:
    """Ablated images per second of the exact ablation at this input size, timed on random input.

    The inner loop of :func:`fslib.dfm.ablation_loss` and of the verified search's exact step
    (:func:`fslib.dfm.search.subset.unit_image_losses`: remove a unit's frequencies, one
    forward, the loss) on ``n_images`` random images, ``n_units`` units at a time (the first
    ones, then the next), after a warm-up of one unit, until ``min_seconds`` have passed or
    every unit is done. The removal is included, so the rate is lower than a plain forward's
    (:func:`seconds_per_forward`). Timing one batch alone overstates the rate: at 64 px on a
    2-core CPU one batch of 64 ablations ran about three times faster than a whole ablation.

    Parameters
    ----------
    model : nn.Module, maps ``(B, C, H, W)`` to logits (class 0 is the label of every image)
    image_shape : (C, H, W) of the model input
    patch_size : int, the units (:func:`fslib.dfm.ablation_units`)
    n_units, n_images : int, units per timed round, and images
    min_seconds : float >= 0, least time the rounds run for (0: one round)
    batch_size : images per forward; ``None``: the ablation's default for this size and device
    device : str or torch.device

    Returns
    -------
    float, (unit, image) ablations per second.
    """
    c, h, w = _check_timing_args(image_shape, n_images, "n_images")
    units = ablation_units(h, w, patch_size)
    if isinstance(n_units, bool) or not isinstance(n_units, int) or not 1 <= n_units <= len(units):
        raise ValueError(f"n_units must be an int in 1..{len(units)} (the units at {h}x{w}, patch {patch_size}), "
                         f"got {n_units!r}")
    if isinstance(min_seconds, bool) or not isinstance(min_seconds, (int, float)) or not min_seconds >= 0:
        raise ValueError(f"min_seconds must be a number >= 0, got {min_seconds!r}")
    dev = resolve_device(device)
    bs = ablation_batch_size(c, h, w, 4, dev, batch_size)
    x = torch.randn(n_images, c, h, w, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(n_images, dtype=torch.long)
    model.to(dev)
    done = 0
    with eval_mode(model, cpu_channels_last=True):
        unit_image_losses(model, x, y, units, torch.arange(1), bs, dev)
        synchronize(dev)
        start = time.perf_counter()
        for first in range(0, len(units), n_units):
            ids = torch.arange(first, min(first + n_units, len(units)))
            unit_image_losses(model, x, y, units, ids, bs, dev)
            synchronize(dev)
            done += len(ids) * n_images
            if time.perf_counter() - start >= min_seconds:
                break
    return done / (time.perf_counter() - start)


def screen_seconds(model: torch.nn.Module, image_shape: Sequence[int], num_classes: int, *, patch_size: int = 1,
                   n_images: int | None = None, device: str | torch.device = "auto") -> float:
    """Seconds per image of the verified search's screen, timed on random input.

    The rectified tangent first-order map (:func:`fslib.dfm.search.first_order_loss`, one
    forward and one backward pass per image), on ``n_images`` random images labelled
    ``0, 1, ..., num_classes - 1, 0, ...`` (every class needs an image: ``None`` gives one
    per class).

    Returns
    -------
    float, seconds per image.
    """
    n = int(num_classes) if n_images is None else n_images
    c, h, w = _check_timing_args(image_shape, n, "n_images")
    if n < num_classes:
        raise ValueError(f"n_images must be at least num_classes ({num_classes}): every class needs an image; got {n}")
    dev = resolve_device(device)
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % num_classes
    first_order_loss(model, x[:num_classes], y[:num_classes], num_classes, patch_size=patch_size, rectify=True,
                     device=dev, progress=False)  # warm-up
    synchronize(dev)
    start = time.perf_counter()
    first_order_loss(model, x, y, num_classes, patch_size=patch_size, rectify=True, device=dev, progress=False)
    synchronize(dev)
    return (time.perf_counter() - start) / n


def ranking_extrapolation(model: torch.nn.Module, image_shape: Sequence[int], n_images: int, num_classes: int, *,
                          patch_size: int = 2, top: float = 0.05, candidates: float = 4.8, n_units: int = 16,
                          n_timing: int = 4, min_seconds: float = 2.0, device: str | torch.device = "auto"
                          ) -> pd.DataFrame:
    """What ranking ``n_images`` images of ``image_shape`` would take, exact and verified, timed here.

    The exact ablation removes every unit from every image (``U`` ablations per image, at the
    rate of :func:`ablation_rate`); the verified search (:func:`fslib.dfm.search.verified_dfms`
    with ``screen="tangent"``, ``rectify=True``, not adaptive) runs its screen on every image
    (:func:`screen_seconds`, 3 forward-equivalents: :func:`fslib.dfm.search.registry.first_order_cost`)
    and then ablates its
    ``ceil(candidates x ceil(top U))`` candidates of each class on that class's images only,
    i.e. that many ablations per image. The seconds are those counts at the rates timed here;
    the shortcut test on the scoring images comes on top.

    Parameters
    ----------
    model : nn.Module, the architecture to time (its weights do not change the cost)
    image_shape : (C, H, W), e.g. ``(3, 224, 224)``
    n_images : int, ranking images of the extrapolation (e.g. 500)
    num_classes : int, logits of the model
    patch_size, top, candidates : the ranking's settings (``DFMConfig.patch_size``, ``top`` and
        the verified method's ``candidates``)
    n_units, n_timing, min_seconds : the timing of the ablation rate (:func:`ablation_rate`:
        ``n_units`` units per round on ``n_timing`` images, for at least ``min_seconds``); the
        screen is timed on ``num_classes`` images
    device : str or torch.device

    Returns
    -------
    DataFrame indexed by method (``exact``, ``verified``): ``units`` (ablations per image),
    ``fwd_eq`` (forward-equivalents per image), ``ablations_per_s`` (the timed rate),
    ``screen_s_per_image``, ``s_per_image`` and ``seconds`` (for ``n_images``).
    """
    c, h, w = _check_timing_args(image_shape, n_images, "n_images")
    if isinstance(candidates, bool) or not isinstance(candidates, (int, float)) or not candidates > 0:
        raise ValueError(f"candidates must be a positive multiple of the DFM size, got {candidates!r}")
    units = len(ablation_units(h, w, patch_size))
    n_cand = min(units, math.ceil(candidates * dfm_unit_count(h, w, patch_size, top)))
    rate = ablation_rate(model, (c, h, w), patch_size=patch_size, n_units=min(n_units, units), n_images=n_timing,
                         min_seconds=min_seconds, device=device)
    screen = screen_seconds(model, (c, h, w), num_classes, patch_size=patch_size, device=device)
    screen_fe = first_order_cost(DFMConfig(method="first_order", patch_size=patch_size), (c, h, w), 1, num_classes).forwards
    rows = {"exact": (units, units, 0.0), "verified": (n_cand, n_cand + screen_fe, screen)}
    out = pd.DataFrame.from_dict({name: {"units": u, "fwd_eq": fe, "ablations_per_s": rate, "screen_s_per_image": s,
                                         "s_per_image": u / rate + s} for name, (u, fe, s) in rows.items()},
                                 orient="index")
    out["seconds"] = out["s_per_image"] * n_images
    return out
