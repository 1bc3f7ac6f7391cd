"""Before the first chapter runs: the data the chosen chapters need, and what the run will cost.

:func:`check_data` collects the natural-image datasets every chosen chapter loads with its
parameters (declared in each chapter's front matter, :func:`~fslib.book.chapters.chapter_datasets`),
finds their sources (downloading them now when downloads are allowed) and stops with one
message listing everything that is missing and the two ways to provide it, before any
chapter executes. :func:`cost_warning` says what ``--profile paper`` costs on a CPU.
"""

from __future__ import annotations

import os
from typing import Callable

from fslib import data, recipes
from fslib.book.chapters import chapter_datasets
from fslib.book.profiles import Plan
from fslib.data import EXPECTED_SHA256
from fslib.device import resolve_device
from fslib.paths import data_root


class DataMissing(RuntimeError):
    """Datasets the chosen chapters need are not here (nothing was run)."""


def needed_datasets(plans: list[Plan]) -> dict[str, list[str]]:
    """Dataset name -> the chapters (stems) of ``plans`` that load it, in chapter order."""
    needed: dict[str, list[str]] = {}
    for plan in plans:
        for name in chapter_datasets(plan.chapter, plan.values):
            needed.setdefault(name, []).append(plan.chapter.stem)
    return needed


def _chapters(stems: list[str]) -> str:
    return ("chapter " if len(stems) == 1 else "chapters ") + ", ".join(str(int(s[:2])) for s in stems)


def missing_message(missing: dict[str, tuple[list[str], str]], downloading: bool) -> str:
    """The one message for every missing dataset: what, for which chapters, and how to provide it.

    ``missing`` maps a dataset to (chapters that need it, the data layer's problem).
    """
    lines = ["the chosen chapters need data that is not here (nothing was run):"]
    for name, (stems, problem) in missing.items():
        lines.append(f"  - {name} ({_chapters(stems)}): {problem.split('. ')[0].rstrip('.')}")
    specs = {name: data.DATASETS[name] for name in missing}
    archives = sorted({s.archive for s in specs.values() if s.archive})
    online = [n for n, s in specs.items() if s.download]
    folders = [n for n, s in specs.items() if not s.download and not s.archive]
    lines.append("Provide them in one of two ways:")
    if archives:
        env = os.environ.get("FSLIB_DATA")
        lines.append(f"  1. offline: put {', '.join(archives)} in one folder and set FSLIB_DATA to it "
                     f"(FSLIB_DATA is {repr(env) if env else 'not set'}: fslib looked in {data_root()}); "
                     f"data/README.md gives each file's sha256 (e.g. {archives[0]}: {EXPECTED_SHA256[archives[0]][:16]}...)")
    if online:
        how = ("downloads were allowed (FSLIB_DOWNLOAD) but failed as shown above: check the network and run "
               "again" if downloading else
               "FSLIB_DOWNLOAD=1 python -m fslib run ..., or `make book` / `make test` (which set "
               "FSLIB_DOWNLOAD=1 when FSLIB_DATA is not set)")
        lines.append(f"  2. online: {how}: {', '.join(online)} come from their official sources "
                     "(CIFAR-10 and Imagenette through torchvision, the stimuli from github.com/rgeirhos/"
                     "texture-vs-shape), checked by checksum")
    for name in folders:
        lines.append(f"  {name}: {missing[name][1]}")
    return "\n".join(lines)


def check_data(plans: list[Plan], *, download: bool | None = None, log: Callable[[str], None] = print) -> None:
    """Find (or, when allowed, download) every dataset the ``plans`` need; :class:`DataMissing` if any is missing.

    ``download``: allow official downloads (``None`` reads ``FSLIB_DOWNLOAD``).
    """
    needed = needed_datasets(plans)
    if not needed:
        return
    try:
        downloading = data.download_enabled(download)
    except ValueError as exc:
        raise DataMissing(str(exc)) from None
    log(f"[fslib] data: checking {', '.join(needed)}" + (" (downloads allowed)" if downloading else ""))
    problems = data.find_sources(list(needed), download=downloading)
    missing = {name: (needed[name], problem) for name, problem in problems.items() if problem}
    if missing:
        raise DataMissing(missing_message(missing, downloading))


def cost_warning(profile: str, plans: list[Plan]) -> str | None:
    """A warning when the ``paper`` profile is about to train on a CPU; ``None`` otherwise.

    The estimate compares the paper's CIFAR-10 ResNet18 recipe with the default one: the
    compute per image grows with the width squared, times the ratio of epochs.
    """
    if profile != "paper":
        return None
    devices = {resolve_device(plan.values.get("device", "auto")).type for plan in plans}
    if devices != {"cpu"}:
        return None
    paper, default = recipes.cifar10(scale="paper"), recipes.cifar10(scale="default")
    factor = (paper.width / default.width) ** 2 * paper.epochs / default.epochs
    return (f"warning: the paper profile on a CPU. Its CIFAR-10 ResNet18 alone needs about {factor:.0f}x the "
            f"training compute of the default profile's ({paper.epochs} epochs at width {paper.width:g} against "
            f"{default.epochs} at {default.width:g}), in fp32 instead of bf16; the default profile takes about 80 "
            f"minutes for the whole book on 2 CPU cores, so expect weeks here. The paper profile is meant for a "
            f"GPU (device=auto picks CUDA); `--profile default` is the book as published.")
