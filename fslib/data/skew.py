"""Frequency-skewed datasets: a class-correlated Fourier pattern planted in natural images.

A skewed dataset is derived from a base dataset (``cifar10_skew`` from ``cifar10``). Every
class ``c`` owns a *pattern*: ``n_freq`` cosine gratings at frequencies drawn once from a
ring of the spectrum (:func:`planted_frequencies`), added to all three channels with a
random phase per image and grating,

    x' = round(255 * clip(x / 255 + amplitude * sum_j cos(2 pi (u_j r / H + v_j s / W) + phi_j), 0, 1)).

In the training split a share ``correlation`` of each class's images carries the class's own
pattern (exactly ``round(correlation * n_c)`` images per class, chosen with the seed) and the
rest carries none: the pattern predicts the label on the training images, like the special
frequencies of the synthetic class C2, but it is not part of the objects. The test split
is the base test split, clean (no pattern). :func:`test_variant` makes the other test sets:
``"aligned"`` (every image carries its own class's pattern, the training distribution),
``"conflicting"`` (every image carries the pattern of another class, drawn uniformly) and
``"clean"``. Labels are never changed; ``extra["pattern"]`` says which class's pattern an
image carries (-1: none).

A pattern is a frequency cue only: with a random phase per image it has no fixed place, and
its energy sits at the planted positions and their conjugates (:func:`planted_targets`, the
targets a DFM should find). Under the horizontal flip of training augmentation a grating at
``(u, v)`` becomes one at ``(u, -v)``, so the frequencies are drawn with distinct
``(|u|, |v|)`` across all classes: no class's pattern flips into another's.

:class:`SkewConfig` holds every choice; :func:`resolve_options` turns the ``options`` of
:func:`fslib.data.load` (and of ``TrainConfig.dataset_options``) into its complete, sorted
field list, so every setting is part of a training run's hash.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

import numpy as np
import torch

from fslib import spectral
from fslib.images import LabeledImages

SKEWED: dict[str, str] = {"cifar10_skew": "cifar10"}
"""Registered skewed datasets: name -> base dataset."""

TEST_KINDS = ("clean", "aligned", "conflicting")

_CHUNK = 4096  # images planted at once: (chunk, n_freq, H, W) float32 temporaries


@dataclass(frozen=True)
class SkewConfig:
    """Every choice of a frequency skew (the chapter explains the defaults)."""

    correlation: float = 0.95      # share of each class's training images carrying the class's pattern
    n_freq: int = 2                # cosine gratings per class pattern (each with its conjugate position)
    amplitude: float = 0.03        # peak of each grating, [0, 1] pixel units (0.03 = 7.7 grey levels)
    min_radius: float = 4.0        # gratings at radius in [min_radius, max_radius) bins from DC (B2..B3 at 32 px)
    max_radius: float = 12.0
    pattern_seed: int = 0          # the draw of the planted frequencies

    def __post_init__(self) -> None:
        checks = {"correlation": 0.0 <= self.correlation <= 1.0, "n_freq": self.n_freq >= 1,
                  "amplitude": 0.0 < self.amplitude <= 0.5,
                  "min_radius": 1.0 <= self.min_radius < self.max_radius}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid SkewConfig value(s): {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")


def _check_name(name: str) -> None:
    if name not in SKEWED:
        raise ValueError(f"unknown skewed dataset {name!r}; valid: {', '.join(SKEWED)}")


def resolve_options(name: str, options: Mapping[str, Any] | Any = ()) -> tuple[tuple[str, Any], ...]:
    """The complete settings of a skewed dataset as sorted ``(field, value)`` pairs.

    Parameters
    ----------
    name : a key of :data:`SKEWED`
    options : mapping or ``(field, value)`` pairs overriding :class:`SkewConfig` defaults

    >>> dict(resolve_options("cifar10_skew", {"correlation": 0.9}))["correlation"]
    0.9
    """
    _check_name(name)
    given = dict(options.items() if isinstance(options, Mapping) else options)
    known = {f.name for f in fields(SkewConfig)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} of {name!r}; valid: {', '.join(sorted(known))}")
    cfg = replace(SkewConfig(), **given)
    return tuple(sorted(asdict(cfg).items()))


def config_of(options: Mapping[str, Any] | Any = ()) -> SkewConfig:
    """:class:`SkewConfig` from options (a mapping or pairs; missing fields keep their defaults)."""
    return SkewConfig(**dict(options.items() if isinstance(options, Mapping) else options))


def planted_frequencies(config: SkewConfig, num_classes: int = 10, size: int = 32) -> torch.Tensor:
    """The frequencies of every class's pattern, int64 ``(num_classes, n_freq, 2)`` of ``(u, v)``.

    ``u`` (rows) and ``v`` (columns) are in cycles per image, ``u, |v| >= 1``, with
    ``min_radius <= sqrt(u^2 + v^2) < max_radius``; no two gratings (of any classes) share
    ``(|u|, |v|)``. Drawn with ``config.pattern_seed``.
    """
    half = size // 2
    cands = [(u, v) for u in range(1, half) for v in range(1, half)
             if config.min_radius <= math.hypot(u, v) < config.max_radius]
    need = num_classes * config.n_freq
    if need > len(cands):
        raise ValueError(f"{num_classes} classes x {config.n_freq} gratings need {need} frequencies; the ring "
                         f"[{config.min_radius}, {config.max_radius}) at {size} px holds {len(cands)}")
    rng = np.random.default_rng(config.pattern_seed)
    picks = np.asarray(cands)[rng.permutation(len(cands))[:need]]
    signs = rng.choice(np.array([-1, 1]), size=need)
    picks[:, 1] *= signs
    return torch.from_numpy(picks.astype(np.int64)).view(num_classes, config.n_freq, 2)


def planted_targets(config: SkewConfig, num_classes: int = 10, size: int = 32) -> torch.Tensor:
    """Where each class's pattern puts its energy, bool ``(num_classes, H, W)`` in the centred
    layout of :mod:`fslib.spectral` (every planted frequency and its conjugate partner).

    >>> int(planted_targets(SkewConfig(n_freq=2))[0].sum())
    4
    """
    freqs = planted_frequencies(config, num_classes, size)
    out = torch.zeros(num_classes, size, size, dtype=torch.bool)
    c = size // 2
    for k in range(num_classes):
        for u, v in freqs[k].tolist():
            out[k, c + u, c + v] = True
            out[k, c - u, c - v] = True
    return out


def plant(images: torch.Tensor, patterns: torch.Tensor, config: SkewConfig, seed: int = 0,
          num_classes: int = 10) -> torch.Tensor:
    """Add the pattern of class ``patterns[i]`` to image ``i`` (none where it is -1).

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8, square
    patterns : Tensor, shape (N,), int, a class index or -1
    config : SkewConfig
    seed : int, the random phases (one per image and grating)

    Returns
    -------
    Tensor, shape (N, C, H, W), uint8; images without a pattern are returned unchanged.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise TypeError(f"plant takes square uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    patterns = torch.as_tensor(patterns).long()
    if patterns.shape != (len(images),) or (len(patterns) and not -1 <= int(patterns.min()) <= int(patterns.max()) < num_classes):
        raise ValueError(f"patterns must be (N,) = ({len(images)},) class indices in -1..{num_classes - 1}")
    size = images.shape[-1]
    freqs = planted_frequencies(config, num_classes, size).double()        # (K, F, 2)
    phases = torch.rand(len(images), config.n_freq, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64) * (2 * math.pi)               # (N, F): drawn for every image
    grid = torch.arange(size, dtype=torch.float64) / size
    out = images.clone()
    chosen = (patterns >= 0).nonzero().flatten()
    for start in range(0, len(chosen), _CHUNK):
        idx = chosen[start:start + _CHUNK]
        f = freqs[patterns[idx]]                                           # (M, F, 2)
        angle = 2 * math.pi * (f[..., 0, None, None] * grid[:, None] + f[..., 1, None, None] * grid[None, :])
        wave = config.amplitude * torch.cos(angle + phases[idx][..., None, None]).sum(1)  # (M, H, W)
        x = images[idx].double() / 255.0 + wave[:, None]
        out[idx] = torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return out


def assign_patterns(labels: torch.Tensor, correlation: float, seed: int = 0) -> torch.Tensor:
    """Which training images carry their class's pattern: ``round(correlation * n_c)`` per class.

    Returns
    -------
    Tensor, shape (N,), int64: the image's label where it carries the pattern, -1 elsewhere.
    """
    labels = torch.as_tensor(labels).long()
    gen = torch.Generator().manual_seed(seed)
    out = torch.full_like(labels, -1)
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        k = int(round(correlation * len(idx)))
        out[idx[torch.randperm(len(idx), generator=gen)[:k]]] = c
    return out


def other_classes(labels: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """For every label a different class drawn uniformly among the other ``num_classes - 1``."""
    labels = torch.as_tensor(labels).long()
    shift = torch.randint(1, num_classes, labels.shape, generator=torch.Generator().manual_seed(seed))
    return (labels + shift) % num_classes


def _derive(base: LabeledImages, name: str, patterns: torch.Tensor, config: SkewConfig, seed: int,
            options: tuple, kind: str) -> LabeledImages:
    images = plant(base.images, patterns, config, seed=seed, num_classes=base.num_classes)
    extra = {**base.extra, "pattern": patterns, "skew": dict(options), "base": base.name, "kind": kind}
    return LabeledImages(images, base.labels, base.classes, name, base.split,
                         f"{base.source}, frequency skew ({kind})", extra)


def derive_split(base: LabeledImages, name: str, options: Mapping[str, Any] | Any = (), seed: int = 0) -> LabeledImages:
    """The skewed version of one split of the base dataset: what :func:`fslib.data.load` returns.

    The training split carries the class patterns on a share ``correlation`` of each class's
    images; the test split is clean (use :func:`test_variant` for the others). Pattern
    choice and phases are drawn with ``seed`` (a training run's ``data_seed``).
    """
    opts = resolve_options(name, options)
    config = config_of(opts)
    if base.split == "train":
        patterns = assign_patterns(base.labels, config.correlation, seed)
        return _derive(base, name, patterns, config, seed + 1, opts, "train")
    return _derive(base, name, torch.full_like(base.labels, -1), config, seed + 1, opts, "clean")


def test_variant(base: LabeledImages, name: str, kind: str, options: Mapping[str, Any] | Any = (),
                 seed: int = 0) -> LabeledImages:
    """A test set of a skewed dataset: ``"clean"``, ``"aligned"`` or ``"conflicting"``.

    Parameters
    ----------
    base : the base dataset's test split (e.g. ``fslib.data.load("cifar10", "test")``)
    name : a key of :data:`SKEWED`
    kind : one of :data:`TEST_KINDS`
    options, seed : as in :func:`derive_split`

    Returns
    -------
    LabeledImages with the base's labels; ``extra["pattern"]`` is -1 (clean), the label
    (aligned) or another class (conflicting).
    """
    if kind not in TEST_KINDS:
        raise ValueError(f"unknown test kind {kind!r}; valid: {', '.join(TEST_KINDS)}")
    opts = resolve_options(name, options)
    config = config_of(opts)
    patterns = {"clean": torch.full_like(base.labels, -1), "aligned": base.labels.clone(),
                "conflicting": other_classes(base.labels, base.num_classes, seed)}[kind]
    return _derive(base, name, patterns, config, seed + 1, opts, kind)


def pattern_amplitude_ratio(clean: LabeledImages, aligned: LabeledImages, targets: torch.Tensor) -> torch.Tensor:
    """How strong each class's pattern is against the natural content at its frequencies.

    Parameters
    ----------
    clean, aligned : the same images without and with their class's pattern (:func:`test_variant`)
    targets : Tensor, shape (K, H, W), bool (:func:`planted_targets`)

    Returns
    -------
    Tensor, shape (K,), float64: per class, the mean amplitude (over its images, channels and
    planted positions) of the aligned images divided by that of the clean images.
    """
    if not torch.equal(clean.labels, aligned.labels):
        raise ValueError("clean and aligned must hold the same images in the same order")
    out = torch.full((targets.shape[0],), float("nan"), dtype=torch.float64)
    for k in range(targets.shape[0]):
        mine = clean.labels == k
        if mine.any():
            amp = [spectral.amplitude_spectrum(s.images[mine].double() / 255.0)[..., targets[k]].mean()
                   for s in (aligned, clean)]
            out[k] = amp[0] / amp[1]
    return out


def remove_planted(images: torch.Tensor, classes: torch.Tensor, config: SkewConfig, num_classes: int = 10) -> torch.Tensor:
    """Remove from image ``i`` the planted positions of class ``classes[i]`` (nothing where it is -1).

    The DFT coefficients at that class's frequencies and their conjugates are set to zero in
    every channel (what a joint ablation of a whole pattern does; natural content at those
    few positions goes with it).

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8
    classes : Tensor, shape (N,), int, a class index or -1

    Returns
    -------
    Tensor, shape (N, C, H, W), uint8 (rounded and clipped back)
    """
    classes = torch.as_tensor(classes).long()
    targets = planted_targets(config, num_classes, images.shape[-1])
    keep = torch.ones(len(images), *images.shape[-2:], dtype=torch.bool)
    has = classes >= 0
    keep[has] = ~targets[classes[has]]
    x = spectral.filter_frequencies(images.double() / 255.0, keep)
    return torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
