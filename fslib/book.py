"""The book pipeline: chapters, profiles, papermill execution and the Jupyter Book build.

* A **chapter** is a jupytext MyST notebook ``book/NN_name.md`` whose first code cell is
  tagged ``parameters`` and holds plain literals.
* A **profile** (``fslib/profiles/<name>.yml``) overrides chapter parameters:
  ``smoke`` (CI, minutes), ``default`` (the published book, <= 90 min on 2 CPU cores),
  ``paper`` (the paper's settings, for a GPU).
* :func:`run_chapters` converts each chapter in memory with jupytext, executes it with
  papermill and writes ``book/executed/NN_name.ipynb`` (the file ``_toc.yml`` points at),
  with the injected-parameters cell hidden and a "Run settings" box added. Executed
  notebooks are cached per profile, keyed by the chapter source, its parameters and the
  fslib sources: a second run with nothing changed copies them back in a second.
* :func:`build` writes the reproducibility appendix and runs ``jupyter-book build``.
"""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from fslib import __version__, paths
from fslib.io import atomic_path, atomic_write_text, read_json, stable_hash, write_json

CHAPTER_PATTERN = re.compile(r"^(\d\d)_([a-z0-9_]+)\.md$")
RUN_RECORDS = "runs.json"


class UsageError(ValueError):
    """A bad profile, chapter or parameter name: the CLI prints it and exits with status 2."""


class ChapterFailed(RuntimeError):
    """A chapter raised while executing; the partial notebook is kept for inspection."""


# --------------------------------------------------------------------------- chapters
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


# --------------------------------------------------------------------------- profiles
def available_profiles() -> list[str]:
    return sorted(p.stem for p in paths.profiles_dir().glob("*.yml"))


def load_profile(name: str) -> dict[str, Any]:
    """A profile as ``{"description": str, "chapters": {stem: {param: value}}}``."""
    valid = available_profiles()
    if name not in valid:
        raise UsageError(f"unknown profile {name!r}; valid profiles: {', '.join(valid)}")
    with open(paths.profiles_dir() / f"{name}.yml", encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    chapters = data.get("chapters") or {}
    if not isinstance(chapters, dict) or not all(isinstance(v, dict) for v in chapters.values()):
        raise UsageError(f"profile {name!r}: 'chapters' must map chapter names to parameter overrides")
    return {"name": name, "description": data.get("description", ""), "chapters": chapters}


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """``["epochs=3", "seeds=[0, 1]"]`` -> ``{"epochs": 3, "seeds": [0, 1]}`` (YAML values)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise UsageError(f"bad parameter {item!r}; expected name=value, e.g. -p epochs=3")
        out[name.strip()] = yaml.safe_load(value)
    return out


@dataclass(frozen=True)
class Plan:
    chapter: Chapter
    defaults: dict[str, Any]
    parameters: dict[str, Any]  # the overrides papermill injects (profile, then -p)


def plan_run(profile: str, selectors: Iterable[str] | None = None, overrides: dict[str, Any] | None = None) -> list[Plan]:
    """Validate everything up front: a bad name fails before any chapter executes."""
    prof = load_profile(profile)
    everything = discover_chapters()
    by_stem = {c.stem: c for c in everything}
    unknown = sorted(set(prof["chapters"]) - set(by_stem))
    if unknown:
        raise UsageError(f"profile {profile!r} names unknown chapters {unknown}; valid: {', '.join(by_stem)}")
    chosen = select_chapters(selectors, everything)
    overrides = dict(overrides or {})
    plans, used = [], set()
    for chapter in chosen:
        defaults = chapter_parameters(chapter)
        params = dict(prof["chapters"].get(chapter.stem, {}))
        bad = sorted(set(params) - set(defaults))
        if bad:
            raise UsageError(
                f"profile {profile!r}, chapter {chapter.stem}: unknown parameters {bad}; "
                f"valid: {', '.join(defaults)}"
            )
        for name, value in overrides.items():
            if name in defaults:
                params[name] = value
                used.add(name)
        plans.append(Plan(chapter, defaults, params))
    unused = sorted(set(overrides) - used)
    if unused:
        valid = sorted({n for p in plans for n in p.defaults})
        raise UsageError(
            f"unknown parameter(s) {unused} for chapter(s) {', '.join(p.chapter.stem for p in plans)}; "
            f"valid: {', '.join(valid)}"
        )
    return plans


# --------------------------------------------------------------------------- execution
def library_fingerprint() -> str:
    """Hash of every fslib source file: a library change re-executes the chapters."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".yml") and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _execution_key(plan: Plan, profile: str) -> str:
    return stable_hash(
        {
            "source": hashlib.sha256(plan.chapter.path.read_bytes()).hexdigest(),
            "parameters": plan.parameters,
            "profile": profile,
            "fslib": library_fingerprint(),
        }
    )


def _resolved_device(params: dict[str, Any]) -> str:
    import torch

    wanted = params.get("device", "auto")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(wanted)


def _seeds(params: dict[str, Any]) -> str:
    found = {k: v for k, v in params.items() if k in ("seed", "seeds")}
    return ", ".join(f"`{k} = {v!r}`" for k, v in found.items()) or "none"


def run_settings_markdown(plan: Plan, profile: str, device: str, seconds: float, when: str) -> str:
    """The "Run settings" admonition shown under a chapter's title."""
    effective = {**plan.defaults, **plan.parameters}
    changed = {k: v for k, v in plan.parameters.items() if plan.defaults.get(k) != v}
    changed_text = ", ".join(f"`{k} = {v!r}`" for k, v in changed.items()) or "none (the chapter's defaults)"
    rerun = f"python -m fslib run --profile {profile} --chapter {plan.chapter.number}"
    return (
        "```{admonition} Run settings\n"
        ":class: note\n\n"
        f"**Profile** `{profile}` · **device** `{device}` · **wall time** {seconds:.0f} s · "
        f"executed {when} with fslib {__version__}\n\n"
        f"**Parameters that differ from the defaults:** {changed_text}\n\n"
        f"**Seeds:** {_seeds(effective)}\n\n"
        f"Re-run this chapter with `{rerun}` (add `-p name=value` to change a parameter).\n"
        "```"
    )


_NUMPY_SCALAR = re.compile(r"^np\.(?:float|int|uint|bool_?)\d*\((.*)\)$|^np\.(True|False)_$")


def plain_scalar_text(text: str) -> str:
    """``"np.float64(0.5)"`` -> ``"0.5"``: numpy >= 2 reprs that myst-nb's glue cannot format.

    >>> plain_scalar_text("np.float64(0.25)"), plain_scalar_text("np.True_"), plain_scalar_text("'a'")
    ('0.25', 'True', "'a'")
    """
    m = _NUMPY_SCALAR.match(text.strip())
    return (m.group(1) or m.group(2)) if m else text


def _plain_scalars(nb) -> None:
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            for key in data:  # glue stores "application/papermill.record/text/plain"
                if key.endswith("text/plain") and isinstance(data[key], str):
                    data[key] = plain_scalar_text(data[key])


def _finalise(nb_path: Path, plan: Plan, profile: str, device: str, seconds: float, key: str) -> None:
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    _plain_scalars(nb)  # glued numpy scalars would otherwise fail {glue:text} formatting
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    insert_at = 0
    for i, cell in enumerate(nb.cells):
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags:
            tags.append("remove-cell")
            insert_at = i + 1
        elif "parameters" in tags and not insert_at:
            insert_at = i + 1
    box = nbformat.v4.new_markdown_cell(run_settings_markdown(plan, profile, device, seconds, when))
    box.metadata["tags"] = ["fsbook-run-settings"]
    nb.cells.insert(insert_at, box)
    nb.metadata["fsbook"] = {
        "key": key,
        "profile": profile,
        "parameters": plan.parameters,
        "device": device,
        "wall_seconds": round(seconds, 1),
        "executed": when,
        "fslib_version": __version__,
    }
    with atomic_path(nb_path) as tmp:
        nbformat.write(nb, tmp)


def _record(chapter: Chapter, meta: dict[str, Any]) -> None:
    path = paths.executed_dir() / RUN_RECORDS
    records = read_json(path) if path.exists() else {}
    records[chapter.stem] = meta
    write_json(path, records)


def _cached_notebook(profile: str, chapter: Chapter) -> Path:
    return paths.cache_dir("executed", profile) / f"{chapter.stem}.ipynb"


def run_chapters(plans: list[Plan], profile: str, *, force: bool = False, log=print) -> list[dict[str, Any]]:
    """Execute chapters with papermill; return one record per chapter.

    Raises :class:`ChapterFailed` at the first failing chapter, naming it and the failing
    cell's error; the partial notebook is kept as ``book/executed/NN_name.failed.ipynb``.
    """
    import jupytext
    import nbformat
    import papermill

    out_dir = paths.executed_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    # the kernel inherits this process's environment: a non-interactive MPLBACKEND (e.g. Agg)
    # would silently drop every figure from the executed notebooks
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    records = []
    for plan in plans:
        chapter = plan.chapter
        key = _execution_key(plan, profile)
        cached = _cached_notebook(profile, chapter)
        if not force and cached.exists():
            meta = nbformat.read(cached, as_version=4).metadata.get("fsbook", {})
            if meta.get("key") == key:
                with atomic_path(chapter.executed_path) as tmp:
                    shutil.copyfile(cached, tmp)
                _record(chapter, {**meta, "cached": True})
                log(f"[fslib] {chapter.stem}: up to date (profile {profile}, executed {meta.get('executed')})")
                records.append({**meta, "chapter": chapter.stem, "cached": True})
                continue
        device = _resolved_device({**plan.defaults, **plan.parameters})
        log(f"[fslib] {chapter.stem}: executing with profile {profile} {plan.parameters or ''}")
        partial = out_dir / f"{chapter.stem}.failed.ipynb"
        work = out_dir / f".{chapter.stem}.running.ipynb"
        start = time.perf_counter()
        try:
            _papermill(jupytext.read(chapter.path), work, plan.parameters, chapter.path.parent)
        except papermill.PapermillExecutionError as exc:
            if work.exists():
                os.replace(work, partial)
            raise ChapterFailed(
                f"chapter {chapter.stem} failed in cell [{exc.exec_count}]: {exc.ename}: {exc.evalue}\n"
                f"partial notebook kept at {partial}"
            ) from None
        seconds = time.perf_counter() - start
        _finalise(work, plan, profile, device, seconds, key)
        for target in (cached, chapter.executed_path):
            with atomic_path(target) as tmp:
                shutil.copyfile(work, tmp)
        work.unlink()
        partial.unlink(missing_ok=True)
        meta = nbformat.read(cached, as_version=4).metadata["fsbook"]
        _record(chapter, {**meta, "cached": False})
        log(f"[fslib] {chapter.stem}: done in {seconds:.0f} s")
        records.append({**meta, "chapter": chapter.stem, "cached": False})
    return records


def _papermill(nb, out: Path, parameters: dict[str, Any], cwd: Path) -> None:
    """Execute ``nb`` into ``out`` with papermill on a ``python3`` kernel.

    On POSIX the kernel talks over IPC sockets in Jupyter's runtime directory instead of
    unencrypted local TCP ports (ipykernel warns about those at every start); papermill then
    does not own the kernel manager, so the kernel is shut down here.
    """
    import papermill
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3", transport="ipc" if os.name == "posix" else "tcp")
    try:
        papermill.execute_notebook(nb, str(out), parameters=parameters, kernel_name="python3",
                                   cwd=str(cwd), progress_bar=False, km=km)
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)


# --------------------------------------------------------------------------- build
def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=paths.repo_root(), capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.repo_root(), capture_output=True, text=True
        ).stdout.strip()
        return out + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def _versions() -> dict[str, str]:
    from importlib import metadata

    names = ["torch", "torchvision", "numpy", "pandas", "matplotlib", "jupyter-book", "papermill", "jupytext", "myst-nb"]
    out = {"python": platform.python_version(), "fslib": __version__}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def reproducibility_markdown(records: dict[str, dict[str, Any]]) -> str:
    """The appendix page: versions, device, commit, profile and wall time of each chapter."""
    import torch

    lines = [
        "(appendix-reproducibility)=",
        "# Reproducibility",
        "",
        "This page is generated by `python -m fslib build` from the records that",
        "`python -m fslib run` leaves beside the executed notebooks.",
        "",
        "## Environment of this build",
        "",
        "| item | value |",
        "|---|---|",
        f"| git commit | `{_git_commit()}` |",
        f"| platform | {platform.platform()} |",
        f"| CPU threads (torch) | {torch.get_num_threads()} |",
        f"| CUDA available | {torch.cuda.is_available()} |",
    ]
    lines += [f"| {k} | `{v}` |" for k, v in _versions().items()]
    lines += ["", "## Chapters", "", "| chapter | profile | device | wall time (s) | executed | parameters set by the profile or `-p` |", "|---|---|---|---|---|---|"]
    total = 0.0
    for stem in sorted(records):
        r = records[stem]
        total += float(r.get("wall_seconds", 0))
        params = ", ".join(f"`{k}={v!r}`" for k, v in (r.get("parameters") or {}).items()) or "none"
        lines.append(
            f"| {stem} | `{r.get('profile')}` | `{r.get('device')}` | {r.get('wall_seconds')} | {r.get('executed')} | {params} |"
        )
    lines += ["", f"Total execution wall time of the chapters as shown: {total:.0f} s ({total / 60:.1f} min).", ""]
    return "\n".join(lines)


def toc_files() -> list[str]:
    """Every ``file:`` entry of ``_toc.yml`` (root first), without extension."""
    with open(paths.repo_root() / "_toc.yml", encoding="utf-8") as fh:
        toc = yaml.safe_load(fh)
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def build(*, all_pages: bool = False, strict: bool = True, keep_going: bool = False, output: str | None = None) -> Path:
    """Write the appendix, check every chapter was executed, run ``jupyter-book build``."""
    root = paths.repo_root()
    records_path = paths.executed_dir() / RUN_RECORDS
    records = read_json(records_path) if records_path.exists() else {}
    missing = [c.stem for c in discover_chapters() if not c.executed_path.exists()]
    if missing:
        raise UsageError(f"chapters not executed yet: {', '.join(missing)}; run `python -m fslib run` first")
    atomic_write_text(paths.executed_dir() / "reproducibility.md", reproducibility_markdown(records))
    cmd = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())", "build", str(root)]
    if output:
        cmd += ["--path-output", output]
    if all_pages:
        cmd.append("--all")
    if strict:
        cmd.append("-W")
    if keep_going:
        cmd.append("--keep-going")
    result = subprocess.run(cmd, cwd=root)
    if result.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed (exit {result.returncode}): {' '.join(cmd)}")
    base = Path(output) if output else root
    return base / "_build" / "html" / "index.html"
