"""Protocol variants of the shortcut analysis: does a verdict belong to the model or to the protocol?

A shortcut verdict (claim 3, and claims 4 and 5 that read the same DFMs) is measured with one
protocol: the DFMs are ranked on a few images per class, kept at 5 % of the spectrum, made of
single frequencies, and scored on held-out images. Each of these is a choice. A
:class:`Variant` names one protocol; :data:`VARIANTS` registers the book's, and
:func:`variant_analyses` computes the DFMs and the shortcut test of each variant for one model
so that the verdicts can be compared side by side (:func:`variant_table`).

How the images are shared, so that the rows differ only by the setting they name:

* The ranking images come in class-balanced chunks of ``per_class`` images per class
  (:func:`~fslib.dfm.split_half.chunk_indices`); a variant ranks on its first ``chunks``
  chunks. Chunk 0 is the ranking set of :func:`~fslib.dfm.protocol.rank_score_split` for
  ``per_class * C`` images, the chapters' ranking set, and every chunk's ranked map is the
  cached :func:`~fslib.dfm.protocol.run_dfms` of chapter 4's split-half test. The map of
  several chunks is the mean of their maps: a loss map is a per-class mean, and every chunk
  holds as many images of each class.
* Every variant is scored on the same held-out images: the ``n_score`` images that
  :func:`~fslib.dfm.protocol.rank_score_split` places after all the chunks any variant ranks
  on. Only the official protocol scores on its own ranking images instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import pandas as pd
import torch

from fslib import report
from fslib.dfm import DFMConfig, chunk_indices, chunk_loss_maps, dominant_frequency_maps, rank_score_split, run_shortcut_test
from fslib.inference import Analysable

__all__ = ["Variant", "VARIANTS", "variant", "VariantAnalysis", "variant_analyses", "variant_table"]


@dataclass(frozen=True)
class Variant:
    """One way of ranking and scoring DFMs.

    Parameters
    ----------
    name : label of the variant in the tables
    chunks : the DFMs are ranked on this many chunks of ``per_class`` images per class
    top : share of the spectrum in a DFM; None: the analysis config's (``DFMConfig.top``)
    patch_size : side in px of a removed block of frequencies (1: single frequencies); None:
        the analysis config's
    same_images : score on the ranking images (the official code) instead of held-out ones
    """

    name: str
    chunks: int = 1
    top: float | None = None
    patch_size: int | None = None
    same_images: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a variant needs a non-empty name, got {self.name!r}")
        if isinstance(self.chunks, bool) or not isinstance(self.chunks, int) or self.chunks < 1:
            raise ValueError(f"variant {self.name!r}: chunks must be an int >= 1, got {self.chunks!r}")
        DFMConfig(top=0.05 if self.top is None else self.top,  # checks top and patch_size where set
                  patch_size=1 if self.patch_size is None else self.patch_size)

    def resolved(self, config: DFMConfig) -> "Variant":
        """This variant with ``top`` and ``patch_size`` taken from ``config`` where they are None."""
        return replace(self, top=config.top if self.top is None else self.top,
                       patch_size=config.patch_size if self.patch_size is None else self.patch_size)

    def describe(self, per_class: int, n_score: int) -> dict[str, object]:
        """The settings as table cells: ranking images per class, scoring images, DFM size, block
        (of a :meth:`resolved` variant)."""
        return {"ranked on (per class)": self.chunks * per_class,
                "scored on": "the ranking images" if self.same_images else f"{n_score} held-out images",
                "DFM size": f"{self.top:.0%}", "block (px)": self.patch_size}


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("book"),                                    # the chapter's protocol: 1 chunk, its DFM size and block, held out
    Variant("official protocol", same_images=True),     # official code: scored on the ranking images
    Variant("2x ranking images", chunks=2),             # more images per class: a more stable DFM (chapter 4)
    Variant("4x ranking images", chunks=4),
    Variant("8x ranking images", chunks=8),
    Variant("DFM of 10 %", top=0.10),                   # the official code also saves 1, 10 and 20 % DFMs
    Variant("2x2 blocks", patch_size=2),                # coarser frequency resolution: the paper's likely unit at 224 px
)}
"""The protocol variants the book compares; :func:`variant` resolves a name."""


def variant(name: str | Variant) -> Variant:
    """The registered variant ``name``, or ``name`` itself when it is a :class:`Variant`."""
    if isinstance(name, Variant):
        return name
    if name not in VARIANTS:
        raise ValueError(f"unknown protocol variant {name!r}; valid: {', '.join(VARIANTS)}")
    return VARIANTS[name]


@dataclass(frozen=True)
class VariantAnalysis:
    """One variant's DFMs and shortcut test for one model.

    Attributes
    ----------
    variant : Variant
    rank, score : Tensor, int64, indices of the ranking and the scoring images
    dfms : Tensor, bool (num_classes, H, W)
    table : DataFrame of :func:`~fslib.dfm.protocol.run_shortcut_test`, or None when not tested
    """

    variant: Variant
    rank: torch.Tensor
    score: torch.Tensor
    dfms: torch.Tensor
    table: pd.DataFrame | None


def variant_analyses(
    subject: Analysable,
    images: torch.Tensor,
    labels: torch.Tensor,
    variants: Sequence[str | Variant],
    *,
    per_class: int,
    n_score: int,
    config: DFMConfig = DFMConfig(),
    test: bool = True,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> dict[str, VariantAnalysis]:
    """The DFMs and the shortcut test of every variant, for one model (all cached).

    Parameters
    ----------
    subject : fslib.inference.Analysable
    images : Tensor, shape (N, C, H, W), uint8; labels : Tensor, shape (N,), int
    variants : names of :data:`VARIANTS` or :class:`Variant` objects; names must be unique
    per_class : images per class in one ranking chunk (chunk 0 is the chapters' ranking set
        when ``per_class * C`` is their ``n_rank``)
    n_score : held-out scoring images (class-balanced), the same for every variant
    config : DFMConfig; its method ranks (a method that ranks, not one that returns masks),
        its test settings (null, bootstrap, seed) score; its ``top`` and ``patch_size`` hold
        where a variant leaves them None
    test : run the shortcut test of every variant (False: ``table`` is None, for a caller
        that tests the DFMs its own way, e.g. :func:`fslib.ood.shortcut_transfer`)
    batch_size, device, progress : as in :func:`~fslib.dfm.protocol.run_dfms`

    Returns
    -------
    dict variant name -> :class:`VariantAnalysis`, in the order given.
    """
    chosen = [variant(v).resolved(config) for v in variants]
    names = [v.name for v in chosen]
    if not chosen or len(set(names)) != len(names):
        raise ValueError(f"need at least one variant and unique names, got {names}")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be an int >= 1, got {per_class!r}")
    labels = labels.long().cpu()
    n_classes = len(torch.unique(labels))
    most = max(v.chunks for v in chosen)
    chunks = chunk_indices(labels, per_class, most, seed=config.seed)
    _, held_out = rank_score_split(labels, per_class * most * n_classes, n_score, seed=config.seed)
    need: dict[int, int] = {}  # patch size -> chunks ranked with it
    for v in chosen:
        need[v.patch_size] = max(need.get(v.patch_size, 0), v.chunks)
    maps = {p: chunk_loss_maps(subject, images, labels, chunks[:k], config=config.with_(patch_size=p),
                               batch_size=batch_size, device=device, progress=progress) for p, k in need.items()}
    out = {}
    for v in chosen:
        cfg = config.with_(top=v.top, patch_size=v.patch_size)
        dfms = dominant_frequency_maps(maps[v.patch_size][: v.chunks].mean(0), v.top)
        rank = torch.sort(torch.cat(chunks[: v.chunks])).values
        score = rank if v.same_images else held_out
        table = run_shortcut_test(subject, images[score], labels[score], dfms, config=cfg, batch_size=batch_size,
                                  device=device, progress=progress) if test else None
        out[v.name] = VariantAnalysis(v, rank, score, dfms, table)
    return out


def variant_table(analyses: Mapping[str, VariantAnalysis], *, per_class: int, paper_tpr: float = 0.6,
                  max_fpr: float = 0.1, default: str | None = "book") -> pd.DataFrame:
    """One row per variant: its settings, the mean TPR / FPR, the classes that beat the null
    and the strong ones, and claim 3's verdict by :func:`fslib.report.shortcut_verdict`.

    Parameters
    ----------
    analyses : output of :func:`variant_analyses`
    per_class : as given to :func:`variant_analyses`
    paper_tpr, max_fpr : the verdict's bounds (as the chapter's)
    default : name of the chapters' variant, marked " (default)"; None marks none

    Returns
    -------
    DataFrame indexed by setting, columns: ranked on (per class), scored on, DFM size,
    block (px), mean TPR, mean FPR, beat the null, strong, verdict.
    """
    if default is not None and default not in analyses:
        raise ValueError(f"default variant {default!r} is not among {list(analyses)}")
    rows = {}
    for name, a in analyses.items():
        if a.table is None:
            raise ValueError(f"variant {name!r} was not tested (variant_analyses(..., test=False))")
        verdict, strong = report.shortcut_verdict(a.table, paper_tpr, max_fpr)
        label = f"{name} (default)" if name == default else name
        rows[label] = {**a.variant.describe(per_class, len(a.score)),
                       "mean TPR": float(a.table["tpr"].mean()), "mean FPR": float(a.table["fpr"].mean()),
                       "beat the null": int(a.table["shortcut"].astype(bool).sum()), "strong": int(strong.sum()),
                       "verdict": verdict}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "setting"
    return out
