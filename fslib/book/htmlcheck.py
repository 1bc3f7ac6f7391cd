"""Checks of the built HTML book: the build is the test.

``check_site(html_dir, pages)`` returns a list of problems (empty when the site is good):

* every page of the table of contents exists;
* no page shows a Python traceback or an error output of a cell;
* no page loads a script or stylesheet from outside the site (everything works offline);
* every page whose executed notebook produced images shows at least one image.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from bs4 import BeautifulSoup

_TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
_EXTERNAL = re.compile(r"^(https?:)?//", re.IGNORECASE)


def page_problems(html: str, *, name: str, expect_images: bool = False) -> list[str]:
    """Problems of one rendered page."""
    soup = BeautifulSoup(html, "html.parser")
    problems = []
    main = soup.find("main") or soup
    for node in main.select(".output.traceback, .output.error, .cell_output .traceback"):
        problems.append(f"{name}: error output: {node.get_text()[:200]!r}")
    for node in main.select(".cell_output, .output"):
        if _TRACEBACK.search(node.get_text()):
            problems.append(f"{name}: traceback in an output: {node.get_text()[:200]!r}")
    for tag in soup.find_all("script", src=True):
        if _EXTERNAL.match(tag["src"]):
            problems.append(f"{name}: external script {tag['src']}")
    for tag in soup.find_all("link", href=True):
        rel = " ".join(tag.get("rel", []))
        if ("stylesheet" in rel or "preload" in rel) and _EXTERNAL.match(tag["href"]):
            problems.append(f"{name}: external stylesheet {tag['href']}")
    if expect_images and not main.find("img"):
        problems.append(f"{name}: the notebook made figures but the page shows no image")
    return sorted(set(problems))


def notebook_has_images(path: Path) -> bool:
    """Whether an executed notebook has an image output (png/svg/jpeg)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if any(k.startswith("image/") for k in out.get("data", {})):
                return True
    return False


def check_site(html_dir: Path, pages: Iterable[str], repo: Path) -> list[str]:
    """Problems of the whole site; ``pages`` are ``_toc.yml`` entries (no extension)."""
    problems = []
    for page in pages:
        html_path = html_dir / f"{page}.html"
        if not html_path.exists():
            problems.append(f"{page}: missing from {html_dir}")
            continue
        nb = repo / f"{page}.ipynb"
        expect = nb.exists() and notebook_has_images(nb)
        problems += page_problems(html_path.read_text(encoding="utf-8"), name=page, expect_images=expect)
    return problems
