"""Where each dataset keeps its images inside an archive or folder, and in which order.

A layout turns a reader (:mod:`fslib.data.sources`) into a :class:`_Plan`: the member names
to decode in output order, their labels and per-image extras (texture labels of the
cue-conflict stimuli, the ImageNet-SCT pairing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
import numpy as np
from fslib import constants as K
from fslib.data.registry import CUE_SUBFOLDERS
from fslib.images import ArchiveCorrupt, DatasetNotFound


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


_IMAGE_EXT = (".jpg", ".jpeg", ".png")


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
