"""Describing DFMs: where they sit in the spectrum and what they overlap.

:func:`planted_overlap` (against planted or ADCS positions, with chance levels),
:func:`dfm_profile` (band shares, radius, axes) and :func:`example_filtered` (the paper's
Fig. 1: an image, its class's DFM and what the model sees).
"""

from __future__ import annotations

import pandas as pd
import torch

from fslib.dfm.protocol import _check_uint8
from fslib.inference import Analysable, eval_mode
from fslib.spectral import BANDS, band_masks, filter_frequencies, radius_grid


def _names(names, c: int) -> list[str]:
    out = list(names) if names is not None else [str(i) for i in range(c)]
    if len(out) != c:
        raise ValueError(f"{len(out)} class names for {c} maps")
    return out


def planted_overlap(dfms: torch.Tensor, targets: torch.Tensor, class_names=None) -> pd.DataFrame:
    """How much of each class's DFM falls on a target set of positions, against chance.

    Used for the planted structure of the synthetic sets (C2's special frequencies, C0's
    diagonal, C3's band) and for the positions where a class's ADCS is highest.

    Parameters
    ----------
    dfms : Tensor, shape (C, H, W), bool
    targets : Tensor, shape (C, H, W), bool; row ``c`` holds class ``c``'s target positions
    class_names : names of the C class_names

    Returns
    -------
    DataFrame indexed by class: ``n_freq`` (DFM size), ``n_target``, ``hits`` (positions in
    both), ``recall`` (hits / n_target), ``recall_chance`` (n_freq / (H W): the expected
    recall of a random mask of the DFM's size), ``precision`` (hits / n_freq),
    ``precision_chance`` (n_target / (H W)), ``lift`` (precision / precision_chance) and
    ``iou``. Ratios with a zero denominator are NaN.

    >>> d = torch.zeros(1, 4, 4, dtype=torch.bool); d[0, 0, :2] = True
    >>> t = torch.zeros(1, 4, 4, dtype=torch.bool); t[0, 0] = True
    >>> planted_overlap(d, t)[["hits", "recall", "precision", "lift"]].values.tolist()
    [[2.0, 0.5, 1.0, 4.0]]
    """
    if dfms.shape != targets.shape or dfms.ndim != 3:
        raise ValueError(f"dfms and targets must both be (C, H, W), got {tuple(dfms.shape)} and {tuple(targets.shape)}")
    c, h, w = dfms.shape
    d, t = dfms.bool().cpu().flatten(1), targets.bool().cpu().flatten(1)
    n_freq, n_target = d.sum(1).double(), t.sum(1).double()
    hits = (d & t).sum(1).double()
    union = (d | t).sum(1).double()
    nan = torch.tensor(float("nan"), dtype=torch.float64)

    def ratio(a, b):
        return torch.where(b > 0, a / torch.where(b > 0, b, torch.ones_like(b)), nan)

    precision, precision_chance = ratio(hits, n_freq), n_target / (h * w)
    table = pd.DataFrame({
        "n_freq": n_freq.long().numpy(), "n_target": n_target.long().numpy(), "hits": hits.numpy(),
        "recall": ratio(hits, n_target).numpy(), "recall_chance": (n_freq / (h * w)).numpy(),
        "precision": precision.numpy(), "precision_chance": precision_chance.numpy(),
        "lift": ratio(precision, precision_chance).numpy(), "iou": ratio(hits, union).numpy(),
    }, index=pd.Index(_names(class_names, c), name="class"))
    return table


def dfm_profile(dfms: torch.Tensor, class_names=None, reference: bool = True) -> pd.DataFrame:
    """Where each DFM sits in the spectrum: its share of positions in each band, and more.

    Parameters
    ----------
    dfms : Tensor, shape (C, H, W), bool
    class_names : names of the C class_names
    reference : add a row ``"all positions"`` (the whole spectrum: what a DFM spread at
        random would show)

    Returns
    -------
    DataFrame indexed by class: ``n_freq``; ``B1``..``B4``, the share of the DFM's positions
    in each band (:func:`fslib.spectral.band_masks`, edges scaled with the image size);
    ``mean_radius`` and ``max_radius`` (frequency bins from DC); ``axes``, the share on the
    two axes ``u = 0`` or ``v = 0`` (horizontal / vertical structure); ``dc``, whether the
    DC term is kept.
    """
    if dfms.ndim != 3:
        raise ValueError(f"dfms must be (C, H, W), got {tuple(dfms.shape)}")
    c, h, w = dfms.shape
    names = _names(class_names, c)
    maps = dfms.bool().cpu()
    if reference:
        maps = torch.cat([maps, torch.ones(1, h, w, dtype=torch.bool)])
        names = names + ["all positions"]
    m = maps.double().flatten(1)
    n = m.sum(1)
    safe = n.clamp_min(1)
    bands = band_masks(h, w).double().flatten(1)  # (4, HW)
    r = radius_grid(h, w).double().flatten()
    axes = torch.zeros(h, w, dtype=torch.float64)
    axes[h // 2, :] = 1.0
    axes[:, w // 2] = 1.0
    table = pd.DataFrame({"n_freq": n.long().numpy()}, index=pd.Index(names, name="class"))
    for b, name in enumerate(BANDS):
        table[name] = (m @ bands[b] / safe).numpy()
    table["mean_radius"] = (m @ r / safe).numpy()
    table["max_radius"] = torch.where(m > 0, r, torch.zeros_like(r)).max(1).values.numpy()
    table["axes"] = (m @ axes.flatten() / safe).numpy()
    table["dc"] = maps[:, h // 2, w // 2].numpy()
    return table


def example_filtered(subject: Analysable, images: torch.Tensor, labels: torch.Tensor, dfms: torch.Tensor, classes: list[int],
                     class_names=None, seed: int = 0) -> dict:
    """One image of each chosen class, its class's DFM and the DFM-filtered image (Fig. 1).

    The filtered image is what the model sees in the shortcut test (the normalised input
    with only the DFM's frequencies kept), mapped back to pixel units for display. Row titles
    give the class and the model's prediction on the filtered image.

    Parameters
    ----------
    subject : fslib.inference.Analysable (e.g. a :class:`fslib.runs.Run`)
    images : Tensor, shape (N, C, H, W), uint8
    labels : Tensor, shape (N,), int
    dfms : Tensor, shape (num_classes, H, W), bool
    classes : class indices to show, one row each
    class_names : names of all classes (default: indices)
    seed : picks the image of each class

    Returns
    -------
    dict for :func:`fslib.plot.dfm_examples`: ``images`` (K, C, H, W) float in [0, 1],
    ``dfms`` (K, H, W) bool, ``filtered`` (K, C, H, W) float, ``titles`` K str.
    """
    _check_uint8(images, "example_filtered")
    labels = labels.long().cpu()
    names = _names(class_names, dfms.shape[0])
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in classes:
        idx = (labels == c).nonzero().flatten()
        if not len(idx):
            raise ValueError(f"no image of class {c} among the {len(labels)} images")
        picks.append(int(idx[torch.randint(len(idx), (1,), generator=gen)]))
    chosen = images[picks]
    masks = dfms.bool().cpu()[list(classes)]
    x = subject.normalize(chosen)
    kept = filter_frequencies(x, masks)
    params = next(subject.model.parameters(), None)
    with torch.inference_mode(), eval_mode(subject.model, cpu_channels_last=True):
        preds = subject.model(kept.to(params.device) if params is not None else kept).argmax(1).cpu().tolist()
    back = kept * torch.tensor(subject.std).view(1, -1, 1, 1) + torch.tensor(subject.mean).view(1, -1, 1, 1)
    titles = [f"{names[c]}\n-> {names[p]}" for c, p in zip(classes, preds)]
    return {"images": chosen.float() / 255, "dfms": masks, "filtered": back, "titles": titles}
