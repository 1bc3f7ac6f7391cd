"""The shortcut analysis of any classifier on any labelled images: one call, one result object.

:func:`analyse` is a thin layer over the book's protocol (:func:`fslib.dfm.shortcut_analysis`:
rank the DFMs on some images, test them on others, cached and resumable), run at one or
several DFM sizes (:func:`fslib.dfm.shortcut_test_sweep`) and read with the book's verdict
rules (:func:`fslib.report.class_verdicts`). :func:`estimate` says what it will cost first
(:func:`fslib.dfm.cost.estimate`). The :class:`ShortcutResult` holds the DFMs, the TPR / FPR
table with class names, null and intervals, the verdict per class, the figures
(``plot_*``) and :meth:`ShortcutResult.save` (the command's output folder).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch
import torch.nn as nn

from fslib import dfm, plot, report
from fslib.dfm.cost import CostEstimate
from fslib.dfm.cost import estimate as _estimate
from fslib.images import LabeledImages
from fslib.inference import Analysable, Classifier
from fslib.shortcuts.outputs import write_results


def _tops(tops: float | Sequence[float] | None, config: dfm.DFMConfig | None) -> tuple[float, ...]:
    """The DFM sizes tested, headline first: ``tops``, else the config's ``top`` (5 % by default)."""
    if tops is None:
        return (float((config or dfm.DFMConfig()).top),)
    tops = (tops,) if isinstance(tops, (int, float)) else tuple(tops)
    if not tops:
        raise ValueError("tops must name at least one DFM size, e.g. 0.05 for 5 % of the frequencies")
    return tuple(dict.fromkeys(float(t) for t in tops))


def _subject(model: nn.Module | Analysable, mean, std, class_names, images: LabeledImages) -> Analysable:
    if isinstance(model, Analysable):
        if mean is not None or std is not None:
            raise ValueError("mean/std are given by the Analysable itself; pass them only with a plain nn.Module")
        subject = model
    elif isinstance(model, nn.Module):
        if mean is None or std is None:
            raise ValueError("give the model's input normalisation: mean=..., std=... (one value per channel; "
                             "e.g. fslib.constants.IMAGENET_MEAN / IMAGENET_STD)")
        subject = Classifier(model, mean, std, class_names if class_names is not None else images.classes)
    else:
        raise TypeError(f"model must be an nn.Module or an fslib.inference.Analysable, got {type(model).__name__}")
    if len(subject.class_names) != len(images.classes):
        raise ValueError(f"{len(subject.class_names)} class names for the model but {len(images.classes)} classes "
                         f"in the images ({', '.join(images.classes[:10])})")
    return subject


def _images(images: LabeledImages | torch.Tensor, labels: torch.Tensor | None, class_names) -> LabeledImages:
    if isinstance(images, LabeledImages):
        if labels is not None:
            raise ValueError("labels come with the LabeledImages; pass labels only with an image tensor")
        return images
    if not isinstance(images, torch.Tensor) or labels is None:
        raise TypeError("images must be LabeledImages (e.g. fslib.data.load_folder) or a uint8 tensor (N, C, H, W) "
                        "with labels (N,)")
    labels = torch.as_tensor(labels).long().cpu()
    n = int(labels.max()) + 1 if labels.numel() else 0
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(n))
    return LabeledImages(images, labels, names, name="tensor", split="", source="images given as a tensor")


def _prepare(model, images, labels, mean, std, class_names, config, tops):
    imgs = _images(images, labels, class_names)
    subject = _subject(model, mean, std, class_names, imgs)
    tops = _tops(tops, config)
    return imgs, subject, (config or dfm.DFMConfig()).with_(top=tops[0], thresholds=tops), tops


@dataclass
class ShortcutResult:
    """What :func:`analyse` returns.

    Attributes
    ----------
    subject : the model analysed (an :class:`fslib.inference.Analysable`)
    images : LabeledImages, every image given (``rank`` and ``score`` index into them)
    analysis : fslib.dfm.ShortcutAnalysis at the first DFM size (``rank``, ``score``,
        ``saved``: ranked maps and DFMs at every size, ``table``)
    sweep : DataFrame, the shortcut test at every DFM size: ``top``, ``class``, ``name``,
        ``verdict``, then the columns of :func:`fslib.dfm.evaluate_dfms`
    config : DFMConfig (``top`` the first size, ``thresholds`` all of them)
    same_images : bool, scored on the ranking images
    seconds : float, wall time of :func:`analyse`
    """

    subject: Analysable
    images: LabeledImages
    analysis: dfm.ShortcutAnalysis
    sweep: pd.DataFrame
    config: dfm.DFMConfig
    same_images: bool = False
    seconds: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.subject.class_names)

    @property
    def tops(self) -> tuple[float, ...]:
        """The DFM sizes tested, the first one being :attr:`top`."""
        return tuple(self.config.thresholds)

    @property
    def top(self) -> float:
        return float(self.config.top)

    @property
    def dfms(self) -> torch.Tensor:
        """DFMs at :attr:`top`, bool ``(num_classes, H, W)``, centred layout."""
        return self.analysis.dfms

    @property
    def loss_maps(self) -> torch.Tensor:
        """The search method's maps behind the DFMs, float64 ``(num_classes, H, W)``."""
        return self.analysis.saved.loss_maps

    @property
    def table(self) -> pd.DataFrame:
        """The shortcut test at :attr:`top`: one row per class with its name and verdict."""
        return self.sweep[self.sweep["top"] == self.top].reset_index(drop=True)

    @property
    def verdicts(self) -> pd.Series:
        """Each class's verdict (:data:`fslib.report.CLASS_VERDICTS`) at :attr:`top`, by name."""
        t = self.table
        return pd.Series(t["verdict"].to_numpy(), index=pd.Index(t["name"], name="class"), name="verdict")

    @property
    def verdict(self) -> str:
        """The book's claim-3 verdict on this model (:func:`fslib.report.shortcut_verdict`)."""
        return report.shortcut_verdict(self.table, self.config.paper_tpr, self.config.max_fpr)[0]

    def files(self, which: str) -> list[str]:
        """File names of the ``"rank"`` or ``"score"`` images (folder images only; else indices)."""
        idx = (self.analysis.rank if which == "rank" else self.analysis.score).tolist()
        names = self.images.extra.get("files")
        return [names[i] for i in idx] if names else [str(i) for i in idx]

    # ------------------------------------------------------------------ figures
    def plot_dfms(self, ax=None):
        """The DFMs, one row per DFM size (:func:`fslib.plot.dfm_grid`)."""
        rows = {f"top {100 * t:g} %": self.analysis.saved.dfms[t] for t in self.tops}
        return plot.dfm_grid(rows, ax=ax, class_names=self.class_names)

    def plot_loss_maps(self, ax=None):
        """The maps the DFMs were cut from (:func:`fslib.plot.loss_map_grid`, symmetric-log scale)."""
        return plot.loss_map_grid(self.loss_maps, ax=ax, class_names=self.class_names, symlog=True)

    def plot_rates(self, ax=None):
        """TPR and FPR per class with intervals and the null at :attr:`top` (:func:`fslib.plot.tpr_fpr_bars`)."""
        return plot.tpr_fpr_bars(self.table, ax=ax, class_names=self.class_names, paper_tpr=self.config.paper_tpr)

    def plot_thresholds(self, ax=None):
        """TPR, FPR and null against the DFM size (:func:`fslib.plot.tpr_vs_threshold`)."""
        return plot.tpr_vs_threshold(self.sweep, ax=ax, class_names=self.class_names, paper_tpr=self.config.paper_tpr)

    def examples(self, classes: Sequence[int] | None = None) -> dict:
        """Scoring images with their class's DFM and the filtered image (:func:`fslib.dfm.example_filtered`):
        by default the three classes with the highest TPR and the one with the lowest."""
        if classes is None:
            order = self.table.sort_values("tpr", ascending=False, kind="stable")["class"].tolist()
            classes = list(dict.fromkeys(order[:3] + order[-1:]))
        score = self.analysis.score
        return dfm.example_filtered(self.subject, self.images.images[score], self.images.labels[score], self.dfms,
                                    list(classes), class_names=self.class_names, seed=self.config.seed)

    def plot_examples(self, classes: Sequence[int] | None = None, ax=None):
        """:meth:`examples` drawn with :func:`fslib.plot.dfm_examples` (Fig. 1 style)."""
        return plot.dfm_examples(self.examples(classes), ax=ax)

    def save(self, out, *, overwrite: bool = False, provenance: dict | None = None):
        """Write the result folder (:func:`fslib.shortcuts.outputs.write_results`); returns its path."""
        return write_results(self, out, overwrite=overwrite, provenance=provenance)


def estimate(model: nn.Module | Analysable, images: LabeledImages | torch.Tensor, labels: torch.Tensor | None = None,
             *, n_rank: int, n_score: int = 0, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             class_names: Sequence[str] | None = None, tops: float | Sequence[float] | None = None,
             config: dfm.DFMConfig | None = None, same_images: bool = False, batch_size: int | None = None,
             device: str | torch.device = "auto", probe: bool = True) -> CostEstimate:
    """What :func:`analyse` with the same arguments will cost (forward passes and seconds)."""
    imgs, subject, config, _ = _prepare(model, images, labels, mean, std, class_names, config, tops)
    return _estimate(subject, imgs.images, imgs.labels, n_rank=n_rank, n_score=n_score, config=config,
                     same_images=same_images, batch_size=batch_size, device=device, probe=probe)


def analyse(model: nn.Module | Analysable, images: LabeledImages | torch.Tensor, labels: torch.Tensor | None = None,
            *, n_rank: int, n_score: int = 0, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            class_names: Sequence[str] | None = None, tops: float | Sequence[float] | None = None,
            config: dfm.DFMConfig | None = None, same_images: bool = False, batch_size: int | None = None,
            device: str | torch.device = "auto", progress: bool = True) -> ShortcutResult:
    """Frequency shortcuts of any classifier: DFMs ranked on some images, tested on others.

    Parameters
    ----------
    model : nn.Module mapping normalised ``(N, C, H, W)`` input to logits ``(N, num_classes)``
        (then give ``mean`` and ``std``), or an :class:`fslib.inference.Analysable` such as a
        book run (:class:`fslib.runs.Run`) or a :class:`fslib.inference.Classifier`
    images : LabeledImages (e.g. :func:`fslib.data.load_folder`, :func:`fslib.data.load`), or
        a uint8 tensor ``(N, C, H, W)`` with ``labels`` ``(N,)``; every class needs images
    n_rank, n_score : int, ranking and scoring images (class-balanced, disjoint)
    mean, std : the model's input normalisation, one value per channel (plain modules only)
    class_names : names in label order (default: ``images.classes``)
    tops : DFM size(s) to test, as fractions of the frequencies (the first one is the
        headline; each costs one shortcut test); default ``config.top`` (0.05, the paper's 5 %)
    config : DFMConfig (search method, patch size, null, bootstrap, seed, verdict bounds)
    same_images : score on the ranking images (the official protocol; warns that this
        inflates the TPR); ``n_score`` must then be 0
    batch_size, device, progress : as in :func:`fslib.dfm.ablation_loss`

    Returns
    -------
    ShortcutResult

    The ranking is cached under the model's weights, the images and the settings
    (:func:`fslib.dfm.run_dfms`) and checkpointed: an interrupted call resumes where it
    stopped, and a repeated one returns at once.
    """
    start = time.perf_counter()
    imgs, subject, config, tops = _prepare(model, images, labels, mean, std, class_names, config, tops)
    a = dfm.shortcut_analysis(subject, imgs.images, imgs.labels, n_rank=n_rank, n_score=n_score, config=config,
                              same_images=same_images, batch_size=batch_size, device=device, progress=progress)
    score = a.score
    sweep = dfm.shortcut_test_sweep(subject, imgs.images[score], imgs.labels[score], {t: a.saved.dfms[t] for t in tops},
                                    config=config, batch_size=batch_size, device=device, progress=progress)
    names = list(subject.class_names)
    sweep.insert(2, "name", [names[int(c)] for c in sweep["class"]])
    verdicts = pd.concat([report.class_verdicts(part, config.paper_tpr, config.max_fpr) for _, part in sweep.groupby(
        "top", sort=False)])
    sweep.insert(3, "verdict", verdicts.loc[sweep.index].to_numpy())
    return ShortcutResult(subject, imgs, a, sweep, config, same_images, time.perf_counter() - start)
