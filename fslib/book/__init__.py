"""The book pipeline: chapters, profiles, papermill execution, the Jupyter Book build and its checks.

* :mod:`~fslib.book.chapters`: a **chapter** is a jupytext MyST notebook ``book/NN_name.md``
  whose first code cell is tagged ``parameters`` and holds plain literals.
* :mod:`~fslib.book.profiles`: a **profile** (``fslib/book/profiles/<name>.yml``) overrides
  chapter parameters; :func:`plan_run` validates everything before anything executes.
* :mod:`~fslib.book.runner`: :func:`run_chapters` executes chapters with papermill into
  ``book/executed/`` (cached per profile).
* :mod:`~fslib.book.site`: :func:`build` writes the reproducibility appendix and runs
  ``jupyter-book build``; :mod:`~fslib.book.htmlcheck` checks the built HTML.
* :mod:`~fslib.book.lock`: :func:`checkout_lock`, one ``run`` or ``build`` at a time per
  checkout.

This is tooling around the science library: nothing in :mod:`fslib` outside this package
imports it.
"""

from fslib.book.chapters import (
    CHAPTER_PATTERN,
    Chapter,
    ChapterFailed,
    UsageError,
    chapter_parameters,
    discover_chapters,
    select_chapters,
)
from fslib.book.lock import Busy, checkout_lock
from fslib.book.profiles import Plan, available_profiles, load_profile, parse_assignments, plan_run
from fslib.book.runner import (
    RUN_RECORDS,
    library_fingerprint,
    plain_scalar_text,
    read_run_records,
    run_chapters,
    run_settings_markdown,
)
from fslib.book.site import build, reproducibility_markdown, toc_files

__all__ = [
    "CHAPTER_PATTERN", "Chapter", "ChapterFailed", "UsageError", "chapter_parameters", "discover_chapters",
    "select_chapters", "Plan", "available_profiles", "load_profile", "parse_assignments", "plan_run", "RUN_RECORDS",
    "library_fingerprint", "plain_scalar_text", "run_chapters", "run_settings_markdown", "build",
    "reproducibility_markdown", "toc_files", "Busy", "checkout_lock", "read_run_records",
]
