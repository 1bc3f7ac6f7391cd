"""fslib.artefacts: digests written with every cached file and checked when it is read."""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch

from fslib import artefacts, io
from fslib.artefacts import ArtefactDamaged


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0x01
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # bit rot keeps the size and the mtime
    return offset


def test_round_trip_in_sha256sum_format(tmp_path):
    path = tmp_path / "a.npz"
    digest = artefacts.save_npz(path, x=np.arange(5))
    record = artefacts.record_path(path)
    assert record.name == "a.npz.sha256" and record.read_text() == f"{digest}  a.npz\n"
    assert artefacts.verify(path) == digest == io.sha256_file(path)
    assert np.array_equal(artefacts.load_npz(path)["x"], np.arange(5))
    if shutil.which("sha256sum"):  # checkable by hand
        assert subprocess.run(["sha256sum", "-c", record.name], cwd=tmp_path, capture_output=True).returncode == 0


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_file_is_named_and_never_parsed(tmp_path, damage):
    path = tmp_path / "state.pt"
    artefacts.torch_save({"w": torch.arange(1000.0)}, path)
    if damage == "flip":
        flip_byte(path)
    else:
        path.write_bytes(path.read_bytes()[:100])
    parsed = []
    with pytest.raises(ArtefactDamaged, match=r"state\.pt is damaged: its sha256 .* differs") as info:
        artefacts.load(path, parsed.append)
    assert info.value.path == path and not parsed
    with pytest.raises(ArtefactDamaged, match="state.pt"):
        artefacts.verify(path)


def test_file_without_record_is_adopted_once_it_parses(tmp_path):
    path = tmp_path / "old.json"
    io.write_json(path, {"a": 1})  # written before digests existed
    assert artefacts.verify(path) is None
    assert artefacts.read_json(path) == {"a": 1}
    assert artefacts.verify(path) == io.sha256_file(path)  # adopted: from now on it is checked
    path.write_text("{not json")
    artefacts.record_path(path).unlink()
    with pytest.raises(ArtefactDamaged, match=r"old\.json is damaged: cannot be read \(JSONDecodeError"):
        artefacts.read_json(path)
    assert not artefacts.record_path(path).exists()  # nothing unreadable is ever adopted


def test_damaged_record_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "m.json"
    artefacts.write_json(path, [1, 2])
    artefacts.record_path(path).write_text("garbage\n")
    with pytest.raises(ArtefactDamaged, match=r"m\.json is damaged: its digest record m\.json\.sha256 is not in"):
        artefacts.read_json(path)


def test_a_crash_before_the_record_leaves_no_wrong_record(tmp_path, monkeypatch):
    path = tmp_path / "c.txt"
    artefacts.write_text(path, "old")

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(artefacts, "atomic_write_text", die)  # dies between the rename and the record
    with pytest.raises(KeyboardInterrupt):
        artefacts.write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "new" and not artefacts.record_path(path).exists()
    assert artefacts.read_text(path) == "new"  # a file without a record: adopted, not rejected


def test_discard_moves_aside_and_warns(tmp_path):
    path = tmp_path / "d.npz"
    artefacts.save_npz(path, x=np.zeros(3))
    (tmp_path / "d.npz.damaged").write_text("an older casualty")
    flip_byte(path, 40)
    with pytest.raises(ArtefactDamaged) as info:
        artefacts.load_npz(path)
    with pytest.warns(artefacts.ArtefactWarning, match=r"d\.npz is unusable .*moved to d\.npz\.damaged, rebuilt"):
        aside = artefacts.discard(info.value, path, "rebuilt.")
    assert aside == tmp_path / "d.npz.damaged" and aside.stat().st_size > 100
    assert not path.exists() and not artefacts.record_path(path).exists()


def test_folder_record_names_the_damaged_file_and_hashes_once_per_process(tmp_path, monkeypatch):
    for name, size in (("images.npy", 5000), ("labels.npy", 100)):
        (tmp_path / name).write_bytes(os.urandom(size))
    artefacts.seal_folder(tmp_path, ["images.npy", "labels.npy"])
    calls = []
    real = artefacts.sha256_file
    monkeypatch.setattr(artefacts, "sha256_file", lambda p: calls.append(p) or real(p))
    artefacts._CHECKED.clear()
    assert artefacts.verify_folder(tmp_path, ["images.npy"]) and artefacts.verify_folder(tmp_path)
    assert len(calls) == 2  # each file once, however often the folder is checked
    flip_byte(tmp_path / "images.npy")  # same size and mtime, but a new ctime: hashed again
    with pytest.raises(ArtefactDamaged, match=r"images\.npy is damaged: .*SHA256SUMS"):
        artefacts.verify_folder(tmp_path)
    artefacts.seal_folder(tmp_path, ["images.npy"])
    with pytest.raises(ArtefactDamaged, match=r"labels\.npy is damaged: it is not listed"):
        artefacts.verify_folder(tmp_path, ["labels.npy"])
    (tmp_path / "images.npy").unlink()
    with pytest.raises(ArtefactDamaged, match=r"images\.npy is damaged: it is missing"):
        artefacts.verify_folder(tmp_path)
    assert artefacts.verify_folder(tmp_path / "nothing-here") is False


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, monkeypatch, mask, mode):
    monkeypatch.setattr(io, "_UMASK", mask)
    io.atomic_write_text(tmp_path / "f.txt", "x")
    artefacts.write_text(tmp_path / "g.txt", "y")
    for name in ("f.txt", "g.txt", "g.txt.sha256"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_the_umask_is_read_from_the_process():
    mask = os.umask(0o022)
    os.umask(mask)
    assert io._current_umask() == mask


def test_adoption_of_a_read_only_cache_still_loads(tmp_path, monkeypatch):
    path = tmp_path / "ro.json"
    io.write_json(path, {"k": 2})

    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(artefacts, "atomic_write_text", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert artefacts.read_json(path) == {"k": 2}
