"""Tests of fslib.data.folder: a user's ImageFolder read as torchvision reads it, bad folders
and bad images named, a balanced subset drawn without decoding the rest, a lossless round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets.folder import find_classes

from fslib import data
from fslib.images import DatasetNotFound, LabeledImages


def make_folder(root: Path, classes=("dog", "Cat", "emu"), n=4, size=(12, 10), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"img{i}.png")
    return root


def test_classes_are_sorted_as_torchvision_sorts_them(tmp_path):
    root = make_folder(tmp_path / "f")
    (root / "dog" / "notes.txt").write_text("not an image")
    listing = data.scan_folder(root)
    assert list(listing.classes) == find_classes(str(root))[0] == ["Cat", "dog", "emu"]
    assert listing.counts == {"Cat": 4, "dog": 4, "emu": 4} and listing.split is None
    imgs = data.load_folder(root, 8, progress=False)
    assert imgs.images.shape == (12, 3, 8, 8) and imgs.images.dtype == torch.uint8
    assert imgs.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and imgs.classes == ("Cat", "dog", "emu")
    assert imgs.extra["files"][:2] == ["Cat/img0.png", "Cat/img1.png"]


def test_split_layout_defaults_to_val_and_keeps_the_labels_of_every_split(tmp_path):
    make_folder(tmp_path / "f" / "train", classes=("a", "b", "c"))
    make_folder(tmp_path / "f" / "val", classes=("a", "c"))
    assert data.scan_folder(tmp_path / "f", "train").split == "train"
    with pytest.raises(DatasetNotFound, match="have no images.*b"):  # b is missing from val: named, labels not shifted
        data.scan_folder(tmp_path / "f")
    with pytest.raises(ValueError, match="split 'test'.*valid: train, val"):
        data.scan_folder(tmp_path / "f", "test")
    with pytest.raises(ValueError, match="no split folders"):
        data.scan_folder(tmp_path / "f" / "train", "val")


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(DatasetNotFound, match="does not exist"):
        data.scan_folder(tmp_path / "nowhere")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DatasetNotFound, match="is a file"):
        data.scan_folder(tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFound, match="no class folders"):
        data.scan_folder(tmp_path / "empty")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "x.png")
    with pytest.raises(DatasetNotFound, match="holds 1 images directly"):
        data.scan_folder(flat)


def test_class_order_can_be_given_and_must_match(tmp_path):
    root = make_folder(tmp_path / "f")
    assert data.scan_folder(root, classes=["emu", "dog", "Cat"]).classes == ("emu", "dog", "Cat")
    with pytest.raises(ValueError, match=r"not found: \['cow'\], not listed: \['emu'\]"):
        data.scan_folder(root, classes=["Cat", "dog", "cow"])


def test_crop_keeps_the_centre_and_squash_keeps_everything(tmp_path):
    stripes = np.zeros((10, 30, 3), dtype=np.uint8)
    stripes[:, :10, 0] = stripes[:, 10:20, 1] = stripes[:, 20:, 2] = 255  # red | green | blue
    (tmp_path / "a").mkdir()
    Image.fromarray(stripes).save(tmp_path / "a" / "s.png")
    Image.fromarray(stripes[:, :, [0, 0, 0]]).convert("L").save(tmp_path / "a" / "gray.png")  # grey: 3 channels out
    crop = data.load_folder(tmp_path, 10, progress=False).images[1]
    assert (crop[1] == 255).all() and (crop[0] == 0).all() and (crop[2] == 0).all()  # only the green middle
    squash = data.load_folder(tmp_path, 10, resize="squash", progress=False).images[1]
    assert squash[0, :, 0].min() > 200 and squash[2, :, -1].min() > 200  # red left, blue right
    gray = data.load_folder(tmp_path, 10, progress=False).images[0]
    assert gray.shape == (3, 10, 10) and torch.equal(gray[0], gray[1])


def test_unreadable_and_truncated_images_are_named_or_skipped(tmp_path):
    root = make_folder(tmp_path / "f", n=5, size=(40, 40))
    buf = (root / "dog" / "img0.png").read_bytes()
    (root / "dog" / "img0.png").write_bytes(buf[: len(buf) // 2])  # truncated
    (root / "emu" / "junk.jpg").write_text("not a jpeg")
    with pytest.raises(data.BadImages, match="2 image.*dog/img0.png.*emu/junk.jpg.*skip") as err:
        data.load_folder(root, 8, progress=False)
    assert [f for f, _ in err.value.files] == ["dog/img0.png", "emu/junk.jpg"]
    imgs = data.load_folder(root, 8, on_error="skip", progress=False)
    assert len(imgs) == 14 and [f for f, _ in imgs.extra["skipped"]] == ["dog/img0.png", "emu/junk.jpg"]
    assert "dog/img0.png" not in imgs.extra["files"]
    # a subset draws another image of the class in place of a bad one
    sub = data.load_folder(root, 8, per_class=4, on_error="skip", seed=1, progress=False)
    assert torch.bincount(sub.labels).tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="'dog' has 4 readable images, fewer than the 5"):
        data.load_folder(root, 8, per_class=5, on_error="skip", progress=False)


def test_a_subset_is_balanced_seeded_and_decodes_only_what_it_keeps(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "f", n=6)
    read = []
    real = data.folder.read_image
    monkeypatch.setattr(data.folder, "read_image", lambda p, *a: read.append(p) or real(p, *a))
    a = data.load_folder(root, 8, per_class=2, seed=3, progress=False)
    assert len(read) == 6 and torch.bincount(a.labels).tolist() == [2, 2, 2]
    b = data.load_folder(root, 8, per_class=2, seed=3, progress=False)
    c = data.load_folder(root, 8, per_class=2, seed=4, progress=False)
    assert a.extra["files"] == b.extra["files"] != c.extra["files"]
    with pytest.raises(ValueError, match="7 images per class asked, but 'Cat' has 6"):
        data.load_folder(root, 8, per_class=7, progress=False)
    for bad in ({"size": 0}, {"size": 8, "resize": "fit"}, {"size": 8, "on_error": "ignore"}):
        with pytest.raises(ValueError, match="size|resize|on_error"):
            data.load_folder(root, progress=False, **bad)


def test_write_folder_round_trips_losslessly_in_label_order(tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), generator=gen, dtype=torch.uint8)
    src = LabeledImages(images, torch.tensor([1, 0, 2, 1, 0, 2]), ("zebra", "ant", "a/b"), "toy", "test", "toy")
    root = data.write_folder(src, tmp_path / "out")
    back = data.load_folder(root, 8, classes=["zebra", "ant", "a_b"], progress=False)
    order = np.argsort(src.labels.numpy(), kind="stable")
    assert torch.equal(back.images, images[order]) and torch.equal(back.labels, src.labels[order])
    with pytest.raises(FileExistsError):
        data.write_folder(src, root)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind
