"""The generator of Syn_B1..Syn_B4: designed from the paper's measured properties.

Every image is ``x = clip(0.5 + colour * pattern + noise, 0, 1)``, stored as uint8. See
:mod:`fslib.synthetic` for the design of each class. Generation is deterministic and cached
(with a digest record, :mod:`fslib.artefacts`: a damaged cache file is moved aside, with a
warning naming it, and generated again).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fslib import artefacts, spectral
from fslib.artefacts import ArtefactDamaged
from fslib.constants import SYNTHETIC_CLASSES
from fslib.device import one_thread
from fslib.images import LabeledImages
from fslib.io import stable_hash
from fslib.paths import cache_dir

GENERATOR_VERSION = "1"


DATASETS = ("syn_b1", "syn_b2", "syn_b3", "syn_b4")


CLASSES = SYNTHETIC_CLASSES


SPLITS = ("train", "test")


@dataclass(frozen=True)
class SyntheticConfig:
    """Every free choice of the generator (the paper's are unknown; chapter 1 explains ours).

    Offsets ``(du, dv)`` are in frequency bins from DC: centred position ``(H//2 + du, W//2 + dv)``.
    """

    size: int = 32                          # image side in pixels; paper: 32x32 RGB [code]
    n_train: int = 10_000                   # default train size; paper: unknown
    n_test: int = 2_000                     # default test size; paper: unknown
    contrast: tuple[float, float] = (0.10, 0.15)  # uniform range of the strongest channel's pixel std ([0, 1] units)
    noise_std: float = 0.005                # i.i.d. Gaussian pixel noise std ([0, 1] units, ~1.3 grey levels)
    c0_lines: tuple[int, int] = (3, 6)      # thin diagonal lines per C0 image, inclusive range
    c0_line_weight: tuple[float, float] = (0.5, 1.0)  # uniform range of each line's relative brightness
    c0_line_fraction: float = 0.75          # share of C0's pattern energy in the lines (rest: broadband)
    c2_special: tuple[tuple[int, int], ...] = ((-1, 3), (5, 2), (-3, 9), (10, -8))  # one per band B1..B4
    c2_special_fraction: float = 0.4        # share of C2's pattern energy in the special frequencies
    chunk: int = 256                        # images per independently seeded chunk (multiple of 4)

    def __post_init__(self) -> None:
        if self.chunk % len(CLASSES) != 0:
            raise ValueError(f"chunk must be a multiple of {len(CLASSES)}, got {self.chunk}")
        if not 0.0 < self.c2_special_fraction < 1.0 or not 0.0 < self.c0_line_fraction <= 1.0:
            raise ValueError("c2_special_fraction must be in (0, 1) and c0_line_fraction in (0, 1]")
        h = self.size // 2
        for du, dv in self.c2_special:
            if (du, dv) == (0, 0) or du == dv or not (-h < du < h and -h < dv < h):
                raise ValueError(
                    f"special offset {(du, dv)} must be non-DC, off the u = v diagonal and within (-{h}, {h})"
                )


@dataclass(frozen=True)
class Generated:
    """One generated split.

    Attributes
    ----------
    images : Tensor, shape (N, 3, H, W), uint8
    labels : Tensor, shape (N,), int64, class indices into :data:`CLASSES`
    clip_fraction : float, share of pixel values (over all channels) clipped to 0 or 1
    seconds : float, wall time of the generation (0 when read from the cache)
    """

    images: torch.Tensor
    labels: torch.Tensor
    clip_fraction: float
    seconds: float


def dataset_band(name: str) -> int:
    """The band index k (1..4) a dataset is biased to: ``dataset_band("syn_b3") == 3``."""
    if name not in DATASETS:
        raise ValueError(f"unknown synthetic dataset {name!r}; valid: {', '.join(DATASETS)}")
    return int(name[-1])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")


def _check_n(n: int | None, split: str, config: SyntheticConfig) -> int:
    if n is None:
        return config.n_train if split == "train" else config.n_test
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer or None (default size), got {n!r}")
    return int(n)


def _offsets_to_positions(offsets, size: int) -> list[tuple[int, int]]:
    c = size // 2
    return [(c + du, c + dv) for du, dv in offsets]


def special_frequencies(name: str, config: SyntheticConfig | None = None) -> dict[int, list[tuple[int, int]]]:
    """The planted special frequencies of each class, as centred ``(r, s)`` positions.

    Returns
    -------
    dict
        ``{0: [...], 2: [...]}``: class C0's diagonal (every ``(r, r)`` except DC) and class
        C2's special set. Both members of every conjugate pair are listed, sorted. C1 and
        C3 have no special frequencies (see :func:`class_support` for where they live).

    >>> special_frequencies("syn_b1")[2][:2]
    [(6, 24), (11, 14)]
    """
    dataset_band(name)
    cfg = config or SyntheticConfig()
    c = cfg.size // 2
    diagonal = [(r, r) for r in range(cfg.size) if r != c]
    pairs = cfg.c2_special + tuple((-du, -dv) for du, dv in cfg.c2_special)
    special = sorted(_offsets_to_positions(pairs, cfg.size))
    return {0: diagonal, 2: special}


def class_support(name: str, config: SyntheticConfig | None = None) -> torch.Tensor:
    """Where each class's pattern may hold energy by design (DC excluded).

    Returns
    -------
    Tensor, shape (4, H, W), bool, centred layout. C0 and C2 cover every non-DC position
    (their special patterns sit on a broadband texture), C1 everything outside band k,
    C3 band k only. Outside its support a class has only pixel noise, uint8 rounding and
    clipping.
    """
    k = dataset_band(name)
    size = (config or SyntheticConfig()).size
    non_dc = torch.ones(size, size, dtype=torch.bool)
    non_dc[size // 2, size // 2] = False
    band_k = spectral.band_mask(size, size, k) & non_dc
    return torch.stack([non_dc, non_dc & ~band_k, non_dc, band_k])


def _seed(*parts) -> int:
    return int(stable_hash(list(parts), length=15), 16)


def _design(cfg: SyntheticConfig) -> dict:
    """The config fields that shape the images (default sizes do not: ``n`` is explicit)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("n_train", "n_test")}


def _uniform(shape, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)


def _randn(shape, gen: torch.Generator) -> torch.Tensor:
    # float32 draws are several times faster than float64 ones and plenty for image synthesis.
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(torch.float64)


def _broadband(m: int, bands: Sequence[int], size: int, gen: torch.Generator) -> torch.Tensor:
    """Hermitian centred spectra ``(m, H, W)``: Gaussian coefficients, equal energy per band."""
    weight = torch.zeros(size, size, dtype=torch.float64)
    for b in bands:  # at most 4 bands
        mask = spectral.band_mask(size, size, b)
        mask[size // 2, size // 2] = False
        weight[mask] = 1.0 / math.sqrt(int(mask.sum()))
    z = torch.complex(_randn((m, size, size), gen), _randn((m, size, size), gen))
    # (z + conj(z[partner])) / 2 is the spectrum of a real image; self-partners become real.
    return (z + spectral.conjugate_mirror(z).conj()) / 2 * weight


def _with_special(spec: torch.Tensor, offsets, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Replace the special positions of ``spec`` by fixed-energy, random-phase coefficients."""
    m, size, _ = spec.shape
    pos = torch.tensor(_offsets_to_positions(offsets, size))
    partner = torch.tensor(_offsets_to_positions([(-du, -dv) for du, dv in offsets], size))
    spec = spec.clone()
    spec[:, pos[:, 0], pos[:, 1]] = 0
    spec[:, partner[:, 0], partner[:, 1]] = 0
    broadband_energy = spec.abs().pow(2).sum(dim=(-2, -1))  # (m,)
    # Each special pair holds 2 |A|^2; all of them together `fraction` of the total energy.
    amp = torch.sqrt(fraction / (1.0 - fraction) * broadband_energy / (2 * len(offsets)))
    phase = _uniform((m, len(offsets)), 0.0, 2 * math.pi, gen)
    coef = amp[:, None] * torch.exp(1j * phase)
    spec[:, pos[:, 0], pos[:, 1]] = coef
    spec[:, partner[:, 0], partner[:, 1]] = coef.conj()
    return spec


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit standard deviation per image over the last two axes."""
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    return x / x.std(dim=(-2, -1), unbiased=False, keepdim=True).clamp_min(1e-12)


def _lines(m: int, cfg: SyntheticConfig, gen: torch.Generator) -> torch.Tensor:
    """Thin lines ``x + y = t (mod H)``: their spectrum lies on the u = v diagonal only."""
    size = cfg.size
    lo, hi = cfg.c0_lines
    count = torch.randint(lo, hi + 1, (m,), generator=gen)
    offsets = torch.argsort(torch.rand(m, size, generator=gen), dim=1)  # distinct offsets
    weight = _uniform((m, size), *cfg.c0_line_weight, gen) * (torch.arange(size) < count[:, None])
    profile = torch.zeros(m, size, dtype=torch.float64).scatter_(1, offsets, weight)  # (m, size) over t
    t = (torch.arange(size)[:, None] + torch.arange(size)[None, :]) % size
    return profile[:, t]  # (m, H, W)


def _patterns(cls: int, k: int, m: int, cfg: SyntheticConfig, gen: torch.Generator) -> torch.Tensor:
    """Unit-variance zero-mean grey patterns ``(m, H, W)`` of class ``cls`` in Syn_Bk."""
    size = cfg.size
    if cls == 0:
        lines = _unit(_lines(m, cfg, gen))
        background = _unit(spectral.ifft_centred(_broadband(m, (1, 2, 3, 4), size, gen)))
        f = cfg.c0_line_fraction
        return _unit(math.sqrt(f) * lines + math.sqrt(1.0 - f) * background)
    if cls == 1:
        spec = _broadband(m, [b for b in (1, 2, 3, 4) if b != k], size, gen)
    elif cls == 2:
        spec = _with_special(_broadband(m, (1, 2, 3, 4), size, gen), cfg.c2_special, cfg.c2_special_fraction, gen)
    else:
        spec = _broadband(m, (k,), size, gen)
    return _unit(spectral.ifft_centred(spec))


def _chunk(name: str, split: str, seed: int, index: int, cfg: SyntheticConfig):
    """One chunk: uint8 images ``(chunk, 3, H, W)``, labels ``(chunk,)``, clipped-value count."""
    k = dataset_band(name)
    gen = torch.Generator().manual_seed(_seed(GENERATOR_VERSION, name, split, seed, index, _design(cfg)))
    m, size = cfg.chunk, cfg.size
    # Every run of 4 consecutive images holds each class once, in random order.
    labels = torch.argsort(torch.rand(m // 4, 4, generator=gen), dim=1).flatten()
    pattern = torch.empty(m, size, size, dtype=torch.float64)
    for cls in range(len(CLASSES)):
        sel = labels == cls
        pattern[sel] = _patterns(cls, k, int(sel.sum()), cfg, gen)
    colour = torch.rand(m, 3, generator=gen, dtype=torch.float64)
    colour = colour / colour.amax(dim=1, keepdim=True) * _uniform((m, 1), *cfg.contrast, gen)
    x = 0.5 + colour[:, :, None, None] * pattern[:, None]
    x = x + cfg.noise_std * _randn(x.shape, gen)
    clipped = int(((x < 0) | (x > 1)).sum())
    images = torch.round(x.clamp(0.0, 1.0) * 255).to(torch.uint8)
    return images, labels.to(torch.int64), clipped


def generate(
    name: str,
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    *,
    config: SyntheticConfig | None = None,
) -> Generated:
    """Generate a split without touching the cache (see :func:`load` for the cached path).

    Parameters
    ----------
    name : str, one of :data:`DATASETS`
    split : str, ``"train"`` or ``"test"``; the two are independent draws
    n : int or None, number of images (None: ``config.n_train`` / ``config.n_test``)
    seed : int
    config : SyntheticConfig or None, the generator's choices (None: the book's defaults)

    Returns
    -------
    Generated, with images ``(n, 3, H, W)`` uint8 and labels ``(n,)`` int64; class counts
    differ by at most one.
    """
    dataset_band(name)
    _check_split(split)
    cfg = config or SyntheticConfig()
    n = _check_n(n, split, cfg)
    start = time.perf_counter()
    with one_thread():  # the bytes cannot depend on the caller's thread count (reductions may round differently)
        parts = [_chunk(name, split, seed, i, cfg) for i in range(math.ceil(n / cfg.chunk))]
    images = torch.cat([p[0] for p in parts])[:n]
    labels = torch.cat([p[1] for p in parts])[:n]
    total = sum(p[0].numel() for p in parts)
    clip_fraction = sum(p[2] for p in parts) / total
    return Generated(images, labels, clip_fraction, time.perf_counter() - start)


def _cache_path(name: str, split: str, n: int, seed: int, cfg: SyntheticConfig) -> Path:
    key = stable_hash({"version": GENERATOR_VERSION, "name": name, "split": split, "n": n, "seed": seed,
                       "config": _design(cfg)})
    return cache_dir("synthetic") / f"{name}_{split}_n{n}_s{seed}_{key}.npz"


def _load_generated(name: str, split: str, n: int | None, seed: int, config: SyntheticConfig | None) -> Generated:
    dataset_band(name)
    _check_split(split)
    cfg = config or SyntheticConfig()
    n = _check_n(n, split, cfg)
    path = _cache_path(name, split, n, seed, cfg)
    if path.exists():
        try:
            z = artefacts.load_npz(path)
            return Generated(torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]), float(z["clip_fraction"]), 0.0)
        except (ArtefactDamaged, KeyError) as exc:
            artefacts.discard(exc, path, "it is generated again.", stacklevel=4)
    out = generate(name, split, n, seed, config=cfg)
    artefacts.save_npz(path, images=out.images.numpy(), labels=out.labels.numpy(),
                       clip_fraction=np.float64(out.clip_fraction))
    return out


def load(
    name: str,
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    *,
    config: SyntheticConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of a synthetic split, generated once and then read from the cache.

    Parameters
    ----------
    name : str, one of :data:`DATASETS` (``"syn_b1"`` .. ``"syn_b4"``)
    split : str, ``"train"`` (default size 10,000) or ``"test"`` (default size 2,000)
    n : int or None, number of images; ``load(name, n=m)`` is a prefix of ``load(name, n=M)``
    seed : int
    config : SyntheticConfig or None

    Returns
    -------
    images : Tensor, shape (n, 3, 32, 32), uint8
    labels : Tensor, shape (n,), int64
    """
    out = _load_generated(name, split, n, seed, config)
    return out.images, out.labels


def load_labeled(name: str, split: str = "train", n: int | None = None, seed: int = 0, *,
                 config: SyntheticConfig | None = None):
    """:func:`load` wrapped as a :class:`fslib.images.LabeledImages` (classes C0..C3).

    ``extra`` holds ``band`` (k), ``seed``, ``clip_fraction``, ``special_frequencies`` and
    ``config`` (the :class:`SyntheticConfig` that generated the images: band-pass and
    band-stop versions of the split, :func:`fslib.tracking.track_set`, are made with it).
    """
    out = _load_generated(name, split, n, seed, config)
    extra = {"band": dataset_band(name), "seed": seed, "clip_fraction": out.clip_fraction,
             "special_frequencies": special_frequencies(name, config), "config": config or SyntheticConfig()}
    return LabeledImages(out.images, out.labels, CLASSES, name, split,
                         f"fslib.synthetic v{GENERATOR_VERSION}", extra)
