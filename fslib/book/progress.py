"""What ``fslib run`` shows while a chapter executes: a bar over its cells and the kernel's own bars.

papermill draws one bar per chapter (cells executed). The kernel's stderr, where the
trainings' and ablations' tqdm bars and any warning go, is forwarded by
:class:`KernelStderr`: complete lines as they come, and a bar's latest state at most every
``every`` seconds, printed above the chapter's bar so that the two never garble each other.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

# ipykernel has no widgets here, and tqdm.auto says so once per kernel: not news to a reader
_NOISE = ("IProgress not found", "from .autonotebook import tqdm as notebook_tqdm")


def cells_bar(stem: str, stream: TextIO | None = None) -> dict[str, Any]:
    """papermill's ``progress_bar`` options: one bar per chapter, counting cells."""
    stream = stream or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    return {"desc": stem, "unit": "cell", "file": stream, "mininterval": 0.5 if tty else 30.0, "leave": True,
            "dynamic_ncols": tty}


class KernelStderr:
    """A file-like sink for the kernel's stderr (papermill's ``stderr_file``).

    Parameters
    ----------
    emit : callable taking one line (default: ``tqdm.write`` to ``sys.stderr``)
    every : seconds between two snapshots of a bar that is still running
    indent : put before every forwarded line
    """

    def __init__(self, emit: Callable[[str], None] | None = None, every: float = 20.0, indent: str = "    "):
        self.emit = emit or _tqdm_write
        self.every = every
        self.indent = indent
        self._partial = ""
        self._last = -float("inf")

    def write(self, text: str) -> int:
        for piece in _split_keep(text):
            if piece == "\n":
                self._line(self._partial, final=True)
                self._partial = ""
            elif piece == "\r":
                self._line(self._partial, final=False)
                self._partial = ""
            else:
                self._partial += piece
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._partial.strip():
            self._line(self._partial, final=True)
        self._partial = ""

    def _line(self, line: str, final: bool) -> None:
        line = line.rstrip()
        if not line.strip() or any(noise in line for noise in _NOISE):
            return
        now = time.monotonic()
        if final or now - self._last >= self.every:
            self._last = now
            self.emit(self.indent + line.strip())


def _split_keep(text: str) -> list[str]:
    out, buf = [], ""
    for ch in text:
        if ch in "\r\n":
            if buf:
                out.append(buf)
                buf = ""
            out.append(ch)
        else:
            buf += ch
    if buf:
        out.append(buf)
    return out


def _tqdm_write(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)
