"""Executing chapters: papermill on a jupytext conversion, cached per profile.

:func:`run_chapters` converts each chapter in memory with jupytext, executes it with
papermill and writes ``book/executed/NN_name.ipynb`` (the file ``_toc.yml`` points at),
with the injected-parameters cell hidden and a "Run settings" box added. Executed
notebooks are cached per profile, keyed by the chapter source, its parameters and the
fslib sources: a second run with nothing changed copies them back in a second.

The cached notebooks, the executed ones and the run records (``book/executed/runs.json``)
carry digest records (:mod:`fslib.artefacts`): a damaged cached notebook is moved aside and
the chapter executed again; damaged run records are moved aside and rebuilt from the
executed notebooks' metadata. Each kernel talks over IPC sockets in a private temporary
folder, removed after the chapter, so two runs never share a socket. Ctrl-C stops the
chapter, shuts its kernel down and leaves no partial notebook.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fslib import __version__, artefacts, paths
from fslib.artefacts import ArtefactDamaged
from fslib.book.chapters import Chapter, ChapterFailed
from fslib.book.profiles import Plan
from fslib.io import atomic_path, stable_hash

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


def read_run_records(log=print) -> dict[str, dict[str, Any]]:
    """``book/executed/runs.json``: one record per executed chapter (``{}`` when none yet).

    Damaged records are moved aside (``runs.json.damaged``) and rebuilt from the metadata
    of the executed notebooks, which hold the same record.
    """
    import nbformat

    path = paths.executed_dir() / RUN_RECORDS
    if not path.exists():
        return {}
    try:
        records = artefacts.read_json(path)
        if not isinstance(records, dict):
            raise ArtefactDamaged(path, f"it holds a {type(records).__name__}, not a mapping")
        return records
    except ArtefactDamaged as exc:
        aside = artefacts.set_aside(path)
        log(f"[fslib] {exc.path} is damaged ({exc.reason}); moved to {aside.name}, rebuilt from the executed notebooks")
    records = {}
    for nb_path in sorted(paths.executed_dir().glob("[0-9][0-9]_*.ipynb")):
        try:
            meta = nbformat.read(nb_path, as_version=4).metadata.get("fsbook")
        except Exception:  # noqa: BLE001 - an unreadable notebook has no record to give
            continue
        if meta:
            records[nb_path.stem] = meta
    artefacts.write_json(path, records)
    return records


def _record(chapter: Chapter, meta: dict[str, Any]) -> None:
    records = read_run_records()
    records[chapter.stem] = meta
    artefacts.write_json(paths.executed_dir() / RUN_RECORDS, records)


def _cached_notebook(profile: str, chapter: Chapter) -> Path:
    return paths.cache_dir("executed", profile) / f"{chapter.stem}.ipynb"


def _cached_metadata(cached: Path, log) -> dict[str, Any] | None:
    """The fsbook metadata of a cached executed notebook; None when there is none or it is damaged
    (then it is moved aside, and the chapter executes again)."""
    import nbformat

    if not cached.exists():
        return None
    try:
        return artefacts.load(cached, lambda b: nbformat.reads(b.decode("utf-8"), as_version=4)).metadata.get("fsbook", {})
    except ArtefactDamaged as exc:
        aside = artefacts.set_aside(cached)
        log(f"[fslib] cached notebook {cached} is damaged ({exc.reason}); moved to {aside.name}, executing the chapter")
        return None


def run_chapters(plans: list[Plan], profile: str, *, force: bool = False, log=print) -> list[dict[str, Any]]:
    """Execute chapters with papermill; return one record per chapter.

    Raises :class:`ChapterFailed` at the first failing chapter, naming it and the failing
    cell's error; the partial notebook is kept as ``book/executed/NN_name.failed.ipynb``.
    """
    import jupytext
    import nbformat
    import papermill

    paths.pin_environment()  # the kernels run in book/: a relative FSLIB_CACHE must mean the same folder there
    out_dir = paths.executed_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    read_run_records(log)  # damaged records are rebuilt now, not after the chapters ran
    # the kernel inherits this process's environment: a non-interactive MPLBACKEND (e.g. Agg)
    # would silently drop every figure from the executed notebooks
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    records = []
    for plan in plans:
        chapter = plan.chapter
        key = _execution_key(plan, profile)
        cached = _cached_notebook(profile, chapter)
        meta = None if force else _cached_metadata(cached, log)
        if meta is not None:
            if meta.get("key") == key:
                artefacts.copy_file(cached, chapter.executed_path)
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
            artefacts.copy_file(work, target)
        meta = nbformat.read(work, as_version=4).metadata["fsbook"]
        work.unlink()
        partial.unlink(missing_ok=True)
        _record(chapter, {**meta, "cached": False})
        log(f"[fslib] {chapter.stem}: done in {seconds:.0f} s")
        records.append({**meta, "chapter": chapter.stem, "cached": False})
    return records


def _papermill(nb, out: Path, parameters: dict[str, Any], cwd: Path) -> None:
    """Execute ``nb`` into ``out`` with papermill on a ``python3`` kernel.

    On POSIX the kernel talks over IPC sockets instead of unencrypted local TCP ports
    (ipykernel warns about those at every start), in a private temporary folder of this run
    (:func:`_socket_folder`) that is removed afterwards; papermill then does not own the
    kernel manager, so the kernel is shut down here, also on Ctrl-C (which removes ``out``).
    The manager is asynchronous, as the one nbclient makes for itself: with a blocking one,
    nbclient waits for a cell's reply inside its event loop, so neither Ctrl-C nor a dead
    kernel would be noticed until the cell ends.
    """
    import papermill
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    ipc = os.name == "posix"
    sockets = _socket_folder() if ipc else None
    km = AsyncKernelManager(kernel_name="python3", transport="ipc" if ipc else "tcp")
    if sockets is not None:
        km.ip = str(sockets / "kernel")  # absolute: the default "kernel-ipc" is relative to each process's cwd
    try:
        papermill.execute_notebook(nb, str(out), parameters=parameters, kernel_name="python3",
                                   cwd=str(cwd), progress_bar=False, km=km)
    except KeyboardInterrupt:
        Path(out).unlink(missing_ok=True)
        raise
    finally:
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=True)
        if sockets is not None:
            shutil.rmtree(sockets, ignore_errors=True)


def _socket_folder() -> Path:
    """A new private folder for one kernel's IPC sockets (short: a socket path has at most 107 bytes)."""
    base = tempfile.gettempdir()
    if len(base) > 60:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="fslib-kernel-", dir=base))
