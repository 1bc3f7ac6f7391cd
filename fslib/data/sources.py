"""Where a dataset's files come from: a folder, a verified archive, or the official download.

In this order (the first that applies is used): a folder given with ``root=`` or the
dataset's environment variable; the archive ``$FSLIB_DATA/<file>``, checked against its
sha256; the official download through torchvision, only when asked for (``download=True``
or ``FSLIB_DOWNLOAD=1``). Nothing else: a missing or corrupt source raises
:class:`~fslib.images.DatasetNotFound` or :class:`~fslib.images.ArchiveCorrupt`.
"""

from __future__ import annotations

import os
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
import numpy as np
from fslib import constants as K
from fslib.io import read_json, sha256_file, stable_hash, write_json
from fslib.paths import cache_dir, data_root
from fslib.data.registry import DatasetSpec, EXPECTED_SHA256
from fslib.images import ArchiveCorrupt, DatasetNotFound


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
        try:
            return self._open().read(name)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # e.g. "Bad CRC-32": bit rot after the sha256 check
            _forget_verified(self.path)  # the next use hashes the archive again
            raise ArchiveCorrupt(
                f"{self.path} is damaged: member {name} fails its zip check ({exc}), although the archive matched "
                f"its sha256 when it was last hashed ({_last_checked(self.path)}). `python -m fslib data list` "
                "hashes it again; replace it with the original archive (data/README.md).") from None

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


def _download_enabled(download: bool | None) -> bool:
    if download is not None:
        return bool(download)
    value = os.environ.get("FSLIB_DOWNLOAD", "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"FSLIB_DOWNLOAD={value!r}; valid: 1, true, yes, 0, false, no or unset")


def _records_file() -> Path:
    return cache_dir("prepared") / "verified_sha256.json"


def _read_records() -> dict:
    """The archives already hashed: ``{path: {size, mtime_ns, sha256, checked}}``.

    The file only saves hashing time, so a damaged one is ignored (and rewritten on the
    next hash), never an error.
    """
    try:
        records = read_json(_records_file())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def _forget_verified(path: Path) -> None:
    records = _read_records()
    if records.pop(str(path), None) is not None:
        write_json(_records_file(), records)


def _last_checked(path: Path) -> str:
    rec = _read_records().get(str(path))
    return f"on {rec['checked']}" if isinstance(rec, dict) and rec.get("checked") else "date unknown"


def _verified_sha256(path: Path, recheck: bool = False) -> str:
    """sha256 of ``path``, checked against :data:`EXPECTED_SHA256`.

    A match is remembered per (path, size, mtime) in the cache, so an unchanged file is
    hashed once; ``recheck`` hashes it again (``data list`` does: bit rot keeps the size and
    the mtime). Only a remembered *match* is trusted: a mismatch is always a fresh hash.
    Bit rot after the last hash is caught by the zip's CRC-32 when a member is decoded
    (:class:`ArchiveCorrupt` naming the archive).
    """
    expected = EXPECTED_SHA256[path.name]
    records = _read_records()
    st = path.stat()
    rec = records.get(str(path))
    if (not recheck and isinstance(rec, dict) and rec.get("size") == st.st_size
            and rec.get("mtime_ns") == st.st_mtime_ns and rec.get("sha256") == expected):
        return expected
    actual = sha256_file(path)
    records[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": actual,
                          "checked": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        write_json(_records_file(), records)
    except OSError:  # a read-only cache only costs hashing again
        pass
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


def _open_source(spec: DatasetSpec, root, download: bool | None, recheck: bool = False) -> _Source:
    folder = _folder_root(spec, root) if spec.root_env else None
    if folder is not None:
        if not folder.is_dir():
            raise _not_found(spec, f"the folder {folder}")
        what = {"imagenet10": "ImageNet folder", "imagenet_sct": "ImageNet-SCT folder"}.get(spec.name, "texture-vs-shape folder")
        return _Source("folder", folder, _DirReader(folder), f"{what} {folder}")
    if spec.archive:
        path = data_root() / spec.archive
        if path.is_file():
            sha = _verified_sha256(path, recheck)
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
