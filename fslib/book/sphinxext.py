"""The book's Sphinx extension (``_config.yml`` loads it): a plain ``jupyter-book build .``
builds the executed book, or stops with a message that says what to run.

* At ``config-inited``: every chapter must have been executed into ``book/executed/`` (else
  a :class:`~sphinx.errors.ConfigError` names them and points at ``python -m fslib run`` and
  ``python -m fslib build``); the reproducibility appendix is written from the run records,
  and a book whose chapters ran under different profiles gets a warning on stderr.
* At ``doctree-read``: a page that pastes glued values from another page (the intro's
  results at a glance) depends on that page's notebook, so Sphinx rebuilds it when a chapter
  is executed again (myst-nb records no such dependency itself).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.errors import ConfigError

from fslib.book.chapters import UsageError
from fslib.book.site import profile_mix, write_appendix

INSIDE_FSLIB_BUILD = "FSLIB_BUILD"
"""Set by ``python -m fslib build``, which has already checked and warned."""


def check_executed(app: Sphinx, config: Any) -> None:
    """Stop a build whose chapters were not executed; write the appendix; warn about mixed profiles."""
    try:
        records = write_appendix()
    except UsageError as exc:
        raise ConfigError(f"fsbook: {exc}") from None
    mixed = profile_mix(records)
    if mixed and not os.environ.get(INSIDE_FSLIB_BUILD):
        print(f"fsbook warning: {mixed}", file=sys.stderr)


def note_glue_dependencies(app: Sphinx, doctree: nodes.document) -> None:
    """A page that pastes values from other pages is rebuilt when one of those changes."""
    from myst_nb.ext.glue.utils import PendingGlueReference

    env = app.env
    for node in doctree.findall(PendingGlueReference):
        source = env.doc2path(node.refdoc)
        if source != env.doc2path(env.docname):
            env.note_dependency(str(source))


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("config-inited", check_executed)
    app.connect("doctree-read", note_glue_dependencies)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
