"""Tests of fslib.data on small fixtures built from the real archives.

The fixture zips hold a few hundred members copied byte for byte from the archives in
``$FSLIB_DATA`` (same layout), so CI never decodes the full 60,000-image CIFAR-10. Their
sha256 differs from the official one: each test registers it in ``data.EXPECTED_SHA256``
(the check itself still runs). Tests that need an archive skip, with the reason, when it
is absent.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fslib import constants as K
from fslib import data, synthetic
from fslib.io import sha256_file

_REPO = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("FSLIB_DATA") or _REPO.parent / "shared" / "data")
OFFICIAL_SHA = dict(data.EXPECTED_SHA256)  # before any test replaces entries


def need(archive: str) -> Path:
    path = REAL / archive
    if not path.is_file():
        pytest.skip(f"{archive} not found in {REAL} (set FSLIB_DATA to the folder of the archives)")
    return path


def copy_members(src: Path, dst: Path, keep) -> list[str]:
    """A stored zip with the members of ``src`` for which ``keep(name)`` is true."""
    names = []
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            if not name.endswith("/") and keep(name):
                zout.writestr(name, zin.read(name))
                names.append(name)
    return names


def pil(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory) -> Path:
    """Fixture archives: 8 train + 4 test images per CIFAR-10 class, 3 + 2 per Imagenette
    class, 3 cue-conflict stimuli per class, 2 edges / silhouettes per class (all 16)."""
    out = tmp_path_factory.mktemp("archives")
    if (REAL / "cifar10_jpeg.zip").is_file():
        copy_members(REAL / "cifar10_jpeg.zip", out / "cifar10_jpeg.zip",
                     lambda n: int(n[-8:-4]) < (8 if n.startswith("train/") else 4))
    if (REAL / "imagenette_224.zip").is_file():
        seen: dict[str, int] = {}

        def keep(n: str) -> bool:
            folder = n.rsplit("/", 1)[0]
            seen[folder] = seen.get(folder, 0) + 1
            return seen[folder] <= (3 if n.startswith("train/") else 2)

        copy_members(REAL / "imagenette_224.zip", out / "imagenette_224.zip", keep)
    if (REAL / "cue_conflict7.zip").is_file():
        copy_members(REAL / "cue_conflict7.zip", out / "cue_conflict7.zip",
                     lambda n: ("style-transfer" in n and n.rsplit("/", 1)[1].split("-")[0][-1] in "19")
                     or (("edges/" in n or "silhouettes/" in n) and n.endswith(("1.png", "2.png"))))
    return out


@pytest.fixture
def env(fixtures, tmp_path, monkeypatch) -> Path:
    """FSLIB_DATA -> fixture archives (checksums registered), FSLIB_CACHE -> empty folder."""
    monkeypatch.setenv("FSLIB_DATA", str(fixtures))
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    for var in ("FSLIB_DOWNLOAD", "FSLIB_IMAGENET10", "FSLIB_IMAGENET_SCT", "FSLIB_CUE_CONFLICT"):
        monkeypatch.delenv(var, raising=False)
    for zf in fixtures.glob("*.zip"):
        monkeypatch.setitem(data.EXPECTED_SHA256, zf.name, sha256_file(zf))
    return fixtures


@pytest.fixture
def decodes(monkeypatch) -> list:
    """Record every call of the decoder."""
    calls: list = []
    real = data.cache._decode

    def spy(blob, size):
        calls.append(size)
        return real(blob, size)

    monkeypatch.setattr(data.cache, "_decode", spy)
    return calls


# ------------------------------------------------------------------ registry and arguments


def test_registry_lists_every_dataset_and_unknown_names_fail():
    expected = {"syn_b1", "syn_b2", "syn_b3", "syn_b4", "cifar10", "imagenette", "imagenet10",
                "imagenet10_samples", "cue_conflict", "edges", "silhouettes", "imagenet_sct", "cifar10_skew"}
    assert set(data.DATASETS) == expected
    with pytest.raises(ValueError, match="unknown dataset 'cifar100'.*cifar10.*imagenet_sct"):
        data.load("cifar100")
    with pytest.raises(ValueError, match="unknown dataset"):
        data.prepare("imagenet")


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="cifar10", split="val"), r"split 'val' of 'cifar10'; valid: train, test"),
    (dict(name="cue_conflict", split="train"), r"split 'train' of 'cue_conflict'; valid: test"),
    (dict(name="cifar10", resolution=64), r"resolution 64 for 'cifar10'; valid: 32"),
    (dict(name="imagenette", resolution=100), r"valid: 32, 64, 112, 224"),
    (dict(name="cifar10", root="/tmp"), r"does not read a folder"),
    (dict(name="imagenet10_samples", download=True), r"has no download; only cifar10, imagenette, cue_conflict"),
    (dict(name="imagenette", all_classes=True), r"all_classes applies to"),
    (dict(name="syn_b1", resolution=224), r"resolution 224 for 'syn_b1'"),
])
def test_bad_arguments_name_the_value_and_the_valid_ones(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.load(**kwargs)


def test_synthetic_names_dispatch_to_fslib_synthetic(monkeypatch):
    calls = []
    fake = lambda name, split, n=None, seed=0, config=None: calls.append((name, split, n, seed, config)) or "sentinel"  # noqa: E731
    monkeypatch.setattr(synthetic, "load_labeled", fake)
    assert data.load("syn_b3", "test", n=40, seed=7) == "sentinel"
    assert data.load("syn_b1") == "sentinel"
    assert data.load("syn_b2", options={"noise_std": 0.02, "c0_line_fraction": 0.5}) == "sentinel"
    default = synthetic.SyntheticConfig()
    assert calls == [("syn_b3", "test", 40, 7, default), ("syn_b1", "train", None, 0, default),
                     ("syn_b2", "train", None, 0, synthetic.SyntheticConfig(noise_std=0.02, c0_line_fraction=0.5))]


def test_check_options_of_every_kind_of_dataset():
    assert data.check_options("syn_b4") == () == data.check_options("syn_b4", {"noise_std": 0.005})  # the default generator
    assert data.check_options("syn_b4", {"c2_special_fraction": 0.7}) == (("c2_special_fraction", 0.7),)
    assert len(data.check_options("cifar10_skew")) >= 5  # the skew: every setting spelled out
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['noise'\] of 'syn_b1'; valid: c2_special_fraction"):
        data.check_options("syn_b1", {"noise": 0.1})
    with pytest.raises(ValueError, match=r"noise_std=0.5 is out of range; valid: a number in \[0, 0.25\]"):
        data.check_options("syn_b1", {"noise_std": 0.5})
    with pytest.raises(ValueError, match="'cifar10' takes no options.*only cifar10_skew, syn_b1, syn_b2, syn_b3, syn_b4 do"):
        data.check_options("cifar10", {"noise_std": 0.02})


def test_a_synthetic_set_loads_with_its_options(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path))
    plain = data.load("syn_b4", "test", n=8, progress=False)
    noisy = data.load("syn_b4", "test", n=8, progress=False, options={"noise_std": 0.02})
    direct = synthetic.load("syn_b4", "test", 8, config=synthetic.SyntheticConfig(noise_std=0.02))
    assert torch.equal(noisy.images, direct[0]) and not torch.equal(noisy.images, plain.images)
    assert noisy.extra["config"].noise_std == 0.02 and plain.extra["config"] == synthetic.SyntheticConfig()


def test_constants_pairings_and_manifest():
    assert K.IMAGENET10_WNIDS[:3] == ("n02690373", "n02814533", "n01833805")
    assert list(K.IMAGENET10_WNIDS) != sorted(K.IMAGENET10_WNIDS)  # the paper's order is not sorted
    assert [K.CIFAR10_CLASSES[K.CUE_CONFLICT_TO_CIFAR10[c]] for c in K.CUE_CONFLICT_MAPPED] == \
        ["airplane", "bird", "ship", "automobile", "cat", "dog", "truck"]
    assert [K.IMAGENET10_CLASSES[K.CUE_CONFLICT_TO_IMAGENET10[c]] for c in K.CUE_CONFLICT_MAPPED] == \
        ["airliner", "humming bird", "container ship", "wagon", "Siamese cat", "golden retriever", "trailer truck"]
    assert list(K.IMAGENETTE_WNIDS) == sorted(K.IMAGENETTE_WNIDS)  # torchvision's label order
    manifest = json.loads((_REPO / "data" / "manifest.json").read_text())
    assert {a["file"]: a["sha256"] for a in manifest["archives"]} == OFFICIAL_SHA


# ------------------------------------------------------------------ CIFAR-10 round trip and cache


def test_cifar10_prepare_load_round_trip(env, decodes):
    test = data.load("cifar10", "test", progress=False)
    assert test.images.shape == (40, 3, 32, 32) and test.images.dtype == torch.uint8
    assert test.labels.dtype == torch.int64 and test.classes == K.CIFAR10_CLASSES
    assert test.labels.tolist() == [c for c in range(10) for _ in range(4)]  # class-major
    assert "JPEG q75" in test.source and test.split == "test" and len(decodes) == 40
    with zipfile.ZipFile(env / "cifar10_jpeg.zip") as z:
        for i in (0, 13, 39):
            name = test.extra["files"][i]
            assert name == f"test/{K.CIFAR10_CLASSES[i // 4]}/{i % 4:04d}.jpg"
            np.testing.assert_array_equal(test.images[i].permute(1, 2, 0).numpy(), pil(z.read(name)))
    train = data.load("cifar10", progress=False)
    assert train.split == "train" and len(train) == 80 and torch.bincount(train.labels).tolist() == [8] * 10


def test_second_load_reads_the_cache_without_decoding(env, decodes, monkeypatch):
    first = data.load("cifar10", "test", progress=False)
    n_first = len(decodes)
    hashes = []
    monkeypatch.setattr(data.sources, "sha256_file", lambda p: hashes.append(p) or sha256_file(p))
    again = data.load("cifar10", "test", progress=False)
    assert n_first == 40 and len(decodes) == 40 and hashes == []  # no decode, no re-hash
    assert torch.equal(first.images, again.images) and first.extra["cache"] == again.extra["cache"]
    os.utime(env / "cifar10_jpeg.zip")  # a touched archive is hashed again, still not decoded
    data.load("cifar10", "test", progress=False)
    assert len(hashes) == 1 and len(decodes) == 40


def test_interrupted_preparation_leaves_no_cache(env, monkeypatch):
    real = data.cache._decode
    calls = []

    def failing(blob, size):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated interruption")
        return real(blob, size)

    monkeypatch.setattr(data.cache, "_decode", failing)
    with pytest.raises(KeyboardInterrupt):
        data.load("cifar10", "test", progress=False)
    prepared = Path(os.environ["FSLIB_CACHE"]) / "prepared"
    assert [p.name for p in prepared.iterdir() if p.is_dir()] == []  # no cache, no temporary folder
    monkeypatch.setattr(data.cache, "_decode", real)
    final = Path(data.load("cifar10", "test", progress=False).extra["cache"])
    # a process killed mid-preparation leaves its temporary folder: the next preparation removes it
    shutil.rmtree(final)
    stale = prepared / f".tmp-{final.name}-999999999-dead"
    (stale / "images.npy").parent.mkdir()
    (stale / "images.npy").write_bytes(b"half")
    assert len(data.load("cifar10", "test", progress=False)) == 40
    assert not stale.exists() and (final / "meta.json").exists()


def test_missing_archive_error_says_where_and_how(env, tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_DATA", str(tmp_path / "empty"))
    with pytest.raises(data.DatasetNotFound) as err:
        data.load("cifar10", "test")
    text = str(err.value)
    for part in ("'cifar10'", str(tmp_path / "empty" / "cifar10_jpeg.zip"), "FSLIB_DATA",
                 data.EXPECTED_SHA256["cifar10_jpeg.zip"], "download=True", "FSLIB_DOWNLOAD=1"):
        assert part in text
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(data.DatasetNotFound, match="texture-vs-shape"):
        data.load("cue_conflict")
    monkeypatch.setenv("FSLIB_DOWNLOAD", "maybe")
    with pytest.raises(ValueError, match="FSLIB_DOWNLOAD='maybe'"):
        data.load("cifar10", "test")


def test_corrupt_or_foreign_archive_names_file_and_expected_sha(env, tmp_path, monkeypatch):
    folder = tmp_path / "bad"
    folder.mkdir()
    blob = (env / "cifar10_jpeg.zip").read_bytes()
    (folder / "cifar10_jpeg.zip").write_bytes(blob[: len(blob) // 2])
    monkeypatch.setenv("FSLIB_DATA", str(folder))
    expected = data.EXPECTED_SHA256["cifar10_jpeg.zip"]
    with pytest.raises(data.ArchiveCorrupt, match=re.escape(str(folder / "cifar10_jpeg.zip")) + f".*expected {expected}"):
        data.load("cifar10", "test")
    # the complete fixture is not the official archive: the official checksum rejects it
    monkeypatch.setenv("FSLIB_DATA", str(env))
    monkeypatch.setitem(data.EXPECTED_SHA256, "cifar10_jpeg.zip", OFFICIAL_SHA["cifar10_jpeg.zip"])
    with pytest.raises(data.ArchiveCorrupt, match=OFFICIAL_SHA["cifar10_jpeg.zip"]):
        data.load("cifar10", "test")


def fake_torchvision(monkeypatch, **classes) -> None:
    """Replace torchvision.datasets by a module holding ``classes`` (no internet, no slow import)."""
    module = types.ModuleType("torchvision.datasets")
    for name, cls in classes.items():
        setattr(module, name, cls)
    if "torchvision" not in sys.modules:
        monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", module)


def test_torchvision_cifar10_path_is_lossless_and_class_major(env, tmp_path, monkeypatch):
    """The download path, with torchvision's CIFAR10 replaced by a fake."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 10, 50).tolist()
    pixels = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    seen = []

    class FakeCIFAR10:
        tgz_md5 = "c58f30108f718f92721af3b95e74349a"

        def __init__(self, root, train, download):
            seen.append((Path(root), train, download))
            if download:  # the official archive holds both splits
                (Path(root) / "cifar-10-batches-py").mkdir(parents=True, exist_ok=True)
                (Path(root) / "cifar-10-batches-py" / "test_batch").write_bytes(b"")
            self.data, self.targets = pixels, targets

    fake_torchvision(monkeypatch, CIFAR10=FakeCIFAR10)
    monkeypatch.setenv("FSLIB_DATA", str(tmp_path / "online"))
    with pytest.raises(data.DatasetNotFound):  # never without being asked
        data.load("cifar10", "test")
    monkeypatch.setenv("FSLIB_DOWNLOAD", "1")
    out = data.load("cifar10", "test", progress=False)
    root = tmp_path / "online" / "torchvision"
    assert seen == [(root, True, True), (root, False, True), (root, False, False)] and "torchvision" in out.source
    official = out.extra["official_index"].numpy()
    assert out.labels.tolist() == sorted(targets) and np.all(np.diff(official[out.labels.numpy() == 3]) > 0)
    np.testing.assert_array_equal(out.images.numpy(), pixels[official].transpose(0, 3, 1, 2))
    monkeypatch.delenv("FSLIB_DOWNLOAD")  # downloaded once: used without asking again
    data.load("cifar10", "test", progress=False)
    assert len(seen) == 3  # the prepared cache is found without calling torchvision again


def test_torchvision_imagenette_path_reads_the_downloaded_folder(env, tmp_path, monkeypatch):
    calls = []

    class FakeImagenette:
        def __init__(self, root, split, size, download):
            calls.append((split, size, download))
            with zipfile.ZipFile(env / "imagenette_224.zip") as z:
                for name in z.namelist():
                    target = Path(root) / "imagenette2" / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))

    fake_torchvision(monkeypatch, Imagenette=FakeImagenette)
    monkeypatch.setenv("FSLIB_DATA", str(tmp_path / "online"))
    out = data.load("imagenette", "test", resolution=32, download=True, progress=False)
    assert calls == [("train", "full", True), ("val", "full", True)]
    assert out.source.startswith("torchvision Imagenette full") and out.images.shape == (20, 3, 32, 32)
    assert [f.split("/")[1] for f in out.extra["files"][::2]] == list(K.IMAGENETTE_WNIDS)


@pytest.mark.slow
def test_real_torchvision_classes_accept_our_arguments():
    import inspect

    from torchvision.datasets import CIFAR10, Imagenette

    assert {"root", "train", "download"} <= set(inspect.signature(CIFAR10).parameters)
    assert {"root", "split", "size", "download"} <= set(inspect.signature(Imagenette).parameters)
    assert tuple(sorted(Imagenette._WNID_TO_CLASS)) == K.IMAGENETTE_WNIDS
    assert [v[0] for k, v in sorted(Imagenette._WNID_TO_CLASS.items())] == list(K.IMAGENETTE_CLASSES)


# ------------------------------------------------------------------ subsets


def test_balanced_subset_is_balanced_deterministic_and_nested():
    labels = np.repeat(np.arange(7), [30, 12, 25, 40, 9, 18, 22])
    for n in (1, 7, 20, 50, 63):
        idx = data.balanced_subset(labels, n, seed=3)
        counts = np.bincount(labels[idx], minlength=7)
        assert len(idx) == len(set(idx.tolist())) == n and counts.max() - counts.min() <= 1
        assert np.array_equal(idx, data.balanced_subset(labels, n, seed=3))
    small, large = data.balanced_subset(labels, 21, seed=1), data.balanced_subset(labels, 56, seed=1)
    assert set(small.tolist()) <= set(large.tolist())
    assert not np.array_equal(data.balanced_subset(labels, 21, seed=1), data.balanced_subset(labels, 21, seed=2))
    with pytest.raises(ValueError, match="needs 10 images of class 4, which has 9; n <= 63 keeps every class equal"):
        data.balanced_subset(labels, 70)
    with pytest.raises(ValueError, match="must be an integer in 1..156"):
        data.balanced_subset(labels, 0)


def test_load_with_n_returns_the_subset_and_its_extras(env):
    full = data.load("cifar10", "train", progress=False)
    part = data.load("cifar10", "train", n=30, seed=5, progress=False)
    assert torch.bincount(part.labels).tolist() == [3] * 10
    index = part.extra["index"]
    assert torch.equal(part.images, full.images[index]) and torch.equal(part.labels, full.labels[index])
    assert part.extra["files"] == tuple(full.extra["files"][i] for i in index.tolist())


# ------------------------------------------------------------------ ImageNet folders


def imagenet_folder(tmp_path: Path, splits=("train", "val")) -> Path:
    """train/<wnid>/ and val/<wnid>/ from the one-per-class archive, plus a decoy WNID."""
    root = tmp_path / "imagenet"
    with zipfile.ZipFile(need("in10_one_per_class.zip")) as z:
        for name in z.namelist():
            for split in splits:
                folder = root / split / name.split("_")[0]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(z.read(name))
    return root


def test_imagenet10_from_a_folder_in_the_papers_order(env, tmp_path, monkeypatch):
    root = imagenet_folder(tmp_path)
    monkeypatch.setenv("FSLIB_IMAGENET10", str(root))
    out = data.load("imagenet10", "test", progress=False)
    assert out.images.shape == (10, 3, 224, 224) and out.classes == K.IMAGENET10_CLASSES
    assert out.labels.tolist() == list(range(10))  # freight car (n03393912) is not a class
    assert [f.split("/")[:2] for f in out.extra["files"]] == [["val", w] for w in K.IMAGENET10_WNIDS]
    assert out.extra["files"][6] == "val/n01644900/n01644900_tailed_frog.JPEG"
    assert "squashed to 224x224" in out.source
    small = data.load("imagenet10", "train", root=root, resolution=64, progress=False)
    assert small.images.shape == (10, 3, 64, 64) and small.extra["files"][0].startswith("train/n02690373/")
    shutil.rmtree(root / "val" / "n02391049")
    with pytest.raises(data.DatasetNotFound, match="n02391049"):
        data.load("imagenet10", "test", progress=False)
    monkeypatch.delenv("FSLIB_IMAGENET10")
    with pytest.raises(data.DatasetNotFound, match="FSLIB_IMAGENET10.*image-net.org"):
        data.load("imagenet10", "test")


def test_imagenet_sct_folders_pair_with_imagenet10(env, tmp_path):
    root = tmp_path / "sct"
    with zipfile.ZipFile(need("in10_one_per_class.zip")) as z:
        blobs = [z.read(n) for n in sorted(z.namelist())[:3]]
    folders = ["military_aircraft", "car", "lorikeet", "Tabby Cat", "holstein", "Labrador-retriever",
               "tree_frog", "horse", "fishing vessel", "n04467665"]  # last one by its paired WNID
    for i, folder in enumerate(folders):
        (root / folder).mkdir(parents=True)
        for j in range(1 + i % 2):
            (root / folder / f"img{j}.jpg").write_bytes(blobs[(i + j) % 3])
    out = data.load("imagenet_sct", root=root, resolution=32, progress=False)
    assert out.classes == K.IMAGENET_SCT_CLASSES and out.split == "test"
    assert torch.bincount(out.labels).tolist() == [1 + i % 2 for i in range(10)]
    assert torch.equal(out.extra["imagenet10_labels"], out.labels)
    tabby = out.extra["files"].index("Tabby Cat/img0.jpg")
    assert out.classes[out.labels[tabby]] == "tabby cat"
    assert out.extra["paired_classes"][out.labels[tabby]] == "Siamese cat"
    assert out.extra["paired_classes"][out.labels[-1]] == "trailer truck"
    (root / "zebra").mkdir()
    with pytest.raises(data.DatasetNotFound, match=r"unknown folders: \['zebra'\]"):
        data.load("imagenet_sct", root=root)


def test_imagenet10_samples_from_the_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLIB_DATA", str(need("in10_one_per_class.zip").parent))
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path))
    out = data.load("imagenet10_samples", progress=False)  # official checksum
    assert out.labels.tolist() == list(range(10)) and out.images.shape == (10, 3, 224, 224)
    assert [f.split("_")[0] for f in out.extra["files"]] == list(K.IMAGENET10_WNIDS)


def test_imagenette_splits_and_resolution(env, decodes):
    test = data.load("imagenette", "test", resolution=64, progress=False)
    assert test.images.shape == (20, 3, 64, 64) and test.classes == K.IMAGENETTE_CLASSES
    assert all(f.startswith(f"val/{K.IMAGENETTE_WNIDS[lab]}/") for f, lab in zip(test.extra["files"], test.labels))
    assert "squashed to 64x64" in test.source and set(decodes) == {64}
    native = data.load("imagenette", "train", progress=False)
    assert native.images.shape == (30, 3, 224, 224) and "PIL" not in native.source  # stored at 224: no resize
    assert native.extra["cache"] != test.extra["cache"]


# ------------------------------------------------------------------ cue-conflict stimuli


def test_cue_conflict_labels_come_from_the_file_names(env):
    out = data.load("cue_conflict", progress=False)
    assert out.classes == K.CUE_CONFLICT_CLASSES and "CC BY 4.0" in out.extra["license"]
    assert set(out.labels.tolist()) == {K.CUE_CONFLICT_CLASSES.index(c) for c in K.CUE_CONFLICT_MAPPED}
    i = out.extra["files"].index("stimuli/style-transfer-preprocessed-512/truck/truck9-boat3.png")
    assert out.classes[out.labels[i]] == "truck" and out.classes[out.extra["texture_labels"][i]] == "boat"
    assert (out.extra["cifar10_labels"][i], out.extra["cifar10_texture_labels"][i]) == (9, 8)
    assert (out.extra["imagenet10_labels"][i], out.extra["imagenet10_texture_labels"][i]) == (9, 8)
    assert bool(out.extra["conflict"][i])
    j = out.extra["files"].index("stimuli/style-transfer-preprocessed-512/truck/truck9-elephant1.png")
    assert out.extra["cifar10_texture_labels"][j] == -1  # elephant has no CIFAR-10 class
    for k, name in enumerate(out.extra["files"]):  # every stimulus: conflict iff the two classes differ
        shape, texture = (part.rstrip("0123456789") for part in name.rsplit("/", 1)[1][:-4].split("-"))
        assert bool(out.extra["conflict"][k]) == (shape != texture)
    same = out.extra["files"].index("stimuli/style-transfer-preprocessed-512/truck/truck9-truck3.png")
    assert not out.extra["conflict"][same] and out.extra["texture_labels"][same] == out.labels[same]


def test_cue_conflict_at_32_pixels_is_one_antialiased_resize(env):
    full = data.load("cue_conflict", progress=False)
    small = data.load("cue_conflict", resolution=32, progress=False)
    assert small.images.shape == (len(full), 3, 32, 32) and small.extra["cache"] != full.extra["cache"]
    ref = Image.fromarray(full.images[0].permute(1, 2, 0).numpy()).resize((32, 32), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(small.images[0].permute(1, 2, 0).numpy(), np.asarray(ref))


def test_edges_and_silhouettes_default_to_the_mapped_classes(env):
    edges = data.load("edges", progress=False)
    assert {edges.classes[i] for i in edges.labels.tolist()} == set(K.CUE_CONFLICT_MAPPED)
    assert (edges.extra["cifar10_labels"] >= 0).all() and (edges.extra["imagenet10_labels"] >= 0).all()
    every = data.load("silhouettes", all_classes=True, progress=False)
    assert len({every.classes[i] for i in every.labels.tolist()}) == 16
    assert (every.extra["cifar10_labels"] == -1).sum() == 9 * 2  # 9 unmapped classes x 2 images
    with pytest.raises(data.DatasetNotFound, match="bear"):  # the archive holds 7 cue-conflict classes
        data.load("cue_conflict", all_classes=True)


# ------------------------------------------------------------------ status


def test_status_reports_found_checksum_and_prepared(env, tmp_path, monkeypatch):
    data.load("cifar10", "test", progress=False)
    rows = {r["name"]: r for r in data.status()}
    assert set(rows) == set(data.DATASETS) - {"syn_b1", "syn_b2", "syn_b3", "syn_b4", "cifar10_skew"}  # derived on load
    assert rows["cifar10"]["found"] and rows["cifar10"]["sha256_ok"] is True
    assert rows["cifar10"]["prepared"] == ["test@32"]
    assert not rows["imagenet10"]["found"] and "FSLIB_IMAGENET10" in rows["imagenet10"]["error"]
    blob = (env / "cue_conflict7.zip").read_bytes()
    bad = tmp_path / "bad"
    shutil.copytree(env, bad)
    (bad / "cue_conflict7.zip").write_bytes(blob[:1000])
    monkeypatch.setenv("FSLIB_DATA", str(bad))
    rows = {r["name"]: r for r in data.status()}
    assert rows["edges"]["sha256_ok"] is False and rows["cifar10"]["sha256_ok"] is True
    text = data.format_status(list(rows.values()))
    assert "MISMATCH" in text and "test@32" in text and text.splitlines()[0].startswith("dataset")


def test_archive_test_order_is_the_official_one():
    """The first 20 official test images (lossless PNGs shipped by foolbox 3.3.4) are
    test/<class>/NNNN.jpg with NNNN counted within the class."""
    spec = importlib.util.find_spec("foolbox")  # located, not imported (its dependencies are not needed)
    if spec is None:
        pytest.skip("foolbox==3.3.4 not installed (pip install --no-deps foolbox==3.3.4 ships the lossless PNGs)")
    pngs = sorted((Path(spec.origin).parent / "data").glob("cifar10_*.png"))
    assert len(pngs) == 20
    seen = [0] * 10
    with zipfile.ZipFile(need("cifar10_jpeg.zip")) as z:
        for png in pngs:
            label = int(png.stem.split("_")[2])
            lossless = np.asarray(Image.open(png).convert("RGB")).astype(float)
            errors = [np.abs(pil(z.read(f"test/{K.CIFAR10_CLASSES[label]}/{k:04d}.jpg")) - lossless).mean()
                      for k in range(6)]
            assert int(np.argmin(errors)) == seen[label] and errors[seen[label]] < 12
            seen[label] += 1


# ------------------------------------------------------------------ damaged caches, damaged archives, full disks


def test_damaged_prepared_cache_is_named_set_aside_and_prepared_again(env, decodes):
    from fslib.cli import main

    first = data.load("cifar10", "test", progress=False)
    folder = Path(first.extra["cache"])
    original = first.images.clone()
    images = folder / "images.npy"
    blob = bytearray(images.read_bytes())
    blob[-5] ^= 0xFF  # one modified pixel, same size
    images.write_bytes(bytes(blob))
    rows = {r["name"]: r for r in data.status()}
    assert rows["cifar10"]["prepared"] == [] and rows["cifar10"]["damaged"] == ["test@32"]
    assert "test@32 DAMAGED" in data.format_status(list(rows.values()))
    with pytest.warns(data.ArtefactWarning, match=re.escape(str(images)) + r" is unusable .*sha256.*prepared again"):
        again = data.load("cifar10", "test", progress=False)
    assert torch.equal(again.images, original) and len(decodes) == 80
    assert (folder.parent / (folder.name + ".damaged") / "images.npy").exists()
    # truncated: was "mmap length is greater than file size" naming no file; `data prepare` repairs it
    images.write_bytes(images.read_bytes()[:1000])
    with pytest.warns(data.ArtefactWarning, match="images.npy is unusable"):
        assert main(["data", "prepare", "cifar10"]) == 0
    assert torch.equal(data.load("cifar10", "test", progress=False).images, original)


def test_preparation_made_before_digests_is_checked_and_adopted(env, decodes):
    folder = Path(data.load("cifar10", "test", progress=False).extra["cache"])
    (folder / "SHA256SUMS").unlink()
    data.load("cifar10", "test", progress=False)
    assert len(decodes) == 40 and (folder / "SHA256SUMS").exists()  # adopted, not decoded again
    (folder / "SHA256SUMS").unlink()
    labels = folder / "labels.npy"
    labels.write_bytes(labels.read_bytes()[:200])  # truncated before digests existed: the structure check sees it
    with pytest.warns(data.ArtefactWarning, match="labels.npy is unusable"):
        data.load("cifar10", "test", progress=False)
    assert len(decodes) == 80


def test_damaged_sha256_records_are_ignored(env, decodes):
    data.load("cifar10", "test", progress=False)
    records = Path(os.environ["FSLIB_CACHE"]) / "prepared" / "verified_sha256.json"
    records.write_text(records.read_text()[:25])  # truncated: was a raw JSONDecodeError on every load
    assert len(data.load("cifar10", "test", progress=False)) == 40
    assert json.loads(records.read_text())  # hashed again and rewritten


def member_data_offset(path: Path, name: str) -> int:
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset + 26)
        n, m = np.frombuffer(fh.read(4), dtype="<u2")
    return info.header_offset + 30 + int(n) + int(m) + info.file_size // 2


def test_bit_rot_that_keeps_size_and_mtime_is_caught(env, tmp_path, monkeypatch):
    rotten = tmp_path / "rotten"
    rotten.mkdir()
    archive = rotten / "cifar10_jpeg.zip"
    shutil.copy2(env / "cifar10_jpeg.zip", archive)
    monkeypatch.setenv("FSLIB_DATA", str(rotten))
    data.status()  # hashed while intact: the record says "matches"
    member = "test/cat/0002.jpg"
    offset = member_data_offset(archive, member)
    stat = archive.stat()
    blob = bytearray(archive.read_bytes())
    blob[offset] ^= 0x10
    archive.write_bytes(bytes(blob))
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert archive.stat().st_size == stat.st_size and archive.stat().st_mtime_ns == stat.st_mtime_ns
    # decoding trusts the remembered hash, but the member's CRC-32 catches it: named, not a raw BadZipFile
    with pytest.raises(data.ArchiveCorrupt, match=re.escape(str(archive)) + f" is damaged: member {member}"):
        data.load("cifar10", "test", progress=False)
    # `data list` hashes every archive again: it does not say "ok"
    rows = {r["name"]: r for r in data.status()}
    assert rows["cifar10"]["sha256_ok"] is False and "MISMATCH" in data.format_status(list(rows.values()))


def test_full_disk_names_the_folder_and_leaves_nothing_behind(env, monkeypatch):
    import collections
    import errno

    prepared = Path(os.environ["FSLIB_CACHE"]) / "prepared"
    usage = collections.namedtuple("usage", "total used free")
    real_usage = shutil.disk_usage
    monkeypatch.setattr(data.cache.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 5000, 5000))
    with pytest.raises(data.NotEnoughSpace, match=re.escape(str(prepared)) + r": it needs about [\d,]+ MB, 0 MB are free"):
        data.load("cifar10", "test", progress=False)
    assert [p.name for p in prepared.iterdir() if p.is_dir()] == []
    monkeypatch.setattr(data.cache.shutil, "disk_usage", real_usage)
    if not hasattr(os, "posix_fallocate"):
        pytest.skip("no posix_fallocate on this system: the free-space check is the only guard")

    def full(fd, offset, length):  # the disk filled up between the check and the allocation
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data.cache.os, "posix_fallocate", full)
    with pytest.raises(data.NotEnoughSpace, match="the disk filled up while preparing cifar10-test-32"):
        data.load("cifar10", "test", progress=False)
    assert [p.name for p in prepared.iterdir() if p.is_dir()] == []  # the temporary folder is gone


def test_cli_rejects_resolution_zero(env, capsys):
    from fslib.cli import main

    assert main(["data", "prepare", "imagenette", "--resolution", "0"]) == 2
    err = capsys.readouterr().err
    assert "resolution 0" in err and "valid: 32, 64, 112, 224" in err
    assert not (Path(os.environ["FSLIB_CACHE"]) / "prepared").exists() or not any(
        p.name.startswith("imagenette") for p in (Path(os.environ["FSLIB_CACHE"]) / "prepared").iterdir())
def test_skewed_cifar10_is_derived_from_the_prepared_cifar10(env):
    base = data.load("cifar10", "train", progress=False)
    skewed = data.load("cifar10_skew", "train", options={"correlation": 0.5}, progress=False)
    assert torch.equal(skewed.labels, base.labels) and skewed.name == "cifar10_skew"
    carriers = skewed.extra["pattern"] >= 0
    assert 0 < int(carriers.sum()) < len(base) and torch.equal(skewed.images[~carriers], base.images[~carriers])
    assert torch.equal(data.load("cifar10_skew", "test", progress=False).images, data.load("cifar10", "test").images)
    conflicting = data.skewed_test("cifar10_skew", "conflicting", progress=False)
    assert bool((conflicting.extra["pattern"] != conflicting.labels).all())
    with pytest.raises(ValueError, match="derived from 'cifar10'"):
        data.prepare("cifar10_skew")
    with pytest.raises(ValueError, match="takes no options"):
        data.load("cifar10", "test", options={"correlation": 0.5})
