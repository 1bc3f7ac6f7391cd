"""The papermill route: chapters as ``.ipynb`` notebooks and profiles as ``papermill -f`` files.

papermill reads ``.ipynb`` only, and a profile (``fslib/book/profiles/<name>.yml``) holds every
chapter's overrides at once. :func:`export` writes, for each chosen chapter,

* ``<dir>/NN_name.ipynb``: the chapter converted by jupytext (its typed ``parameters`` cell
  intact, so ``papermill --help-notebook`` lists every parameter with its type), and
* ``<dir>/NN_name.<profile>.yml``: the chapter's parameters under that profile (and ``-p``),
  checked like ``python -m fslib run`` checks them, as a flat mapping for ``papermill -f``,

and returns the papermill command that executes each one (``--cwd book``, as ``fslib run``).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from fslib import paths
from fslib.book.profiles import Plan
from fslib.book.runner import yaml_value
from fslib.io import atomic_write_text


def default_dir() -> Path:
    """``_build/papermill`` in the repository (git-ignored)."""
    return paths.repo_root() / "_build" / "papermill"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(paths.repo_root()))
    except ValueError:
        return str(path)


def parameters_yaml(plan: Plan, profile: str) -> str:
    """The ``papermill -f`` file of one chapter: the values the profile (and ``-p``) set."""
    head = (f"# papermill -f parameters: chapter {plan.chapter.stem}, profile {profile}"
            + (f", -p {', '.join(plan.cli)}" if plan.cli else "")
            + "\n# written by `python -m fslib export`; the chapter's defaults hold for anything not listed\n")
    body = "".join(f"{name}: {yaml_value(value)}\n" for name, value in plan.parameters.items()) or "{}\n"
    assert yaml.safe_load(body) == (plan.parameters or {}), body  # what papermill will read back
    return head + body


def export(plans: list[Plan], profile: str, out_dir: Path | None = None) -> list[str]:
    """Write each chapter's notebook and parameter file into ``out_dir``; return the papermill commands."""
    import jupytext

    out_dir = Path(out_dir) if out_dir is not None else default_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    commands = []
    for plan in plans:
        stem = plan.chapter.stem
        notebook, params = out_dir / f"{stem}.ipynb", out_dir / f"{stem}.{profile}.yml"
        atomic_write_text(notebook, jupytext.writes(jupytext.read(plan.chapter.path), fmt="ipynb"))
        atomic_write_text(params, parameters_yaml(plan, profile))
        executed = out_dir / f"{stem}.{profile}.out.ipynb"
        commands.append(shlex.join(["papermill", _shown(notebook), _shown(executed), "-f", _shown(params),
                                    "--cwd", _shown(plan.chapter.path.parent)]))
    return commands
