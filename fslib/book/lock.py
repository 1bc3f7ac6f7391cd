"""One book command at a time per checkout: a lock on ``book/executed/``.

``fslib run`` and ``fslib build`` both write ``book/executed/`` (the notebooks the site is
built from, their run records), so two of them at once in one checkout (``make test`` and
``make book``) would mix their notebooks. :func:`checkout_lock` takes an exclusive
``flock`` on ``book/executed/.fslib.lock`` and writes the holder's pid, command and start
time into it; a second command refuses at once with :class:`Busy`, naming the holder. The
operating system releases the lock when its holder exits, however it exits, so a lock left
by a killed process is never in the way (the file stays, unlocked: a *stale* lock).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from fslib import paths

LOCK_NAME = ".fslib.lock"


class Busy(RuntimeError):
    """Another fslib command holds this checkout's lock."""


def lock_path() -> Path:
    return paths.executed_dir() / LOCK_NAME


def _holder(file: Path) -> str:
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
        return f"pid {info['pid']}, `{info['command']}`, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def checkout_lock(command: str) -> Iterator[Path]:
    """Hold this checkout's lock while the block runs; :class:`Busy` if another process holds it.

    On systems without ``fcntl`` (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; runs are not guarded
        yield lock_path()
        return
    file = lock_path()
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"another fslib command is using this checkout's book/executed/ ({_holder(file)}; lock file "
                       f"{file}). Wait for it to finish, or stop it, then run this again.") from None
        record = {"pid": os.getpid(), "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        try:
            yield file
        finally:
            os.ftruncate(fd, 0)  # an unlocked, empty file: nobody holds it
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
