"""Transfer to out-of-distribution test sets: accuracy matrices and the transfer of shortcuts.

:func:`accuracy_table` / :func:`transfer_matrix` (models x test sets, e.g. models trained
on Syn_Bk tested on Syn_Bj and on band-stop sets); :func:`shortcut_transfer` (per class, ID
and OOD accuracy, the TPR / FPR of the in-distribution DFMs on ID and OOD images, and the DFM
energy retained), :func:`transfer_summary` (the verdict per set), :func:`transfer_by_protocol` (the same under
other DFM protocols, :mod:`fslib.protocols`) and :func:`imagenet_sct_table` (the paper's
ImageNet-10 -> ImageNet-SCT protocol).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from fslib import synthetic
from fslib.dfm import evaluate_dfms
from fslib.inference import Analysable
from fslib.ood.labels import RestrictedLogits, _check_same_length, map_labels
from fslib.protocols import VariantAnalysis
from fslib.report import transfer_verdict
from fslib.spectral import BAND_PAIRS, band_set_label, band_set_name, energy_fraction


def accuracy_table(
    predictors: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    test_sets: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Accuracy of every model on every test set, overall and per class.

    Parameters
    ----------
    predictors : mapping name -> callable
        Each maps images ``(N, C, H, W)`` (as stored in ``test_sets``, e.g. uint8) to
        predicted labels ``(N,)`` (e.g. ``run.predict``).
    test_sets : mapping name -> (images, labels)
        ``images`` shape (N, C, H, W); ``labels`` shape (N,), int, in the models' label space.
    class_names : sequence of str or None
        Names of the label space; ``None`` uses the indices.

    Returns
    -------
    DataFrame in long form, columns model, test_set, class (``"all"`` or a class name), n,
    acc; one row per (model, test set, class present in the set) plus the ``"all"`` row.
    """
    rows = []
    for test_name, (images, labels) in test_sets.items():
        labels = labels.long().cpu()
        _check_same_length(images=images, labels=labels)
        present = torch.unique(labels).tolist()
        for model_name, predict in predictors.items():
            preds = torch.as_tensor(predict(images)).long().cpu()
            _check_same_length(preds=preds, labels=labels)
            hit = (preds == labels).double()
            rows.append({"model": model_name, "test_set": test_name, "class": "all", "n": len(labels), "acc": float(hit.mean())})
            for c in present:
                sel = labels == c
                name = class_names[c] if class_names is not None else str(c)
                rows.append({"model": model_name, "test_set": test_name, "class": name, "n": int(sel.sum()),
                             "acc": float(hit[sel].mean())})
    return pd.DataFrame(rows, columns=["model", "test_set", "class", "n", "acc"])


def transfer_matrix(table: pd.DataFrame, cls: str = "all") -> pd.DataFrame:
    """Models x test sets accuracy matrix for one class (``"all"``: overall) of :func:`accuracy_table`.

    Rows and columns keep the order in which models and test sets first appear.
    """
    part = table[table["class"] == cls]
    if part.empty:
        raise ValueError(f"class {cls!r} not in the table; valid: {sorted(set(table['class']))}")
    out = part.pivot(index="model", columns="test_set", values="acc")
    return out.loc[list(dict.fromkeys(part["model"])), list(dict.fromkeys(part["test_set"]))]


def synthetic_test_sets(
    name: str,
    n: int | None = None,
    seed: int = 0,
    *,
    kind: str = "bandstop",
    band_sets: Sequence[Sequence[int]] = BAND_PAIRS,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Band-stop (or band-pass) versions of a synthetic test split, keyed by their display
    label (:func:`fslib.spectral.band_set_label`, e.g. ``"B1+B2 removed"``).

    Parameters
    ----------
    name : ``"syn_b1"`` .. ``"syn_b4"``
    n, seed : as in :func:`fslib.synthetic.load`
    kind : ``"bandstop"`` (remove the bands) or ``"bandpass"`` (keep only them)
    band_sets : the band sets, default every pair (the paper's band-stop tests)

    Returns
    -------
    dict label -> (images uint8 (n, 3, 32, 32), labels (n,)), for :func:`accuracy_table`.
    """
    return {band_set_label(band_set_name(kind, bands)): synthetic.variant(name, kind, tuple(bands), "test", n, seed)
            for bands in band_sets}


def _own_class_energy(images: torch.Tensor, labels: torch.Tensor, dfms: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """Mean over the images of each class of the energy fraction inside that class's DFM."""
    frac = energy_fraction(images, dfms[list(classes)])  # (N, len(classes))
    labels = labels.long().cpu()
    out = []
    for j, c in enumerate(classes):
        sel = labels == c
        out.append(float(frac[sel, j].mean()) if sel.any() else float("nan"))
    return np.array(out)


def _restricted_eval(restricted, images, labels, dfms, classes, lookup, part, kw) -> pd.DataFrame:
    """evaluate_dfms of the restricted model on the images whose label is in ``classes``."""
    labels = labels.long().cpu()
    _check_same_length(**{f"{part} images": images, f"{part} labels": labels})
    inside = (labels >= 0) & (labels < len(lookup))
    inside[inside.clone()] = lookup[labels[inside]] >= 0
    missing = sorted(set(classes) - set(labels[inside].tolist()))
    if missing:
        raise ValueError(f"{part} images have no image of classes {missing}; every class in `classes` needs one")
    sel = inside.nonzero().flatten()
    res = evaluate_dfms(restricted, images[sel], lookup[labels[sel]], dfms[classes].bool(), **kw)
    res["energy"] = _own_class_energy(images[sel], labels[sel], dfms, classes)
    res["n"] = np.bincount(lookup[labels[sel]].numpy(), minlength=len(classes))
    return res


def shortcut_transfer(
    model: nn.Module,
    id_images: torch.Tensor,
    id_labels: torch.Tensor,
    ood_sets: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    dfms: torch.Tensor,
    *,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    n_boot: int = 1000,
    n_null: int = 100,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Do the in-distribution DFMs also work on OOD images? One row per (OOD set, class).

    The model answers among ``classes`` only (:class:`RestrictedLogits`), on ID and OOD
    images alike, so the two are comparable. For each class ``c`` in ``classes``:
    accuracy on ID and OOD images of ``c``; TPR / FPR of ``c``'s ID DFM applied to the ID
    and the OOD images (:func:`fslib.dfm.evaluate_dfms`, with its bootstrap intervals and
    random-mask null; FPR counts images of the other classes in ``classes``); and the mean
    share of the images' energy inside the DFM (:func:`fslib.spectral.energy_fraction`) for ID and OOD
    images of ``c`` and their ratio ``energy_retained``. A class whose OOD TPR is high and
    whose DFM energy is retained recognises OOD images through its shortcut frequencies.
    The ID images are evaluated once and repeated on every set's rows.

    Parameters
    ----------
    model : nn.Module, maps normalised ``(B, C, H, W)`` to logits ``(B, K)``
    id_images : Tensor, shape (N, C, H, W), float, as the model takes them
    id_labels : Tensor, shape (N,), int, in the model's label space
    ood_sets : mapping set name -> (images (M, C, H, W) float as the model takes them,
        labels (M,) int in the model's label space). Images whose label is not in
        ``classes`` (e.g. -1) are left out, here and in the ID images.
    dfms : Tensor, shape (K, H, W), bool, the model's DFMs (ranked on ID images)
    classes : sequence of int or None
        The classes the OOD sets cover; ``None``: all ``K``.
    class_names : sequence of str or None, one per entry of ``classes``
    n_boot, n_null, seed, batch_size, device, progress : as in :func:`fslib.dfm.evaluate_dfms`

    Returns
    -------
    DataFrame with columns set, class, name, n_id, n_ood, id_acc, ood_acc, id_tpr, id_fpr,
    id_shortcut, ood_tpr, ood_tpr_lo, ood_tpr_hi, ood_fpr, ood_fpr_lo, ood_fpr_hi, ood_null_tpr_p95,
    ood_shortcut, id_energy, ood_energy, energy_retained.
    """
    classes = list(range(dfms.shape[0])) if classes is None else [int(c) for c in classes]
    names = list(class_names) if class_names is not None else [str(c) for c in classes]
    if len(names) != len(classes):
        raise ValueError(f"{len(classes)} classes but {len(names)} class names")
    if dfms.ndim != 3 or max(classes) >= dfms.shape[0]:
        raise ValueError(f"dfms must be (K, H, W) with K > max(classes) = {max(classes)}, got {tuple(dfms.shape)}")
    restricted = RestrictedLogits(model, classes)
    lookup = torch.full((dfms.shape[0],), -1, dtype=torch.long)
    lookup[classes] = torch.arange(len(classes))
    kw = dict(n_boot=n_boot, n_null=n_null, seed=seed, batch_size=batch_size, device=device, progress=progress)
    i = _restricted_eval(restricted, id_images, id_labels, dfms, classes, lookup, "ID", kw)
    parts = []
    for set_name, (images, labels) in ood_sets.items():
        o = _restricted_eval(restricted, images, labels, dfms, classes, lookup, f"OOD set {set_name!r}", kw)
        parts.append(pd.DataFrame({
            "set": set_name,
            "class": classes,
            "name": names,
            "n_id": i["n"].to_numpy(),
            "n_ood": o["n"].to_numpy(),
            "id_acc": i["baseline_acc"].to_numpy(),
            "ood_acc": o["baseline_acc"].to_numpy(),
            "id_tpr": i["tpr"].to_numpy(),
            "id_fpr": i["fpr"].to_numpy(),
            "id_shortcut": i["shortcut"].to_numpy(),
            "ood_tpr": o["tpr"].to_numpy(),
            "ood_tpr_lo": o["tpr_lo"].to_numpy(),
            "ood_tpr_hi": o["tpr_hi"].to_numpy(),
            "ood_fpr": o["fpr"].to_numpy(),
            "ood_fpr_lo": o["fpr_lo"].to_numpy(),
            "ood_fpr_hi": o["fpr_hi"].to_numpy(),
            "ood_null_tpr_p95": o["null_tpr_p95"].to_numpy(),
            "ood_shortcut": o["shortcut"].to_numpy(),
            "id_energy": i["energy"].to_numpy(),
            "ood_energy": o["energy"].to_numpy(),
        }))
    out = pd.concat(parts, ignore_index=True)
    out["energy_retained"] = out["ood_energy"] / out["id_energy"]
    return out


def _spearman(a: pd.Series, b: pd.Series) -> float:
    """Rank correlation (Pearson of average ranks); NaN when either side is constant."""
    ra, rb = a.rank().to_numpy(dtype=float), b.rank().to_numpy(dtype=float)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def transfer_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per OOD set: do the ID shortcuts fire on the OOD images, and do they buy accuracy there?

    A class *transfers* when its DFM passes the shortcut test (TPR above the random-mask
    null's 95th percentile) both on the ID images and on the OOD images. The verdict on the
    paper's claim, per set, is :func:`fslib.report.transfer_verdict`.

    Parameters
    ----------
    table : DataFrame from :func:`shortcut_transfer`

    Returns
    -------
    DataFrame indexed by set with n_classes, n_id_shortcut, n_ood_shortcut, n_transfer,
    ood_acc_transfer, ood_acc_other, spearman_tpr_acc (rank correlation over classes of
    OOD TPR and OOD accuracy), spearman_energy_acc (of energy retained and OOD accuracy),
    verdict.
    """
    rows = {}
    for name, part in table.groupby("set", sort=False):
        transfer = part["id_shortcut"].astype(bool) & part["ood_shortcut"].astype(bool)
        acc_t = float(part.loc[transfer, "ood_acc"].mean()) if transfer.any() else float("nan")
        acc_o = float(part.loc[~transfer, "ood_acc"].mean()) if (~transfer).any() else float("nan")
        verdict = transfer_verdict(transfer.tolist(), part["ood_acc"].tolist())
        rows[name] = {
            "n_classes": len(part),
            "n_id_shortcut": int(part["id_shortcut"].sum()),
            "n_ood_shortcut": int(part["ood_shortcut"].sum()),
            "n_transfer": int(transfer.sum()),
            "ood_acc_transfer": acc_t,
            "ood_acc_other": acc_o,
            "spearman_tpr_acc": _spearman(part["ood_tpr"], part["ood_acc"]),
            "spearman_energy_acc": _spearman(part["energy_retained"], part["ood_acc"]),
            "verdict": verdict,
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "set"
    return out


def transfer_by_protocol(
    subject: Analysable,
    images: torch.Tensor,
    labels: torch.Tensor,
    ood_sets: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    analyses: Mapping[str, VariantAnalysis],
    *,
    default: str | None = "book",
    **kwargs,
) -> pd.DataFrame:
    """Claim 4 under several DFM protocols: :func:`transfer_summary` of every variant.

    For each variant, :func:`shortcut_transfer` of the variant's DFMs, with the variant's
    scoring images as the in-distribution images (held out, or the ranking images for the
    official protocol).

    Parameters
    ----------
    subject : fslib.inference.Analysable (``model`` and ``normalize``)
    images : Tensor, shape (N, C, H, W), uint8, the in-distribution images the variants index
    labels : Tensor, shape (N,), int
    ood_sets : as in :func:`shortcut_transfer` (images already normalised)
    analyses : variant name -> :class:`fslib.protocols.VariantAnalysis` (e.g. with ``test=False``)
    default : the chapters' variant, marked " (default)"; None marks none
    **kwargs : passed to :func:`shortcut_transfer` (classes, class_names, n_null, n_boot, seed, device, ...)

    Returns
    -------
    DataFrame indexed by (setting, set), the columns of :func:`transfer_summary`.
    """
    if default is not None and default not in analyses:
        raise ValueError(f"default variant {default!r} is not among {list(analyses)}")
    parts = {}
    for name, a in analyses.items():
        table = shortcut_transfer(subject.model, subject.normalize(images[a.score]), labels[a.score], ood_sets, a.dfms,
                                  **kwargs)
        parts[f"{name} (default)" if name == default else name] = transfer_summary(table)
    return pd.concat(parts, names=["setting"])


def imagenet_sct_table(
    model: nn.Module,
    imagenet10,
    imagenet_sct,
    dfms: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    *,
    pairing: Sequence[int] | None = None,
    **kwargs,
) -> pd.DataFrame:
    """The paper's OOD protocol: ImageNet-10 DFMs tested on ImageNet-SCT.

    The paper trains on ImageNet-10, computes each class's DFM there, and tests on
    ImageNet-SCT (images of a related class for each ImageNet-10 class, e.g. tabby cat for
    Siamese cat, in several styles) whether the DFM-filtered OOD images are still recognised:
    a shortcut that fires on OOD images makes the model look as if it generalised. Needs the
    user's own copies of both sets (``fslib.data.load("imagenet10", ...)`` and
    ``load("imagenet_sct", ...)``); nothing of the kind is available offline.

    Parameters
    ----------
    model : nn.Module, the ImageNet-10 model (normalised input, 10 logits)
    imagenet10, imagenet_sct : LabeledImages, uint8 images of one resolution
        ``imagenet_sct.labels[i]`` is an SCT class index, mapped to ImageNet-10 by ``pairing``.
    dfms : Tensor, shape (10, H, W), bool, ranked on ImageNet-10 images
    normalize : callable, uint8 ``(N, C, H, W)`` -> normalised float (e.g. ``run.normalize``)
    pairing : sequence of int or None
        ``pairing[j]`` = ImageNet-10 class of SCT class ``j`` (-1: unpaired); ``None``: the
        identity (SCT class ``j`` pairs with ImageNet-10 class ``j``, as in
        :data:`fslib.constants.IMAGENET_SCT_CLASSES`).
    **kwargs : passed to :func:`shortcut_transfer` (n_boot, n_null, seed, device, ...)

    Returns
    -------
    DataFrame of :func:`shortcut_transfer` (set ``"ImageNet-SCT"``) with an extra column
    ``ood_name`` (the SCT class paired with each ImageNet-10 class).
    """
    num = dfms.shape[0]
    pairing = list(range(len(imagenet_sct.classes))) if pairing is None else [int(p) for p in pairing]
    if len(pairing) != len(imagenet_sct.classes):
        raise ValueError(f"pairing has {len(pairing)} entries for {len(imagenet_sct.classes)} SCT classes")
    if any(p >= num or p < -1 for p in pairing):
        raise ValueError(f"pairing entries must be -1 or in 0..{num - 1}, got {pairing}")
    if imagenet10.images.shape[1:] != imagenet_sct.images.shape[1:]:
        raise ValueError(f"resolutions differ: ImageNet-10 {tuple(imagenet10.images.shape[1:])}, "
                         f"SCT {tuple(imagenet_sct.images.shape[1:])}")
    sct_labels = map_labels(imagenet_sct.labels, pairing)
    classes = sorted({p for p in pairing if p >= 0})
    table = shortcut_transfer(
        model,
        normalize(imagenet10.images),
        imagenet10.labels,
        {"ImageNet-SCT": (normalize(imagenet_sct.images), sct_labels)},
        dfms,
        classes=classes,
        class_names=[imagenet10.classes[c] for c in classes],
        **kwargs,
    )
    ood_name = {p: imagenet_sct.classes[j] for j, p in enumerate(pairing) if p >= 0}
    table.insert(3, "ood_name", [ood_name[c] for c in classes])
    return table
