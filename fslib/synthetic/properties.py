"""Measured properties of the synthetic sets (chapter 1's P1-P5) and their example figures.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Sequence

import pandas as pd
import torch

from fslib import spectral
from fslib.device import one_thread
from fslib.synthetic.generator import (
    CLASSES,
    DATASETS,
    SyntheticConfig,
    _load_generated,
    dataset_band,
    load,
    special_frequencies,
)
from fslib.synthetic.variants import variant


def _float64(images: torch.Tensor) -> torch.Tensor:
    """``images`` in float64, uint8 read as ``x / 255`` (without a float32 detour)."""
    return images.to(torch.float64) / 255.0 if images.dtype == torch.uint8 else spectral.as_float(images).double()


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

    with one_thread():
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
        frac = spectral.band_energy_fraction(images)  # (N, 4)
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
    in_band = spectral.band_energy_fraction(images)[:, k - 1]
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
    band_sets = spectral.BAND_PAIRS if band_sets is None else band_sets
    images, labels = load(name, split, 4, seed, config=config)
    order = torch.argsort(labels)
    rows = [images[order]] + [variant(name, kind, b, split, 4, seed, config=config)[0][order] for b in band_sets]
    return torch.stack(rows)
