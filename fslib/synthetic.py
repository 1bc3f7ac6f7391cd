"""Syn_B1..Syn_B4: the paper's synthetic datasets, rebuilt from their measured properties.

The paper's generator is not published, so this module designs one that has the properties
the paper's figures show (see ``shared/paper/README.md`` and chapter 1). Every image is

    x = clip(0.5 + colour * pattern + noise, 0, 1), stored as uint8 (``round(255 x)``),

with ``pattern`` a zero-mean grey image of unit standard deviation, ``colour`` a random
non-negative per-channel vector (same distribution for every class) and ``noise`` a faint
i.i.d. Gaussian pixel noise. In ``syn_bk`` (k = 1..4, band Bk of :mod:`fslib.spectral`):

* C0: thin 45-degree lines (energy on the ``u = v`` diagonal, across all bands) on a faint
  broadband texture;
* C1: broadband texture with no energy in band Bk;
* C2: broadband texture plus a fixed set of special frequencies present in every image
  (the planted candidate shortcut, :func:`special_frequencies`);
* C3: texture band-limited to band Bk (the "simple" class).

"Broadband" means a random complex Gaussian coefficient on every allowed position of the
centred spectrum, scaled so each allowed band carries the same expected energy. Patterns
are built in the frequency domain in batches (no per-image loops), with :mod:`fslib.spectral`
conventions (centred spectra, conjugate partners, band masks).

Generation is deterministic: images come in chunks of ``SyntheticConfig.chunk`` images,
each drawn from a ``torch.Generator`` seeded from ``(version, name, split, seed, chunk
index)``, so ``load(name, n=m)`` is the first ``m`` images of ``load(name, n=M)`` for
``m <= M``, and the train and test splits are independent draws. Results are cached under
``fslib.paths.cache_dir("synthetic")`` keyed by the generator version and the arguments.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from fslib import spectral
from fslib.constants import SYNTHETIC_CLASSES
from fslib.io import load_npz, save_npz, stable_hash
from fslib.paths import cache_dir

__all__ = [
    "GENERATOR_VERSION",
    "DATASETS",
    "CLASSES",
    "SPLITS",
    "VARIANT_KINDS",
    "VARIANTS",
    "SyntheticConfig",
    "Generated",
    "dataset_band",
    "generate",
    "load",
    "load_labeled",
    "variant",
    "variant_labeled",
    "special_frequencies",
    "class_support",
    "special_amplitude_ratio",
    "colour_probe_accuracy",
    "band_energy_table",
    "properties",
    "properties_table",
    "config_table",
    "examples",
    "class_spectra",
    "variant_examples",
]

GENERATOR_VERSION = "1"
DATASETS = ("syn_b1", "syn_b2", "syn_b3", "syn_b4")
CLASSES = SYNTHETIC_CLASSES
SPLITS = ("train", "test")
VARIANT_KINDS = ("bandpass", "bandstop")
_BAND_SETS = tuple((b,) for b in (1, 2, 3, 4)) + tuple(itertools.combinations((1, 2, 3, 4), 2))
VARIANTS = tuple((kind, bands) for kind in VARIANT_KINDS for bands in _BAND_SETS)


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


# --------------------------------------------------------------------------- validation
def dataset_band(name: str) -> int:
    """The band index k (1..4) a dataset is biased to: ``dataset_band("syn_b3") == 3``."""
    if name not in DATASETS:
        raise ValueError(f"unknown synthetic dataset {name!r}; valid: {', '.join(DATASETS)}")
    return int(name[-1])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")


def _check_bands(bands: Sequence[int]) -> tuple[int, ...]:
    try:
        key = tuple(sorted(int(b) for b in bands))
    except (TypeError, ValueError):
        key = None
    if key not in _BAND_SETS:
        valid = ", ".join(str(b) for b in _BAND_SETS)
        raise ValueError(f"unknown bands {bands!r}; valid: one band or a pair of distinct bands: {valid}")
    return key


def _check_n(n: int | None, split: str, config: SyntheticConfig) -> int:
    if n is None:
        return config.n_train if split == "train" else config.n_test
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer or None (default size), got {n!r}")
    return int(n)


# --------------------------------------------------------------------------- design maps
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


# --------------------------------------------------------------------------- generator
@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the caller's setting.

    Generation uses it so the bytes cannot depend on the caller's thread count (parallel
    reductions may round differently); both it and the colour probe are many small ops, which
    run an order of magnitude slower with 2 threads when the cores are oversubscribed.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
    with _one_thread():
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
        z = load_npz(path)
        return Generated(torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]), float(z["clip_fraction"]), 0.0)
    out = generate(name, split, n, seed, config=cfg)
    save_npz(path, images=out.images.numpy(), labels=out.labels.numpy(), clip_fraction=np.float64(out.clip_fraction))
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
    """:func:`load` wrapped as a :class:`fslib.data.LabeledImages` (classes C0..C3).

    ``extra`` holds ``band`` (k), ``seed``, ``clip_fraction`` and ``special_frequencies``.
    """
    from fslib.data import LabeledImages  # fslib.data dispatches to this module: import lazily

    out = _load_generated(name, split, n, seed, config)
    extra = {"band": dataset_band(name), "seed": seed, "clip_fraction": out.clip_fraction,
             "special_frequencies": special_frequencies(name, config)}
    return LabeledImages(out.images, out.labels, CLASSES, name, split,
                         f"fslib.synthetic v{GENERATOR_VERSION}", extra)


# --------------------------------------------------------------------------- test variants
def _variant_mask(kind: str, bands: tuple[int, ...], size: int) -> torch.Tensor:
    if kind not in VARIANT_KINDS:
        raise ValueError(f"unknown variant kind {kind!r}; valid: {', '.join(VARIANT_KINDS)}")
    selected = spectral.bands_mask(size, size, bands)
    keep = selected if kind == "bandpass" else ~selected
    keep[size // 2, size // 2] = True  # DC always kept: the 0.5 grey level must survive uint8
    return keep


def variant(
    name: str,
    kind: str,
    bands: Sequence[int],
    split: str = "test",
    n: int | None = None,
    seed: int = 0,
    *,
    config: SyntheticConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Band-pass or band-stop version of a split (the paper's band-stop tests).

    Parameters
    ----------
    name, split, n, seed, config : as in :func:`load`
    kind : str, ``"bandpass"`` (keep only ``bands``) or ``"bandstop"`` (remove ``bands``)
    bands : sequence of int, one band or a pair of distinct bands in 1..4, e.g. ``(1,)``, ``(1, 2)``

    Returns
    -------
    images : Tensor, shape (n, 3, 32, 32), uint8
        ``round(255 * clip(filter_frequencies(x, keep), 0, 1))``. The DC term is kept in
        both kinds (the mean grey level; without it half of every pattern would clip).
    labels : Tensor, shape (n,), int64
    """
    key = _check_bands(bands)
    keep = _variant_mask(kind, key, (config or SyntheticConfig()).size)
    images, labels = load(name, split, n, seed, config=config)
    filtered = spectral.filter_frequencies(images.to(torch.float64) / 255.0, keep)
    return torch.round(filtered.clamp(0.0, 1.0) * 255).to(torch.uint8), labels


def variant_labeled(name: str, kind: str, bands: Sequence[int], split: str = "test", n: int | None = None,
                    seed: int = 0, *, config: SyntheticConfig | None = None):
    """:func:`variant` as a :class:`fslib.data.LabeledImages`; split reads e.g. ``"test/bandstop12"``."""
    from fslib.data import LabeledImages

    key = _check_bands(bands)
    images, labels = variant(name, kind, key, split, n, seed, config=config)
    tag = f"{split}/{kind}{''.join(map(str, key))}"
    return LabeledImages(images, labels, CLASSES, name, tag, f"fslib.synthetic v{GENERATOR_VERSION}",
                         {"band": dataset_band(name), "seed": seed, "kind": kind, "bands": key})


# --------------------------------------------------------------------------- measurements
def _float64(images: torch.Tensor) -> torch.Tensor:
    """``images`` in float64, uint8 read as ``x / 255`` (without a float32 detour)."""
    return images.to(torch.float64) / 255.0 if images.dtype == torch.uint8 else spectral.as_float(images).double()


def _band_fractions(images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """:func:`fslib.spectral.band_energy_fraction` in batches (complex128 spectra are large)."""
    return torch.cat([spectral.band_energy_fraction(images[i: i + batch_size])
                      for i in range(0, len(images), batch_size)])


def special_amplitude_ratio(images: torch.Tensor, positions: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Amplitude at given positions over the median amplitude of each image's own spectrum.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W)
    positions : sequence of centred ``(r, s)``

    Returns
    -------
    Tensor, shape (N, len(positions)), float64. The spectrum is the channel-mean amplitude
    spectrum; the median runs over all ``H * W`` positions.
    """
    amp = spectral.amplitude_spectrum(_float64(images)).mean(dim=1)  # (N, H, W)
    median = amp.flatten(1).quantile(0.5, dim=1)  # numpy convention: mean of the two middle values
    pos = torch.tensor(list(positions))
    return amp[:, pos[:, 0], pos[:, 1]] / median[:, None]


def _colour_features(images: torch.Tensor) -> torch.Tensor:
    x = _float64(images)
    return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)  # (N, 6)


def colour_probe_accuracy(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                          *, steps: int = 100) -> float:
    """Test accuracy of a logistic regression on per-channel mean and std (P5).

    Parameters
    ----------
    train, test : (images (N, 3, H, W), labels (N,)) pairs
    steps : int, L-BFGS iterations

    Returns
    -------
    float, accuracy on ``test`` of a multinomial logistic regression fitted on ``train``'s six
    colour statistics (standardised with train statistics, L2 penalty 1e-4). Chance is 1/4.
    """
    xtr, ytr = _colour_features(train[0]), train[1].long()
    xte, yte = _colour_features(test[0]), test[1].long()
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-12)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    classes = int(max(ytr.max(), yte.max())) + 1
    w = torch.zeros(xtr.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, ytr) + 1e-4 * w.pow(2).sum()
        loss.backward()
        return loss

    with _one_thread():
        opt.step(closure)
    with torch.no_grad():
        return float(((xte @ w + b).argmax(1) == yte).double().mean())


def band_energy_table(data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> pd.DataFrame:
    """Mean share of non-DC energy per band, per class, per dataset.

    Parameters
    ----------
    data : dict, dataset name -> (images (N, 3, H, W), labels (N,))

    Returns
    -------
    DataFrame indexed by (dataset, class) with columns B1..B4 (rows sum to 1).
    """
    rows = {}
    for name, (images, labels) in data.items():
        frac = _band_fractions(images)  # (N, 4)
        for c, cls in enumerate(CLASSES):
            rows[(name, cls)] = frac[labels == c].mean(0).tolist()
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(spectral.BANDS))
    table.index = pd.MultiIndex.from_tuples(table.index, names=["dataset", "class"])
    return table


def properties(name: str, n_train: int | None = None, n_test: int | None = None, seed: int = 0, *,
               config: SyntheticConfig | None = None) -> dict[str, float]:
    """The measurable properties P1, P2, P3, P5 and the clipping fraction of one dataset.

    Returns
    -------
    dict with ``p1_min_c3_in_band`` (smallest share of a C3 image's non-DC energy in band k,
    train and test), ``p2_max_c1_in_band`` (largest share for a C1 image), ``p3_min_ratio``
    (smallest special-frequency amplitude over the image's median amplitude, C2 images),
    ``p5_colour_accuracy`` (:func:`colour_probe_accuracy`, train -> test) and
    ``clip_fraction`` (train and test pooled by pixel count).
    """
    k = dataset_band(name)
    train = _load_generated(name, "train", n_train, seed, config)
    test = _load_generated(name, "test", n_test, seed, config)
    images = torch.cat([train.images, test.images])
    labels = torch.cat([train.labels, test.labels])
    in_band = _band_fractions(images)[:, k - 1]
    ratio = special_amplitude_ratio(images[labels == 2], special_frequencies(name, config)[2])
    n_tr, n_te = len(train.labels), len(test.labels)
    return {
        "p1_min_c3_in_band": float(in_band[labels == 3].min()),
        "p2_max_c1_in_band": float(in_band[labels == 1].max()),
        "p3_min_ratio": float(ratio.min()),
        "p5_colour_accuracy": colour_probe_accuracy((train.images, train.labels), (test.images, test.labels)),
        "clip_fraction": (train.clip_fraction * n_tr + test.clip_fraction * n_te) / (n_tr + n_te),
    }


def properties_table(names: Sequence[str] = DATASETS, n_train: int | None = None, n_test: int | None = None,
                     seed: int = 0, *, config: SyntheticConfig | None = None) -> pd.DataFrame:
    """:func:`properties` for several datasets, one row each."""
    return pd.DataFrame({name: properties(name, n_train, n_test, seed, config=config) for name in names}).T


def config_table(config: SyntheticConfig | None = None) -> pd.DataFrame:
    """The generator's choices as a two-column table (setting, value)."""
    cfg = asdict(config or SyntheticConfig())
    return pd.DataFrame({"setting": list(cfg), "value": [str(v) for v in cfg.values()]}).set_index("setting")


# --------------------------------------------------------------------------- figure data
def examples(names: Sequence[str] = DATASETS, n_examples: int = 6, split: str = "test", seed: int = 0,
             *, config: SyntheticConfig | None = None) -> torch.Tensor:
    """The first ``n_examples`` images of every class of every dataset.

    Returns
    -------
    Tensor, shape (len(names), 4, n_examples, 3, H, W), uint8.
    """
    out = []
    for name in names:
        images, labels = load(name, split, max(4 * n_examples, 4), seed, config=config)
        order = torch.argsort(labels, stable=True).reshape(len(CLASSES), -1)[:, :n_examples]
        out.append(images[order])
    return torch.stack(out)


def class_spectra(data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Class-average amplitude spectra of several datasets.

    Returns
    -------
    Tensor, shape (len(data), 4, H, W), float64, centred (via
    :func:`fslib.spectral.class_average_spectra`).
    """
    return torch.stack([spectral.class_average_spectra(x, y, len(CLASSES)) for x, y in data.values()])


def variant_examples(name: str, kind: str = "bandstop", band_sets: Sequence[Sequence[int]] | None = None,
                     split: str = "test", seed: int = 0, *, config: SyntheticConfig | None = None) -> torch.Tensor:
    """One image per class, original and filtered by each band set.

    Returns
    -------
    Tensor, shape (1 + len(band_sets), 4, 3, H, W), uint8: row 0 the originals, then one row
    per band set (default: the six pairs).
    """
    band_sets = [b for b in _BAND_SETS if len(b) == 2] if band_sets is None else band_sets
    images, labels = load(name, split, 4, seed, config=config)
    order = torch.argsort(labels)
    rows = [images[order]] + [variant(name, kind, b, split, 4, seed, config=config)[0][order] for b in band_sets]
    return torch.stack(rows)
