"""Official downloads, each checked by a checksum, with a progress bar.

* CIFAR-10 and Imagenette: torchvision's own downloads (``CIFAR10(download=True)``,
  ``Imagenette(size="full", download=True)``), which check the md5 of the official
  archives; saved under ``<data root>/torchvision``.
* The texture-vs-shape stimuli of Geirhos et al. (``cue_conflict``, ``edges``,
  ``silhouettes``): the GitHub archive of github.com/rgeirhos/texture-vs-shape at the pinned
  commit :data:`TVS_COMMIT`. GitHub builds its archives on demand and does not promise
  byte-identical zips, so the check is on the *content*: :func:`tree_digest` of the
  extracted stimuli (the sha256 of the sorted ``"<sha256 of file>  <path>"`` lines of the
  1,601 files kept) must equal :data:`TVS_STIMULI_SHA256`. Only the three stimulus folders
  and ``DATASET_LICENSE`` are kept, in ``<data root>/texture-vs-shape`` (about 140 MB).

Downloads happen only when asked for (``download=True`` or ``FSLIB_DOWNLOAD=1``); a source
downloaded once is used later without asking again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from fslib.images import ArchiveCorrupt, DataError
from fslib.io import atomic_write_text
from fslib.paths import data_root

TVS_REPOSITORY = "https://github.com/rgeirhos/texture-vs-shape"
TVS_COMMIT = "ccd0c01d42c0a8a834e90ec141e7f24fa915dc23"  # "Updated explanation in README", 2023-05-02
TVS_URL = f"{TVS_REPOSITORY}/archive/{TVS_COMMIT}.zip"
TVS_KEEP = ("DATASET_LICENSE", "stimuli/style-transfer-preprocessed-512/", "stimuli/edges/", "stimuli/filled-silhouettes/")
# tree_digest of the kept files at TVS_COMMIT: computed from a git snapshot of the commit;
# the 881 files of the offline archive cue_conflict7.zip are byte-identical to theirs
TVS_STIMULI_SHA256 = "96d8afeb8bb854c47dd4c68834f58fc90dedf6ad70a705d006ca6b8352a08ef1"
TVS_FILES = 1601
VERIFIED = "VERIFIED"  # file in the kept folder: the digest it was checked against


class DownloadFailed(DataError):
    """An official download could not be fetched (no network, server error)."""


def tree_digest(root: Path) -> tuple[str, int]:
    """sha256 over the sorted ``"<sha256>  <relative path>\\n"`` lines of every file under ``root``
    (except :data:`VERIFIED`), and the number of files.

    Independent of how the files were packed (zip compression, timestamps, order).
    """
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != VERIFIED):
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(root).as_posix()}\n")
    lines.sort(key=lambda line: line.split("  ", 1)[1])
    return hashlib.sha256("".join(lines).encode()).hexdigest(), len(lines)


def fetch(url: str, dest: Path, *, progress: bool = True, desc: str = "") -> Path:
    """Stream ``url`` into ``dest`` (written to a temporary file, renamed when complete).

    Raises :class:`DownloadFailed` naming the URL and the reason (no network, HTTP error).
    """
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                # a fresh opener reads the proxy settings now (urlopen keeps the first ones forever)
                response = urllib.request.build_opener().open(url, timeout=60)
            except OSError as exc:  # URLError, HTTPError, timeouts, refused connections
                raise DownloadFailed(f"could not download {url}: {getattr(exc, 'reason', exc)}") from None
            total = int(response.headers.get("Content-Length") or 0) or None
            with response, tqdm(total=total, unit="B", unit_scale=True, desc=desc or dest.name, disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def stimuli_folder() -> Path:
    """Where the downloaded texture-vs-shape stimuli live: ``<data root>/texture-vs-shape``."""
    return data_root() / "texture-vs-shape"


def stimuli_downloaded() -> Path | None:
    """The downloaded stimuli folder when it was verified against :data:`TVS_STIMULI_SHA256`."""
    folder = stimuli_folder()
    marker = folder / VERIFIED
    if marker.is_file() and marker.read_text().strip() == TVS_STIMULI_SHA256:
        return folder
    return None


def download_stimuli(*, progress: bool = True, url: str | None = None) -> Path:
    """Download the texture-vs-shape stimuli at :data:`TVS_COMMIT` and check their content.

    The zip goes to a temporary file beside the target; the kept members are extracted into
    a temporary folder, checked with :func:`tree_digest`, and only then renamed to
    :func:`stimuli_folder`. A mismatch removes everything and raises :class:`ArchiveCorrupt`.
    """
    done = stimuli_downloaded()
    if done is not None:
        return done
    target = stimuli_folder()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".texture-vs-shape-"))
    try:
        archive = fetch(url or TVS_URL, work / "archive.zip", progress=progress, desc="texture-vs-shape stimuli")
        tree = work / "texture-vs-shape"
        _extract_kept(archive, tree)
        archive.unlink()
        actual, n = tree_digest(tree)
        if actual != TVS_STIMULI_SHA256:
            raise ArchiveCorrupt(
                f"the texture-vs-shape stimuli downloaded from {url or TVS_URL} do not match: content digest {actual} "
                f"over {n} files, expected {TVS_STIMULI_SHA256} over {TVS_FILES} (fslib.data.download); nothing was kept")
        atomic_write_text(tree / VERIFIED, TVS_STIMULI_SHA256 + "\n")
        if target.exists():
            shutil.rmtree(target)  # an unverified leftover
        os.replace(tree, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _extract_kept(archive: Path, tree: Path) -> None:
    """Extract the members under :data:`TVS_KEEP` (GitHub puts everything under one top folder)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _, _, rel = info.filename.partition("/")
                if info.is_dir() or not rel.startswith(TVS_KEEP) or ".." in Path(rel).parts:
                    continue
                dest = tree / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
    except zipfile.BadZipFile as exc:
        raise ArchiveCorrupt(f"the texture-vs-shape download is not a readable zip ({exc})") from None


def download_torchvision(name: str, root: Path) -> None:
    """torchvision's official download of ``cifar10`` or ``imagenette`` into ``root`` (md5-checked)."""
    try:
        if name == "cifar10":
            from torchvision.datasets import CIFAR10

            for train in (True, False):
                CIFAR10(str(root), train=train, download=True)
        else:
            from torchvision.datasets import Imagenette

            for split in ("train", "val"):
                Imagenette(str(root), split=split, size="full", download=True)
    except OSError as exc:  # URLError is an OSError
        raise DownloadFailed(f"could not download {name} with torchvision: {getattr(exc, 'reason', exc)}") from None
    except RuntimeError as exc:  # torchvision: "File not found or corrupted", md5 mismatch
        raise ArchiveCorrupt(f"torchvision's download of {name} failed its check: {exc}") from None


def torchvision_downloaded(name: str, root: Path) -> bool:
    """Whether torchvision's files of ``name`` are already in ``root`` (checked again when read)."""
    if name == "cifar10":
        return (root / "cifar-10-batches-py" / "test_batch").is_file()
    return all((root / "imagenette2" / split).is_dir() for split in ("train", "val"))
