"""The book pipeline: chapters, profiles, CLI errors, configuration files."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import tomllib
import yaml

from fslib import artefacts, book, paths
from fslib.book import chapters, runner
from fslib.cli import main

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = book.discover_chapters()


def test_there_are_chapters():
    assert CHAPTERS, "no book/NN_name.md chapters found"


def test_profiles_load_and_have_descriptions():
    names = book.available_profiles()
    assert {"smoke", "default", "paper"} <= set(names)
    for name in names:
        prof = book.load_profile(name)
        assert prof["description"]


@pytest.mark.parametrize("profile", ["smoke", "default", "paper"])
def test_every_chapter_is_in_every_profile_with_valid_parameters(profile):
    prof = book.load_profile(profile)
    assert set(prof["chapters"]) == {c.stem for c in CHAPTERS}
    # plan_run validates every parameter name against the chapter's parameters cell
    plans = book.plan_run(profile)
    assert [p.chapter.stem for p in plans] == [c.stem for c in CHAPTERS]


def test_toc_lists_exactly_the_chapters_and_they_exist():
    files = book.toc_files()
    executed = [f for f in files if f.startswith("book/executed/") and f != "book/executed/reproducibility"]
    assert executed == [f"book/executed/{c.stem}" for c in CHAPTERS]
    for f in files:
        if not f.startswith("book/executed/"):
            assert (ROOT / f"{f}.md").exists(), f
    assert "book/executed/reproducibility" in files


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_is_a_jupytext_notebook_with_parameters_then_one_import_cell(chapter):
    nb = chapters._read_notebook(chapter.path)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell must be tagged parameters"
    params = book.chapter_parameters(chapter)
    assert params, "empty parameters cell"
    assert "device" not in params or params["device"] == "auto"
    imports = [ln for ln in code[1].source.splitlines() if ln.strip() and not ln.startswith("#")]
    assert all(ln.startswith(("import ", "from ")) or ln.startswith(" ") or ln.startswith(")") for ln in imports), (
        "second code cell must be the import cell"
    )
    text = chapter.path.read_text()
    assert "## What we found" in text and "## Differences from the paper" in text


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_papermill_reads_every_parameter(chapter, caplog):
    """papermill's own parser (``papermill --help-notebook``) must see every parameter: a
    comment it cannot parse (e.g. one holding ``=``) hides the line and logs a warning."""
    from papermill.translators import PythonTranslator

    cell = chapters._parameters_cell(chapters._read_notebook(chapter.path), chapter.path)
    with caplog.at_level("WARNING", logger="papermill"):
        seen = [p.name for p in PythonTranslator.inspect(cell)]
    assert seen == list(book.chapter_parameters(chapter)), caplog.text
    assert "Unable to parse" not in caplog.text


def test_parameters_cell_must_hold_literals(tmp_path):
    bad = tmp_path / "01_bad.md"
    bad.write_text(
        "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
        "kernelspec:\n  name: python3\n  display_name: Python 3\n---\n"
        "```{code-cell} python\n:tags: [parameters]\nn: int = len([1])\n```\n"
    )
    with pytest.raises(book.UsageError, match="not a plain literal"):
        book.chapter_parameters(book.Chapter(1, "01_bad", bad))


def _cli(*args, capsys):
    code = main(list(args))
    return code, capsys.readouterr().err


def test_cli_unknown_profile_lists_valid_ones(capsys):
    code, err = _cli("run", "--profile", "nope", capsys=capsys)
    assert code == 2
    assert "unknown profile 'nope'" in err and "smoke" in err and "default" in err and "paper" in err


def test_cli_unknown_chapter_lists_valid_ones(capsys):
    code, err = _cli("run", "--profile", "smoke", "--chapter", "42", capsys=capsys)
    assert code == 2
    assert "unknown chapter '42'" in err and CHAPTERS[0].stem in err


def test_cli_unknown_parameter_lists_valid_ones(capsys):
    code, err = _cli("run", "--profile", "smoke", "--chapter", str(CHAPTERS[0].number), "-p", "no_such_param=3", capsys=capsys)
    assert code == 2
    assert "no_such_param" in err
    for name in book.chapter_parameters(CHAPTERS[0]):
        assert name in err


def test_cli_malformed_parameter(capsys):
    code, err = _cli("run", "-p", "justaname", capsys=capsys)
    assert code == 2 and "expected name=value" in err


def test_parse_assignments_uses_yaml_values():
    assert book.parse_assignments(["epochs=3", "seeds=[0, 1]", "name=resnet18", "lr=0.1"]) == {
        "epochs": 3, "seeds": [0, 1], "name": "resnet18", "lr": 0.1,
    }


def test_plan_applies_profile_then_cli_overrides():
    chapter = CHAPTERS[0]
    smoke = book.load_profile("smoke")["chapters"][chapter.stem]
    name, value = next(iter(smoke.items()))
    assert book.plan_run("smoke", [chapter.stem])[0].parameters[name] == value
    plans = book.plan_run("smoke", [chapter.stem], {name: value + 1})
    assert plans[0].parameters[name] == value + 1 and plans[0].cli == {name: value + 1}


def test_cli_exit_status_from_a_fresh_process():
    # the real entry point, as a user runs it
    result = subprocess.run(
        [sys.executable, "-m", "fslib", "run", "--profile", "bogus"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2 and "valid profiles" in result.stderr


def test_run_settings_box_names_profile_device_changes_and_seeds():
    plan = book.Plan(CHAPTERS[0], {"seed": 0, "n": 10, "device": "auto"}, {"n": 3})
    text = book.run_settings_markdown(plan, "smoke", "cpu", 12.3, "2026-01-01 00:00 UTC")
    assert "`smoke`" in text and "`cpu`" in text and "`n = 3`" in text and "`seed = 0`" in text and "12 s" in text


def test_environment_yml_agrees_with_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    pip_block = next(d for d in deps if isinstance(d, dict))["pip"]
    assert pip_block == ["-e .[book,test]"], "environment.yml must only install the project"
    extras = pyproject["project"]["optional-dependencies"]
    assert {"book", "test"} <= set(extras)
    minimum = pyproject["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, minimum.split(".")))
    names = " ".join(pyproject["project"]["dependencies"] + extras["book"])
    for required in ("torch", "torchvision", "numpy", "matplotlib", "pandas", "tqdm",
                     "jupyter-book==1.0.4.post1", "papermill", "jupytext", "ipykernel",
                     "sphinx-mathjax-offline", "sphinxcontrib-bibtex"):
        assert required in names, required


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert readme.index("make book") < readme.index("make test")


def test_paths_respect_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FSLIB_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "c"))
    assert paths.data_root() == tmp_path / "d"
    assert paths.cache_dir("x") == tmp_path / "c" / "x" and (tmp_path / "c" / "x").is_dir()


def test_glued_numpy_scalars_become_plain_text():
    assert book.plain_scalar_text("np.float64(0.14295954025416602)") == "0.14295954025416602"
    assert book.plain_scalar_text("np.int64(3)") == "3"
    assert book.plain_scalar_text("np.False_") == "False"
    assert book.plain_scalar_text("array([1, 2])") == "array([1, 2])"


@pytest.mark.skipif(sys.platform == "win32", reason="zmq has no IPC transport on Windows")
def test_papermill_runs_a_notebook_over_ipc_and_shuts_the_kernel_down(tmp_path, capfd, monkeypatch):
    import jupytext
    from jupyter_client.manager import KernelManager

    managers = []
    real_init = KernelManager.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        managers.append(self)

    monkeypatch.setattr(KernelManager, "__init__", spy)
    nb = jupytext.reads("```{code-cell} python\n:tags: [parameters]\nx = 1\n```\n\n"
                        "```{code-cell} python\nprint(x * 2)\n```\n", fmt="md:myst")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out = tmp_path / "out.ipynb"
    runner._papermill(nb, out, {"x": 21}, tmp_path)
    executed = nbformat.read(out, as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "42\n"          # the injected parameter won
    assert len(managers) == 1 and managers[0].transport == "ipc"
    assert not managers[0].has_kernel                                 # not left running
    sockets = Path(managers[0].ip).parent      # a private folder: two runs never share a socket ...
    assert Path(managers[0].ip).is_absolute() and sockets.name.startswith("fslib-kernel-")
    assert not sockets.exists() and not list(tmp_path.glob("kernel-ipc*"))  # ... and it is removed afterwards
    folders = [runner._socket_folder(), runner._socket_folder()]
    assert folders[0] != folders[1] and all(f.stat().st_mode & 0o777 == 0o700 for f in folders)
    for f in folders:
        f.rmdir()
    assert "without encryption" not in capfd.readouterr().err


# --------------------------------------------------------------------------- bad input, damaged records, concurrency
def test_cli_parameter_value_that_is_not_yaml(capsys):
    code, err = _cli("run", "--profile", "smoke", "-p", "n_train=[1, 2", capsys=capsys)
    assert code == 2 and "n_train=[1, 2" in err and "not a YAML value" in err and "Traceback" not in err


@pytest.mark.parametrize("text,message", [("chapters: {01_x: [1,\n", "is not valid YAML"),
                                          ("- a\n- b\n", "must be a mapping .* not a list")])
def test_broken_profile_file_is_named(tmp_path, monkeypatch, capsys, text, message):
    shutil.copy(paths.profiles_dir() / "smoke.yml", tmp_path / "smoke.yml")
    (tmp_path / "broken.yml").write_text(text)
    monkeypatch.setattr(paths, "profiles_dir", lambda: tmp_path)
    for args in (("profiles",), ("run", "--profile", "broken")):
        code, err = _cli(*args, capsys=capsys)
        assert code == 2 and re.search(re.escape(str(tmp_path / "broken.yml")) + " " + message, err), err


@pytest.fixture
def toy_book(tmp_path, monkeypatch):
    """A one-chapter book in tmp_path (executed notebooks in tmp_path/executed), run with a fake papermill."""
    chapter_path = tmp_path / "book" / "01_toy.md"
    chapter_path.parent.mkdir()
    chapter_path.write_text("---\njupytext:\n  text_representation:\n    format_name: myst\nkernelspec:\n"
                            "  name: python3\n  display_name: Python 3\n---\n\n# Toy\n\n"
                            "```{code-cell} python\n:tags: [parameters]\nx = 1\n```\n")
    monkeypatch.setattr(paths, "executed_dir", lambda: tmp_path / "executed")
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    seen = []

    def fake_papermill(nb, out, parameters, cwd, progress=None):
        seen.append(os.environ["FSLIB_CACHE"])
        nbformat.write(nb, out)

    monkeypatch.setattr(runner, "_papermill", fake_papermill)
    chapter = book.Chapter(1, "01_toy", chapter_path)
    plans = [book.Plan(chapter, {"x": 1}, {})]
    return types.SimpleNamespace(chapter=chapter, plans=plans, executions=seen, run=lambda log: book.run_chapters(
        plans, "smoke", log=log))


def test_damaged_cached_notebook_and_run_records_are_rebuilt(toy_book, tmp_path):
    logs = []
    toy_book.run(logs.append)
    cached = tmp_path / "cache" / "executed" / "smoke" / "01_toy.ipynb"
    assert len(toy_book.executions) == 1 and (cached.parent / "01_toy.ipynb.sha256").exists()
    cached.write_text(cached.read_text()[:100])  # truncated: was NotJSONError at every later run
    toy_book.run(logs.append)
    assert len(toy_book.executions) == 2 and any("01_toy.ipynb is damaged" in m and "executing" in m for m in logs)
    assert (cached.parent / "01_toy.ipynb.damaged").exists() and artefacts.verify(cached)
    records = tmp_path / "executed" / "runs.json"
    records.write_text(records.read_text()[:30])  # truncated: was a failure after the chapter had run
    toy_book.run(logs.append)
    assert len(toy_book.executions) == 2 and any("runs.json is damaged" in m and "rebuilt" in m for m in logs)
    assert book.read_run_records()["01_toy"]["profile"] == "smoke" and artefacts.verify(records)
    assert not list((tmp_path / "executed").glob(".*.running.ipynb"))


def test_a_relative_cache_means_the_same_folder_in_the_kernel(toy_book, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FSLIB_CACHE", "relative/cache")
    monkeypatch.setenv("FSLIB_DATA", "../data")
    toy_book.run(lambda m: None)
    assert toy_book.executions == [str(tmp_path / "relative" / "cache")]  # what the kernel (cwd book/) sees
    assert os.environ["FSLIB_DATA"] == str(tmp_path.parent / "data")
    assert (tmp_path / "relative" / "cache" / "executed" / "smoke" / "01_toy.ipynb").exists()


def test_ctrl_c_removes_the_partial_notebook_and_shuts_the_kernel_down(tmp_path, monkeypatch):
    import papermill
    from jupyter_client.manager import KernelManager

    managers, folders = [], []
    real_init, real_folder = KernelManager.__init__, runner._socket_folder
    monkeypatch.setattr(KernelManager, "__init__", lambda self, *a, **k: real_init(self, *a, **k) or managers.append(self))
    monkeypatch.setattr(runner, "_socket_folder", lambda: folders.append(real_folder()) or folders[-1])

    def interrupted(nb, out, **kwargs):
        Path(out).write_text("{}")  # papermill writes the notebook as it goes
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    out = tmp_path / ".01_x.running.ipynb"
    with pytest.raises(KeyboardInterrupt):
        runner._papermill(nbformat.v4.new_notebook(), out, {}, tmp_path)
    assert not out.exists() and not managers[0].has_kernel
    if folders:
        assert not folders[0].exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_real_ctrl_c_during_a_long_cell_stops_the_chapter_at_once(tmp_path):
    import threading
    import time

    import jupytext

    marker = tmp_path / "cell-started"
    nb = jupytext.reads("```{code-cell} python\n:tags: [parameters]\nx = 1\n```\n\n```{code-cell} python\n"
                        f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\ntime.sleep(120)\n```\n",
                        fmt="md:myst")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}

    pressed, returned = [], threading.Event()

    def press_ctrl_c():  # only once the long cell runs: a kernel that starts slowly (a cold venv) is not the test
        while not marker.exists():
            time.sleep(0.1)
        while not returned.is_set():  # as a user would: again every 2 s until it stops (on a loaded machine
            pressed.append(time.monotonic())  # the first one can land inside the event loop's own callbacks)
            os.kill(os.getpid(), signal.SIGINT)
            returned.wait(2.0)

    out = tmp_path / ".01_x.running.ipynb"
    # Python's own Ctrl-C handler, also where the test process inherited SIGINT ignored (a shell
    # starts background jobs that way, and Python then installs no handler)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=press_ctrl_c, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):  # a blocking kernel client would sit out the 120 s cell
            runner._papermill(nb, out, {}, tmp_path)
    finally:
        returned.set()
        signal.signal(signal.SIGINT, previous)
    assert pressed and time.monotonic() - pressed[0] < 30 and not out.exists()


def test_cli_ctrl_c_or_sigterm_prints_one_line(monkeypatch, capsys, tmp_path):
    from fslib import cli

    monkeypatch.setattr(book.lock, "lock_path", lambda: tmp_path / ".fslib.lock")
    handlers = []

    def interrupted(*args, **kwargs):
        handlers.append(signal.getsignal(signal.SIGTERM))
        raise KeyboardInterrupt

    monkeypatch.setattr(book, "run_chapters", interrupted)
    before = signal.getsignal(signal.SIGTERM)
    code, err = _cli("run", "--profile", "smoke", "--chapter", str(CHAPTERS[0].number), capsys=capsys)
    assert code == 130 and [line for line in err.splitlines() if line] == [err.strip()] and "Ctrl-C" in err
    assert handlers == [cli._raise_interrupt]  # while running, a SIGTERM cleans up as Ctrl-C does
    assert signal.getsignal(signal.SIGTERM) is before  # and the handler is put back


def test_a_second_run_in_the_same_checkout_is_refused_naming_the_first(tmp_path, monkeypatch, capsys):
    lock_file = tmp_path / ".fslib.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import importlib.util, sys, time; from pathlib import Path\n"
         "spec = importlib.util.spec_from_file_location('lock', 'fslib/book/lock.py')  # no torch: starts fast\n"
         "lock = importlib.util.module_from_spec(spec); spec.loader.exec_module(lock)\n"
         "lock.lock_path = lambda: Path(sys.argv[1])\n"
         "with lock.checkout_lock('fslib run --profile default'):\n    print('held', flush=True); time.sleep(60)\n",
         str(lock_file)], stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(book.lock, "lock_path", lambda: lock_file)
        monkeypatch.setattr(book, "run_chapters", lambda *a, **k: pytest.fail("ran while another run holds the lock"))
        code, err = _cli("run", "--profile", "smoke", "--chapter", str(CHAPTERS[0].number), capsys=capsys)
        assert code == 1 and f"pid {holder.pid}" in err and "fslib run --profile default" in err and str(lock_file) in err
        code, err = _cli("build", capsys=capsys)
        assert code == 1 and f"pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert str(holder.pid) in lock_file.read_text()  # a killed holder leaves a stale lock file ...
    with book.checkout_lock("fslib run --profile smoke"):  # ... which is no obstacle
        assert f'"pid": {os.getpid()}' in lock_file.read_text()
    assert lock_file.read_text() == ""


# ---- what a run shows and writes -------------------------------------------------------------


def test_rerun_command_holds_the_exact_overrides():
    import shlex

    plan = book.plan_run("smoke", ["2"], {"seeds": [0, 1], "datasets": ["syn_b4"]})[0]
    command = book.rerun_command(plan, "smoke")
    argv = shlex.split(command)
    assert argv[:8] == ["python", "-m", "fslib", "run", "--profile", "smoke", "--chapter", "2"]
    assigned = [argv[i + 1] for i, a in enumerate(argv) if a == "-p"]
    assert book.parse_assignments(assigned) == {"seeds": [0, 1], "datasets": ["syn_b4"]}  # round trip
    text = book.run_settings_markdown(plan, "smoke", "cpu", 3.0, "2026-01-01 00:00 UTC")
    assert f"`{command}`" in text
    assert " -p " not in book.rerun_command(book.plan_run("smoke", ["2"])[0], "smoke")


def test_a_run_with_overrides_gets_its_own_output_folder():
    assert book.default_output(book.plan_run("smoke", ["1"]), "smoke") == paths.executed_dir()
    sweep = book.default_output(book.plan_run("smoke", ["1"], {"n_train": 128}), "smoke")
    assert sweep == ROOT / "_build" / "sweeps" / "smoke-n_train=128"
    many = {"models": [["resnet18", "none"]] * 9, "cross_sources": ["ResNet18"]}
    long = book.default_output(book.plan_run("smoke", ["6"], many), "smoke")
    assert long.parent == ROOT / "_build" / "sweeps" and len(long.name) < 80


def test_kernel_stderr_forwards_lines_and_throttles_bars():
    from fslib.book.progress import KernelStderr

    shown = []
    sink = KernelStderr(emit=shown.append, every=3600, indent="")
    sink.write("/x/tqdm/auto.py:21: TqdmWarning: IProgress not found. Please update\n")
    sink.write("train:   0%|   | 0/10\rtrain:  50%|#  | 5/10\rtrain:  90%|## | 9/10")
    sink.write("\rtrain: 100%|###| 10/10\n")
    sink.write("UserWarning: something\n")
    sink.close()
    assert shown == ["train:   0%|   | 0/10", "train: 100%|###| 10/10", "UserWarning: something"]


@pytest.mark.slow
def test_run_writes_the_page_as_run_banner_box_values_and_summary(tmp_path, monkeypatch):
    """A two-cell chapter through run_chapters: where it goes and what the page shows."""
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "01_tiny.md"
    source.write_text(
        "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
        "kernelspec:\n  name: python3\n  display_name: Python 3\n  language: python\n---\n"
        "# 1. Tiny\n\n"
        "```{code-cell} python\n:tags: [parameters]\nn: int = 3  # images\nk: int = 1  # other\n```\n\n"
        "```{code-cell} python\nprint(n * 2)\n```\n")
    chapter = book.Chapter(1, "01_tiny", source)
    plan = book.Plan(chapter, {"n": 3, "k": 1}, {"n": 21}, {"n": 21})
    logged = []
    records = book.run_chapters([plan], "smoke", output=tmp_path / "out", log=logged.append, progress=False)
    out = tmp_path / "out" / "01_tiny.ipynb"
    assert records[0]["path"] == str(out) and out.exists()
    nb = nbformat.read(out, as_version=4)
    sources = [c.source for c in nb.cells]
    assert any("n: int = 21  # images (chapter default: 3)" in s for s in sources)     # the values it ran with
    assert any("numbers on this page are not results" in s for s in sources)          # the smoke banner
    assert sources.index(next(s for s in sources if "not results" in s)) == 1         # right under the title
    assert any("python -m fslib run --profile smoke --chapter 1 -p n=21" in s for s in sources)
    glued = [o for c in nb.cells for o in c.get("outputs", []) if o.get("metadata", {}).get("scrapbook")]
    assert glued[0]["metadata"]["scrapbook"]["name"] == "fsbook_profile"
    assert nb.cells[-2].outputs[0]["text"] == "42\n"
    assert "wrote 1 executed notebook(s)" in logged[-1] and "not part of the book" in logged[-1]
    assert not (paths.executed_dir() / "01_tiny.ipynb").exists()


def test_summary_says_what_to_run_next():
    rec = [{"path": "/x/01_a.ipynb", "cached": False, "wall_seconds": 12.0, "profile": "smoke"}]
    text = runner.summary(rec, paths.executed_dir(), in_book=True)
    assert "01_a.ipynb  (executed in 12 s, profile smoke)" in text and "python -m fslib build" in text


# ---- the papermill route ---------------------------------------------------------------------


def test_export_writes_a_notebook_papermill_reads_and_a_parameter_file(tmp_path):
    from papermill.translators import PythonTranslator

    plans = book.plan_run("smoke", ["1", "6"])
    commands = book.export(plans, "smoke", tmp_path)
    for plan, command in zip(plans, commands):
        nb = nbformat.read(tmp_path / f"{plan.chapter.stem}.ipynb", as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert all(p.inferred_type_name != "None" for p in PythonTranslator.inspect(cell))
        params = yaml.safe_load((tmp_path / f"{plan.chapter.stem}.smoke.yml").read_text())
        assert params == plan.parameters
        assert command.startswith("papermill ") and f"-f {tmp_path / plan.chapter.stem}.smoke.yml" in command


def _readme_block(marker: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index(marker):].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_papermill_route_runs_chapter_1_as_written(tmp_path):
    """The README's papermill block, run as written (CI runs it on chapter 1 with the smoke values)."""
    commands = _readme_block("### With papermill")
    assert commands[0].startswith("python -m fslib export --profile smoke --chapter 1")
    env = {**os.environ, "FSLIB_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    bindir = Path(sys.executable).parent
    for command in commands:
        argv = shlex.split(command)
        argv[0] = sys.executable if argv[0] == "python" else str(bindir / argv[0])
        result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
    out = nbformat.read(ROOT / "_build" / "papermill" / "01_synthetic_datasets.smoke.out.ipynb", as_version=4)
    injected = next(c for c in out.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "n_train = 256" in injected.source and "n_test = 256" in injected.source
    assert not any(o.get("output_type") == "error" for c in out.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_readme_jupytext_one_liner_shows_typed_parameters():
    line = _readme_block("Without fslib's command line")[0]
    assert line.startswith("jupytext --to ipynb -o - book/01_synthetic_datasets.md | papermill - ")
    bindir = Path(sys.executable).parent
    help_cmd = f"{bindir}/jupytext --to ipynb -o - book/01_synthetic_datasets.md | {bindir}/papermill --help-notebook -"
    result = subprocess.run(help_cmd, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "n_train: int (default 10000)" in result.stdout and "Unknown type" not in result.stdout


# ---- building -------------------------------------------------------------------------------


def test_mixed_profiles_give_a_warning_in_the_appendix():
    same = {"01_a": {"profile": "smoke"}, "02_b": {"profile": "smoke"}}
    assert book.site.profile_mix(same) is None
    mixed = {"01_a": {"profile": "smoke"}, "02_b": {"profile": "default"}, "03_c": {"profile": "default", "cli": {"n": 1}}}
    warning = book.site.profile_mix(mixed)
    assert "smoke: chapter(s) 1" in warning and "default: chapter(s) 2" in warning
    assert "default with -p overrides: chapter(s) 3" in warning
    assert warning in book.reproducibility_markdown(mixed)


def test_build_stops_with_the_commands_to_run_when_chapters_were_not_executed(monkeypatch):
    from sphinx.errors import ConfigError

    from fslib.book import site, sphinxext

    monkeypatch.setattr(site, "missing_chapters", lambda: ["02_learning_dynamics"])
    with pytest.raises(ConfigError, match=r"chapters not executed yet: 02_learning_dynamics.*python -m fslib run.*"
                                          r"python -m fslib build"):
        sphinxext.check_executed(None, None)
    with pytest.raises(book.UsageError, match="python -m fslib build"):
        book.build()


@pytest.mark.slow
def test_plain_jupyter_book_build_of_an_unexecuted_checkout_fails_with_the_message(tmp_path):
    """`jupyter-book build .` on a clone whose chapters were never executed: no empty book."""
    import shutil

    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("_config.yml", "_toc.yml", "_static", "book", "fslib"):
        src = ROOT / name
        (shutil.copytree(src, clone / name, ignore=shutil.ignore_patterns("executed", "__pycache__", "kernel-ipc*"))
         if src.is_dir() else shutil.copy(src, clone / name))
    env = {**os.environ, "PYTHONPATH": str(clone)}
    env.pop("FSLIB_BUILD", None)
    cmd = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())", "build", "."]
    result = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-2000:]
    assert "chapters not executed yet" in out and "python -m fslib build" in out
    assert not (clone / "_build" / "html" / "index.html").exists()


def test_api_reference_covers_every_module():
    import pkgutil

    import fslib

    pages = "".join(p.read_text() for p in (ROOT / "book" / "api").glob("*.md"))
    for module in pkgutil.walk_packages(fslib.__path__, "fslib."):
        if module.name != "fslib.__main__":
            assert f".. automodule:: {module.name}\n" in pages, f"add {module.name} to book/api/"
    toc = book.toc_files()
    assert all(f"book/api/{p.stem}" in toc for p in (ROOT / "book" / "api").glob("*.md"))


def test_license_and_citation():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == {"text": "MIT"}
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT" and cff["version"] == pyproject["project"]["version"]
    paper = cff["references"][0]
    assert [a["family-names"] for a in paper["authors"]] == ["Wang", "Veldhuis", "Brune", "Strisciuglio"]
    assert paper["year"] == 2023 and "ICCV" in paper["conference"]["name"] and "2307.09829" in paper["url"]
    assert "once their issue has landed" not in (ROOT / "book" / "intro.md").read_text()


def test_interactive_extra_offers_jupyterlab_with_jupytext():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = " ".join(extras["interactive"])
    assert "jupyterlab" in names and "jupytext" in names
    assert ".[book,interactive]" in (ROOT / "README.md").read_text()


def test_the_bibliography_parses_and_holds_every_cited_key():
    from pybtex.database import parse_file

    entries = parse_file(str(ROOT / "book" / "references.bib")).entries  # a broken entry raises here, naming its line
    cited = {key for path in (ROOT / "book").glob("*.md")
             for group in re.findall(r"\{cite[pt]?\}`([^`]+)`", path.read_text()) for key in group.split(",")}
    assert cited and not {k.strip() for k in cited} - set(entries)
