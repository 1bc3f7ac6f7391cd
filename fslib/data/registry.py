"""The registry of datasets: names, classes, splits, sources and licences.

One :class:`DatasetSpec` per dataset the book knows (``DATASETS``) and the sha256 of every
official archive (``EXPECTED_SHA256``, also in ``data/README.md``). :func:`spec` and
:func:`check_args` validate a request before any file is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from fslib import constants as K


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
    # derived from cifar10 by fslib.data.skew (a planted class-correlated frequency pattern)
    "cifar10_skew": DatasetSpec("cifar10_skew", K.CIFAR10_CLASSES, archive="cifar10_jpeg.zip", download=True,
                                resolutions=(32,), native=32, license="no formal licence (research use)"),
}


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]


def _options(spec: DatasetSpec, all_classes: bool) -> dict:
    return {"all_classes": all_classes} if spec.name in CUE_SUBFOLDERS else {}


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
