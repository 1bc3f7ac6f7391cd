"""Datasets by name: every dataset the book uses loads the same way.

``load(name, split)`` returns a :class:`LabeledImages` of uint8 images. Synthetic sets
(``syn_b1``..``syn_b4``) come from :mod:`fslib.synthetic`; natural-image sets are decoded
once into a cache of uint8 arrays and memory-mapped on every later load.

Where the images come from, in this order (the first that applies is used, and
``LabeledImages.source`` says which):

1. a folder given with ``root=`` or the dataset's environment variable
   (``FSLIB_IMAGENET10``, ``FSLIB_IMAGENET_SCT``, ``FSLIB_CUE_CONFLICT``);
2. the archive ``$FSLIB_DATA/<file>`` (see ``data/README.md``), checked against its sha256;
3. the official download through torchvision, only when asked for with ``download=True`` or
   ``FSLIB_DOWNLOAD=1`` (CIFAR-10 and Imagenette).

Nothing else: a missing or corrupt source raises :class:`DatasetNotFound` or
:class:`ArchiveCorrupt`, never a quiet switch to another source or dataset.

Modules: :mod:`~fslib.data.registry` (what datasets exist), :mod:`~fslib.data.sources`
(where their files come from), :mod:`~fslib.data.layouts` (how the files are laid out) and
:mod:`~fslib.data.cache` (the prepared arrays); :mod:`~fslib.data.folder` reads a user's own
ImageFolder (:func:`load_folder`) and writes one (:func:`write_folder`).
"""

from __future__ import annotations

import os
from pathlib import Path

from fslib.data.cache import PREP_VERSION, _locate, _open_cache, _prepare_split, balanced_subset
from fslib.data.registry import (
    CUE_SUBFOLDERS,
    DATASETS,
    EXPECTED_SHA256,
    IMAGE_RESOLUTIONS,
    RESIZE,
    _SYN,
    DatasetSpec,
    _check_args,
    _options,
    _spec,
)
from fslib.data.folder import (
    IMAGE_EXTENSIONS,
    BadImages,
    FolderListing,
    load_folder,
    read_image,
    scan_folder,
    write_folder,
)
from fslib.data.sources import _open_source
from fslib.images import ArchiveCorrupt, DataError, DatasetNotFound, LabeledImages
from fslib.paths import data_root
from fslib import synthetic

__all__ = [
    "DATASETS", "EXPECTED_SHA256", "IMAGE_RESOLUTIONS", "RESIZE", "CUE_SUBFOLDERS", "PREP_VERSION", "DatasetSpec",
    "LabeledImages", "DataError", "DatasetNotFound", "ArchiveCorrupt",
    "load", "prepare", "status", "format_status", "balanced_subset",
    "IMAGE_EXTENSIONS", "BadImages", "FolderListing", "scan_folder", "load_folder", "read_image", "write_folder",
]


def load(name: str, split: str | None = None, *, n: int | None = None, resolution: int | None = None,
         seed: int = 0, progress: bool = True, root: str | os.PathLike | None = None,
         download: bool | None = None, all_classes: bool = False) -> LabeledImages:
    """Load a dataset by registry name, preparing its cache on first use.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`: ``syn_b1``..``syn_b4`` (from :mod:`fslib.synthetic`),
        ``cifar10``, ``imagenette``, ``imagenet10``, ``imagenet10_samples``, ``cue_conflict``,
        ``edges``, ``silhouettes``, ``imagenet_sct``.
    split : str, optional
        ``"train"`` or ``"test"`` (``"test"`` is ImageNet's ``val/`` folder); ``None`` means
        ``"train"``, or ``"test"`` for the test-only sets.
    n : int, optional
        Keep a class-balanced subset of ``n`` images chosen with ``seed``
        (:func:`balanced_subset`); ``None`` keeps all.
    resolution : int, optional
        Square size for the 224-px datasets (:data:`IMAGE_RESOLUTIONS`), applied once at
        preparation (squash, no crop, PIL bilinear with antialiasing). CIFAR-10: 32 only.
    seed : int
    progress : bool
        tqdm bar while preparing.
    root : path, optional
        Folder source for ``imagenet10``, ``imagenet_sct`` and the stimuli (overrides
        ``FSLIB_IMAGENET10`` / ``FSLIB_IMAGENET_SCT`` / ``FSLIB_CUE_CONFLICT``).
    download : bool, optional
        Allow torchvision's official download when the archive is missing (CIFAR-10,
        Imagenette); ``None`` reads ``FSLIB_DOWNLOAD``.
    all_classes : bool
        Stimuli sets: all 16 classes instead of the 7 that map onto CIFAR-10 and ImageNet-10.

    Returns
    -------
    LabeledImages
        images (N, 3, H, W) uint8, a copy-on-write memory map when ``n`` is None;
        labels (N,) int64; ``extra`` holds ``index`` (N,) positions in the full split,
        ``files`` (member names), ``order``, ``cache``, and per dataset: ``official_index``
        (torchvision CIFAR-10), ``texture_labels``, ``cifar10_labels``,
        ``imagenet10_labels``, ``cifar10_texture_labels``, ``imagenet10_texture_labels``,
        ``conflict`` (cue_conflict; -1 where a class has no counterpart), ``license``,
        ``to_cifar10``, ``to_imagenet10``, ``paired_classes`` (imagenet_sct).

    Raises
    ------
    ValueError
        Unknown name, split, resolution, or an argument the dataset does not take.
    DatasetNotFound
        The files are missing; the message says where to put them and the alternatives.
    ArchiveCorrupt
        The archive's sha256 is not the expected one.
    """
    spec = _spec(name)
    split, size = _check_args(spec, split, resolution, root, download, all_classes)
    split = split or spec.splits[0]
    if name in _SYN:
        return synthetic.load_labeled(name, split, n=n, seed=seed)
    folder = _prepare_split(spec, split, size, root, download, all_classes, progress)
    return _open_cache(folder, spec, n, seed)


def prepare(name: str, split: str | None = None, *, resolution: int | None = None, root=None,
            download: bool | None = None, all_classes: bool = False, progress: bool = True) -> list[Path]:
    """Decode a dataset into the cache (every split unless ``split`` is given).

    Arguments as in :func:`load`. Returns the cache folders; a split already prepared is
    not decoded again. Synthetic sets are generated by :mod:`fslib.synthetic` on load and
    have nothing to prepare here (ValueError).
    """
    spec = _spec(name)
    if name in _SYN:
        raise ValueError(f"{name!r} is synthetic: fslib.synthetic generates it on load, there is no archive to prepare")
    split, size = _check_args(spec, split, resolution, root, download, all_classes)
    return [_prepare_split(spec, s, size, root, download, all_classes, progress) for s in ([split] if split else spec.splits)]


def status() -> list[dict]:
    """Status of every natural-image dataset, one dict per dataset.

    Keys: ``name``; ``source`` (archive file or environment variable); ``found`` (bool);
    ``path`` (str or None); ``sha256_ok`` (True/False for an archive, None when not
    applicable or not found); ``prepared`` (list of ``"split@resolution"`` caches that
    exist for the current source, default options); ``error`` (str or None).
    """
    rows = []
    for name, spec in DATASETS.items():
        if name in _SYN:
            continue
        row = {"name": name, "source": spec.archive or spec.root_env, "found": False, "path": None,
               "sha256_ok": None, "prepared": [], "error": None}
        try:
            src = _open_source(spec, None, False)
            row.update(found=True, path=str(src.path), sha256_ok=True if src.kind == "zip" else None)
            for split in spec.splits:
                for size in spec.resolutions:
                    if (_locate(spec, src, split, size, _options(spec, False))[0] / "meta.json").exists():
                        row["prepared"].append(f"{split}@{size}")
        except ArchiveCorrupt as exc:
            row.update(found=True, path=str(data_root() / spec.archive), sha256_ok=False, error=str(exc))
        except DataError as exc:
            row["error"] = str(exc).split(". ")[0]
        rows.append(row)
    return rows


def format_status(rows: list[dict]) -> str:
    """The rows of :func:`status` as an aligned text table."""
    head = ("dataset", "found", "sha256", "prepared", "path / problem")
    table = [head] + [(
        r["name"], "yes" if r["found"] else "no",
        {True: "ok", False: "MISMATCH", None: "-"}[r["sha256_ok"]],
        ", ".join(r["prepared"]) or "-",
        (r["path"] or "") if not r["error"] else (r["path"] + ": " if r["path"] else "") + r["error"],
    ) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in table)
