"""Checks of the built HTML (run after `python -m fslib build`; `make test` does).

The site location is `$FSBOOK_HTML` (default `_build/html`). These tests fail, not skip,
when the site is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fslib import book
from fslib.book.htmlcheck import check_site, page_problems

pytestmark = pytest.mark.html
ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("FSBOOK_HTML", ROOT / "_build" / "html"))


def test_site_exists():
    assert (HTML / "index.html").exists(), f"no built site at {HTML}; run `python -m fslib build`"


def test_every_page_is_there_offline_and_without_errors():
    problems = check_site(HTML, book.toc_files(), ROOT)
    assert not problems, "\n".join(problems)


def test_chapters_with_figures_show_images():
    for chapter in book.discover_chapters():
        page = HTML / "book" / "executed" / f"{chapter.stem}.html"
        assert page.exists(), page
        assert "<img" in page.read_text(), f"{chapter.stem} shows no figure"


def test_run_settings_box_and_hidden_parameters():
    for chapter in book.discover_chapters():
        text = (HTML / "book" / "executed" / f"{chapter.stem}.html").read_text()
        assert "Run settings" in text, chapter.stem
        assert "Parameters" in text and "injected-parameters" not in text


def test_reproducibility_page_lists_every_chapter():
    text = (HTML / "book" / "executed" / "reproducibility.html").read_text()
    for chapter in book.discover_chapters():
        assert chapter.stem in text
    assert "torch" in text and "git commit" in text


def test_math_renders_offline():
    pages = [p for p in HTML.rglob("*.html") if "math" in p.read_text()]
    for page in pages:
        text = page.read_text()
        assert "cdn.jsdelivr" not in text and "mathjax@" not in text.lower(), page


def test_checker_catches_problems():
    # the checker itself must be able to fail
    bad = (
        '<html><head><script src="https://cdn.example.org/x.js"></script>'
        '<link rel="stylesheet" href="//cdn.example.org/x.css"></head>'
        '<body><main><div class="cell_output"><pre>Traceback (most recent call last):\n</pre></div></main></body></html>'
    )
    problems = page_problems(bad, name="bad", expect_images=True)
    assert any("external script" in p for p in problems)
    assert any("external stylesheet" in p for p in problems)
    assert any("traceback" in p for p in problems)
    assert any("no image" in p for p in problems)
    assert page_problems('<html><main><img src="a.png"></main></html>', name="ok", expect_images=True) == []
