"""The book pipeline: chapters, profiles, CLI errors, configuration files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import tomllib
import yaml

from fslib import book, paths
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
    assert "without encryption" not in capfd.readouterr().err
