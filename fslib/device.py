"""Device selection: ``device="auto"`` means CUDA when present, else CPU; :func:`one_thread`
runs a block of many tiny torch operations on one CPU thread."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

VALID = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"`` (or ``None``) into a concrete device; validate anything else.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; valid: {', '.join(VALID)}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return dev


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the caller's setting.

    For work made of many tiny operations (the synthetic generator, the toy networks of
    :mod:`fslib.ntk_linear`): on shared cores two threads ran them an order of magnitude
    slower, and one thread keeps their reductions independent of the caller's thread count.

    >>> before = torch.get_num_threads()
    >>> with one_thread():
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously); a no-op elsewhere,
    so a timing around it measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
