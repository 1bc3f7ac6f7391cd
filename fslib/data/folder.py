"""A user's own image folder, in torchvision's ImageFolder layout, as :class:`LabeledImages`.

``root/<class>/<image>`` (one subfolder per class, images anywhere below it), or the same
under ``root/train/``, ``root/val/`` or ``root/test/``. Class names are the class folders'
names, sorted as torchvision's ``ImageFolder`` sorts them (so a model trained with it gets its
label order back), or in an order given with ``classes=``. :func:`scan_folder` lists the
images without decoding them; :func:`load_folder` decodes them (all, or a class-balanced
subset) to one square size; :func:`write_folder` writes a :class:`LabeledImages` as such a
folder. An unreadable or truncated image is named: an error (:class:`BadImages`) by default,
or left out and recorded with ``on_error="skip"``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from fslib.data.layouts import _natural_key
from fslib.images import DataError, DatasetNotFound, LabeledImages

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
SPLITS = ("train", "val", "test")          # split folders of the ImageFolder layout
RESIZE_MODES = ("crop", "squash")          # shorter side to size then centre crop, or squash to a square
ON_ERROR = ("raise", "skip")               # what an unreadable image does


class BadImages(DataError, ValueError):
    """Images that cannot be decoded; ``files`` lists ``(path, reason)``."""

    def __init__(self, message: str, files: list[tuple[str, str]]):
        super().__init__(message)
        self.files = files


@dataclass(frozen=True)
class FolderListing:
    """The images of an ImageFolder, listed but not decoded.

    Attributes
    ----------
    root : Path, the folder given
    split : str or None, the split folder used (``None``: classes directly under ``root``)
    classes : class names in label order
    files : per class, the image paths relative to :attr:`folder`, natural-sorted
    """

    root: Path
    split: str | None
    classes: tuple[str, ...]
    files: tuple[tuple[str, ...], ...]

    @property
    def folder(self) -> Path:
        """The folder holding the class folders."""
        return self.root / self.split if self.split else self.root

    @property
    def counts(self) -> dict[str, int]:
        """Images found per class."""
        return {c: len(f) for c, f in zip(self.classes, self.files)}


def _subdirs(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _images_below(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder)
        found += [str(rel / f) for f in filenames if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found, key=_natural_key)


def scan_folder(root: str | os.PathLike, split: str | None = None, classes: Sequence[str] | None = None) -> FolderListing:
    """List the images of an ImageFolder without decoding them.

    Parameters
    ----------
    root : path of ``root/<class>/...`` or of ``root/{train,val,test}/<class>/...``
    split : ``"train"``, ``"val"`` or ``"test"`` in the split layout; ``None``: ``val``, else
        ``test``, else ``train``. Must be ``None`` for a folder without split folders.
    classes : class folder names in label order; ``None``: sorted (torchvision's order). In
        the split layout the classes are those of every split together, so that a class
        missing from one split does not shift the labels of the others.

    Raises
    ------
    DatasetNotFound : the folder is missing, holds no class folders, or a class has no images
    ValueError : an unknown split, or ``classes`` that do not match the class folders
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFound(f"image folder {str(root)!r} does not exist" if not root.exists()
                              else f"{str(root)!r} is a file, not an image folder")
    subdirs = _subdirs(root)
    layout_splits = [d for d in subdirs if d in SPLITS]
    if layout_splits and len(layout_splits) == len(subdirs):
        if split is not None and split not in layout_splits:
            raise ValueError(f"split {split!r} not in {str(root)!r}; valid: {', '.join(layout_splits)}")
        used = split or next(s for s in ("val", "test", "train") if s in layout_splits)
        names = sorted({c for s in layout_splits for c in _subdirs(root / s)})
    else:
        if split is not None:
            raise ValueError(f"split {split!r} asked, but {str(root)!r} has no split folders ({', '.join(SPLITS)}); "
                             f"its subfolders are taken as classes: {', '.join(subdirs[:8]) or 'none'}")
        used, names = None, subdirs
    folder = root / used if used else root
    if not names:
        loose = [f for f in _images_below(folder) if "/" not in f]
        raise DatasetNotFound(f"{str(folder)!r} holds no class folders; expected one subfolder per class "
                              f"(root/<class>/<image>, optionally under train/ and val/)"
                              + (f"; it holds {len(loose)} images directly" if loose else ""))
    if classes is not None:
        classes = [str(c) for c in classes]
        missing, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
        if missing or extra or len(set(classes)) != len(classes):
            raise ValueError(f"classes {classes} do not match the class folders of {str(folder)!r}: "
                             f"not found: {missing or 'none'}, not listed: {extra or 'none'}"
                             + ("; a name is repeated" if len(set(classes)) != len(classes) else ""))
        names = classes
    files = tuple(tuple(f"{c}/{f}" for f in _images_below(folder / c)) if (folder / c).is_dir() else ()
                  for c in names)
    empty = [c for c, f in zip(names, files) if not f]
    if empty:
        raise DatasetNotFound(f"{len(empty)} of the {len(names)} classes have no images in {str(folder)!r}: "
                              f"{', '.join(empty[:10])}{', ...' if len(empty) > 10 else ''} "
                              f"(image files end in {', '.join(IMAGE_EXTENSIONS)})")
    return FolderListing(root, used, tuple(names), files)


def read_image(path: str | os.PathLike, size: int, resize: str = "crop") -> np.ndarray:
    """Decode one image to RGB at ``size`` x ``size``, uint8 ``(size, size, 3)``.

    ``resize="crop"``: the shorter side to ``size`` then a centre crop (the aspect ratio is
    kept); ``"squash"``: straight to the square (as :func:`fslib.data.load` prepares the
    book's datasets). PIL bilinear, antialiased. Raises OSError (or another decoding error)
    for an unreadable or truncated file.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img = img.convert("RGB")  # decodes: a truncated file fails here
    w, h = img.size
    if resize == "crop" and (w, h) != (size, size):
        scale = size / min(w, h)
        new = (max(size, round(w * scale)), max(size, round(h * scale)))
        img = img.resize(new, Image.Resampling.BILINEAR)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
    elif (w, h) != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img)


def _decode(folder: Path, order: list[str], need: int | None, size: int, resize: str, skip: bool,
            bar) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, str]]]:
    """Decode ``order`` until ``need`` images are read (every one when ``need`` is None).

    When skipping, an unreadable image is replaced by the next one in ``order``; otherwise
    exactly the first ``need`` are decoded and the unreadable ones among them reported.
    """
    from PIL import Image

    if need is not None and not skip:
        order = order[:need]
    good, bad = [], []
    for rel in order:
        if need is not None and len(good) >= need:
            break
        try:
            good.append((rel, read_image(folder / rel, size, resize)))
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            bad.append((rel, f"{type(exc).__name__}: {exc}"))
        bar.update(1)
    return good, bad


def load_folder(root: str | os.PathLike, size: int, *, split: str | None = None, classes: Sequence[str] | None = None,
                per_class: int | None = None, seed: int = 0, resize: str = "crop", on_error: str = "raise",
                progress: bool = True) -> LabeledImages:
    """Decode an ImageFolder (:func:`scan_folder`) into uint8 images of one square size.

    Parameters
    ----------
    root, split, classes : as in :func:`scan_folder`
    size : int, side of the square images in pixels (the model's input size)
    per_class : int or None
        Decode only this many images of every class, drawn at random with ``seed`` (a
        class-balanced subset: for a protocol that uses a few images per class, a large folder
        is not decoded whole); ``None`` decodes every image.
    seed : int
    resize : ``"crop"`` or ``"squash"`` (:func:`read_image`)
    on_error : ``"raise"``: an unreadable or truncated image is an error (:class:`BadImages`,
        naming every such file met); ``"skip"``: it is left out (another image of its class
        is drawn in its place) and listed in ``extra["skipped"]``.
    progress : tqdm bar

    Returns
    -------
    LabeledImages, images (N, 3, size, size) uint8, labels (N,) int64, class-major in file
    order; ``extra``: ``files`` (paths relative to the class folders' parent), ``skipped``
    (path, reason), ``found`` (images listed per class), ``folder``, ``resize``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (pixels per side), got {size!r}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize {resize!r}; valid: {', '.join(RESIZE_MODES)}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error {on_error!r}; valid: {', '.join(ON_ERROR)}")
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1):
        raise ValueError(f"per_class must be a positive int or None, got {per_class!r}")
    listing = scan_folder(root, split, classes)
    short = {c: n for c, n in listing.counts.items() if per_class is not None and n < per_class}
    if short:
        raise ValueError(f"{per_class} images per class asked, but {', '.join(f'{c!r} has {n}' for c, n in short.items())}"
                         f" in {str(listing.folder)!r}")
    rng = np.random.default_rng(seed)
    total = sum(listing.counts.values()) if per_class is None else per_class * len(listing.classes)
    bar = tqdm(total=total, disable=not progress, desc="reading images", unit="img")
    arrays, labels, files, skipped = [], [], [], []
    for c, names in enumerate(listing.files):
        order = list(names) if per_class is None else [names[i] for i in rng.permutation(len(names))]
        good, bad = _decode(listing.folder, order, per_class, size, resize, on_error == "skip", bar)
        skipped += bad
        if per_class is not None and len(good) < per_class and on_error == "skip":
            raise ValueError(f"class {listing.classes[c]!r} has {len(good)} readable images, fewer than the "
                             f"{per_class} asked ({len(bad)} unreadable)")
        good.sort(key=lambda item: _natural_key(item[0]))
        files += [rel for rel, _ in good]
        arrays += [a for _, a in good]
        labels += [c] * len(good)
    bar.close()
    if skipped and on_error == "raise":
        shown = "; ".join(f"{listing.folder / f}: {why}" for f, why in skipped[:10])
        raise BadImages(f"{len(skipped)} image(s) cannot be read: {shown}{' ...' if len(skipped) > 10 else ''}; "
                        "fix or remove them, or leave them out with on_error='skip' (--skip-bad-images)", skipped)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    where = str(listing.folder)
    return LabeledImages(images, torch.tensor(labels, dtype=torch.int64), listing.classes, name=f"folder:{where}",
                         split=listing.split or "", source=f"{where} ({resize} to {size}x{size}, PIL bilinear)",
                         extra={"files": files, "skipped": skipped, "found": listing.counts, "folder": where,
                                "resize": resize})


def write_folder(images: LabeledImages, root: str | os.PathLike, indices: Sequence[int] | None = None) -> Path:
    """Write images as an ImageFolder: ``root/<class name>/<index>.png`` (lossless).

    Written into a temporary folder beside ``root`` and renamed, so ``root`` is complete or
    absent. Class folders are named after ``images.classes`` (``/`` replaced by ``_``);
    :func:`load_folder` sorts them, so pass ``classes=images.classes`` to read them back in
    label order when the names are not sorted.

    Parameters
    ----------
    images : LabeledImages
    root : the folder to create; an existing one is an error (FileExistsError)
    indices : which images (default all)

    Returns
    -------
    Path of ``root``.
    """
    from PIL import Image

    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} exists; remove it or choose another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        idx = range(len(images)) if indices is None else [int(i) for i in indices]
        for i in idx:
            name = images.classes[int(images.labels[i])].replace("/", "_")
            (tmp / name).mkdir(exist_ok=True)
            Image.fromarray(images.images[i].permute(1, 2, 0).numpy()).save(tmp / name / f"{i:05d}.png")
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root
