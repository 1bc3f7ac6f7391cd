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
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from fslib import __version__, artefacts, paths
from fslib.artefacts import ArtefactDamaged
from fslib.book.chapters import Chapter, ChapterFailed
from fslib.book.parameters import source_as_run
from fslib.book.profiles import Plan
from fslib.book.progress import KernelStderr, cells_bar
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
            "cli": plan.cli,
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


def yaml_value(value: Any) -> str:
    """A parameter value as ``-p name=VALUE`` takes it (YAML flow style).

    >>> yaml_value(["syn_b1", "syn_b2"]), yaml_value(0.5), yaml_value(None), yaml_value("a b")
    ('[syn_b1, syn_b2]', '0.5', 'null', 'a b')
    """
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


def rerun_command(plan: Plan, profile: str) -> str:
    """The exact ``python -m fslib run`` command that executes ``plan`` again (``-p`` overrides included)."""
    parts = ["python", "-m", "fslib", "run", "--profile", profile, "--chapter", str(plan.chapter.number)]
    for name, value in plan.cli.items():
        parts += ["-p", f"{name}={yaml_value(value)}"]
    return shlex.join(parts)


def run_settings_markdown(plan: Plan, profile: str, device: str, seconds: float, when: str) -> str:
    """The "Run settings" admonition shown under a chapter's title."""
    effective = {**plan.defaults, **plan.parameters}
    changed = {k: v for k, v in plan.parameters.items() if plan.defaults.get(k) != v}
    changed_text = ", ".join(f"`{k} = {v!r}`" for k, v in changed.items()) or "none (the chapter's defaults)"
    return (
        "```{admonition} Run settings\n"
        ":class: note\n\n"
        f"**Profile** `{profile}` · **device** `{device}` · **wall time** {seconds:.0f} s · "
        f"executed {when} with fslib {__version__}\n\n"
        f"**Parameters that differ from the defaults:** {changed_text}\n\n"
        f"**Seeds:** {_seeds(effective)}\n\n"
        f"This page was produced by `{rerun_command(plan, profile)}` "
        "(add `-p name=value` to change a parameter).\n"
        "```"
    )


NOT_RESULTS = {"smoke"}
"""Profiles whose pages carry the "numbers are not results" banner."""


def smoke_banner_markdown(profile: str) -> str:
    """The banner on a page executed with a profile of :data:`NOT_RESULTS` (a colon fence: its
    title holds backticks, which a backtick fence's info string may not)."""
    return (
        f":::{{admonition}} Executed with the `{profile}` profile: the numbers on this page are not results\n"
        ":class: warning fsbook-not-results\n\n"
        f"The `{profile}` profile only proves that the code runs: tiny models, a few iterations, a few "
        "images. The verdicts and numbers below say nothing about the paper. The book built with "
        "`python -m fslib run --profile default` holds the results.\n"
        ":::"
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


def _title_index(nb) -> int:
    """Index of the first markdown cell with a ``# title`` line (the chapter's title)."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and re.search(r"^# ", cell.source, flags=re.MULTILINE):
            return i
    return -1


def _glue_cell(nbformat, name: str, value: str):
    """A hidden code cell holding what ``myst_nb.glue(name, value, display=False)`` would store."""
    cell = nbformat.v4.new_code_cell("")
    cell.metadata["tags"] = ["remove-cell"]
    prefix = "application/papermill.record/"
    cell.outputs = [nbformat.v4.new_output("display_data", data={prefix + "text/plain": repr(value)},
                                           metadata={"scrapbook": {"name": name, "mime_prefix": prefix}})]
    return cell


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
            cell.source = source_as_run(cell.source, plan.values)  # the values this page ran with
            insert_at = i + 1
    box = nbformat.v4.new_markdown_cell(run_settings_markdown(plan, profile, device, seconds, when))
    box.metadata["tags"] = ["fsbook-run-settings"]
    nb.cells.insert(insert_at, box)
    if profile in NOT_RESULTS:
        banner = nbformat.v4.new_markdown_cell(smoke_banner_markdown(profile))
        banner.metadata["tags"] = ["fsbook-not-results"]
        nb.cells.insert(_title_index(nb) + 1, banner)
    nb.cells.append(_glue_cell(nbformat, "fsbook_profile", profile))  # the intro's table shows it
    nb.metadata["fsbook"] = {
        "key": key,
        "profile": profile,
        "parameters": plan.parameters,
        "cli": plan.cli,
        "device": device,
        "wall_seconds": round(seconds, 1),
        "executed": when,
        "fslib_version": __version__,
    }
    with atomic_path(nb_path) as tmp:
        nbformat.write(nb, tmp)


def read_run_records(log=print, out_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """``runs.json`` of ``out_dir`` (default ``book/executed``): one record per executed chapter (``{}`` when none yet).

    Damaged records are moved aside (``runs.json.damaged``) and rebuilt from the metadata
    of the executed notebooks, which hold the same record.
    """
    import nbformat

    out_dir = paths.executed_dir() if out_dir is None else out_dir
    path = out_dir / RUN_RECORDS
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
    for nb_path in sorted(out_dir.glob("[0-9][0-9]_*.ipynb")):
        try:
            meta = nbformat.read(nb_path, as_version=4).metadata.get("fsbook")
        except Exception:  # noqa: BLE001 - an unreadable notebook has no record to give
            continue
        if meta:
            records[nb_path.stem] = meta
    artefacts.write_json(path, records)
    return records


def _record(out_dir: Path, chapter: Chapter, meta: dict[str, Any]) -> None:
    records = read_run_records(out_dir=out_dir)
    records[chapter.stem] = meta
    artefacts.write_json(out_dir / RUN_RECORDS, records)


def _cached_notebook(profile: str, plan: Plan, key: str) -> Path:
    """The per-profile cache of executed notebooks; a run with ``-p`` overrides has its own entry."""
    name = plan.chapter.stem if not plan.cli else f"{plan.chapter.stem}-{key[:12]}"
    return paths.cache_dir("executed", profile) / f"{name}.ipynb"


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


def default_output(plans: list[Plan], profile: str) -> Path:
    """Where executed notebooks go: the book's ``book/executed`` for a plain profile run; a run with
    ``-p`` overrides goes to ``_build/sweeps/<profile>-<overrides>/`` so it never overwrites the book."""
    cli = {k: v for plan in plans for k, v in plan.cli.items()}
    if not cli:
        return paths.executed_dir()
    label = "-".join(f"{k}={yaml_value(v)}" for k, v in sorted(cli.items()))
    label = re.sub(r"[^A-Za-z0-9._=,-]+", "", label.replace(" ", ""))
    if len(label) > 60:
        label = label[:48] + "-" + stable_hash(cli, 8)
    return paths.repo_root() / "_build" / "sweeps" / f"{profile}-{label}"


def run_chapters(plans: list[Plan], profile: str, *, force: bool = False, log=print,
                 output: str | os.PathLike | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Execute chapters with papermill; return one record per chapter.

    Executed notebooks go to ``output`` (default: :func:`default_output`). Raises
    :class:`ChapterFailed` at the first failing chapter, naming it and the failing cell's
    error; the partial notebook is kept as ``<output>/NN_name.failed.ipynb``.
    """
    import jupytext
    import nbformat
    import papermill

    paths.pin_environment()  # the kernels run in book/: a relative FSLIB_CACHE must mean the same folder there
    out_dir = Path(output) if output is not None else default_output(plans, profile)
    out_dir = out_dir.resolve()
    in_book = out_dir == paths.executed_dir().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    read_run_records(log, out_dir)  # damaged records are rebuilt now, not after the chapters ran
    # the kernel inherits this process's environment: a non-interactive MPLBACKEND (e.g. Agg)
    # would silently drop every figure from the executed notebooks
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    records = []
    for plan in plans:
        chapter = plan.chapter
        target = out_dir / f"{chapter.stem}.ipynb"
        key = _execution_key(plan, profile)
        cached = _cached_notebook(profile, plan, key)
        meta = None if force else _cached_metadata(cached, log)
        if meta is not None:
            if meta.get("key") == key:
                artefacts.copy_file(cached, target)
                _record(out_dir, chapter, {**meta, "cached": True})
                log(f"[fslib] {chapter.stem}: up to date (profile {profile}, executed {meta.get('executed')})")
                records.append({**meta, "chapter": chapter.stem, "cached": True, "path": str(target)})
                continue
        device = _resolved_device({**plan.defaults, **plan.parameters})
        log(f"[fslib] {chapter.stem}: executing with profile {profile} {plan.parameters or ''}")
        partial = out_dir / f"{chapter.stem}.failed.ipynb"
        work = out_dir / f".{chapter.stem}.running.ipynb"
        start = time.perf_counter()
        try:
            _papermill(jupytext.read(chapter.path), work, plan.parameters, chapter.path.parent,
                       progress=chapter.stem if progress else None)
        except papermill.PapermillExecutionError as exc:
            if work.exists():
                os.replace(work, partial)
            raise ChapterFailed(
                f"chapter {chapter.stem} failed in cell [{exc.exec_count}]: {exc.ename}: {exc.evalue}\n"
                f"partial notebook kept at {partial}"
            ) from None
        seconds = time.perf_counter() - start
        _finalise(work, plan, profile, device, seconds, key)
        for dest in (cached, target):
            artefacts.copy_file(work, dest)
        meta = nbformat.read(work, as_version=4).metadata["fsbook"]
        work.unlink()
        partial.unlink(missing_ok=True)
        _record(out_dir, chapter, {**meta, "cached": False})
        log(f"[fslib] {chapter.stem}: done in {seconds:.0f} s")
        records.append({**meta, "chapter": chapter.stem, "cached": False, "path": str(target)})
    log(summary(records, out_dir, in_book))
    return records


def _shown(path: Path) -> str:
    """``path`` as a user would type it: relative to the repository when inside it."""
    try:
        return str(path.relative_to(paths.repo_root()))
    except ValueError:
        return str(path)


def summary(records: list[dict[str, Any]], out_dir: Path, in_book: bool) -> str:
    """The closing lines of ``fslib run``: what was written and what to run next."""
    lines = [f"[fslib] wrote {len(records)} executed notebook(s) to {_shown(out_dir)}/:"]
    for r in records:
        how = "unchanged, from the cache" if r["cached"] else f"executed in {r['wall_seconds']:.0f} s"
        lines.append(f"  {Path(r['path']).name}  ({how}, profile {r['profile']})")
    if in_book:
        lines.append("[fslib] next: `python -m fslib build` renders the book into _build/html "
                     "(then open _build/html/index.html)")
    else:
        lines.append("[fslib] these notebooks are not part of the book; open them with Jupyter "
                     "(`pip install -e '.[interactive]'`, then `jupyter lab`), or re-run with "
                     "`--output book/executed` to put them into the book")
    return "\n".join(lines)


def _papermill(nb, out: Path, parameters: dict[str, Any], cwd: Path, progress: str | None = None) -> None:
    """Execute ``nb`` into ``out`` with papermill on a ``python3`` kernel.

    On POSIX the kernel talks over IPC sockets instead of unencrypted local TCP ports
    (ipykernel warns about those at every start), in a private temporary folder of this run
    (:func:`_socket_folder`) that is removed afterwards; papermill then does not own the
    kernel manager, so the kernel is shut down here, also on Ctrl-C (which removes ``out``).
    The manager is asynchronous, as the one nbclient makes for itself: with a blocking one,
    nbclient waits for a cell's reply inside its event loop, so neither Ctrl-C nor a dead
    kernel would be noticed until the cell ends.

    ``progress``: the chapter's name for a bar over its cells, with the kernel's own bars
    (trainings, ablations) forwarded above it (:mod:`fslib.book.progress`); ``None``: silent.
    """
    import papermill
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    ipc = os.name == "posix"
    sockets = _socket_folder() if ipc else None
    km = AsyncKernelManager(kernel_name="python3", transport="ipc" if ipc else "tcp")
    if sockets is not None:
        km.ip = str(sockets / "kernel")  # absolute: the default "kernel-ipc" is relative to each process's cwd
    stderr = KernelStderr() if progress else None
    try:
        papermill.execute_notebook(nb, str(out), parameters=parameters, kernel_name="python3",
                                   cwd=str(cwd), progress_bar=cells_bar(progress) if progress else False,
                                   stderr_file=stderr, km=km)
    except KeyboardInterrupt:
        Path(out).unlink(missing_ok=True)
        raise
    finally:
        if stderr is not None:
            stderr.close()
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
