"""The shortcut test: TPR / FPR of each class on images filtered by its DFM, against a null.

:func:`evaluate_dfms` applies each class's DFM to every image and reports TPR / FPR with
bootstrap intervals and a null baseline of random masks with the same radial profile
(:func:`_null_masks`). A class whose DFM-filtered images are still recognised (high TPR,
low FPR) has a frequency shortcut.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fslib.device import resolve_device
from fslib.dfm.ablation import _auto_batch_size, _check_counts, _check_inputs, _logits
from fslib.inference import eval_mode
from fslib.spectral import conjugate_pairs, fft_centred, ifft_centred, radial_bins, symmetrize_mask


def _null_masks(dfm: torch.Tensor, n_null: int, gen: torch.Generator) -> torch.Tensor:
    """Random conjugate-symmetric masks with the DFM's count in every integer radius bin.

    Within each bin the DFM's self-conjugate positions and its two-member pairs are replaced
    by as many random ones of the same kind, so the count and radial profile match exactly.
    Returns bool ``(n_null, H, W)``.
    """
    h, w = dfm.shape
    pairs = conjugate_pairs(h, w)
    rep, partner = pairs[:, 0] * w + pairs[:, 1], pairs[:, 2] * w + pairs[:, 3]
    single = rep == partner
    bins = radial_bins(h, w).flatten()[rep]
    chosen = dfm.flatten().cpu()[rep]
    out = torch.zeros(n_null, h * w, dtype=torch.bool)
    for b in torch.unique(bins[chosen]).tolist():
        for kind in (single, ~single):
            pool = ((bins == b) & kind).nonzero().flatten()
            need = int((chosen[pool]).sum())
            if need == 0:
                continue
            pick = torch.rand(n_null, len(pool), generator=gen).argsort(dim=1)[:, :need]
            sel = pool[pick]  # (n_null, need) pair indices
            rows = torch.arange(n_null)[:, None].expand_as(sel)
            out[rows, rep[sel]] = True
            out[rows, partner[sel]] = True
    return out.reshape(n_null, h, w)


@torch.inference_mode()
def _predict_filtered(model, spectra, masks, dev, bs) -> torch.Tensor:
    """Predictions for every (mask, image) combination, int64 ``(K, G)``.

    spectra : (G, C, H, W) complex; masks : (K, H, W) bool, conjugate-symmetric.
    """
    g = spectra.shape[0]
    k_step = max(1, bs // g)
    preds = []
    for start in range(0, len(masks), k_step):
        m = masks[start : start + k_step].to(dev)
        x = ifft_centred(spectra[None] * m[:, None, None]).reshape(-1, *spectra.shape[1:])
        preds.append(model(x.to(spectra.real.dtype)).argmax(1).reshape(len(m), g))
    return torch.cat(preds).cpu()


def evaluate_dfms(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    dfms: torch.Tensor,
    *,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    n_boot: int = 1000,
    n_null: int = 100,
    seed: int = 0,
    paper_tpr: float = 0.6,
    progress: bool = True,
) -> pd.DataFrame:
    """The shortcut test: TPR / FPR of each class on images filtered by its DFM.

    Class ``i``'s DFM is applied to every image (``filter_frequencies``: keep only the DFM's
    frequencies, all channels); ``TPR_i`` = class-``i`` images predicted ``i`` / ``P_i``,
    ``FPR_i`` = other images predicted ``i`` / ``N_i``. Intervals are 95 % percentile
    bootstrap intervals over images (for a proportion, resampling the ``P_i`` outcomes with
    replacement is a binomial draw, which is how it is computed). The null baseline applies
    ``n_null`` random conjugate-symmetric masks with the same number of positions in every
    integer radius bin as the DFM to the class-``i`` images. A class is a ``shortcut`` class
    when its TPR exceeds the null's 95th percentile; ``paper_rule`` is ``TPR >= 0.6``.

    Parameters
    ----------
    model : nn.Module
    images : Tensor, shape (N, C, H, W), float, as the model takes them (normalised), in the
        dtype of its parameters, finite (as in :func:`~fslib.dfm.ablation_loss`)
    labels : Tensor, shape (N,), int
    dfms : Tensor, shape (num_classes, H, W), bool
    batch_size, device, progress : as in :func:`ablation_loss`
    n_boot : int
        Bootstrap resamples (0 leaves the interval columns NaN).
    n_null : int
        Random masks per class (0 leaves the null columns NaN and ``shortcut`` False).
    seed : int
        Seeds the null masks and the bootstrap.
    paper_tpr : float
        Threshold of the paper-style rule.

    Returns
    -------
    DataFrame, one row per class, columns: class, baseline_acc, tpr, tpr_lo, tpr_hi, fpr,
    fpr_lo, fpr_hi, null_tpr_p95, null_tpr_mean, shortcut, paper_rule, n_freq.
    """
    num_classes = dfms.shape[0]
    labels = _check_inputs(images, labels, num_classes, model)
    if dfms.ndim != 3 or dfms.shape[1:] != images.shape[2:]:
        raise ValueError(f"dfms must have shape ({num_classes}, H, W) = images' H, W, got {tuple(dfms.shape)}")
    counts = torch.bincount(labels, minlength=num_classes)
    _check_counts(counts)
    dev = resolve_device(device)
    model.to(dev)
    n, c, h, w = images.shape
    bs = batch_size or _auto_batch_size(c, h, w, images.element_size(), dev)
    masks = symmetrize_mask(dfms.cpu())  # filter_frequencies keeps a position or its partner
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    preds = torch.empty(num_classes, n, dtype=torch.long)  # prediction under class i's DFM
    base = torch.empty(n, dtype=torch.long)
    g = min(n, bs)
    bar = tqdm(total=n * (num_classes + 1) + n * n_null, disable=not progress, desc="shortcut test", unit="img")
    with eval_mode(model, cpu_channels_last=True), torch.inference_mode():
        for start in range(0, n, g):
            x = images[start : start + g].to(dev)
            base[start : start + g] = _logits(model, x, num_classes, "dfms holds {} class maps").argmax(1).cpu()
            spec = fft_centred(x)
            preds[:, start : start + g] = _predict_filtered(model, spec, masks, dev, bs)
            bar.update(len(x) * (num_classes + 1))
        null_tpr = torch.full((num_classes, max(n_null, 1)), float("nan"), dtype=torch.float64)
        if n_null > 0:
            for i in range(num_classes):
                null = _null_masks(masks[i], n_null, gen)
                idx = (labels == i).nonzero().flatten()
                hits = torch.zeros(n_null, dtype=torch.float64)
                for start in range(0, len(idx), g):
                    part = idx[start : start + g]
                    spec = fft_centred(images[part].to(dev))
                    hits += (_predict_filtered(model, spec, null, dev, bs) == i).double().sum(1)
                    bar.update(len(part) * n_null)
                null_tpr[i] = hits / len(idx)
    bar.close()

    rows = []
    for i in range(num_classes):
        pos = labels == i
        p_i, n_i = int(pos.sum()), int((~pos).sum())
        tp = int((preds[i][pos] == i).sum())
        fp = int((preds[i][~pos] == i).sum())
        tpr, fpr = tp / p_i, (fp / n_i if n_i else float("nan"))
        if n_boot > 0:
            tb = rng.binomial(p_i, tpr, size=n_boot) / p_i
            tpr_lo, tpr_hi = np.quantile(tb, [0.025, 0.975])
            if n_i:
                fb = rng.binomial(n_i, fpr, size=n_boot) / n_i
                fpr_lo, fpr_hi = np.quantile(fb, [0.025, 0.975])
            else:
                fpr_lo = fpr_hi = float("nan")
        else:
            tpr_lo = tpr_hi = fpr_lo = fpr_hi = float("nan")
        nt = null_tpr[i].numpy()
        p95 = float(np.quantile(nt, 0.95)) if n_null > 0 else float("nan")
        rows.append(
            {
                "class": i,
                "baseline_acc": float((base[pos] == i).double().mean()),
                "tpr": tpr,
                "tpr_lo": float(tpr_lo),
                "tpr_hi": float(tpr_hi),
                "fpr": fpr,
                "fpr_lo": float(fpr_lo),
                "fpr_hi": float(fpr_hi),
                "null_tpr_p95": p95,
                "null_tpr_mean": float(nt.mean()) if n_null > 0 else float("nan"),
                "shortcut": bool(n_null > 0 and tpr > p95),
                "paper_rule": bool(tpr >= paper_tpr),
                "n_freq": int(masks[i].sum()),
            }
        )
    return pd.DataFrame(rows)
