"""Where fslib reads data and writes caches: the one place that knows the layout.

* ``data_root()``: the natural-image archives. ``$FSLIB_DATA`` when set, else the
  git-ignored ``data/local`` folder of the repository (or ``~/.cache/fslib/data`` when
  fslib is installed outside a checkout).
* ``cache_root()``: everything fslib computes and keeps (prepared datasets, synthetic
  sets, trained runs, DFMs). ``$FSLIB_CACHE`` when set, else the git-ignored
  ``data/cache`` folder of the repository (or ``~/.cache/fslib``).
* ``repo_root()``, ``book_dir()``, ``executed_dir()``: the book's layout.

A relative ``$FSLIB_CACHE`` or ``$FSLIB_DATA`` is relative to the working folder of the
process that reads it; :func:`pin_environment` makes them absolute once, so that the
chapters' kernels (which run in ``book/``) see the same folders as the command that
started them.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path | None:
    """The fsbook checkout that holds this package, or ``None`` when installed elsewhere."""
    candidate = _PACKAGE_DIR.parent
    if (candidate / "_toc.yml").exists() and (candidate / "book").is_dir():
        return candidate
    return None


def _require_repo() -> Path:
    root = repo_root()
    if root is None:
        raise RuntimeError(
            f"fslib at {_PACKAGE_DIR} is not inside an fsbook checkout (no _toc.yml beside it); "
            "the book commands need the repository."
        )
    return root


def data_root() -> Path:
    """Folder holding the natural-image archives (``$FSLIB_DATA``)."""
    env = os.environ.get("FSLIB_DATA")
    if env:
        return Path(env).expanduser().resolve()
    root = repo_root()
    return (root / "data" / "local") if root else Path.home() / ".cache" / "fslib" / "data"


def cache_root() -> Path:
    """Folder for everything fslib computes and keeps (``$FSLIB_CACHE``)."""
    env = os.environ.get("FSLIB_CACHE")
    if env:
        path = Path(env).expanduser().resolve()
    else:
        root = repo_root()
        path = (root / "data" / "cache") if root else Path.home() / ".cache" / "fslib"
    return path


PATH_VARIABLES = ("FSLIB_CACHE", "FSLIB_DATA", "FSLIB_IMAGENET10", "FSLIB_IMAGENET_SCT", "FSLIB_CUE_CONFLICT")


def pin_environment() -> dict[str, str]:
    """Make every relative path variable of :data:`PATH_VARIABLES` absolute, in ``os.environ``.

    Resolved against the current working folder, once: child processes (the chapters'
    kernels) inherit the absolute paths. Returns the variables that changed.
    """
    changed = {}
    for name in PATH_VARIABLES:
        value = os.environ.get(name)
        if value and not Path(value).expanduser().is_absolute():
            changed[name] = os.environ[name] = str(Path(value).expanduser().resolve())
    return changed


def cache_dir(*parts: str) -> Path:
    """A sub-folder of :func:`cache_root`, created on demand."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def book_dir() -> Path:
    return _require_repo() / "book"


def executed_dir() -> Path:
    """Git-ignored folder of papermill-executed notebooks that ``_toc.yml`` points at."""
    return book_dir() / "executed"


def profiles_dir() -> Path:
    return _PACKAGE_DIR / "book" / "profiles"
