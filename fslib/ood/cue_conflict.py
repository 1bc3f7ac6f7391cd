"""Texture versus shape: scores on the cue-conflict stimuli of Geirhos et al. (2019).

Accuracy by shape label and by texture label, and the texture bias, per model and set
(:func:`stimuli_table`) and per class (:func:`cue_conflict_by_class`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

from fslib.ood.labels import _check_same_length, map_predictions


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
