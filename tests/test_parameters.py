"""Typed chapter parameters (fslib.book.parameters): declarations papermill shows, values checked
before anything runs."""

from __future__ import annotations

import ast

import pytest

from fslib import book
from fslib.book import chapters, parameters
from fslib.book.parameters import ParameterError, check_type, read_declarations, source_as_run
from fslib.cli import main

CHAPTERS = book.discover_chapters()


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_every_parameter_has_a_type_papermill_shows_and_a_domain(chapter):
    from papermill.translators import PythonTranslator

    cell = chapters._parameters_cell(chapters._read_notebook(chapter.path), chapter.path)
    seen = {p.name: p.inferred_type_name for p in PythonTranslator.inspect(cell)}
    declared = book.chapter_declarations(chapter)
    assert seen == {name: d.annotation.strip('"') for name, d in declared.items()}
    assert "None" not in seen.values()  # papermill --help-notebook would say "Unknown type"
    for name, decl in declared.items():
        assert decl.help, f"{chapter.stem}.{name} has no comment"
        assert parameters.domain(chapter.stem, name) is not None, f"declare a domain for {name!r}"
    # the defaults themselves fit
    assert parameters.value_problems(chapter.stem, declared, {n: d.default for n, d in declared.items()}) == []


@pytest.mark.parametrize("assignment, chapter, expected", [
    ("seeds=[]", "02_learning_dynamics", "parameter seeds: must not be empty"),
    ("datasets=[]", "01_synthetic_datasets", "parameter datasets: must not be empty"),
    ("datasets=syn_b1", "01_synthetic_datasets", "parameter datasets: expected list[str], got the str 'syn_b1'"),
    ("threshold=2", "02_learning_dynamics", "parameter threshold: 2 is out of range (0, 1]"),
    ("n_train=1000000000", "01_synthetic_datasets", "parameter n_train: 1000000000 is out of range [1, 200000]"),
    ("n_train=abc", "01_synthetic_datasets", "parameter n_train: expected int, got the str 'abc'"),
    ("datasets=[syn_b9]", "01_synthetic_datasets", "parameter datasets: element 'syn_b9': 'syn_b9' is not one of 'syn_b1'"),
    ("scale=huge", "04_dominant_frequency_maps", "parameter scale: 'huge' is not one of 'smoke', 'default', 'paper'"),
    ("baseline=VGG", "06_capacity_and_augmentation", "parameter baseline: 'VGG' is not one of the models"),
    ("models=[[resnet18, nope]]", "06_capacity_and_augmentation", "parameter models: unknown extra augmentation 'nope'"),
    ("cifar_n_rank=9990", "04_dominant_frequency_maps", "parameter cifar_n_rank + cifar_n_score: 9990 + 50 > 10000"),
    ("normalize=1", "03_class_wise_spectrum", "parameter normalize: expected bool, got the int 1"),
    ("robust_generator=[none]", "02_learning_dynamics", "parameter robust_generator: ['none'] change no generator "
     "option; valid: settings with dataset_options, e.g. c2_share_low"),
    ("robust_generator=[noise_low]", "02_learning_dynamics", "parameter robust_generator: unknown setting 'noise_low'"),
])
def test_bad_values_stop_the_run_before_anything_executes(assignment, chapter, expected, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(book, "run_chapters", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(book, "check_data", lambda *a, **k: ran.append(a))
    code = main(["run", "--profile", "smoke", "-p", assignment])
    err = capsys.readouterr().err
    assert code == 2 and not ran
    assert f"chapter {chapter}, {expected}" in err, err
    assert "nothing was run" in err


def test_a_string_where_a_list_is_expected_shows_how_to_write_the_list(capsys, monkeypatch):
    monkeypatch.setattr(book, "run_chapters", lambda *a, **k: None)
    main(["run", "--profile", "smoke", "--chapter", "1", "-p", "datasets=syn_b1"])
    assert '-p "datasets=[syn_b1]"' in capsys.readouterr().err


def test_good_overrides_pass_and_reach_the_plan():
    plans = book.plan_run("smoke", ["2"], {"seeds": [0, 1], "threshold": 1, "datasets": ["syn_b4"]})
    assert plans[0].values["seeds"] == [0, 1] and plans[0].values["threshold"] == 1  # an int is a float
    assert book.plan_run("paper", ["3"])[0].values["synthetic_n"] is None  # Optional[int]


def test_check_type_knows_bool_is_not_a_number_and_nested_lists():
    assert check_type(True, "int") == "expected int, got the bool True"
    assert check_type(0.5, "int") is not None and check_type(3, "float") is None
    assert check_type([["resnet18", "none"]], "list[list[str]]") is None
    assert check_type([["resnet18", 1]], "list[list[str]]") is not None
    assert check_type(None, "Optional[int]") is None and check_type("x", "Optional[int]") is not None
    with pytest.raises(ValueError, match="unsupported type"):
        check_type(1, "dict[str, int]")


@pytest.mark.parametrize("source, message", [
    ("n = 3  # images", "has no type"),
    ("n: int = len([1])", "not a plain literal"),
    ("n: int = 'three'", "does not fit its type"),
    ("n: set[int] = 3", "unsupported type"),
    ("import os", "may only hold"),
])
def test_bad_declarations_are_refused(source, message):
    with pytest.raises(ParameterError, match=message):
        read_declarations(source, "cell")


def test_source_as_run_shows_the_run_values_and_keeps_the_rest():
    source = ('datasets: list[str] = ["syn_b1", "syn_b2"]  # sets\n'
              'n_train: int = 10000        # training images\n'
              'seed: int = 0               # seed\n')
    out = source_as_run(source, {"datasets": ["syn_b4"], "n_train": 256, "seed": 0})
    lines = out.splitlines()
    assert lines[0] == 'datasets: list[str] = ["syn_b4"]  # sets (chapter default: ["syn_b1", "syn_b2"])'
    assert lines[1].startswith("n_train: int = 256") and lines[1].endswith("# training images (chapter default: 10000)")
    assert lines[2] == source.splitlines()[2]  # unchanged values stay as written
    values = {n.target.id: ast.literal_eval(n.value) for n in ast.parse(out).body}
    assert values == {"datasets": ["syn_b4"], "n_train": 256, "seed": 0}
    assert read_declarations(out, "as run")["n_train"].help.startswith("training images")


def test_every_chapter_cell_survives_source_as_run_with_the_smoke_values():
    for plan in book.plan_run("smoke"):
        cell = chapters._parameters_cell(chapters._read_notebook(plan.chapter.path), plan.chapter.path)
        out = read_declarations(source_as_run(cell.source, plan.values), plan.chapter.stem)
        assert {n: d.default for n, d in out.items()} == plan.values
