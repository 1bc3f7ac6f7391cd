"""Executing chapters: papermill on a jupytext conversion, cached per profile.

:func:`run_chapters` converts each chapter in memory with jupytext, executes it with
papermill and writes ``book/executed/NN_name.ipynb`` (the file ``_toc.yml`` points at),
with the injected-parameters cell hidden and a "Run settings" box added. Executed
notebooks are cached per profile, keyed by the chapter source, its parameters and the
fslib sources: a second run with nothing changed copies them back in a second.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from fslib import __version__, paths
from fslib.book.chapters import Chapter, ChapterFailed
from fslib.book.profiles import Plan
from fslib.io import atomic_path, read_json, stable_hash, write_json

RUN_RECORDS = "runs.json"


def library_fingerprint() -> str:
    """Hash of every fslib source file: a library change re-executes the chapters."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]  # the fslib package, not this subpackage
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
