"""Out-of-distribution tests: texture vs shape, synthetic transfer, and shortcut transfer.

The paper's fourth claim is that frequency shortcuts learned in distribution also fire on
out-of-distribution (OOD) images, where a shortcut feature that happens to be present gives
an illusion of generalisation. This module holds the pure computations behind chapter 5:

* :func:`restrict` and :func:`map_predictions`: a 10-way CIFAR-10 (or ImageNet-10) model
  answers among the classes an OOD set shares with it, by restricting its logits to them.
* :func:`cue_conflict_scores`: accuracy by shape label and by texture label, and the texture
  bias of Geirhos et al. (2019) on the texture-vs-shape stimuli.
* :func:`accuracy_table` / :func:`transfer_matrix`: models x test sets -> accuracy, e.g.
  models trained on Syn_Bk tested on Syn_Bj and on band-stop sets.
* :func:`dfm_energy_fraction`: the share of an image's spectral energy inside a DFM, the
  evidence of whether a class's shortcut frequencies survive in OOD images.
* :func:`shortcut_transfer`: per class, ID and OOD accuracy, the TPR / FPR of the
  in-distribution DFMs applied to ID and OOD images (:func:`fslib.dfm.evaluate_dfms`), and
  the DFM energy retained.
* :func:`imagenet_sct_table`: the paper's ImageNet-10 -> ImageNet-SCT protocol.
* Transfer across models (chapter 6): :func:`iou_matrix` (overlap of two models' DFMs),
  :func:`cross_model_table` (model B tested with model A's DFMs), :func:`shortcut_summary`
  (one row per model), :func:`runs_table` and :func:`model_label`. The DFMs of a cached run
  come from :func:`fslib.dfm.run_dfms` (one cache for every chapter), ranked on the images
  of :func:`fslib.dfm.rank_score_split`.

Label conventions: ``labels`` of an OOD set are always given in the *model's* label space
(e.g. CIFAR-10 indices), converted from the OOD set's own classes with :func:`map_labels`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from fslib import dfm as _dfm
from fslib.dfm import evaluate_dfms
from fslib.spectral import fft_centred

__all__ = [
    "RestrictedLogits",
    "restrict",
    "map_labels",
    "map_predictions",
    "cue_conflict_scores",
    "cue_conflict_by_class",
    "stimuli_table",
    "accuracy_table",
    "transfer_matrix",
    "synthetic_test_sets",
    "dfm_energy_fraction",
    "shortcut_transfer",
    "imagenet_sct_table",
    "transfer_summary",
    "iou_matrix",
    "cross_model_table",
    "shortcut_summary",
    "runs_table",
    "model_label",
    "describe_recipe",
    "robustness_verdict",
]


# --------------------------------------------------------------------------- label spaces
class RestrictedLogits(nn.Module):
    """A classifier that answers only among some of its classes.

    ``forward(x) = model(x)[:, classes]``: logit ``j`` is the wrapped model's logit for class
    ``classes[j]``, so ``argmax`` picks the most likely *allowed* class. This is how a 10-way
    CIFAR-10 model is scored on the 7 texture-vs-shape classes that have a CIFAR-10
    counterpart (the other 3 CIFAR-10 classes cannot be right, so they are not allowed to be
    wrong either), in the spirit of Geirhos et al.'s mapping of 1000-way ImageNet models
    onto 16 classes (they aggregate fine classes; with one class per coarse class here, the
    restriction is the same thing).

    Parameters
    ----------
    model : nn.Module, maps ``(B, C, H, W)`` to logits ``(B, K)``
    classes : sequence of int, distinct indices into the ``K`` logits
    """

    def __init__(self, model: nn.Module, classes: Sequence[int]) -> None:
        super().__init__()
        idx = [int(c) for c in classes]
        if not idx or len(set(idx)) != len(idx) or min(idx) < 0:
            raise ValueError(f"classes must be distinct non-negative indices, got {list(classes)}")
        self.model = model
        self.register_buffer("classes", torch.tensor(idx, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if int(self.classes.max()) >= logits.shape[1]:
            raise ValueError(f"classes {self.classes.tolist()} exceed the model's {logits.shape[1]} logits")
        return logits.index_select(1, self.classes.to(logits.device))


def restrict(model: nn.Module, classes: Sequence[int]) -> RestrictedLogits:
    """Shorthand for :class:`RestrictedLogits`."""
    return RestrictedLogits(model, classes)


def map_labels(labels: torch.Tensor, mapping: Sequence[int]) -> torch.Tensor:
    """Translate labels of one label space into another; unmapped labels become -1.

    Parameters
    ----------
    labels : Tensor, shape (N,), int, indices into ``mapping``
    mapping : sequence of int, ``mapping[i]`` is the target index of source class ``i`` or -1

    Returns
    -------
    Tensor, shape (N,), int64

    >>> map_labels(torch.tensor([0, 2, 1]), [5, -1, 7]).tolist()
    [5, 7, -1]
    """
    table = torch.as_tensor(list(mapping), dtype=torch.long)
    labels = labels.long().cpu()
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(table)):
        raise ValueError(f"labels must lie in 0..{len(table) - 1} for a mapping of {len(table)} classes, got range {int(labels.min())}..{int(labels.max())}")
    return table[labels]


def map_predictions(logits: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Argmax over the allowed classes only, returned in the model's label space.

    Parameters
    ----------
    logits : Tensor, shape (N, K)
    classes : sequence of int, allowed indices into the ``K`` logits

    Returns
    -------
    Tensor, shape (N,), int64, each entry one of ``classes``.

    >>> map_predictions(torch.tensor([[0.0, 9.0, 1.0, 2.0]]), [0, 2, 3]).tolist()
    [3]
    """
    idx = torch.as_tensor(list(classes), dtype=torch.long, device=logits.device)
    if logits.ndim != 2 or int(idx.max()) >= logits.shape[1] or int(idx.min()) < 0:
        raise ValueError(f"logits must be (N, K) with K > max(classes) = {int(idx.max())}, got {tuple(logits.shape)}")
    return idx[logits.index_select(1, idx).argmax(1)].cpu()


# --------------------------------------------------------------------------- texture vs shape
def _check_same_length(**tensors: torch.Tensor) -> None:
    lengths = {k: int(v.shape[0]) for k, v in tensors.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")


def cue_conflict_scores(
    preds: torch.Tensor,
    shape_labels: torch.Tensor,
    texture_labels: torch.Tensor | None = None,
) -> dict:
    """Shape accuracy, texture accuracy and texture bias of predictions on cue-conflict images.

    All three tensors use one label space; ``-1`` marks a label outside the classes the
    model may answer (e.g. a texture-vs-shape class with no CIFAR-10 counterpart).

    * ``shape_acc``: predictions equal to the shape label, over images whose shape label is
      valid.
    * ``texture_acc``: predictions equal to the texture label, over images whose texture
      label is valid.
    * ``texture_bias`` (Geirhos et al. 2019): over images whose shape and texture labels are
      both valid and differ, the fraction of *texture* decisions among the decisions that are
      either the shape or the texture class. 1 is a pure texture classifier, 0 a pure shape
      classifier; NaN when no decision is either.

    Parameters
    ----------
    preds, shape_labels : Tensor, shape (N,), int
    texture_labels : Tensor, shape (N,), int, or None
        ``None`` (edge and silhouette images, which have no texture): only ``shape_acc``.

    Returns
    -------
    dict with ``shape_acc``, ``texture_acc``, ``texture_bias``, ``shape_decisions`` and
    ``texture_decisions`` (fractions of all conflict images), and the counts ``n_shape``,
    ``n_texture``, ``n_conflict``.

    >>> s = cue_conflict_scores(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 2, 2]), torch.tensor([1, 1, 1, 2]))
    >>> s["shape_acc"], s["texture_acc"], s["texture_bias"]
    (0.5, 0.75, 0.6666666666666666)
    """
    preds, shape_labels = preds.long().cpu(), shape_labels.long().cpu()
    nan = float("nan")
    valid_shape = shape_labels >= 0
    out = {
        "shape_acc": float((preds == shape_labels)[valid_shape].double().mean()) if valid_shape.any() else nan,
        "n_shape": int(valid_shape.sum()),
        "texture_acc": nan, "texture_bias": nan, "shape_decisions": nan, "texture_decisions": nan,
        "n_texture": 0, "n_conflict": 0,
    }
    if texture_labels is None:
        _check_same_length(preds=preds, shape_labels=shape_labels)
        return out
    texture_labels = texture_labels.long().cpu()
    _check_same_length(preds=preds, shape_labels=shape_labels, texture_labels=texture_labels)
    valid_texture = texture_labels >= 0
    if valid_texture.any():
        out["texture_acc"] = float((preds == texture_labels)[valid_texture].double().mean())
    out["n_texture"] = int(valid_texture.sum())
    conflict = valid_shape & valid_texture & (shape_labels != texture_labels)
    out["n_conflict"] = int(conflict.sum())
    if conflict.any():
        shape_hit = (preds == shape_labels)[conflict].double()
        texture_hit = (preds == texture_labels)[conflict].double()
        out["shape_decisions"] = float(shape_hit.mean())
        out["texture_decisions"] = float(texture_hit.mean())
        decided = shape_hit.sum() + texture_hit.sum()
        out["texture_bias"] = float(texture_hit.sum() / decided) if decided > 0 else nan
    return out


def cue_conflict_by_class(
    preds: torch.Tensor,
    shape_labels: torch.Tensor,
    texture_labels: torch.Tensor | None,
    classes: Sequence[int],
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """:func:`cue_conflict_scores` per class.

    Row ``c``: shape accuracy over images whose shape is ``c``, texture accuracy over images
    whose texture is ``c``, and the texture bias over conflict images whose shape *or*
    texture is ``c``.

    Parameters
    ----------
    preds, shape_labels, texture_labels : as in :func:`cue_conflict_scores`
    classes : sequence of int, the label-space indices to report
    class_names : sequence of str or None, one per entry of ``classes``

    Returns
    -------
    DataFrame with columns class, name, shape_acc, n_shape, texture_acc, n_texture,
    texture_bias, n_conflict.
    """
    names = list(class_names) if class_names is not None else [str(c) for c in classes]
    if len(names) != len(classes):
        raise ValueError(f"{len(classes)} classes but {len(names)} class names")
    rows = []
    for c, name in zip(classes, names):
        s_sel = shape_labels == c
        shape_part = cue_conflict_scores(preds[s_sel], shape_labels[s_sel])
        row = {"class": int(c), "name": name, "shape_acc": shape_part["shape_acc"], "n_shape": shape_part["n_shape"]}
        if texture_labels is not None:
            t_sel = texture_labels == c
            row["texture_acc"] = float((preds[t_sel] == c).double().mean()) if t_sel.any() else float("nan")
            row["n_texture"] = int(t_sel.sum())
            either = s_sel | t_sel
            both = cue_conflict_scores(preds[either], shape_labels[either], texture_labels[either])
            row["texture_bias"], row["n_conflict"] = both["texture_bias"], both["n_conflict"]
        rows.append(row)
    return pd.DataFrame(rows)


def stimuli_table(
    predictors: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    sets: Mapping[str, Any],
    classes: Sequence[int],
    *,
    label_key: str = "cifar10_labels",
    texture_key: str = "cifar10_texture_labels",
) -> pd.DataFrame:
    """Shape / texture accuracy and texture bias of several models on several image sets.

    Every model answers among ``classes`` only (:func:`map_predictions`). Labels come from
    ``extra[label_key]`` (and ``extra[texture_key]`` when present) of each set, or from its
    ``labels`` when the set has no such extra (an in-distribution test set, already in the
    model's label space); labels outside ``classes`` become -1 and are not scored.

    Parameters
    ----------
    predictors : mapping model name -> callable, uint8 images (N, C, H, W) -> logits (N, K)
        (e.g. ``run.predict``)
    sets : mapping set name -> LabeledImages
    classes : the label-space indices the sets cover (e.g. the 7 CIFAR-10 classes of the
        texture-vs-shape stimuli)
    label_key, texture_key : names of the mapped label fields in ``extra``

    Returns
    -------
    DataFrame, one row per (model, set): the keys of :func:`cue_conflict_scores`.
    """
    allowed = torch.tensor(sorted(int(c) for c in classes))
    rows = []
    for set_name, s in sets.items():
        shape = s.extra[label_key] if label_key in s.extra else s.labels
        shape = torch.where(torch.isin(shape.long(), allowed), shape.long(), -1)
        texture = s.extra.get(texture_key)
        if texture is not None:
            texture = torch.where(torch.isin(texture.long(), allowed), texture.long(), -1)
        keep = (shape >= 0) | (texture >= 0) if texture is not None else shape >= 0
        idx = keep.nonzero().flatten()
        for model_name, predict in predictors.items():
            preds = map_predictions(torch.as_tensor(predict(s.images[idx])), allowed.tolist())
            scores = cue_conflict_scores(preds, shape[idx], None if texture is None else texture[idx])
            rows.append({"model": model_name, "set": set_name, **scores})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- transfer matrices
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
                rows.append({"model": model_name, "test_set": test_name, "class": name, "n": int(sel.sum()), "acc": float(hit[sel].mean())})
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
    band_sets: Sequence[Sequence[int]] = ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)),
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Band-stop (or band-pass) versions of a synthetic test split, keyed ``"stop B1+B2"`` etc.

    Parameters
    ----------
    name : ``"syn_b1"`` .. ``"syn_b4"``
    n, seed : as in :func:`fslib.synthetic.load`
    kind : ``"bandstop"`` (remove the bands) or ``"bandpass"`` (keep only them)
    band_sets : the band sets, default every pair (the paper's band-stop tests)

    Returns
    -------
    dict name -> (images uint8 (n, 3, 32, 32), labels (n,)), for :func:`accuracy_table`.
    """
    from fslib import synthetic

    prefix = {"bandstop": "stop", "bandpass": "pass"}.get(kind)
    if prefix is None:
        raise ValueError(f"unknown kind {kind!r}; valid: bandstop, bandpass")
    return {f"{prefix} " + "+".join(f"B{b}" for b in bands): synthetic.variant(name, kind, tuple(bands), "test", n, seed)
            for bands in band_sets}


# --------------------------------------------------------------------------- shortcut transfer
def dfm_energy_fraction(
    images: torch.Tensor,
    dfms: torch.Tensor,
    *,
    exclude_dc: bool = True,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Share of each image's spectral energy that lies inside each DFM.

    Energy is ``|F(u, v)|^2`` of the centred spectrum summed over colour channels. A DFM
    covers 5 % of the positions; an image whose energy is concentrated on them keeps much of
    itself when filtered by that DFM, so this fraction measures whether a class's shortcut
    frequencies are *present* in an image (whatever the model does with them).

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), uint8 or float (typically normalised model input)
    dfms : Tensor, shape (K, H, W), bool or 0/1
    exclude_dc : bool
        Leave the DC term out of numerator and denominator (mean brightness is not texture
        or shape, and would dominate the total).
    batch_size : int

    Returns
    -------
    Tensor, shape (N, K), float64 in [0, 1] (0 for an image without non-DC energy).

    >>> x = torch.zeros(1, 1, 4, 4); x[0, 0, :, ::2] = 1.0   # energy at DC and (u, v) = (0, +-2)
    >>> m = torch.zeros(1, 4, 4, dtype=torch.bool); m[0, 2, 0] = True
    >>> dfm_energy_fraction(x, m).tolist()
    [[1.0]]
    """
    if images.ndim != 4 or dfms.ndim != 3 or dfms.shape[1:] != images.shape[2:]:
        raise ValueError(f"need images (N, C, H, W) and dfms (K, H, W) with the same H, W, got {tuple(images.shape)} and {tuple(dfms.shape)}")
    h, w = images.shape[-2:]
    masks = dfms.to(torch.float64).cpu()
    if exclude_dc:
        masks = masks.clone()
        masks[:, h // 2, w // 2] = 0.0
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        x = x.to(torch.float64) if x.is_floating_point() else x.to(torch.float64) / 255.0
        power = (fft_centred(x).abs() ** 2).sum(1).cpu()  # (B, H, W)
        if exclude_dc:
            power[:, h // 2, w // 2] = 0.0
        total = power.flatten(1).sum(1, keepdim=True)
        inside = torch.einsum("bhw,khw->bk", power, masks)
        out.append(torch.where(total > 0, inside / total.clamp_min(1e-300), torch.zeros_like(inside)))
    return torch.cat(out) if out else torch.zeros(0, dfms.shape[0], dtype=torch.float64)


def _own_class_energy(images: torch.Tensor, labels: torch.Tensor, dfms: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """Mean over the images of each class of the energy fraction inside that class's DFM."""
    frac = dfm_energy_fraction(images, dfms[list(classes)])  # (N, len(classes))
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
    share of the images' energy inside the DFM (:func:`dfm_energy_fraction`) for ID and OOD
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
    paper's claim, per set, follows one stated rule:

    * ``"holds"``: at least one class transfers and the transferring classes have a higher
      mean OOD accuracy than the other classes (the shortcut coincides with the OOD
      successes: an illusion of generalisation);
    * ``"partly"``: at least one class transfers, but without that accuracy advantage;
    * ``"does not hold"``: no class transfers.

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
        if not transfer.any():
            verdict = "does not hold"
        elif transfer.all() or acc_t > acc_o:
            verdict = "holds"
        else:
            verdict = "partly"
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
        raise ValueError(f"resolutions differ: ImageNet-10 {tuple(imagenet10.images.shape[1:])}, SCT {tuple(imagenet_sct.images.shape[1:])}")
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


# --------------------------------------------------------------------------- transfer across models
def iou_matrix(dfms: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Mean over classes of the IoU of two models' DFMs, for every pair of models.

    Parameters
    ----------
    dfms : mapping model name -> Tensor, shape (C, H, W), bool

    Returns
    -------
    DataFrame, models x models, symmetric, 1 on the diagonal.
    """
    names = list(dfms)
    out = pd.DataFrame(np.nan, index=names, columns=names)
    for a in names:
        for b in names:
            out.loc[a, b] = float(_dfm.iou(dfms[a], dfms[b]).mean())
    out.index.name, out.columns.name = "model", "model"
    return out


def cross_model_table(
    runs: Mapping[str, Any],
    dfms: Mapping[str, torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    class_names: Sequence[str] | None = None,
    **kwargs,
) -> pd.DataFrame:
    """The shortcut test of every model with every model's DFMs.

    Row block (``dfm_source`` = A, ``model`` = B) is :func:`fslib.dfm.evaluate_dfms` of model
    B on ``images`` filtered by A's DFMs; the diagonal blocks are each model's own test. The
    paper does this once (ViT-B with the ResNet18+SIN DFMs).

    Parameters
    ----------
    runs : mapping name -> run (``model`` and ``normalize``)
    dfms : mapping name -> Tensor, shape (C, H, W), bool
    images : Tensor, shape (N, C, H, W), uint8
    labels : Tensor, shape (N,), int
    class_names : names of the C classes, or None
    **kwargs : passed to :func:`fslib.dfm.evaluate_dfms` (n_boot, n_null, seed, device, progress)

    Returns
    -------
    DataFrame, the columns of :func:`fslib.dfm.evaluate_dfms` plus ``dfm_source``, ``model``
    and ``name``.
    """
    parts = []
    for b, run in runs.items():
        x = run.normalize(images)
        for a, maps in dfms.items():
            t = evaluate_dfms(run.model, x, labels, maps.bool(), **kwargs)
            t.insert(0, "model", b)
            t.insert(0, "dfm_source", a)
            t.insert(3, "name", list(class_names) if class_names is not None else t["class"].astype(str).tolist())
            parts.append(t)
    return pd.concat(parts, ignore_index=True)


def shortcut_summary(table: pd.DataFrame, accuracy: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per model (and DFM source) of a long shortcut-test table.

    Parameters
    ----------
    table : DataFrame with columns ``model``, ``tpr``, ``fpr``, ``shortcut``, ``paper_rule``
        (and optionally ``dfm_source``), e.g. from :func:`cross_model_table`
    accuracy : mapping model -> test accuracy, added as ``test_acc``, or None

    Returns
    -------
    DataFrame indexed by model (or by (dfm_source, model)) with mean_tpr, mean_fpr,
    n_shortcut (TPR above the random-mask null's 95th percentile), n_paper_rule (TPR >= 0.6)
    and test_acc.
    """
    keys = [k for k in ("dfm_source", "model") if k in table]
    g = table.groupby(keys, sort=False)
    out = pd.DataFrame({
        "mean_tpr": g["tpr"].mean(),
        "mean_fpr": g["fpr"].mean(),
        "n_shortcut": g["shortcut"].sum().astype(int),
        "n_paper_rule": g["paper_rule"].sum().astype(int),
    })
    if accuracy is not None:
        models = out.index.get_level_values("model")
        out["test_acc"] = [float(accuracy[m]) for m in models]
    return out


_MODEL_NAMES = {"resnet18": "ResNet18", "resnet50": "ResNet50", "vgg16": "VGG16", "alexnet": "AlexNet"}
_AUGMENT_NAMES = {"autoaugment": "AutoAugment", "augmix": "AugMix", "ampswap": "amplitude swap"}


def model_label(model: str, extra_augment: str = "none") -> str:
    """A display name for an (architecture, extra augmentation) pair.

    Unknown names are shown as given, so a new model or augmentation needs no entry here.

    >>> model_label("resnet18", "augmix"), model_label("vgg16"), model_label("vit_tiny", "x")
    ('ResNet18 + AugMix', 'VGG16', 'vit_tiny + x')
    """
    name = _MODEL_NAMES.get(model, model)
    return name if extra_augment == "none" else f"{name} + {_AUGMENT_NAMES.get(extra_augment, extra_augment)}"


def describe_recipe(cfg: Any, skip: Sequence[str] = ("track_every", "track_until", "track_sets")) -> str:
    """The training settings of ``cfg`` that differ from the paper's, as one line of text.

    Reads :func:`fslib.recipes.describe` (the fields that differ from the ``TrainConfig``
    defaults, which are the paper's recipe) and adds the paper's value of each, for the
    chapters' "Differences from the paper" tables (glued, never typed).

    Parameters
    ----------
    cfg : fslib.train.TrainConfig
    skip : field names left out (by default the learning-dynamics tracking of chapter 2)

    Returns
    -------
    str, e.g. ``"width 0.25 (paper 1.0); epochs 8 (paper 200)"`` (``unset`` for a None:
    no cap, the whole split); ``"as the paper"`` when nothing differs.
    """
    from fslib import recipes
    from fslib.train import TrainConfig

    paper = TrainConfig(dataset=cfg.dataset, model=cfg.model).to_dict()
    def show(v: Any) -> str:
        return "unset" if v is None else str(v)  # None: no cap / the whole split

    parts = [f"{k} {show(v)} (paper {show(paper[k])})" for k, v in recipes.describe(cfg).items() if k not in skip]
    return "; ".join(parts) if parts else "as the paper"


def runs_table(runs: Mapping[str, Any], min_acc: float | None = None) -> pd.DataFrame:
    """One row per trained run: what it is, how well it does and what it cost.

    Parameters
    ----------
    runs : mapping name -> fslib.runs.Run
    min_acc : float or None
        When given, a column ``meets_min_acc`` says whether ``test_acc >= min_acc``.

    Returns
    -------
    DataFrame indexed by name: model, width, extra_augment, epochs, n_train, parameters,
    test_acc, train_minutes, minutes_per_epoch (wall time of training over its epochs, as
    measured on the machine that trained it) and optionally meets_min_acc.
    """
    rows = {}
    for name, run in runs.items():
        cfg, m = run.config, run.metrics
        minutes = float(m.get("train_seconds", float("nan"))) / 60
        rows[name] = {"model": cfg.model, "width": cfg.width, "extra_augment": cfg.extra_augment, "epochs": cfg.epochs,
                      "n_train": m.get("n_train"), "parameters": int(m.get("parameters", 0)),
                      "test_acc": float(m["test_acc"]), "train_minutes": minutes,
                      "minutes_per_epoch": minutes / max(int(m.get("epochs", cfg.epochs)), 1)}
        if min_acc is not None:
            rows[name]["meets_min_acc"] = rows[name]["test_acc"] >= min_acc
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "run"
    return out


def robustness_verdict(n_shortcut: Mapping[str, int], baseline: str) -> str:
    """The paper's fifth claim under one stated rule.

    "Larger models and data augmentation do not fully avoid frequency shortcuts":
    ``"holds"`` when every model other than ``baseline`` still has at least one shortcut
    class, ``"partly"`` when some of them do, ``"does not hold"`` when none does.

    Parameters
    ----------
    n_shortcut : mapping model name -> number of shortcut classes
    baseline : the reference model (e.g. the plain ResNet18), left out of the rule

    >>> robustness_verdict({"base": 3, "big": 1, "aug": 0}, "base")
    'partly'
    """
    if baseline not in n_shortcut:
        raise ValueError(f"baseline {baseline!r} not among the models {list(n_shortcut)}")
    others = [int(v) > 0 for k, v in n_shortcut.items() if k != baseline]
    if not others:
        raise ValueError("need at least one model besides the baseline")
    return "holds" if all(others) else "partly" if any(others) else "does not hold"
