"""A fresh machine: the data preflight of ``fslib run`` (fslib.book.preflight), the official
downloads (fslib.data.download) and the Makefile's FSLIB_DOWNLOAD. No test touches the
internet: downloads come from a local server, and "no network" is a proxy that refuses."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from fslib import book, data
from fslib.book import preflight
from fslib.cli import main
from fslib.data import download

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = book.discover_chapters()
NO_NETWORK = "http://127.0.0.1:9"  # the discard port: nothing listens, every connection is refused


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """An empty FSLIB_DATA, downloads not allowed, a fresh cache."""
    monkeypatch.setenv("FSLIB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FSLIB_DOWNLOAD", raising=False)
    for var in ("FSLIB_CUE_CONFLICT", "FSLIB_IMAGENET10", "FSLIB_IMAGENET_SCT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _never_run(monkeypatch):
    ran = []
    monkeypatch.setattr(book, "run_chapters", lambda *a, **k: ran.append("run"))
    return ran


def test_missing_data_stops_before_any_chapter_with_one_message(no_data, monkeypatch, capsys):
    ran = _never_run(monkeypatch)
    code = main(["run", "--profile", "smoke"])
    err = capsys.readouterr().err
    assert code == 1 and ran == []
    assert err.count("error:") == 1 and "nothing was run" in err
    needed: dict[str, list[int]] = {}  # what each chapter's front matter declares, with the smoke values
    for plan in book.plan_run("smoke"):
        for name in book.chapter_datasets(plan.chapter, {**plan.defaults, **plan.parameters}):
            needed.setdefault(name, []).append(plan.chapter.number)
    assert {"cifar10", "imagenette", "cue_conflict", "edges", "silhouettes"} <= set(needed)
    assert needed["imagenette"] == [3, 4, 7] and needed["edges"][0] == 5
    for name in ("cifar10", "imagenette", "cue_conflict", "edges", "silhouettes"):
        numbers = needed[name]
        chapters = ("chapters " if len(numbers) > 1 else "chapter ") + ", ".join(map(str, numbers))
        assert f"- {name} ({chapters}):" in err
    # the two ways: the archives in FSLIB_DATA, or the official downloads
    assert "1. offline: put cifar10_jpeg.zip, cue_conflict7.zip, imagenette_224.zip in one folder and set FSLIB_DATA" in err
    assert "2. online: FSLIB_DOWNLOAD=1" in err and "make book" in err


def test_the_preflight_follows_the_chosen_chapters_and_their_parameters(no_data, monkeypatch, capsys):
    ran = _never_run(monkeypatch)
    assert main(["run", "--profile", "smoke", "--chapter", "1"]) == 0 and ran == ["run"]  # synthetic only
    assert preflight.needed_datasets(book.plan_run("smoke", ["5"])) == {
        n: ["05_ood_transfer"] for n in ("cifar10", "cue_conflict", "edges", "silhouettes")}
    needed = preflight.needed_datasets(book.plan_run("smoke", ["5"], {"imagenet_sct": True}))
    assert {"imagenet10", "imagenet_sct"} <= set(needed)
    with pytest.raises(book.DataMissing, match=r"imagenet10 \(chapter 5\).*FSLIB_IMAGENET10"):
        book.check_data(book.plan_run("smoke", ["5"], {"imagenet_sct": True}))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_every_dataset_a_chapter_loads_is_declared_in_its_front_matter(chapter):
    loaded = set(re.findall(r"data\.load\(\"(\w+)\"", chapter.path.read_text()))
    loaded |= {n for names in re.findall(r"for name in \(([^)]*)\)", chapter.path.read_text())
               for n in re.findall(r"\"(\w+)\"", names)}
    natural = {n for n in loaded if n in data.DATASETS and not n.startswith("syn_")}
    values = {**book.chapter_parameters(chapter), "imagenet_sct": True}
    assert natural <= set(book.chapter_datasets(chapter, values)), natural


def test_a_bad_fslib_download_value_is_named(no_data, monkeypatch, capsys):
    _never_run(monkeypatch)
    monkeypatch.setenv("FSLIB_DOWNLOAD", "maybe")
    assert main(["run", "--profile", "smoke", "--chapter", "2"]) == 1
    assert "FSLIB_DOWNLOAD='maybe'" in capsys.readouterr().err


def test_no_network_stops_before_chapter_1_and_says_the_download_failed(no_data, monkeypatch, capsys):
    ran = _never_run(monkeypatch)
    monkeypatch.setenv("FSLIB_DOWNLOAD", "1")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, NO_NETWORK)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    def offline(name, root):
        raise download.DownloadFailed(f"could not download {name} with torchvision: [Errno 111] Connection refused")

    monkeypatch.setattr("fslib.data.sources.download_torchvision", offline)  # the real one: the slow test below
    code = main(["run", "--profile", "smoke", "--chapter", "5"])
    err = capsys.readouterr().err
    assert code == 1 and ran == []
    assert "could not download https://github.com/rgeirhos/texture-vs-shape/archive/" in err
    assert "downloads were allowed (FSLIB_DOWNLOAD) but failed" in err
    assert not (no_data / "data" / "texture-vs-shape").exists()  # nothing half-downloaded is kept


def test_the_makefile_downloads_when_fslib_data_is_unset():
    env = {k: v for k, v in os.environ.items() if k not in ("FSLIB_DATA", "FSLIB_DOWNLOAD", "MAKEFLAGS")}

    def variables(*extra):
        out = subprocess.run(["make", "-pn", "STAMP=/dev/null", *extra, "book"], cwd=ROOT, env=env,
                             capture_output=True, text=True).stdout
        return dict(re.findall(r"^(FSLIB_\w+) :?= (.*)$", out, flags=re.MULTILINE))

    assert variables("SHARED_DATA=/nonexistent").get("FSLIB_DOWNLOAD") == "1"
    assert "FSLIB_DOWNLOAD" not in variables("SHARED_DATA=/nonexistent", "FSLIB_DATA=/some/archives")


@pytest.mark.slow
def test_make_book_without_data_and_network_stops_before_chapter_1(tmp_path):
    """`make book` on a fresh machine without FSLIB_DATA and without network (a refusing proxy)."""
    stamp = tmp_path / "installed"
    stamp.touch()  # newer than pyproject.toml: the install step is done
    env = {k: v for k, v in os.environ.items() if k not in ("FSLIB_DATA", "FSLIB_DOWNLOAD", "MAKEFLAGS", "no_proxy", "NO_PROXY")}
    env.update(FSLIB_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT),
               http_proxy=NO_NETWORK, https_proxy=NO_NETWORK, HTTP_PROXY=NO_NETWORK, HTTPS_PROXY=NO_NETWORK)
    executed = sorted(p.stat().st_mtime for p in (ROOT / "book" / "executed").glob("*.ipynb"))
    result = subprocess.run(["make", "book", f"PY={sys.executable}", f"STAMP={stamp}", "SHARED_DATA=/nonexistent"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "nothing was run" in out and "could not download" in out and "FSLIB_DATA" in out, out
    assert "executing" not in out  # stopped before chapter 1
    assert sorted(p.stat().st_mtime for p in (ROOT / "book" / "executed").glob("*.ipynb")) == executed


# ---- the texture-vs-shape download ------------------------------------------------------------


def _github_like_zip(path: Path, files: dict[str, bytes]) -> None:
    """A zip laid out as GitHub's archive: everything under one top folder, plus files not kept."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in {**files, "README.md": b"not kept", "raw-data/x.csv": b"1,2"}.items():
            zf.writestr(f"texture-vs-shape-{download.TVS_COMMIT}/{name}", content)


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over ``tmp_path / 'www'``; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.log_message = lambda *a: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    httpd.shutdown()
    httpd.server_close()


FILES = {"DATASET_LICENSE": b"CC BY 4.0", "stimuli/edges/cat/cat1.png": b"png-1",
         "stimuli/style-transfer-preprocessed-512/cat/cat1-dog2.png": b"png-2"}


def _digest_of(files: dict[str, bytes], tmp: Path) -> str:
    for name, content in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(content)
    return download.tree_digest(tmp)[0]


def test_stimuli_download_is_extracted_checked_and_kept(no_data, server, monkeypatch, tmp_path):
    base, www = server
    _github_like_zip(www / "tvs.zip", FILES)
    monkeypatch.setattr(download, "TVS_STIMULI_SHA256", _digest_of(FILES, tmp_path / "expected"))
    folder = download.download_stimuli(url=f"{base}/tvs.zip", progress=False)
    assert folder == download.stimuli_folder() == no_data / "data" / "texture-vs-shape"
    kept = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert kept == sorted([*FILES, download.VERIFIED])  # README.md and raw-data/ were left out
    assert download.stimuli_downloaded() == folder
    assert download.download_stimuli(url=f"{base}/missing.zip", progress=False) == folder  # not fetched twice


def test_a_stimuli_download_with_other_content_is_refused_and_nothing_kept(no_data, server, monkeypatch):
    base, www = server
    _github_like_zip(www / "tvs.zip", {**FILES, "stimuli/edges/cat/cat1.png": b"tampered"})
    monkeypatch.setattr(download, "TVS_STIMULI_SHA256", "0" * 64)
    with pytest.raises(data.ArchiveCorrupt, match="do not match: content digest .* expected 0000"):
        download.download_stimuli(url=f"{base}/tvs.zip", progress=False)
    assert not download.stimuli_folder().exists()
    assert not [p for p in download.stimuli_folder().parent.iterdir() if p.name.startswith(".")]


def test_an_unreachable_download_raises_download_failed(no_data):
    with pytest.raises(download.DownloadFailed, match="could not download http://127.0.0.1:9/x.zip"):
        download.fetch("http://127.0.0.1:9/x.zip", Path(os.environ["FSLIB_DATA"]) / "x.zip", progress=False)


def test_the_downloaded_stimuli_are_a_source_without_asking_again(no_data, monkeypatch):
    calls = []
    folder = download.stimuli_folder()

    def fake_download(progress=True, url=None):
        calls.append(url)
        (folder / "stimuli").mkdir(parents=True)
        (folder / download.VERIFIED).write_text(download.TVS_STIMULI_SHA256)
        return folder

    monkeypatch.setattr("fslib.data.sources.download_stimuli", fake_download)
    assert "FSLIB_DOWNLOAD=1" in data.find_sources(["edges"])["edges"] and calls == []  # never without asking
    assert data.find_sources(["edges", "silhouettes"], download=True) == {"edges": None, "silhouettes": None}
    assert calls == [None]
    assert data.find_sources(["cue_conflict"]) == {"cue_conflict": None}  # here now: no FSLIB_DOWNLOAD needed


def test_pinned_download_values_agree_with_the_manifest_and_the_data_readme():
    manifest = json.loads((ROOT / "data" / "manifest.json").read_text())
    tvs = next(d for d in manifest["downloads"] if "cue_conflict" in d["datasets"])
    assert tvs["commit"] == download.TVS_COMMIT and tvs["url"] == download.TVS_URL
    assert tvs["content_sha256"] == download.TVS_STIMULI_SHA256 and tvs["files"] == download.TVS_FILES
    assert tvs["kept"] == list(download.TVS_KEEP)
    readme = (ROOT / "data" / "README.md").read_text()
    assert download.TVS_STIMULI_SHA256 in readme and download.TVS_COMMIT in readme


@pytest.mark.skipif(not (Path(os.environ.get("FSLIB_DATA", "/nonexistent")) / "cue_conflict7.zip").is_file(),
                    reason="needs the offline archive cue_conflict7.zip in FSLIB_DATA")
def test_the_offline_archive_is_the_pinned_commit():
    """cue_conflict7.zip was built from the same commit (its zip comment) as the pinned download."""
    with zipfile.ZipFile(Path(os.environ["FSLIB_DATA"]) / "cue_conflict7.zip") as zf:
        assert zf.comment.decode() == download.TVS_COMMIT


def test_paper_profile_on_a_cpu_warns_with_its_cost(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    warning = book.cost_warning("paper", book.plan_run("paper", ["2"]))
    assert warning and "400x the training compute" in warning and "GPU" in warning
    assert book.cost_warning("default", book.plan_run("default", ["2"])) is None
    ran = _never_run(monkeypatch)
    monkeypatch.setattr(book, "check_data", lambda *a, **k: None)
    assert main(["run", "--profile", "paper", "--chapter", "1"]) == 0 and ran == ["run"]
    assert "warning: the paper profile on a CPU" in capsys.readouterr().err
