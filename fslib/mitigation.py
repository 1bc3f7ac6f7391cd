"""Mitigating frequency shortcuts: chapter 8's measurements of a retrained model against its source.

A method that trains against frequency shortcuts (DFM-X, AAUA + AAD) is measured with the
book's own protocol. The source model's DFMs ("old" DFMs) failing on the retrained model is
not enough: the model may have found other shortcuts, so the DFMs are recomputed on it. This
module turns the shortcut-test tables into that comparison:

* :func:`shortcut_outcomes`: per class, the source's test, the old DFMs on the retrained model,
  the recomputed DFMs, and what became of the shortcut (:func:`fslib.report.shortcut_outcome`);
* :func:`outcome_summary`: one row per retrained model, with the verdict of
  :func:`fslib.report.mitigation_verdict` and the claim of :func:`fslib.report.mitigation_claim`;
* :func:`dfm_shift`: how far the recomputed DFMs moved (IoU with the old ones, mean radius);
* :func:`band_accuracy`: accuracy on band-pass and band-stop test images (chapter 2's sets).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd
import torch

from fslib.dfm import dfm_profile, iou
from fslib.images import LabeledImages
from fslib.inference import EVAL_BATCH, Analysable, predict
from fslib.report import mitigation_claim, mitigation_verdict, shortcut_outcome
from fslib.spectral import BAND_PAIRS, band_set_name
from fslib.tracking import track_set

METHOD_NAMES = {"none": "control", "dfmx": "DFM-X", "aaua_aad": "AAUA + AAD"}
"""Display names of the methods of :func:`fslib.recipes.mitigation` ("none" is the control)."""

BAND_SETS: tuple[str, ...] = ("test", *(band_set_name("bandpass", (b,)) for b in (1, 2, 3, 4)),
                              *(band_set_name("bandstop", p) for p in BAND_PAIRS))
"""The original test images, each band kept alone, and each pair of bands removed (as chapter 2)."""


def _check_table(name: str, table: pd.DataFrame, n: int | None) -> pd.DataFrame:
    missing = {"class", "tpr", "fpr", "shortcut"} - set(table.columns)
    if missing:
        raise ValueError(f"{name} is not a shortcut-test table: it lacks {sorted(missing)}")
    if n is not None and len(table) != n:
        raise ValueError(f"{name} has {len(table)} classes, the others {n}")
    return table.sort_values("class").reset_index(drop=True)


def shortcut_outcomes(before: pd.DataFrame, old_on_new: pd.DataFrame, new: pd.DataFrame,
                      class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per class: what became of the source model's frequency shortcut after retraining.

    Parameters
    ----------
    before : shortcut-test table (:func:`fslib.dfm.evaluate_dfms`) of the source model with its DFMs
    old_on_new : the same (old) DFMs tested on the retrained model
    new : the retrained model's recomputed DFMs tested on it
    class_names : names of the classes, or None

    Returns
    -------
    DataFrame, one row per class: class, name, tpr_before, fpr_before, shortcut_before,
    old_tpr, old_fpr, old_shortcut, new_tpr, new_fpr, new_shortcut, outcome (one of
    :data:`fslib.report.SHORTCUT_OUTCOMES`).
    """
    before = _check_table("before", before, None)
    old_on_new, new = (_check_table(k, t, len(before)) for k, t in (("old_on_new", old_on_new), ("new", new)))
    names = list(class_names) if class_names is not None else before["class"].astype(str).tolist()
    out = pd.DataFrame({"class": before["class"], "name": names})
    for prefix, t in (("", before), ("old_", old_on_new), ("new_", new)):
        suffix = "_before" if not prefix else ""
        out[f"{prefix}tpr{suffix}"], out[f"{prefix}fpr{suffix}"] = t["tpr"], t["fpr"]
        out[f"{prefix}shortcut{suffix}"] = t["shortcut"].astype(bool)
    out["outcome"] = [shortcut_outcome(*flags) for flags in
                      zip(out["shortcut_before"], out["old_shortcut"], out["new_shortcut"])]
    return out


def outcome_summary(outcomes: Mapping[str, pd.DataFrame], control: str | None = None,
                    accuracy: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per retrained model: outcome counts, mean TPR / FPR, verdict and claim.

    Parameters
    ----------
    outcomes : mapping model name -> :func:`shortcut_outcomes` table
    control : the name of the model retrained without a method (its ``n_after`` is what the
        claim of :func:`fslib.report.mitigation_claim` compares with), or None (no claim column)
    accuracy : mapping model name -> test accuracy, or None

    Returns
    -------
    DataFrame indexed by model: n_before, kept, moved, removed, new, n_after (classes with a
    shortcut after: kept, moved or new), mean_tpr_before, mean_old_tpr, mean_old_fpr,
    mean_new_tpr, mean_new_fpr, verdict, and (with ``control``) claim, (with ``accuracy``) test_acc.
    """
    rows = {}
    for name, t in outcomes.items():
        counts = t["outcome"].value_counts()
        row = {"n_before": int(t["shortcut_before"].sum()),
               **{k: int(counts.get(k, 0)) for k in ("kept", "moved", "removed", "new")}}
        row["n_after"] = row["kept"] + row["moved"] + row["new"]
        row.update(mean_tpr_before=t["tpr_before"].mean(), mean_old_tpr=t["old_tpr"].mean(),
                   mean_old_fpr=t["old_fpr"].mean(), mean_new_tpr=t["new_tpr"].mean(),
                   mean_new_fpr=t["new_fpr"].mean(), verdict=mitigation_verdict(t["outcome"].tolist()))
        rows[name] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "model"
    if control is not None:
        if control not in out.index:
            raise ValueError(f"control {control!r} is not among the models {list(out.index)}")
        out["claim"] = [mitigation_claim(r.verdict, r.n_after, out.loc[control, "n_after"]) if name != control else "-"
                        for name, r in out.iterrows()]
    if accuracy is not None:
        out["test_acc"] = [float(accuracy[m]) for m in out.index]
    return out


def dfm_shift(old: torch.Tensor, new: Mapping[str, torch.Tensor], class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """How far each model's recomputed DFMs moved from the old ones.

    Parameters
    ----------
    old : Tensor, shape (C, H, W), bool, the source model's DFMs
    new : mapping model name -> Tensor (C, H, W), bool, its recomputed DFMs
    class_names : names of the C classes, or None

    Returns
    -------
    DataFrame, one row per (model, class): iou (old vs new), radius_old, radius_new (mean
    distance of the DFM's positions from DC, :func:`fslib.dfm.dfm_profile`), b1_old, b1_new
    (share of the DFM in band B1).
    """
    names = list(class_names) if class_names is not None else [str(i) for i in range(old.shape[0])]
    before = dfm_profile(old, names)
    parts = []
    for model, maps in new.items():
        after = dfm_profile(maps, names)
        parts.append(pd.DataFrame({"model": model, "name": names, "iou": iou(old, maps).numpy(),
                                   "radius_old": before.loc[names, "mean_radius"].to_numpy(),
                                   "radius_new": after.loc[names, "mean_radius"].to_numpy(),
                                   "b1_old": before.loc[names, "B1"].to_numpy(), "b1_new": after.loc[names, "B1"].to_numpy()}))
    return pd.concat(parts, ignore_index=True)


def band_accuracy(subjects: Mapping[str, Analysable], test: LabeledImages, sets: Sequence[str] = BAND_SETS, *,
                  batch_size: int = EVAL_BATCH, device: str | torch.device = "auto") -> pd.DataFrame:
    """Accuracy of every model on band-pass and band-stop versions of the test images.

    The sets are those of chapter 2 (:func:`fslib.tracking.track_set`: ``"bandpass:K"`` keeps
    band K only, ``"bandstop:J,K"`` removes bands J and K, DC always kept), built once and
    normalised by each model's own ``normalize``.

    Parameters
    ----------
    subjects : mapping name -> :class:`fslib.inference.Analysable`
    test : LabeledImages, the test images (uint8)
    sets : names of the sets (:data:`BAND_SETS`)
    batch_size, device : for the forward passes

    Returns
    -------
    DataFrame with columns model, set, acc (share of correct predictions).
    """
    images = {name: track_set(name, test) for name in sets}
    rows = []
    for model, subject in subjects.items():
        for name, x in images.items():
            logits = predict(subject.model, subject.normalize(x), batch_size, device)
            rows.append((model, name, float((logits.argmax(1) == test.labels).double().mean())))
    return pd.DataFrame(rows, columns=["model", "set", "acc"])
