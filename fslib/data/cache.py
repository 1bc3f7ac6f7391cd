"""Prepared datasets: decoded once into uint8 arrays, memory-mapped on every later load.

The cache lives in ``fslib.paths.cache_dir("prepared")/<name>-<split>-<resolution>-<key>/``
(``images.npy`` (N, 3, H, W) uint8, ``labels.npy``, ``extra.npz``, ``meta.json``), keyed by
the source's checksum (or a folder's file list) and the preparation arguments. It is written
into a temporary folder and renamed into place, so an interrupted preparation leaves no half
cache behind.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable
import numpy as np
import torch
from fslib.io import load_npz, read_json, save_npz, stable_hash, write_json
from fslib.paths import cache_dir
from fslib.data.layouts import _Plan, _plan
from fslib.data.registry import DatasetSpec, RESIZE, _options
from fslib.data.sources import _Source, _cifar10_torchvision, _open_source
from fslib.images import LabeledImages


PREP_VERSION = 1  # bump when decoding or resizing changes: old caches are then ignored


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
