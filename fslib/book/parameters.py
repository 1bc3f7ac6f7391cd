"""Typed chapter parameters: the declarations in a chapter's ``parameters`` cell, and their check.

Every line of a chapter's ``parameters`` cell declares one parameter with a type annotation
that papermill also reads (``papermill --help-notebook`` shows it), a plain literal and a
comment::

    n_train: int = 10000        # training images per dataset; paper: unknown
    seeds: list[int] = [0, 1, 2]  # training seeds per dataset; paper: not stated
    cifar_n: "Optional[int]" = None  # CIFAR-10 images; None: the whole split

The annotation is the parameter's type (``int``, ``float``, ``str``, ``bool``, ``list[T]``
and ``"Optional[T]"``, quoted so that the kernel need not import :mod:`typing`);
:data:`DOMAINS` adds what the type cannot say (a range, the valid names, a non-empty list).
:func:`check_parameters` checks every value a run would inject (profile, then ``-p``)
before anything executes, naming the chapter, the parameter, the bad value and what is
valid.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any, Callable

from fslib import adcs_sensitivity, augment, localization, metrics, models, recipes, sensitivity
from fslib.compare import model_label
from fslib.data import IMAGE_RESOLUTIONS
from fslib.device import resolve_device
from fslib.protocols import VARIANTS
from fslib.synthetic import DATASETS as SYNTHETIC_SETS


class ParameterError(ValueError):
    """A chapter parameter whose value does not fit its declaration."""


@dataclass(frozen=True)
class Declaration:
    """One line of a ``parameters`` cell: ``name: annotation = default  # help``."""

    name: str
    annotation: str
    default: Any
    help: str = ""


# ---- types ---------------------------------------------------------------------------------

_SCALARS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _parse_type(annotation: str) -> ast.expr:
    try:
        node = ast.parse(annotation, mode="eval").body
    except SyntaxError:
        raise ValueError(f"cannot read the type {annotation!r}") from None
    _check_type_node(node, annotation)
    return node


def _check_type_node(node: ast.expr, text: str) -> None:
    if isinstance(node, ast.Name) and node.id in _SCALARS:
        return
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in ("list", "Optional"):
        _check_type_node(node.slice, text)
        return
    raise ValueError(f"unsupported type {text!r}; use int, float, str, bool, list[T] or \"Optional[T]\"")


def _matches(value: Any, node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        if isinstance(value, bool) and node.id != "bool":
            return False  # True is an int in Python, never a count here
        return isinstance(value, _SCALARS[node.id])
    outer = node.value.id  # type: ignore[attr-defined]
    if outer == "Optional":
        return value is None or _matches(value, node.slice)  # type: ignore[attr-defined]
    return isinstance(value, list) and all(_matches(v, node.slice) for v in value)  # type: ignore[attr-defined]


def _describe(value: Any) -> str:
    return f"the {type(value).__name__} {value!r}"


def check_type(value: Any, annotation: str) -> str | None:
    """``None`` when ``value`` fits ``annotation``, else the reason.

    >>> check_type([0, 1], "list[int]") is None, check_type("syn_b1", "list[str]")
    (True, "expected list[str], got the str 'syn_b1'")
    """
    if _matches(value, _parse_type(annotation)):
        return None
    return f"expected {annotation}, got {_describe(value)}"


# ---- domains -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Domain:
    """The values a parameter may take beyond its type: a range, valid names, non-empty."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False              # (low, high] instead of [low, high]
    choices: tuple | None = None        # valid values (of the parameter, or of each element)
    nonempty: bool = False              # a list that must hold at least one element
    why: str = ""                       # why the bound is where it is
    check: Callable[[Any], str | None] | None = None  # any other rule: the reason, or None

    def problem(self, value: Any) -> str | None:
        """The reason ``value`` is outside the domain, or ``None``."""
        if value is None:
            return None
        if isinstance(value, list):
            if self.nonempty and not value:
                return "must not be empty"
            for v in value:
                reason = None if isinstance(v, list) else self._scalar(v)
                if reason:
                    return f"element {v!r}: {reason}"
        else:
            reason = self._scalar(value)
            if reason:
                return reason
        return self.check(value) if self.check else None

    def _scalar(self, value: Any) -> str | None:
        if self.choices is not None and value not in self.choices:
            return f"{value!r} is not one of {', '.join(map(repr, self.choices))}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
            too_high = self.high is not None and value > self.high
            if too_low or too_high:
                left = "(" if self.low_open else "["
                why = f" ({self.why})" if self.why else ""
                return f"{value!r} is out of range {left}{self.low:g}, {self.high:g}]{why}"
        return None


def count(high: int, why: str = "", low: int = 1) -> Domain:
    """A number of images, resamples, masks ...: an integer from ``low`` to ``high``."""
    return Domain(low=low, high=high, why=why)


FRACTION = Domain(low=0.0, high=1.0, low_open=True, why="a share")
SHARE = Domain(low=0.0, high=1.0, why="a share")
SEED = Domain(low=0, high=2**32 - 1, why="numpy seeds are 32-bit")
SYNTHETIC = Domain(choices=tuple(SYNTHETIC_SETS), nonempty=True)
RESOLUTION = Domain(choices=IMAGE_RESOLUTIONS)
PATCH = count(16, "px per side of a removed frequency block")
CIFAR_TEST = count(10_000, "the CIFAR-10 test split has 10,000 images")
SYN_IMAGES = count(200_000, "the synthetic generator holds every image in memory, 3 KB each")


def _device(value: str) -> str | None:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        return "valid: auto, cpu, cuda, cuda:N, mps"
    try:
        resolve_device(value)
    except ValueError as exc:
        return str(exc)
    return None


def _model_pair(pair: list) -> str | None:
    if len(pair) != 2:
        return f"expected [architecture, extra augmentation], got {pair!r}"
    arch, extra = pair
    if arch not in models.MODELS:
        return f"unknown architecture {arch!r}; valid: {', '.join(models.MODELS)}"
    if extra not in augment.EXTRA_AUGMENTS:
        return f"unknown extra augmentation {extra!r}; valid: {', '.join(augment.EXTRA_AUGMENTS)}"
    return None


def _error_of(resolve: Callable[[list], Any]) -> Callable[[list], str | None]:
    """A domain check from a resolver that raises ValueError on bad input: its message, or None."""
    def check(value: list) -> str | None:
        try:
            resolve(value)
        except ValueError as exc:
            return str(exc)
        return None
    return check


_settings = _error_of(sensitivity.settings)
_adcs_settings = _error_of(adcs_sensitivity.settings)


def _generator_settings(value: list) -> str | None:
    reason = _settings(value)
    if reason:
        return reason
    plain = [name for name in value if sensitivity.generator_table([name]).empty]
    if plain:
        return f"{plain} change no generator option; valid: settings with dataset_options, e.g. " + \
            ", ".join(n for n, o in sensitivity.SETTINGS.items() if "dataset_options" in o)
    return None


def _models(value: list) -> str | None:
    for pair in value:
        reason = _model_pair(pair)
        if reason:
            return reason
    return None


# One entry per parameter name the chapters use. A name means the same in every chapter;
# a (chapter, name) key overrides it where one chapter's value ranges over another split.
DOMAINS: dict[str | tuple[str, str], Domain] = {
    "datasets": SYNTHETIC, "synthetic_sets": SYNTHETIC, "syn_sets": SYNTHETIC,
    "variant_dataset": Domain(choices=tuple(SYNTHETIC_SETS)),
    "n_train": SYN_IMAGES, "n_test": SYN_IMAGES, "synthetic_n": SYN_IMAGES, "syn_n_test": SYN_IMAGES,
    "seed": SEED, "seeds": Domain(low=SEED.low, high=SEED.high, nonempty=True, why=SEED.why),
    "n_examples": count(50, "images per class in one figure"),
    "scale": Domain(choices=recipes.SCALES),
    "threshold": FRACTION, "cifar_threshold": FRACTION, "top": FRACTION, "tolerance": SHARE,
    "max_fpr": SHARE, "min_acc": SHARE,
    "sweep": Domain(low=0.0, high=1.0, low_open=True, nonempty=True, why="accuracies"),
    "thresholds": Domain(low=0.0, high=1.0, low_open=True, nonempty=True, why="shares of the spectrum"),
    "n_bandstop": count(100_000, "synthetic test images"),
    "adcs_n": count(50_000, "the CIFAR-10 train split has 50,000 images"),
    ("02_learning_dynamics", "adcs_n"): CIFAR_TEST, ("09_shortcut_localization", "n_test"): CIFAR_TEST,
    "split": Domain(choices=("train", "test")),
    "cifar_n": count(50_000, "the CIFAR-10 train split has 50,000 images"),
    "imagenette_n": count(9_469, "the Imagenette train split has at most 9,469 images"),
    "imagenette_resolution": RESOLUTION, "stimuli_resolution": RESOLUTION, "imagenet_resolution": RESOLUTION,
    "variant": Domain(choices=metrics.VARIANTS),
    "n_boot": count(100_000, "bootstrap resamples"),
    "n_stability": count(50_000, "images per class"),
    "syn_n_rank": count(100_000, "synthetic test images"), "syn_n_score": count(100_000, "synthetic test images"),
    "cifar_n_rank": CIFAR_TEST, "cifar_n_score": CIFAR_TEST, "n_rank": CIFAR_TEST, "n_score": CIFAR_TEST,
    "imagenette_n_rank": count(3_925, "the Imagenette validation split has 3,925 images"),
    "imagenette_n_score": count(3_925, "the Imagenette validation split has 3,925 images"),
    "imagenette_patch": PATCH, "imagenet_patch": PATCH, "patch_size": PATCH,
    "n_null": count(10_000, "random masks per class"), "cross_n_null": count(10_000, "random masks per class"),
    "models": Domain(nonempty=True, check=_models),
    "robust_settings": Domain(nonempty=True, check=_settings),
    "robust_datasets": SYNTHETIC, "robust_seeds": Domain(low=SEED.low, high=SEED.high, nonempty=True, why=SEED.why),
    "robust_every": count(1_000, "iterations"), "robust_until": count(100_000, "iterations"),
    "robust_bandstop": count(100_000, "synthetic test images"),
    "adcs_settings": Domain(nonempty=True, check=_adcs_settings),
    "robust_generator": Domain(nonempty=True, check=_generator_settings),
    "robust_generator_seeds": Domain(low=SEED.low, high=SEED.high, nonempty=True, why=SEED.why),
    "stability_per_class": count(500, "CIFAR-10 test images per class: 1,000 in all"),
    "stability_chunks": Domain(low=2, high=1_000, why="two chunks at least, one per half"),
    "stability_splits": count(100_000, "random splits"),
    "baseline": Domain(), "cross_sources": Domain(nonempty=True),
    "device": Domain(check=_device),
    "normalize": Domain(), "imagenet_sct": Domain(),
    "band_n": CIFAR_TEST, "per_class": count(1_000, "the CIFAR-10 test split has 1,000 images per class"),
    # chapter 9
    "architectures": Domain(choices=tuple(models.MODELS), nonempty=True),
    "correlation": SHARE, "amplitude": Domain(low=0.0, high=1.0, low_open=True, why="pixel units in [0, 1]"),
    "directions": Domain(choices=tuple(localization.DIRECTIONS), nonempty=True),
    "n_probe": count(10_000, "the CIFAR-10 test split has 10,000 images", low=2),
    "min_share": SHARE, "min_gain": SHARE, "slow_factor": Domain(low=0.0, high=1.0, low_open=True, why="a multiplier <= 1"),
    "mitigations": Domain(choices=("slow", "freeze")),
    "mitigation_seeds": Domain(low=SEED.low, high=SEED.high, why=SEED.why),
    # protocol variants of the robustness tables (chapters 4-6)
    "robust_variants": Domain(choices=tuple(VARIANTS), nonempty=True), "robust_n_score": CIFAR_TEST,
    # chapter 7
    "candidates": Domain(low=1.0, high=1_000.0, why="units checked exactly, x the DFM size (1: the DFM itself)"),
    "set_rounds": count(100, "rounds of proposals per level"), "set_proposals": count(100, "masks per class per round"),
    "hfss_candidates": count(10_000, "candidate masks per stage"),
    "n_timing": count(1_000, "images per class"),
    "imagenette_n_timing": count(392, "ranking images per class (the Imagenette validation split: at least 357)"),
    "extrapolate_resolution": Domain(low=8, high=1_024, why="px per side of the timed random input"),
    "extrapolate_n_rank": count(1_000_000, "ranking images"),
    "target_seconds": Domain(low=0.0, high=1e7, low_open=True, why="seconds"),
    "timing_seconds": Domain(low=0.0, high=3_600.0, why="seconds"),
    # chapter 10
    "mix_dim": count(10_000, "dimensions of the Gaussian mixture", low=2),
    "mix_dim_over": count(100_000, "dimensions of the over-parameterised mixture", low=2),
    "mix_aligned": count(100_000, "samples per cluster"), "mix_conflicting": count(100_000, "samples per cluster"),
    "mix_test": count(100_000, "samples per cluster"),
    "mix_noise": Domain(low=0.0, high=100.0, why="a standard deviation"),
    "noise_sweep": Domain(low=0.0, high=100.0, nonempty=True, why="standard deviations"),
    "rho_sweep": Domain(low=0.0, high=0.5, low_open=True, nonempty=True, why="shares of conflicting samples, below half"),
    "deep_width": count(100_000, "hidden units"), "relu_width": count(100_000, "hidden units"),
    "deep_depth": count(50, "layers"), "circ_depth": count(50, "convolutions"),
    "lr_fraction": Domain(low=0.0, high=2.0, low_open=True, why="lr x top eigenvalue: below 2 for gradient descent to converge"),
    "fit_time": Domain(low=0.0, high=1e6, low_open=True, why="units of 1 / (lr lambda_2)"),
    "kernel_times": Domain(low=0.0, high=1e12, low_open=True, nonempty=True, why="[first, last, points]"),
    "ntk_dataset": Domain(choices=tuple(SYNTHETIC_SETS)),
    "ntk_n": count(10_000, "images of the empirical NTK (its size grows with their square)", low=2),
    "ntk_batch": count(1_024, "images per Jacobian call"),
    "bridge_n": count(100_000, "synthetic images", low=4), "bridge_test": count(100_000, "synthetic images", low=4),
    "quad_small": count(32, "px per side of a filter"),
    "n_perm": count(100_000, "label permutations"),
}


def domain(chapter: str, name: str) -> Domain | None:
    """The :class:`Domain` of parameter ``name`` in ``chapter`` (``None``: not declared)."""
    return DOMAINS.get((chapter, name), DOMAINS.get(name))


# ---- rules between parameters ----------------------------------------------------------------


def _labels(values: dict[str, Any]) -> list[str]:
    return [model_label(m, a) for m, a in values["models"]]


def _chapter6(values: dict[str, Any]) -> list[tuple[str, str]]:
    labels = _labels(values)
    out = []
    if values["baseline"] not in labels:
        out.append(("baseline", f"{values['baseline']!r} is not one of the models {labels}"))
    missing = [s for s in values["cross_sources"] if s not in labels]
    if missing:
        out.append(("cross_sources", f"{missing} are not among the models {labels}"))
    return out


def _rank_plus_score(rank: str, score: str, total: int, what: str) -> Callable[[dict], list[tuple[str, str]]]:
    def rule(values: dict[str, Any]) -> list[tuple[str, str]]:
        if values[rank] + values[score] > total:
            return [(f"{rank} + {score}", f"{values[rank]} + {values[score]} > {total}, the {what}: "
                                          "ranking and scoring images must be different images")]
        return []

    return rule


RELATIONS: dict[str, list[Callable[[dict[str, Any]], list[tuple[str, str]]]]] = {
    "04_dominant_frequency_maps": [
        _rank_plus_score("cifar_n_rank", "cifar_n_score", 10_000, "CIFAR-10 test split"),
        _rank_plus_score("imagenette_n_rank", "imagenette_n_score", 3_925, "Imagenette validation split"),
    ],
    "05_ood_transfer": [_rank_plus_score("n_rank", "n_score", 10_000, "CIFAR-10 test split")],
    "07_fast_shortcut_search": [
        _rank_plus_score("n_rank", "n_score", 10_000, "CIFAR-10 test split"),
        _rank_plus_score("imagenette_n_rank", "imagenette_n_score", 3_925, "Imagenette validation split"),
    ],
    "06_capacity_and_augmentation": [_rank_plus_score("n_rank", "n_score", 10_000, "CIFAR-10 test split"), _chapter6],
}


# ---- reading and checking --------------------------------------------------------------------


def read_declarations(source: str, where: str) -> dict[str, Declaration]:
    """The declarations of a ``parameters`` cell's ``source``; ``where`` names it in errors.

    >>> d = read_declarations("n: int = 3  # images", "cell")
    >>> d["n"].annotation, d["n"].default, d["n"].help
    ('int', 3, 'images')
    """
    comments = {i + 1: line.partition("#")[2].strip() for i, line in enumerate(source.splitlines()) if "#" in line}
    found: dict[str, Declaration] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            raise ParameterError(f"{where}: parameter {node.targets[0].id!r} has no type; write it as "
                                 f"`{node.targets[0].id}: int = ...` (int, float, str, bool, list[T], \"Optional[T]\")")
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None):
            raise ParameterError(f"{where}: the parameters cell may only hold `name: type = literal` lines")
        name = node.target.id
        annotation = node.annotation.value if isinstance(node.annotation, ast.Constant) else ast.unparse(node.annotation)
        try:
            default = ast.literal_eval(node.value)
        except ValueError:
            raise ParameterError(f"{where}: parameter {name!r} is not a plain literal") from None
        try:
            reason = check_type(default, str(annotation))
        except ValueError as exc:
            raise ParameterError(f"{where}: parameter {name!r}: {exc}") from None
        if reason:
            raise ParameterError(f"{where}: the default of {name!r} does not fit its type: {reason}")
        found[name] = Declaration(name, str(annotation), default, comments.get(node.lineno, ""))
    return found


def value_problems(chapter: str, declarations: dict[str, Declaration], values: dict[str, Any]) -> list[str]:
    """Every problem of ``values`` (name -> value, the run's effective parameters) in ``chapter``."""
    problems = []
    for name, value in values.items():
        decl = declarations[name]
        reason = check_type(value, decl.annotation)
        if reason and decl.annotation.startswith("list[") and not isinstance(value, list):
            reason += f" (a list is written in brackets: -p \"{name}=[{value}]\")"
        if reason is None:
            dom = domain(chapter, name)
            reason = dom.problem(value) if dom else None
        if reason:
            problems.append(f"chapter {chapter}, parameter {name}: {reason}")
    if not problems:
        for rule in RELATIONS.get(chapter, []):
            problems += [f"chapter {chapter}, parameter {name}: {reason}" for name, reason in rule(values)]
    return problems


def literal(value: Any) -> str:
    """``value`` as a Python literal in the style of the parameters cells (double quotes).

    >>> literal(["syn_b1", 2, None, [0.5, True]])
    '["syn_b1", 2, None, [0.5, True]]'
    """
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    return repr(value)


def source_as_run(source: str, values: dict[str, Any]) -> str:
    """A ``parameters`` cell rewritten to show the values a run used instead of the defaults.

    Each changed line keeps its name, type and comment, gets the run's value, and says the
    chapter's default at the end of its comment.

    >>> source_as_run("n: int = 3  # images\\nk: int = 1  # other", {"n": 5, "k": 1})
    'n: int = 5  # images (chapter default: 3)\\nk: int = 1  # other'
    """
    lines = source.splitlines()
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None):
            continue
        name, value = node.target.id, node.value
        if name not in values or value.lineno != value.end_lineno:
            continue
        default = ast.literal_eval(value)
        if values[name] == default and type(values[name]) is type(default):
            continue
        i = value.lineno - 1
        line = lines[i].encode()  # ast offsets count UTF-8 bytes
        code = line[:value.col_offset].decode() + literal(values[name])
        comment = line[value.end_col_offset:].decode()
        note = f"(chapter default: {literal(default)})"
        lines[i] = code + (comment.rstrip() + " " + note if "#" in comment else f"  # {note}")
    return "\n".join(lines) + ("\n" if source.endswith("\n") else "")
