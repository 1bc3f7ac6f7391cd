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

The cache lives in ``fslib.paths.cache_dir("prepared")/<name>-<split>-<resolution>-<key>/``
(``images.npy`` (N, 3, H, W) uint8, ``labels.npy``, ``extra.npz``, ``meta.json``), keyed by
the source's checksum (or a folder's file list) and the preparation arguments. It is written
into a temporary folder and renamed into place, so an interrupted preparation leaves no half
cache behind.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fslib import constants as K
from fslib.io import load_npz, read_json, save_npz, sha256_file, stable_hash, write_json
from fslib.paths import cache_dir, data_root

PREP_VERSION = 1  # bump when decoding or resizing changes: old caches are then ignored


@dataclass(frozen=True)
class LabeledImages:
    """A labelled image set held in memory.

    Attributes
    ----------
    images : Tensor, shape (N, 3, H, W), uint8
    labels : Tensor, shape (N,), int64
    classes : tuple of str, class names in label order
    name : str, registry name of the dataset (e.g. ``"cifar10"``)
    split : str
    source : str, where the images came from (e.g. ``"cifar10_jpeg.zip (JPEG q75)"``)
    extra : dict, dataset-specific fields (e.g. texture labels of the cue-conflict stimuli)
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    split: str
    source: str
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class DataError(Exception):
    """Base class of the data layer's errors."""


class DatasetNotFound(DataError, FileNotFoundError):
    """A dataset's files are not where fslib looked; the message says where to put them."""


class ArchiveCorrupt(DataError, ValueError):
    """An archive does not have the expected sha256 (truncated, corrupt or another file)."""


# sha256 of the official archive files (data/README.md, data/manifest.json). Tests replace
# entries with the checksums of their fixture zips; the check itself is never skipped.
EXPECTED_SHA256: dict[str, str] = {
    "cifar10_jpeg.zip": "1f246f18ee1c4b008b72b11e5d912c2b6a325d41b34a6c0136bab1e640200198",
    "imagenette_224.zip": "02b1947aabf7b995c739739ea4a328b9df8cfeba0fdb0de6d9545e7e3b645945",
    "in10_one_per_class.zip": "136cc7f6065c3f3c41fc5a2944aa9e7a61a2209a308d5b83d9fca772535cdba4",
    "cue_conflict7.zip": "7814665506503dafc1a55f292e07781b78ee4f33d26d19e2d88fc80f058df31f",
}

IMAGE_RESOLUTIONS = (32, 64, 112, 224)  # square sizes offered for the 224-px datasets
RESIZE = "PIL bilinear, antialiased"      # how every resize is done (as torchvision's Resize)
CUE_SUBFOLDERS = {"cue_conflict": "style-transfer-preprocessed-512", "edges": "edges", "silhouettes": "filled-silhouettes"}


@dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows about one dataset."""

    name: str
    classes: tuple[str, ...]
    splits: tuple[str, ...] = ("train", "test")
    archive: str | None = None           # file name in $FSLIB_DATA
    root_env: str | None = None          # environment variable naming a folder source
    download: bool = False               # torchvision can fetch the official files
    resolutions: tuple[int, ...] = IMAGE_RESOLUTIONS
    native: int = 224                    # resolution when none is given
    license: str = ""


_SYN = {f"syn_b{k}": DatasetSpec(f"syn_b{k}", K.SYNTHETIC_CLASSES, resolutions=(32,), native=32) for k in (1, 2, 3, 4)}
_CUE_KW = dict(classes=K.CUE_CONFLICT_CLASSES, splits=("test",), archive="cue_conflict7.zip",
               root_env="FSLIB_CUE_CONFLICT", license=K.CUE_CONFLICT_LICENSE)
_IMAGENET_TERMS = "ImageNet terms of access (non-commercial research and education)"
DATASETS: dict[str, DatasetSpec] = {
    **_SYN,
    "cifar10": DatasetSpec("cifar10", K.CIFAR10_CLASSES, archive="cifar10_jpeg.zip", download=True,
                           resolutions=(32,), native=32, license="no formal licence (research use)"),
    "imagenette": DatasetSpec("imagenette", K.IMAGENETTE_CLASSES, archive="imagenette_224.zip",
                              download=True, license=_IMAGENET_TERMS),
    "imagenet10": DatasetSpec("imagenet10", K.IMAGENET10_CLASSES, root_env="FSLIB_IMAGENET10", license=_IMAGENET_TERMS),
    "imagenet10_samples": DatasetSpec("imagenet10_samples", K.IMAGENET10_CLASSES, splits=("test",),
                                      archive="in10_one_per_class.zip", license=_IMAGENET_TERMS),
    "cue_conflict": DatasetSpec("cue_conflict", **_CUE_KW),
    "edges": DatasetSpec("edges", **_CUE_KW),
    "silhouettes": DatasetSpec("silhouettes", **_CUE_KW),
    "imagenet_sct": DatasetSpec("imagenet_sct", K.IMAGENET_SCT_CLASSES, splits=("test",),
                                root_env="FSLIB_IMAGENET_SCT", license="built by Wang et al.; ImageNet-derived"),
}


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]


# --------------------------------------------------------------------------- decoding


def _decode(data: bytes, size: int) -> tuple[np.ndarray, bool]:
    """Decode one encoded image to RGB and squash it to ``size`` x ``size`` (no crop).

    Returns
    -------
    image : ndarray, shape (size, size, 3), uint8
    resized : bool, whether the image had another size
    """
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        # DCT-domain reduction for large photos, stopping at twice the target so that the
        # final antialiased resize still does the last step (as for every other image).
        img.draft(None, (2 * size, 2 * size))
    resized = img.size != (size, size)
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img), resized


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


_IMAGE_EXT = (".jpg", ".jpeg", ".png")


class _ZipReader:
    """Members of an uncompressed zip, indexed by their folder."""

    def __init__(self, path: Path):
        self.path = path
        self._zip: zipfile.ZipFile | None = None  # opened on first use: a cached load never reads it
        self._index: dict[str, list[str]] = {}

    def _open(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as exc:
                raise ArchiveCorrupt(f"{self.path} is not a readable zip ({exc})") from None
            for info in self._zip.infolist():
                if not info.is_dir():
                    parent = info.filename.rpartition("/")[0]
                    self._index.setdefault(parent + "/" if parent else "", []).append(info.filename)
        return self._zip

    def list(self, folder: str) -> list[str]:
        self._open()
        return self._index.get(folder, [])

    def read(self, name: str) -> bytes:
        return self._open().read(name)

    def where(self, folder: str) -> str:
        return f"{self.path} (member folder {folder or '/'})"


class _DirReader:
    """Files of a folder tree, same interface as :class:`_ZipReader`."""

    def __init__(self, path: Path):
        self.path = path

    def list(self, folder: str) -> list[str]:
        d = self.path / folder
        if not d.is_dir():
            return []
        return [folder + e.name for e in os.scandir(d) if e.is_file() and not e.name.startswith(".")]

    def dirs(self, folder: str) -> list[str]:
        d = self.path / folder
        return sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith(".")) if d.is_dir() else []

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def where(self, folder: str) -> str:
        return str(self.path / folder)

    def fingerprint(self, items: list[str]) -> str:
        return stable_hash([[i, (self.path / i).stat().st_size] for i in items])


# --------------------------------------------------------------------------- listing


@dataclass
class _Plan:
    """What to decode: member names in output order, their labels and per-image extras."""

    items: list[str]
    labels: np.ndarray                                   # (N,) int64
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # per-image int64 extras
    order: str = "class-major: label order, then file name order"
    info: dict = field(default_factory=dict)            # dataset-level extras (JSON)


def _collect(reader, groups: list[tuple[str, int]], name: str) -> _Plan:
    """Image files of each (folder, label) group, natural-sorted within a group."""
    items, labels = [], []
    for folder, label in groups:
        files = sorted((f for f in reader.list(folder) if f.lower().endswith(_IMAGE_EXT)), key=_natural_key)
        if not files:
            raise DatasetNotFound(f"dataset {name!r}: no images in {reader.where(folder)}")
        items += files
        labels += [label] * len(files)
    return _Plan(items, np.asarray(labels, dtype=np.int64))


def _plan_cifar10(reader, split: str, opts: dict) -> _Plan:
    plan = _collect(reader, [(f"{split}/{c}/", i) for i, c in enumerate(K.CIFAR10_CLASSES)], "cifar10")
    plan.order = ("class-major: label order, then NNNN.jpg; within a class the official order "
                  "(verified for the test split against the first 20 official test images)")
    return plan


def _plan_imagenette(reader, split: str, opts: dict) -> _Plan:
    folder = "train" if split == "train" else "val"
    return _collect(reader, [(f"{folder}/{w}/", i) for i, w in enumerate(K.IMAGENETTE_WNIDS)], "imagenette")


def _plan_imagenet10(reader, split: str, opts: dict) -> _Plan:
    folder = "train" if split == "train" else "val"
    plan = _collect(reader, [(f"{folder}/{w}/", i) for i, w in enumerate(K.IMAGENET10_WNIDS)], "imagenet10")
    plan.order = "class-major in the paper's index order (not sorted-WNID order), then file name"
    return plan


def _plan_samples(reader, split: str, opts: dict) -> _Plan:
    items = []
    for wnid in K.IMAGENET10_WNIDS:
        found = [f for f in reader.list("") if f.startswith(wnid + "_")]
        if len(found) != 1:
            raise DatasetNotFound(f"dataset 'imagenet10_samples': expected one {wnid}_*.JPEG in {reader.where('')}, found {found}")
        items += found
    return _Plan(items, np.arange(10, dtype=np.int64), order="one image per class, paper's index order",
                 info={"excluded": "n03393912_freight_car.JPEG (the other reading of 'wagon')"})


def _map(names: list[str], table: dict[str, int]) -> np.ndarray:
    return np.asarray([table.get(n, -1) for n in names], dtype=np.int64)


def _plan_cue(reader, sub: str, name: str, all_classes: bool) -> _Plan:
    chosen = K.CUE_CONFLICT_CLASSES if all_classes else K.CUE_CONFLICT_MAPPED
    plan = _collect(reader, [(f"stimuli/{sub}/{c}/", K.CUE_CONFLICT_CLASSES.index(c)) for c in chosen], name)
    shapes = [K.CUE_CONFLICT_CLASSES[i] for i in plan.labels]
    plan.arrays = {"cifar10_labels": _map(shapes, K.CUE_CONFLICT_TO_CIFAR10),
                   "imagenet10_labels": _map(shapes, K.CUE_CONFLICT_TO_IMAGENET10)}
    if name == "cue_conflict":
        textures = []
        for item in plan.items:
            m = re.fullmatch(r"([a-z]+)\d+-([a-z]+)\d+\.png", item.rsplit("/", 1)[-1])
            if m is None or m.group(2) not in K.CUE_CONFLICT_CLASSES:
                raise ArchiveCorrupt(f"cue_conflict: file name {item!r} is not <shape>N-<texture>M.png with a known class")
            textures.append(m.group(2))
        plan.arrays.update(
            texture_labels=np.asarray([K.CUE_CONFLICT_CLASSES.index(t) for t in textures], dtype=np.int64),
            cifar10_texture_labels=_map(textures, K.CUE_CONFLICT_TO_CIFAR10),
            imagenet10_texture_labels=_map(textures, K.CUE_CONFLICT_TO_IMAGENET10),
            # Geirhos et al. leave stimuli whose texture is their own shape out of shape bias
            conflict=np.asarray([s != t for s, t in zip(shapes, textures)], dtype=np.int64),
        )
    plan.info = {"license": K.CUE_CONFLICT_LICENSE, "to_cifar10": K.CUE_CONFLICT_TO_CIFAR10,
                 "to_imagenet10": K.CUE_CONFLICT_TO_IMAGENET10}
    return plan


def _sct_label(folder: str) -> int | None:
    key = re.sub(r"[_\-\s]+", " ", folder).strip().lower()
    names = [c.lower() for c in K.IMAGENET_SCT_CLASSES]
    if key in names:
        return names.index(key)
    return K.IMAGENET10_WNIDS.index(folder) if folder in K.IMAGENET10_WNIDS else None


def _plan_sct(reader, split: str, opts: dict) -> _Plan:
    folders = reader.dirs("")
    labels = {f: _sct_label(f) for f in folders}
    unknown = [f for f, lab in labels.items() if lab is None]
    missing = [c for i, c in enumerate(K.IMAGENET_SCT_CLASSES) if i not in labels.values()]
    expected = ", ".join(c.replace(" ", "_") for c in K.IMAGENET_SCT_CLASSES)
    if unknown or missing or len(set(labels.values())) != len(labels):
        raise DatasetNotFound(
            f"dataset 'imagenet_sct': {reader.path} must hold one folder per class named {expected} "
            f"(or the paired ImageNet-10 WNIDs); unknown folders: {unknown}, missing classes: {missing}")
    plan = _collect(reader, sorted(((f + "/", lab) for f, lab in labels.items()), key=lambda g: g[1]), "imagenet_sct")
    plan.arrays = {"imagenet10_labels": plan.labels.copy()}
    plan.info = {"paired_classes": K.IMAGENET10_CLASSES}
    plan.order = "class-major in the paper's pairing order (index i pairs with ImageNet-10 class i)"
    return plan


def _plan(name: str, reader, split: str, opts: dict) -> _Plan:
    if name in CUE_SUBFOLDERS:
        return _plan_cue(reader, CUE_SUBFOLDERS[name], name, opts["all_classes"])
    return {"cifar10": _plan_cifar10, "imagenette": _plan_imagenette, "imagenet10": _plan_imagenet10,
            "imagenet10_samples": _plan_samples, "imagenet_sct": _plan_sct}[name](reader, split, opts)


# --------------------------------------------------------------------------- sources


def _download_enabled(download: bool | None) -> bool:
    if download is not None:
        return bool(download)
    value = os.environ.get("FSLIB_DOWNLOAD", "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"FSLIB_DOWNLOAD={value!r}; valid: 1, true, yes, 0, false, no or unset")


def _verified_sha256(path: Path) -> str:
    """sha256 of ``path``, checked against :data:`EXPECTED_SHA256`.

    The digest is remembered per (path, size, mtime) in the cache, so an unchanged file is
    hashed once; the comparison with the expected value happens on every call.
    """
    record_file = cache_dir("prepared") / "verified_sha256.json"
    records = read_json(record_file) if record_file.exists() else {}
    st = path.stat()
    rec = records.get(str(path))
    if rec and rec["size"] == st.st_size and rec["mtime_ns"] == st.st_mtime_ns:
        actual = rec["sha256"]
    else:
        actual = sha256_file(path)
        records[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": actual}
        write_json(record_file, records)
    expected = EXPECTED_SHA256[path.name]
    if actual != expected:
        raise ArchiveCorrupt(
            f"{path} is corrupt, truncated or another file: its sha256 is {actual}, expected {expected} "
            f"({st.st_size} bytes). Replace it with the original archive (data/README.md).")
    return actual


def _folder_root(spec: DatasetSpec, root: str | os.PathLike | None) -> Path | None:
    value = root if root is not None else os.environ.get(spec.root_env or "", "") or None
    return Path(value).expanduser().resolve() if value is not None else None


def _not_found(spec: DatasetSpec, looked: str) -> DatasetNotFound:
    env = os.environ.get("FSLIB_DATA")
    lines = [f"dataset {spec.name!r} not found: looked for {looked}."]
    if spec.archive:
        lines.append(f"Put {spec.archive} (sha256 {EXPECTED_SHA256[spec.archive]}) in {data_root()}, or set "
                     f"FSLIB_DATA to the folder that holds it (FSLIB_DATA is {repr(env) if env else 'not set'}).")
    if spec.download:
        lines.append(f"Or download the official files with torchvision: fslib.data.load({spec.name!r}, download=True) "
                     f"or FSLIB_DOWNLOAD=1 (saved under {data_root() / 'torchvision'}).")
    if spec.name in ("imagenet10", "imagenet_sct"):
        layout = ("<root>/train/<wnid>/ and <root>/val/<wnid>/ for the WNIDs " + " ".join(K.IMAGENET10_WNIDS)
                  if spec.name == "imagenet10" else
                  "<root>/<class>/ for " + ", ".join(c.replace(" ", "_") for c in K.IMAGENET_SCT_CLASSES))
        lines.append(f"Pass root=<folder> or set {spec.root_env}; expected layout: {layout}.")
        lines.append("There is no automatic download: ImageNet needs an account at image-net.org."
                     if spec.name == "imagenet10" else
                     "There is no public download here: ImageNet-SCT was built by Wang et al. (official repository "
                     "github.com/nis-research/nn-frequency-shortcuts).")
    if spec.root_env == "FSLIB_CUE_CONFLICT":
        lines.append("Or pass root=<checkout> / set FSLIB_CUE_CONFLICT to a checkout of "
                     "github.com/rgeirhos/texture-vs-shape (the folder that holds stimuli/).")
    return DatasetNotFound(" ".join(lines))


@dataclass(frozen=True)
class _Source:
    kind: str                 # "zip", "folder" or "torchvision"
    path: Path | None
    reader: Any               # _ZipReader / _DirReader, None for torchvision CIFAR-10
    description: str
    source_id: str = ""       # verified sha256 of an archive / torchvision md5; "" for folders


def _open_source(spec: DatasetSpec, root, download: bool | None) -> _Source:
    folder = _folder_root(spec, root) if spec.root_env else None
    if folder is not None:
        if not folder.is_dir():
            raise _not_found(spec, f"the folder {folder}")
        what = {"imagenet10": "ImageNet folder", "imagenet_sct": "ImageNet-SCT folder"}.get(spec.name, "texture-vs-shape folder")
        return _Source("folder", folder, _DirReader(folder), f"{what} {folder}")
    if spec.archive:
        path = data_root() / spec.archive
        if path.is_file():
            sha = _verified_sha256(path)
            note = {"cifar10": " (JPEG q75, 4:2:0)", "imagenette": " (squashed to 224x224, JPEG q75)",
                    "imagenet10_samples": " (full-resolution ImageNet JPEG)"}.get(spec.name, " (PNG, CC BY 4.0)")
            return _Source("zip", path, _ZipReader(path), spec.archive + note, "sha256:" + sha)
        if spec.download and _download_enabled(download):
            return _torchvision_source(spec)
        raise _not_found(spec, str(path))
    raise _not_found(spec, f"a folder (root=None and {spec.root_env} is not set)")


def _torchvision_source(spec: DatasetSpec) -> _Source:
    """Official files through torchvision (needs internet the first time)."""
    root = data_root() / "torchvision"
    if spec.name == "cifar10":
        from torchvision.datasets import CIFAR10

        return _Source("torchvision", root, None, "torchvision CIFAR10 (lossless, official python batches)",
                       "torchvision-cifar10-md5:" + CIFAR10.tgz_md5)
    from torchvision.datasets import Imagenette

    for split in ("train", "val"):
        Imagenette(str(root), split=split, size="full", download=True)  # checks the archive's md5
    return _Source("torchvision", root / "imagenette2", _DirReader(root / "imagenette2"),
                   "torchvision Imagenette full (imagenette2.tgz)")


def _cifar10_torchvision(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Official CIFAR-10 through ``torchvision.datasets.CIFAR10(download=True)``.

    torchvision checks the md5 of the official python batches and unpickles them itself
    (torchvision's loader on the official files; fslib never unpickles anything). The
    images are put in the same class-major order as the archive.

    Returns images (N, 3, 32, 32) uint8, labels (N,) int64, official_index (N,) int64.
    """
    from torchvision.datasets import CIFAR10

    ds = CIFAR10(str(root), train=split == "train", download=True)
    labels = np.asarray(ds.targets, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    return np.ascontiguousarray(ds.data[order].transpose(0, 3, 1, 2)), labels[order], order


# --------------------------------------------------------------------------- cache


def _clean_stale(parent: Path, stem: str) -> None:
    """Remove temporary folders left by preparations whose process has died."""
    for tmp in parent.glob(f".tmp-{stem}-*"):
        pid = tmp.name.rsplit("-", 2)[-2]
        if not pid.isdigit() or int(pid) <= 0:
            continue  # not one of ours
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (PermissionError, OverflowError):
            pass


def _write_cache(final: Path, n: int, size: int, fill: Callable[[np.ndarray], dict], labels: np.ndarray,
                 arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write a prepared dataset into a temporary folder, then rename it to ``final``."""
    _clean_stale(final.parent, final.name)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
        meta = {**meta, **fill(images)}
        images.flush()
        del images
        np.save(tmp / "labels.npy", labels.astype(np.int64))
        save_npz(tmp / "extra.npz", **arrays)
        write_json(tmp / "meta.json", meta)
        if final.exists() and not (final / "meta.json").exists():  # not written by fslib: replace it
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "meta.json").exists():  # not a concurrent preparation that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _locate(spec: DatasetSpec, src: _Source, split: str, size: int, opts: dict) -> tuple[Path, _Plan | None]:
    """Cache folder of one split (and the decoding plan when it was needed for the key)."""
    plan = None
    source_id = src.source_id
    if src.kind != "zip" and src.reader is not None:  # a folder's identity is its file list
        plan = _plan(spec.name, src.reader, split, opts)
        source_id = "files:" + src.reader.fingerprint(plan.items)
    key = stable_hash({"source": source_id, "name": spec.name, "split": split, "resolution": size,
                       "options": opts, "version": PREP_VERSION})
    return cache_dir("prepared") / f"{spec.name}-{split}-{size}-{key}", plan


def _options(spec: DatasetSpec, all_classes: bool) -> dict:
    return {"all_classes": all_classes} if spec.name in CUE_SUBFOLDERS else {}


def _prepare_split(spec: DatasetSpec, split: str, size: int, root, download, all_classes: bool,
                   progress: bool) -> Path:
    """Prepare one split if needed; returns its cache folder."""
    from tqdm.auto import tqdm

    src = _open_source(spec, root, download)
    opts = _options(spec, all_classes)
    final, plan = _locate(spec, src, split, size, opts)
    if (final / "meta.json").exists():
        return final
    meta = {"name": spec.name, "split": split, "resolution": size, "source": src.description,
            "classes": list(spec.classes), "license": spec.license, "prep_version": PREP_VERSION, "options": opts}
    if src.reader is None:  # torchvision CIFAR-10: arrays, nothing to decode
        images, labels, official = _cifar10_torchvision(src.path, split)

        def copy(out: np.ndarray) -> dict:
            out[:] = images
            return {"order": "class-major: label order, then the official order", "files": None}

        _write_cache(final, len(labels), size, copy, labels, {"official_index": official}, meta)
        return final
    plan = plan or _plan(spec.name, src.reader, split, opts)

    def fill(out: np.ndarray) -> dict:
        resized = 0
        bar = tqdm(plan.items, desc=f"prepare {spec.name}/{split} @{size}", unit="img", disable=not progress)
        for k, item in enumerate(bar):
            image, changed = _decode(src.reader.read(item), size)
            out[k] = image.transpose(2, 0, 1)
            resized += changed
        note = ("" if resized == 0 else f", squashed to {size}x{size} ({RESIZE})" if resized == len(plan.items)
                else f", {resized} of {len(plan.items)} squashed to {size}x{size} ({RESIZE})")
        return {"source": src.description + note, "resized": resized, "order": plan.order,
                "files": plan.items, "info": plan.info}

    _write_cache(final, len(plan.items), size, fill, plan.labels, plan.arrays, meta)
    return final


# --------------------------------------------------------------------------- public API


def balanced_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of a deterministic class-balanced subset of ``n`` images.

    Every class present in ``labels`` gets ``n // C`` images, and ``n % C`` classes chosen
    by the seed get one more. For a fixed seed the subsets are nested: a smaller ``n``
    picks a subset of a larger one.

    Parameters
    ----------
    labels : ndarray, shape (N,), int
    n : int, 1 <= n <= N
    seed : int

    Returns
    -------
    ndarray, shape (n,), int64, sorted (dataset order is kept)
    """
    labels = np.asarray(labels)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(labels):
        raise ValueError(f"n={n!r}: must be an integer in 1..{len(labels)} (the size of the set)")
    present, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    quota = np.full(len(present), n // len(present))
    quota[rng.permutation(len(present))[: n % len(present)]] += 1
    short = [(int(c), int(q), int(m)) for c, q, m in zip(present, quota, counts) if q > m]
    if short:
        raise ValueError(f"n={n} needs {short[0][1]} images of class {short[0][0]}, which has {short[0][2]}; "
                         f"n <= {len(present) * counts.min()} keeps every class equal")
    picks = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(present, quota)]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def _check_args(spec: DatasetSpec, split: str | None, resolution, root, download, all_classes) -> tuple[str | None, int]:
    if split is not None and split not in spec.splits:
        raise ValueError(f"split {split!r} of {spec.name!r}; valid: {', '.join(spec.splits)}")
    if resolution is not None and resolution not in spec.resolutions:
        raise ValueError(f"resolution {resolution!r} for {spec.name!r}; valid: {', '.join(map(str, spec.resolutions))} or None")
    if root is not None and spec.root_env is None:
        raise ValueError(f"{spec.name!r} does not read a folder (root=); only "
                         f"{', '.join(n for n, s in DATASETS.items() if s.root_env)} do")
    if download and not spec.download:
        raise ValueError(f"{spec.name!r} has no download; only {', '.join(n for n, s in DATASETS.items() if s.download)} do")
    if all_classes and spec.name not in CUE_SUBFOLDERS:
        raise ValueError(f"all_classes applies to {', '.join(CUE_SUBFOLDERS)}, not {spec.name!r}")
    return split, resolution or spec.native


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
        from fslib import synthetic

        return synthetic.load_labeled(name, split, n=n, seed=seed)
    folder = _prepare_split(spec, split, size, root, download, all_classes, progress)
    return _open_cache(folder, spec, n, seed)


def _open_cache(folder: Path, spec: DatasetSpec, n: int | None, seed: int) -> LabeledImages:
    meta = read_json(folder / "meta.json")
    # copy-on-write: torch gets a writable array, the cache file is never modified
    images = np.load(folder / "images.npy", mmap_mode="c", allow_pickle=False)
    labels = np.load(folder / "labels.npy", allow_pickle=False)
    arrays = load_npz(folder / "extra.npz")
    index = np.arange(len(labels), dtype=np.int64) if n is None else balanced_subset(labels, n, seed)
    if n is not None:
        images, labels = images[index], labels[index]
        arrays = {k: v[index] for k, v in arrays.items()}
    extra: dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    if "conflict" in extra:
        extra["conflict"] = extra["conflict"].bool()
    extra.update(meta.get("info", {}), index=torch.from_numpy(index), order=meta["order"], cache=str(folder))
    if meta.get("files") is not None:
        extra["files"] = tuple(meta["files"][i] for i in index)
    if spec.license:
        extra.setdefault("license", spec.license)
    return LabeledImages(images=torch.from_numpy(images), labels=torch.from_numpy(labels.astype(np.int64)),
                         classes=tuple(meta["classes"]), name=spec.name, split=meta["split"],
                         source=meta["source"], extra=extra)


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
