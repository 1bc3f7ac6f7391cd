"""Checks of the built HTML (run after `python -m fslib build`; `make test` does).

The site location is `$FSBOOK_HTML` (default `_build/html`). These tests fail, not skip,
when the site is missing.
"""

from __future__ import annotations

import os
import re
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


def test_checker_catches_cut_table_cells():
    cut = '<html><main><table><tr><td>CPU budget: cost grows with the pixel co...</td></tr></table></main></html>'
    assert any("cut short" in p for p in page_problems(cut, name="cut"))
    assert page_problems('<html><main><table><tr><td>Syn_B1..Syn_B4</td></tr></table></main></html>', name="ok") == []


# ---- the book reads at a glance ----------------------------------------------------------------

import nbformat  # noqa: E402
from bs4 import BeautifulSoup  # noqa: E402

from fslib.book.parameters import literal  # noqa: E402
from fslib.report import NOT_JUDGED, VERDICTS  # noqa: E402


def _soup(page: str) -> BeautifulSoup:
    return BeautifulSoup((HTML / page).read_text(encoding="utf-8"), "html.parser")


def _run_meta(chapter) -> dict:
    return nbformat.read(ROOT / "book" / "executed" / f"{chapter.stem}.ipynb", as_version=4).metadata["fsbook"]


def test_intro_has_the_results_at_a_glance():
    soup = _soup("book/intro.html")
    section = soup.find(id="results-at-a-glance")
    assert section is not None, "no 'Results at a glance' section in the intro"
    rows = section.find("table").find("tbody").find_all("tr")
    assert len(rows) >= 8
    linked = set()
    for row in rows:
        claim, verdict, robust, chapter, profile = (td.get_text(" ", strip=True) for td in row.find_all("td"))
        assert verdict in VERDICTS or verdict.startswith(NOT_JUDGED), (claim, verdict)
        glance = r"(holds under (none|\d+)|not judged under any) of \d+ settings( \(.+\))?"
        assert robust == "—" or re.fullmatch(glance, robust), (claim, robust)
        assert profile in book.available_profiles(), (claim, profile)
        href = row.find_all("td")[3].find("a")["href"]
        assert href.startswith("executed/") and "found" in href, href
        linked.add(href.split("#")[0])
    assert {f"executed/{c.stem}.html" for c in book.discover_chapters()} == linked


def test_smoke_pages_say_their_numbers_are_not_results():
    for chapter in book.discover_chapters():
        soup = _soup(f"book/executed/{chapter.stem}.html")
        banner = soup.select(".fsbook-not-results")
        if _run_meta(chapter)["profile"] == "smoke":
            assert banner and "not results" in banner[0].get_text(), chapter.stem
        else:
            assert not banner, chapter.stem


def test_parameters_cell_and_run_settings_show_how_the_page_was_made():
    for chapter in book.discover_chapters():
        meta = _run_meta(chapter)
        soup = _soup(f"book/executed/{chapter.stem}.html")
        code = soup.select("div.cell.tag_parameters div.cell_input")[0].get_text()
        lines = {line.split(":")[0].strip(): line for line in code.splitlines() if ":" in line}
        for name, value in meta["parameters"].items():  # the values the page ran with, not the defaults
            assert f"= {literal(value)}" in lines[name], (chapter.stem, lines[name])
        box = next(a.get_text(" ") for a in soup.select("div.admonition") if "Run settings" in a.get_text())
        box = " ".join(box.split())
        assert f"--profile {meta['profile']} --chapter {chapter.number}" in box, chapter.stem
        for name in meta.get("cli") or {}:
            assert f"-p {name}=" in box or f"-p '{name}=" in box, (chapter.stem, name)


def test_differences_tables_are_whole_and_the_css_is_loaded():
    for chapter in book.discover_chapters():
        soup = _soup(f"book/executed/{chapter.stem}.html")
        section = soup.find(id="differences-from-the-paper")
        assert section is not None and section.find("table") is not None, chapter.stem
        assert any("fsbook.css" in link.get("href", "") for link in soup.find_all("link")), chapter.stem
    css = (HTML / "_static" / "fsbook.css").read_text()
    assert "overflow-x: auto" in css and "pre-wrap" in css


def test_api_reference_documents_the_library():
    index = _soup("book/api/index.html")
    assert index.find(id="api-reference") is not None or "API reference" in index.get_text()
    spectral = _soup("book/api/foundations.html")
    assert spectral.find(id="fslib.spectral.band_mask") is not None
    assert _soup("book/api/tooling.html").find(id="fslib.book.parameters.check_type") is not None
