"""Prepared datasets: decoded once into uint8 arrays, memory-mapped on every later load.

The cache lives in ``fslib.paths.cache_dir("prepared")/<name>-<split>-<resolution>-<key>/``
(``images.npy`` (N, 3, H, W) uint8, ``labels.npy``, ``extra.npz``, ``meta.json``, and
``SHA256SUMS``, their digests), keyed by the source's checksum (or a folder's file list) and
the preparation arguments. It is written into a temporary folder and renamed into place, so
an interrupted preparation leaves no half cache behind; the free space is checked and the
images file allocated before anything is decoded, so a full disk is a clear
:class:`~fslib.images.NotEnoughSpace` (and the temporary folder is removed), not a SIGBUS.

Every load checks the folder against ``SHA256SUMS`` (about 0.3 s for CIFAR-10's 184 MB,
once per process; :mod:`fslib.artefacts`): a damaged preparation is moved aside
(``<folder>.damaged``) with a warning naming the file, and prepared again. A folder written
before digests existed is checked for its structure (shapes, sizes, readable records) and
its digests are recorded.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable
import numpy as np
import torch
from fslib import artefacts
from fslib.artefacts import FOLDER_RECORD, ArtefactDamaged
from fslib.io import load_npz, read_json, save_npz, stable_hash, write_json
from fslib.paths import cache_dir
from fslib.data.layouts import _Plan, _plan
from fslib.data.registry import DatasetSpec, RESIZE, _options
from fslib.data.sources import _Source, _cifar10_torchvision, _open_source
from fslib.images import LabeledImages, NotEnoughSpace


PREP_VERSION = 1  # bump when decoding or resizing changes: old caches are then ignored
FILES = ("images.npy", "labels.npy", "extra.npz", "meta.json")  # what SHA256SUMS lists
SPACE_MARGIN = 64 << 20  # bytes beyond the arrays: meta.json's file list, extra.npz, the file system


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


def _check_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise NotEnoughSpace(
            f"not enough disk space to prepare {what} in {folder}: it needs about {needed / 1e6:,.0f} MB, "
            f"{free / 1e6:,.0f} MB are free. Free some space, or set FSLIB_CACHE to a folder on a larger disk.")


def _allocate(file: Path) -> None:
    """Reserve the blocks of a sparse memory-mapped file now: writing into a hole of a full disk
    through a memory map kills the process with SIGBUS instead of raising."""
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: the free-space check is all we have
        return
    fd = os.open(file, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # a file system without fallocate
            raise
    finally:
        os.close(fd)


def _write_cache(final: Path, n: int, size: int, fill: Callable[[np.ndarray], dict], labels: np.ndarray,
                 arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write a prepared dataset into a temporary folder, then rename it to ``final``."""
    _clean_stale(final.parent, final.name)
    needed = n * 3 * size * size + 8 * n + SPACE_MARGIN
    _check_space(final.parent, needed, final.name)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
        _allocate(tmp / "images.npy")
        meta = {**meta, **fill(images)}
        images.flush()
        del images
        np.save(tmp / "labels.npy", labels.astype(np.int64))
        save_npz(tmp / "extra.npz", **arrays)
        write_json(tmp / "meta.json", meta)
        artefacts.seal_folder(tmp, FILES)
        if final.exists() and not (final / "meta.json").exists():  # not written by fslib: replace it
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "meta.json").exists():  # not a concurrent preparation that won
                raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NotEnoughSpace(
                f"the disk filled up while preparing {final.name} in {final.parent} ({exc.strerror}): it needs about "
                f"{needed / 1e6:,.0f} MB. The partial preparation was removed; free some space, or set FSLIB_CACHE "
                "to a folder on a larger disk.") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_structure(folder: Path) -> None:
    """Shapes, sizes and records of a preparation without digests (ArtefactDamaged naming the file)."""
    def read(name: str, how: Callable[[Path], Any]) -> Any:
        try:
            return how(folder / name)
        except Exception as exc:  # noqa: BLE001 - truncated .npy ("mmap length ..."), bad JSON, bad zip
            raise ArtefactDamaged(folder / name, f"it cannot be read ({type(exc).__name__}: {exc})") from exc

    meta = read("meta.json", read_json)
    images = read("images.npy", lambda p: np.load(p, mmap_mode="r", allow_pickle=False))
    labels = read("labels.npy", lambda p: np.load(p, allow_pickle=False))
    read("extra.npz", load_npz)
    size = meta.get("resolution") if isinstance(meta, dict) else None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, size, size):
        raise ArtefactDamaged(folder / "images.npy", f"it holds {images.dtype} {images.shape}, "
                                                     f"expected uint8 (N, 3, {size}, {size})")
    if labels.shape != (len(images),):
        raise ArtefactDamaged(folder / "labels.npy", f"it holds {labels.shape} labels for {len(images)} images")


def _verify_prepared(folder: Path) -> bool | None:
    """True: complete and matching ``SHA256SUMS``; False: written before digests existed (its
    structure is sound); None: nothing prepared here. Changes nothing; a damaged preparation
    raises :class:`~fslib.artefacts.ArtefactDamaged` naming the file."""
    if not (folder / FOLDER_RECORD).exists() and not (folder / "meta.json").exists():
        return None
    if artefacts.verify_folder(folder, FILES):
        return True
    _check_structure(folder)
    return False


def _ready(folder: Path) -> bool:
    """Whether ``folder`` holds a usable preparation; a damaged one is moved aside (warning)."""
    try:
        state = _verify_prepared(folder)
    except ArtefactDamaged as exc:
        artefacts.discard(exc, folder, "the dataset is prepared again from its source.", stacklevel=4)
        return False
    if state is False:
        try:
            artefacts.seal_folder(folder, FILES)  # adopt a preparation made before digests existed
        except OSError:
            pass
    return state is not None


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


def _prepare_split(spec: DatasetSpec, split: str, size: int, root, download, all_classes: bool,
                   progress: bool) -> Path:
    """Prepare one split if needed; returns its cache folder."""
    from tqdm.auto import tqdm

    src = _open_source(spec, root, download)
    opts = _options(spec, all_classes)
    final, plan = _locate(spec, src, split, size, opts)
    if _ready(final):
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
