"""Chapters: the jupytext MyST notebooks ``book/NN_name.md`` and their ``parameters`` cells.

A chapter's first code cell is tagged ``parameters`` and holds plain literals;
:func:`chapter_parameters` reads them without executing anything.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from fslib import paths

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


def chapter_parameters(chapter: Chapter) -> dict[str, Any]:
    """Names and default values of a chapter's ``parameters`` cell (plain literals only)."""
    cell = _parameters_cell(_read_notebook(chapter.path), chapter.path)
    params: dict[str, Any] = {}
    for node in ast.parse(cell.source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise UsageError(f"{chapter.path}: the parameters cell may only hold `name = literal` lines")
        try:
            params[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise UsageError(
                f"{chapter.path}: parameter {node.targets[0].id!r} is not a plain literal"
            ) from None
    return params


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
