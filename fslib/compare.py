"""Comparing models: chapter 6's cross-model shortcut work.

:func:`iou_matrix` (overlap of two models' DFMs), :func:`cross_model_table` (model B tested
with model A's DFMs), :func:`shortcut_summary` (one row per model), :func:`protocol_table`
(claims 3 and 5 per model under other protocols), :func:`runs_table` (what each trained run
is, how well it does and what it cost) and :func:`model_label`. The DFMs of
a cached run come from :func:`fslib.dfm.run_dfms` (one cache for every chapter).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from fslib import report
from fslib.dfm import DFMConfig, iou, run_shortcut_test
from fslib.inference import Analysable
from fslib.protocols import VariantAnalysis


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
            out.loc[a, b] = float(iou(dfms[a], dfms[b]).mean())
    out.index.name, out.columns.name = "model", "model"
    return out


def cross_model_table(
    runs: Mapping[str, Analysable],
    dfms: Mapping[str, torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    class_names: Sequence[str] | None = None,
    config: DFMConfig = DFMConfig(),
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """The shortcut test of every model with every model's DFMs.

    Row block (``dfm_source`` = A, ``model`` = B) is :func:`fslib.dfm.evaluate_dfms` of model
    B on ``images`` filtered by A's DFMs (through :func:`fslib.dfm.run_shortcut_test`, so
    every block is cached); the diagonal blocks are each model's own test. The paper does
    this once (ViT-B with the ResNet18+SIN DFMs).

    Parameters
    ----------
    runs : mapping name -> :class:`fslib.inference.Analysable` (``model`` and ``normalize``)
    dfms : mapping name -> Tensor, shape (C, H, W), bool
    images : Tensor, shape (N, C, H, W), uint8
    labels : Tensor, shape (N,), int
    class_names : names of the C classes, or None
    config : DFMConfig, the test settings (``n_boot``, ``n_null``, ``seed``, ``paper_tpr``)
    batch_size, device, progress : as in :func:`fslib.dfm.evaluate_dfms`

    Returns
    -------
    DataFrame, the columns of :func:`fslib.dfm.evaluate_dfms` plus ``dfm_source``, ``model``
    and ``name``.
    """
    parts = []
    for b, run in runs.items():
        for a, maps in dfms.items():
            t = run_shortcut_test(run, images, labels, maps.bool(), config=config, batch_size=batch_size, device=device,
                                  progress=progress)
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


def protocol_table(analyses: Mapping[str, Mapping[str, VariantAnalysis]], baseline: str, *, paper_tpr: float = 0.6,
                   max_fpr: float = 0.1, default: str | None = "book") -> pd.DataFrame:
    """Claims 3 and 5 for several models under several protocols (chapter 6's robustness table).

    For every protocol variant (rows) and model (columns): claim 3's verdict for the model
    (:func:`fslib.report.shortcut_verdict`) with its counts of classes that beat the null and
    of strong shortcuts; then claim 5 by :func:`fslib.report.robustness_verdict`, read once
    with "has a shortcut" = some class beats the null (the chapter's reading) and once with
    "has a strong shortcut" (TPR >= ``paper_tpr`` and FPR <= ``max_fpr``).

    Parameters
    ----------
    analyses : model name -> (variant name -> :class:`fslib.protocols.VariantAnalysis`), every
        model with the same variants, e.g. :func:`fslib.protocols.variant_analyses` per model
    baseline : the reference model of claim 5 (the plain ResNet18)
    paper_tpr, max_fpr : the strong-shortcut bounds
    default : the chapters' variant, marked " (default)"; None marks none

    Returns
    -------
    DataFrame indexed by setting: one column per model (``"partly (3 / 0)"``: verdict, classes
    beating the null / strong), then "claim 5" and "claim 5, strong shortcuts only".
    """
    if baseline not in analyses:
        raise ValueError(f"baseline {baseline!r} is not among the models {list(analyses)}")
    variants = [list(a) for a in analyses.values()]
    if any(v != variants[0] for v in variants):
        raise ValueError(f"every model needs the same variants, got {dict(zip(analyses, variants))}")
    if default is not None and default not in variants[0]:
        raise ValueError(f"default variant {default!r} is not among {variants[0]}")
    rows = {}
    for name in variants[0]:
        cells, n_null, n_strong = {}, {}, {}
        for model, per_variant in analyses.items():
            table = per_variant[name].table
            verdict, strong = report.shortcut_verdict(table, paper_tpr, max_fpr)
            n_null[model], n_strong[model] = int(table["shortcut"].astype(bool).sum()), int(strong.sum())
            cells[model] = f"{verdict} ({n_null[model]} / {n_strong[model]})"
        cells["claim 5"] = report.robustness_verdict(n_null, baseline)
        cells["claim 5, strong shortcuts only"] = report.robustness_verdict(n_strong, baseline)
        rows[f"{name} (default)" if name == default else name] = cells
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "setting"
    return out
