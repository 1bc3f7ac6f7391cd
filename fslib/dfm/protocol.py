"""The book's shortcut protocol for any model: rank DFMs on some images, score them on others.

A *subject* is anything that satisfies :class:`fslib.inference.Analysable`: a model, its
input normalisation, its class names and a cache key. The book's trained runs
(:class:`fslib.runs.Run`) are subjects, and :class:`fslib.inference.Classifier` makes one of
any ``nn.Module``. The protocol:

* :func:`rank_score_split`: disjoint, class-balanced ranking and scoring images (the
  official code ranks and scores on the same images, which flatters the TPR;
  :func:`split_for` does that too when asked, with a warning);
* :func:`run_dfms`: the search method of the :class:`~fslib.dfm.DFMConfig` on the ranking
  images, thresholded at every threshold, cached under ``cache_dir("dfms")``;
* :func:`run_shortcut_test`: :func:`~fslib.dfm.evaluate_dfms` on the scoring images, cached;
* :func:`shortcut_analysis`: the three in a row; :func:`shortcut_test_sweep`: the test at
  every threshold (the paper's 1, 5, 10, 20 %).

Cached files carry digest records (:mod:`fslib.artefacts`); a damaged one is moved aside
with an :class:`~fslib.artefacts.ArtefactWarning` naming it, and computed again.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pandas as pd
import torch

from fslib import artefacts
from fslib.artefacts import ArtefactDamaged
from fslib.dfm.config import DFMConfig
from fslib.dfm.methods import METHODS
from fslib.dfm.select import dominant_frequency_maps
from fslib.dfm.shortcut_test import evaluate_dfms
from fslib.dfm.store import SavedDFMs, load_dfms, save_dfms
from fslib.inference import Analysable, eval_mode
from fslib.io import digest, stable_hash
from fslib.paths import cache_dir


def rank_score_split(labels: torch.Tensor, n_rank: int, n_score: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint class-balanced index sets: images to rank DFMs on and images to score them on.

    The official code ranks and scores on the same test images, which flatters the TPR; the
    book ranks on one part of a split and scores on another. The ranking set depends only on
    ``labels``, ``n_rank`` and ``seed`` (not on ``n_score``), so chapters that rank on the
    same number of images share the cached DFMs of :func:`run_dfms`.

    Parameters
    ----------
    labels : Tensor, shape (N,), int
    n_rank, n_score : int
        Total sizes; each is spread evenly over the classes present (the first classes get
        one more image when it does not divide).
    seed : int

    Returns
    -------
    (rank, score) : sorted int64 index tensors, disjoint.

    >>> r, s = rank_score_split(torch.tensor([0, 0, 0, 1, 1, 1]), 2, 4)
    >>> len(r), len(s), set(r.tolist()) & set(s.tolist())
    (2, 4, set())
    """
    for name, n in (("n_rank", n_rank), ("n_score", n_score)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    labels = labels.long().cpu()
    classes = torch.unique(labels).tolist()
    gen = torch.Generator().manual_seed(seed)
    per = {name: [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
           for name, n in (("rank", n_rank), ("score", n_score))}
    rank, score = [], []
    for i, c in enumerate(classes):
        idx = (labels == c).nonzero().flatten()
        need = per["rank"][i] + per["score"][i]
        if need > len(idx):
            raise ValueError(f"class {c} has {len(idx)} images, fewer than the {need} needed for "
                             f"n_rank={n_rank}, n_score={n_score}")
        idx = idx[torch.randperm(len(idx), generator=gen)]
        rank.append(idx[: per["rank"][i]])
        score.append(idx[per["rank"][i] : need])
    return torch.sort(torch.cat(rank)).values, torch.sort(torch.cat(score)).values


SAME_IMAGES_WARNING = ("ranking and scoring on the same images (the official protocol) inflates the TPR: "
                       "the DFMs are tested on the images they were chosen on")


def split_for(labels: torch.Tensor, n_rank: int, n_score: int, seed: int = 0,
              same_images: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rank_score_split`, or with ``same_images`` the ranking images twice (with a
    ``UserWarning``: :data:`SAME_IMAGES_WARNING`; ``n_score`` must then be 0)."""
    if not same_images:
        return rank_score_split(labels, n_rank, n_score, seed)
    if n_score:
        raise ValueError(f"same_images scores on the {n_rank} ranking images; n_score must be 0, got {n_score}")
    warnings.warn(SAME_IMAGES_WARNING, UserWarning, stacklevel=3)
    rank, _ = rank_score_split(labels, n_rank, 0, seed)
    return rank, rank


def _num_logits(subject: Analysable, images: torch.Tensor) -> int:
    """Number of logits of ``subject.model`` (one forward of one image), checked against its classes."""
    params = next(subject.model.parameters(), None)
    probe = subject.normalize(images[:1])
    with torch.inference_mode(), eval_mode(subject.model):
        out = subject.model(probe.to(params.device) if params is not None else probe)
    if out.ndim != 2:
        raise ValueError(f"the model returns a tensor of shape {tuple(out.shape)} for one image; "
                         "a classifier must return logits (N, num_classes)")
    names = list(subject.class_names)
    if names and len(names) != out.shape[1]:
        raise ValueError(f"the model has {out.shape[1]} outputs but {len(names)} class names were given "
                         f"({', '.join(names[:12])}{', ...' if len(names) > 12 else ''})")
    return int(out.shape[1])


def _check_uint8(images: torch.Tensor, who: str) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"{who} takes raw uint8 images (N, C, H, W) (it normalises them with subject.normalize), "
                        f"got {images.dtype} {tuple(images.shape)}")


def dfm_cache_path(subject: Analysable, images: torch.Tensor, labels: torch.Tensor,
                   config: DFMConfig = DFMConfig()) -> Path:
    """Where :func:`run_dfms` keeps the DFMs of ``subject`` ranked on ``images``:
    ``cache_dir("dfms")/<cache key>-<images digest>-<labels digest>-<method>-p<patch>-<settings hash>.npz``."""
    settings = stable_hash(config.ranking_key(), length=8)
    name = (f"{subject.cache_key}-{digest(images)}-{digest(labels.long().cpu())}-"
            f"{config.method}-p{config.patch_size}-{settings}.npz")
    return cache_dir("dfms") / name


def run_dfms(
    subject: Analysable,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    config: DFMConfig = DFMConfig(),
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> SavedDFMs:
    """Ranked maps and DFMs of a model, computed once and kept in the cache.

    The search method of ``config`` (:mod:`fslib.dfm.methods`; the paper's exact ablation
    by default) on ``subject.normalize(images)``, thresholded at every value of
    ``config.all_thresholds`` (:func:`~fslib.dfm.dominant_frequency_maps`) and saved with
    :func:`~fslib.dfm.save_dfms` at :func:`dfm_cache_path`: the key is the subject's cache
    key, a digest of the images and of the labels, and ``config.ranking_key()`` (method,
    options, patch size). The threshold is not part of the key: a threshold missing from a
    cached file is derived from its stored maps (no new ranking) and added to the file. An
    interrupted ranking resumes from a checkpoint beside the file. The batch size and device
    change only the rounding of the losses, so they are not part of the key either.

    Parameters
    ----------
    subject : fslib.inference.Analysable (a :class:`fslib.runs.Run`, a
        :class:`fslib.inference.Classifier`)
    images : Tensor, shape (N, C, H, W), uint8, the ranking images
    labels : Tensor, shape (N,), int, every class present
    config : DFMConfig
    batch_size, device, progress : as in :func:`~fslib.dfm.ablation_loss`

    Returns
    -------
    SavedDFMs: ``loss_maps`` (C, H, W) float64 (the method's scores), ``dfms`` {threshold:
    bool (C, H, W)}, ``provenance`` (subject key, image and label digests, counts, the
    config's ranking settings, thresholds, and for a file this function computed:
    ``seconds``, ``units``, ``forwards``).
    """
    _check_uint8(images, "run_dfms")
    labels = labels.long().cpu()
    thresholds = config.all_thresholds
    path = dfm_cache_path(subject, images, labels, config)
    saved = _cached(path, load_dfms)
    if saved is not None:
        missing = [t for t in thresholds if t not in saved.dfms]
        if not missing:
            return saved
        if not saved.provenance.get("masks_from_method"):
            maps = {**saved.dfms, **{t: dominant_frequency_maps(saved.loss_maps, t) for t in missing}}
            provenance = {k: v for k, v in saved.provenance.items() if k != "thresholds"}
            save_dfms(path, saved.loss_maps, maps, provenance)
            return load_dfms(path)
        thresholds = tuple(dict.fromkeys([*saved.dfms, *thresholds]))  # a method's own masks: rank again
    num_classes = _num_logits(subject, images)
    partial = path.with_name(path.stem + ".partial.npz")
    start = time.perf_counter()
    ranking = METHODS[config.method](subject.model, subject.normalize(images), labels, num_classes,
                                     config.with_(thresholds=thresholds), batch_size=batch_size, device=device,
                                     progress=progress, checkpoint=partial)
    seconds = time.perf_counter() - start
    if ranking.masks is None:
        maps = {float(t): dominant_frequency_maps(ranking.scores, t) for t in thresholds}
    else:
        maps = {float(t): ranking.masks[float(t)].bool().cpu() for t in thresholds}
    provenance = {"subject": subject.cache_key, "images": digest(images), "labels": digest(labels),
                  "n_images": len(labels), "counts": torch.bincount(labels, minlength=num_classes).tolist(),
                  **config.ranking_key(), "masks_from_method": ranking.masks is not None, "seconds": seconds,
                  **ranking.info}
    save_dfms(path, ranking.scores, maps, provenance)
    artefacts.remove(partial)
    return load_dfms(path)


def shortcut_test_path(subject: Analysable, images: torch.Tensor, labels: torch.Tensor, dfms: torch.Tensor,
                    config: DFMConfig = DFMConfig()) -> Path:
    """Where :func:`run_shortcut_test` keeps its table: ``cache_dir("dfms")/<cache key>-test-<hash>.csv``,
    the hash of digests of the images, labels and DFMs and ``config.test_key()``."""
    key = stable_hash({"images": digest(images), "labels": digest(labels.long().cpu()), "dfms": digest(dfms.bool().cpu()),
                       **config.test_key()})
    return cache_dir("dfms") / f"{subject.cache_key}-test-{key}.csv"


def run_shortcut_test(
    subject: Analysable,
    images: torch.Tensor,
    labels: torch.Tensor,
    dfms: torch.Tensor,
    *,
    config: DFMConfig = DFMConfig(),
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """:func:`~fslib.dfm.evaluate_dfms` of a model on raw images, cached as a CSV.

    The key is the subject's cache key, digests of the images, labels and DFMs, and
    ``config.test_key()`` (``n_boot``, ``n_null``, ``seed``, ``paper_tpr``); the file lives
    beside :func:`run_dfms`'s. The images are normalised with ``subject.normalize`` before
    filtering, as the official code filters the normalised model input.

    Parameters
    ----------
    subject : fslib.inference.Analysable
    images : Tensor, shape (N, C, H, W), uint8, the scoring images
    labels : Tensor, shape (N,), int
    dfms : Tensor, shape (num_classes, H, W), bool
    config : DFMConfig (its test settings)
    batch_size, device, progress : as in :func:`~fslib.dfm.evaluate_dfms`

    Returns
    -------
    DataFrame, as :func:`~fslib.dfm.evaluate_dfms`.
    """
    _check_uint8(images, "run_shortcut_test")
    labels = labels.long().cpu()
    dfms = dfms.bool().cpu()
    path = shortcut_test_path(subject, images, labels, dfms, config)
    table = _cached(path, lambda p: artefacts.load(p, lambda b: pd.read_csv(io.BytesIO(b))))
    if table is not None:
        return table
    table = evaluate_dfms(subject.model, subject.normalize(images), labels, dfms, batch_size=batch_size,
                          device=device, n_boot=config.n_boot, n_null=config.n_null, seed=config.seed,
                          paper_tpr=config.paper_tpr, progress=progress)
    artefacts.write_text(path, table.to_csv(index=False))
    return table


def _cached(path: Path, read):
    """``read(path)`` of a cached file; None when there is none, or when it is damaged (moved aside, warned)."""
    if not path.exists():
        return None
    try:
        return read(path)
    except ArtefactDamaged as exc:
        artefacts.discard(exc, path, "it is computed again.", stacklevel=4)
        return None


def shortcut_test_sweep(subject: Analysable, images: torch.Tensor, labels: torch.Tensor,
                        dfms: Mapping[float, torch.Tensor], **kwargs) -> pd.DataFrame:
    """The shortcut test at several thresholds: :func:`run_shortcut_test` for each DFM set.

    Parameters
    ----------
    subject, images, labels : as in :func:`run_shortcut_test`
    dfms : mapping threshold (e.g. 0.05) -> bool Tensor (num_classes, H, W)
    **kwargs : passed to :func:`run_shortcut_test` (config, batch_size, device, progress)

    Returns
    -------
    DataFrame, the tables stacked with a ``top`` column first.
    """
    if not isinstance(dfms, Mapping) or not dfms:
        raise ValueError("dfms must be a non-empty mapping {threshold: (C, H, W) bool tensor}")
    tables = []
    for top in sorted(dfms):
        t = run_shortcut_test(subject, images, labels, dfms[top], **kwargs)
        t.insert(0, "top", float(top))
        tables.append(t)
    return pd.concat(tables, ignore_index=True)


@dataclass(frozen=True)
class ShortcutAnalysis:
    """What :func:`shortcut_analysis` returns.

    Attributes
    ----------
    rank, score : Tensor, int64, indices of the ranking and the scoring images
    saved : SavedDFMs, the ranked maps and the DFMs at every threshold (from :func:`run_dfms`)
    config : DFMConfig, the settings (``config.top`` is the threshold of ``dfms`` and ``table``)
    table : DataFrame, :func:`run_shortcut_test` of the ``config.top`` DFMs on the scoring images
    """

    rank: torch.Tensor
    score: torch.Tensor
    saved: SavedDFMs
    config: DFMConfig
    table: pd.DataFrame

    @property
    def top(self) -> float:
        """The threshold of ``dfms`` and ``table``."""
        return float(self.config.top)

    @property
    def dfms(self) -> torch.Tensor:
        """The DFMs at ``top``, bool ``(num_classes, H, W)``."""
        return self.saved.dfms[self.top]


def shortcut_analysis(
    subject: Analysable,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    n_rank: int,
    n_score: int,
    config: DFMConfig = DFMConfig(),
    same_images: bool = False,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> ShortcutAnalysis:
    """The book's protocol for one model: rank DFMs on some images, score them on others.

    :func:`rank_score_split` draws ``n_rank`` ranking and ``n_score`` disjoint scoring
    images (class-balanced, ``config.seed``); :func:`run_dfms` ranks the frequencies on the
    first and :func:`run_shortcut_test` tests the ``config.top`` DFMs on the second. Both
    are cached.

    Parameters
    ----------
    subject : fslib.inference.Analysable
    images : Tensor, shape (N, C, H, W), uint8; labels : Tensor, shape (N,), int
    n_rank, n_score : int, numbers of ranking and scoring images
    config : DFMConfig
    same_images : bool
        Score on the ranking images, as the official code does (``n_score`` must then be
        0): a ``UserWarning`` says that this inflates the TPR (chapter 4 measures by how much).
    batch_size, device, progress : as in :func:`~fslib.dfm.ablation_loss`

    Returns
    -------
    ShortcutAnalysis
    """
    rank, score = split_for(labels, n_rank, n_score, config.seed, same_images)
    saved = run_dfms(subject, images[rank], labels[rank], config=config, batch_size=batch_size, device=device,
                     progress=progress)
    table = run_shortcut_test(subject, images[score], labels[score], saved.dfms[float(config.top)], config=config,
                              batch_size=batch_size, device=device, progress=progress)
    return ShortcutAnalysis(rank, score, saved, config, table)
