"""Datasets by name: every dataset the book uses loads the same way.

``load(name, split)`` returns a :class:`LabeledImages` of uint8 images. Synthetic sets
(``syn_b1``..``syn_b4``) come from :mod:`fslib.synthetic`; natural-image sets are decoded
once into a cache of uint8 arrays and memory-mapped on every later load.

Where the images come from, in this order (the first that applies is used, and
``LabeledImages.source`` says which):

1. a folder given with ``root=`` or the dataset's environment variable
   (``FSLIB_IMAGENET10``, ``FSLIB_IMAGENET_SCT``, ``FSLIB_CUE_CONFLICT``);
2. the archive ``$FSLIB_DATA/<file>`` (see ``data/README.md``), checked against its sha256;
3. the official download (CIFAR-10 and Imagenette through torchvision, the texture-vs-shape
   stimuli from their GitHub repository at a pinned commit; :mod:`~fslib.data.download`),
   fetched only when asked for with ``download=True`` or ``FSLIB_DOWNLOAD=1`` and used
   without asking once it is here.

Nothing else: a missing or corrupt source raises :class:`DatasetNotFound` or
:class:`ArchiveCorrupt`, never a quiet switch to another source or dataset.

Modules: :mod:`~fslib.data.registry` (what datasets exist), :mod:`~fslib.data.sources`
(where their files come from), :mod:`~fslib.data.download` (the official downloads),
:mod:`~fslib.data.layouts` (how the files are laid out) and :mod:`~fslib.data.cache` (the
prepared arrays); :mod:`~fslib.data.folder` reads a user's own ImageFolder (:func:`load_folder`)
and writes one (:func:`write_folder`).
"""

from __future__ import annotations

import os
from pathlib import Path

from fslib.artefacts import ArtefactDamaged, ArtefactWarning
from fslib.data.cache import PREP_VERSION, _locate, _open_cache, _prepare_split, _verify_prepared, balanced_subset
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
from fslib.data.download import DownloadFailed
from fslib.data.folder import (
    IMAGE_EXTENSIONS,
    BadImages,
    FolderListing,
    load_folder,
    read_image,
    scan_folder,
    write_folder,
)
from fslib.data.sources import _download_enabled, _open_source
from fslib.images import ArchiveCorrupt, DataError, DatasetNotFound, LabeledImages, NotEnoughSpace
from fslib.paths import data_root
from fslib import synthetic
from fslib.data import skew

__all__ = [
    "DATASETS", "EXPECTED_SHA256", "IMAGE_RESOLUTIONS", "RESIZE", "CUE_SUBFOLDERS", "PREP_VERSION", "DatasetSpec",
    "LabeledImages", "DataError", "DatasetNotFound", "ArchiveCorrupt", "NotEnoughSpace", "ArtefactWarning",
    "DownloadFailed", "load", "prepare", "status", "format_status", "balanced_subset", "check_options", "skewed_test",
    "skew", "find_sources", "download_enabled",
    "IMAGE_EXTENSIONS", "BadImages", "FolderListing", "scan_folder", "load_folder", "read_image", "write_folder",
]


def check_options(name: str, options=None) -> tuple:
    """The checked settings of a dataset that takes options, as sorted ``(field, value)`` pairs.

    * a skewed set (``cifar10_skew``): every field of :class:`~fslib.data.skew.SkewConfig`,
      completed with its defaults (:func:`fslib.data.skew.resolve_options`);
    * a synthetic set (``syn_b1``..``syn_b4``): the generator's free parameters
      (:data:`fslib.synthetic.OPTIONS`) that differ from the defaults, nothing else
      (:func:`fslib.synthetic.resolve_options`): ``()`` is the default generator, so a
      default run's config and hash do not change;
    * every other dataset takes none: ``()``.

    Raises ValueError for an unknown field (naming the valid ones), a value out of its
    range (naming the range) or options given to a dataset that takes none.

    >>> check_options("cifar10"), dict(check_options("cifar10_skew"))["correlation"]
    ((), 0.95)
    >>> check_options("syn_b4", {"noise_std": 0.02}), check_options("syn_b4")
    ((('noise_std', 0.02),), ())
    """
    _spec(name)
    if name in skew.SKEWED:
        return skew.resolve_options(name, options or ())
    if name in _SYN:
        return synthetic.resolve_options(name, options or ())
    if options:
        raise ValueError(f"{name!r} takes no options (got {dict(options)}); only "
                         f"{', '.join([*skew.SKEWED, *_SYN])} do")
    return ()


def skewed_test(name: str, kind: str, *, n: int | None = None, seed: int = 0, options=None,
                progress: bool = True, download: bool | None = None) -> LabeledImages:
    """A test set of a skewed dataset: ``"clean"``, ``"aligned"`` (each image carries its own
    class's pattern) or ``"conflicting"`` (another class's); see :func:`fslib.data.skew.test_variant`.

    ``n`` and ``seed`` pick a class-balanced subset of the base test split (as :func:`load`);
    ``seed`` also draws the phases and the conflicting classes.
    """
    if name not in skew.SKEWED:
        raise ValueError(f"unknown skewed dataset {name!r}; valid: {', '.join(skew.SKEWED)}")
    base = load(skew.SKEWED[name], "test", n=n, seed=seed, progress=progress, download=download)
    return skew.test_variant(base, name, kind, check_options(name, options), seed=seed)


def load(name: str, split: str | None = None, *, n: int | None = None, resolution: int | None = None,
         seed: int = 0, progress: bool = True, root: str | os.PathLike | None = None,
         download: bool | None = None, all_classes: bool = False, options=None) -> LabeledImages:
    """Load a dataset by registry name, preparing its cache on first use.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`: ``syn_b1``..``syn_b4`` (from :mod:`fslib.synthetic`),
        ``cifar10``, ``imagenette``, ``imagenet10``, ``imagenet10_samples``, ``cue_conflict``,
        ``edges``, ``silhouettes``, ``imagenet_sct``; ``cifar10_skew`` (CIFAR-10 with a
        planted class-correlated frequency pattern, :mod:`fslib.data.skew`).
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
    options : mapping, optional
        Settings of a derived dataset (:class:`fslib.data.skew.SkewConfig` fields for the
        skewed sets) or of the synthetic generator (:data:`fslib.synthetic.OPTIONS`, e.g.
        ``{"noise_std": 0.02}``: the images come from that
        :class:`~fslib.synthetic.SyntheticConfig`); other datasets take none
        (:func:`check_options`).

    Returns
    -------
    LabeledImages
        images (N, 3, H, W) uint8, a copy-on-write memory map when ``n`` is None;
        labels (N,) int64; ``extra`` holds ``index`` (N,) positions in the full split,
        ``files`` (member names), ``order``, ``cache``, and per dataset: ``official_index``
        (torchvision CIFAR-10), ``texture_labels``, ``cifar10_labels``,
        ``imagenet10_labels``, ``cifar10_texture_labels``, ``imagenet10_texture_labels``,
        ``conflict`` (cue_conflict; -1 where a class has no counterpart), ``license``,
        ``to_cifar10``, ``to_imagenet10``, ``paired_classes`` (imagenet_sct); synthetic sets:
        :func:`fslib.synthetic.load_labeled`'s (``band``, ``seed``, ``config``, ...).

    Raises
    ------
    ValueError
        Unknown name, split, resolution, or an argument the dataset does not take.
    DatasetNotFound
        The files are missing; the message says where to put them and the alternatives.
    ArchiveCorrupt
        The archive's sha256 is not the expected one, or a member fails its zip CRC check.
    NotEnoughSpace
        The cache's disk has not enough room for the preparation (nothing is left behind).

    Notes
    -----
    A prepared cache is checked against the digests written with it; a damaged one is moved
    aside with an :class:`~fslib.artefacts.ArtefactWarning` naming the file and prepared again.
    """
    spec = _spec(name)
    split, size = _check_args(spec, split, resolution, root, download, all_classes)
    split = split or spec.splits[0]
    resolved = check_options(name, options)
    if name in skew.SKEWED:
        base = load(skew.SKEWED[name], split, n=n, seed=seed, progress=progress, download=download)
        return skew.derive_split(base, name, resolved, seed=seed)
    if name in _SYN:
        return synthetic.load_labeled(name, split, n=n, seed=seed, config=synthetic.config_of(resolved))
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
    if name in skew.SKEWED:
        raise ValueError(f"{name!r} is derived from {skew.SKEWED[name]!r} on load: prepare {skew.SKEWED[name]!r}")
    split, size = _check_args(spec, split, resolution, root, download, all_classes)
    return [_prepare_split(spec, s, size, root, download, all_classes, progress) for s in ([split] if split else spec.splits)]


def download_enabled(download: bool | None = None) -> bool:
    """Whether official downloads are allowed: ``download``, or ``FSLIB_DOWNLOAD`` when it is ``None``.

    Raises ValueError for an ``FSLIB_DOWNLOAD`` value that is not 1/true/yes/0/false/no.
    """
    return _download_enabled(download)


def find_sources(names: list[str], *, download: bool | None = None) -> dict[str, str | None]:
    """Check that every dataset in ``names`` has a source, before any of it is needed.

    A dataset whose archive or folder is missing is downloaded now when downloads are allowed
    (``download``, or ``FSLIB_DOWNLOAD`` when ``None``) and it has an official download.

    Returns
    -------
    dict
        name -> ``None`` when its source is here (or was just fetched and checked), else the
        problem: the message of :class:`DatasetNotFound`, :class:`ArchiveCorrupt` or
        :class:`DownloadFailed`. Synthetic sets need nothing.
    """
    out: dict[str, str | None] = {}
    tried: dict[str, str | None] = {}  # datasets of one archive share their source (the stimuli)
    for name in names:
        spec = _spec(skew.SKEWED.get(name, name))  # a derived set needs the source it is derived from
        if spec.name in _SYN:
            out[name] = None
            continue
        shared = spec.archive or name
        if shared in tried and tried[shared] is not None and "download" in tried[shared]:
            out[name] = tried[shared]  # a failed download is not tried again for a sibling
            continue
        try:
            _open_source(spec, None, download if spec.download else False)
            out[name] = None
        except DataError as exc:
            out[name] = str(exc)
        tried[shared] = out[name]
    return out


def status(recheck: bool = True) -> list[dict]:
    """Status of every natural-image dataset, one dict per dataset. Changes nothing.

    Keys: ``name``; ``source`` (archive file or environment variable); ``found`` (bool);
    ``path`` (str or None); ``sha256_ok`` (True/False for an archive, None when not
    applicable or not found: with ``recheck`` every archive is hashed now, about 0.4 s for
    the four archives, because bit rot keeps a file's size and mtime); ``prepared`` (list
    of ``"split@resolution"`` caches that exist for the current source, default options,
    and match their digests); ``damaged`` (the same for caches that do not: the next load
    prepares them again); ``error`` (str or None).
    """
    rows = []
    for name, spec in DATASETS.items():
        if name in _SYN or name in skew.SKEWED:
            continue
        row = {"name": name, "source": spec.archive or spec.root_env, "found": False, "path": None,
               "sha256_ok": None, "prepared": [], "damaged": [], "error": None}
        try:
            src = _open_source(spec, None, False, recheck=recheck)
            row.update(found=True, path=str(src.path), sha256_ok=True if src.kind == "zip" else None)
            for split in spec.splits:
                for size in spec.resolutions:
                    try:
                        if _verify_prepared(_locate(spec, src, split, size, _options(spec, False))[0]) is not None:
                            row["prepared"].append(f"{split}@{size}")
                    except ArtefactDamaged:
                        row["damaged"].append(f"{split}@{size}")
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
        ", ".join(r["prepared"] + [f"{d} DAMAGED (prepared again on next load)" for d in r.get("damaged", [])]) or "-",
        (r["path"] or "") if not r["error"] else (r["path"] + ": " if r["path"] else "") + r["error"],
    ) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in table)
