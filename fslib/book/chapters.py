"""Chapters: the jupytext MyST notebooks ``book/NN_name.md`` and their ``parameters`` cells.

A chapter's first code cell is tagged ``parameters`` and holds plain literals;
:func:`chapter_parameters` reads them without executing anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from fslib import paths
from fslib.book.parameters import Declaration, ParameterError, read_declarations

CHAPTER_PATTERN = re.compile(r"^(\d\d)_([a-z0-9_]+)\.md$")


class UsageError(ValueError):
    """A bad profile, chapter or parameter name: the CLI prints it and exits with status 2."""


class ChapterFailed(RuntimeError):
    """A chapter raised while executing; the partial notebook is kept for inspection."""


@dataclass(frozen=True)
class Chapter:
    number: int
    stem: str
    path: Path

    @property
    def executed_path(self) -> Path:
        return paths.executed_dir() / f"{self.stem}.ipynb"


def discover_chapters(book: Path | None = None) -> list[Chapter]:
    """Every ``book/NN_name.md`` chapter, in order."""
    book = book or paths.book_dir()
    found = []
    for path in sorted(book.glob("*.md")):
        m = CHAPTER_PATTERN.match(path.name)
        if m:
            found.append(Chapter(int(m.group(1)), path.stem, path))
    return found


def _read_notebook(path: Path):
    import jupytext

    return jupytext.read(path)


def _parameters_cell(nb, path: Path):
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    raise UsageError(f"{path}: no code cell tagged 'parameters'")


def chapter_declarations(chapter: Chapter) -> dict[str, Declaration]:
    """The typed declarations of a chapter's ``parameters`` cell (:mod:`fslib.book.parameters`)."""
    cell = _parameters_cell(_read_notebook(chapter.path), chapter.path)
    try:
        return read_declarations(cell.source, str(chapter.path))
    except (ParameterError, SyntaxError) as exc:
        raise UsageError(str(exc)) from None


def chapter_parameters(chapter: Chapter) -> dict[str, Any]:
    """Names and default values of a chapter's ``parameters`` cell (plain literals only)."""
    return {name: d.default for name, d in chapter_declarations(chapter).items()}


def chapter_datasets(chapter: Chapter, values: dict[str, Any]) -> list[str]:
    """The natural-image datasets a chapter loads with parameter ``values``, from its front matter.

    A chapter declares them in its jupytext front matter::

        fsbook_data:
          datasets: [cifar10, cue_conflict]      # always
          when:                                  # only when a boolean parameter is true
            imagenet_sct: [imagenet10, imagenet_sct]
    """
    meta = _read_notebook(chapter.path).metadata.get("fsbook_data") or {}
    names = list(meta.get("datasets") or [])
    for flag, more in (meta.get("when") or {}).items():
        if flag not in values:
            raise UsageError(f"{chapter.path}: fsbook_data.when names {flag!r}, which is not a parameter")
        if values[flag]:
            names += [n for n in more if n not in names]
    return names


def select_chapters(selectors: Iterable[str] | None, chapters: list[Chapter] | None = None) -> list[Chapter]:
    """Chapters matching ``selectors`` ("1", "01", "01_synthetic_datasets"); all when empty."""
    chapters = chapters if chapters is not None else discover_chapters()
    if not selectors:
        return chapters
    chosen = []
    for sel in selectors:
        match = [c for c in chapters if sel in (c.stem, f"{c.number:02d}") or (sel.isdigit() and int(sel) == c.number)]
        if not match:
            valid = ", ".join(f"{c.number} ({c.stem})" for c in chapters)
            raise UsageError(f"unknown chapter {sel!r}; valid chapters: {valid}")
        chosen.extend(c for c in match if c not in chosen)
    return sorted(chosen, key=lambda c: c.number)
