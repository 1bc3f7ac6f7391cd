"""Profiles (``fslib/book/profiles/<name>.yml``) and run plans.

A profile overrides chapter parameters: ``smoke`` (CI, minutes), ``default`` (the
published book), ``paper`` (the paper's settings, for a GPU). :func:`plan_run` validates a
profile, the chosen chapters and ``-p`` overrides before anything executes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import yaml

from fslib import paths
from fslib.book.chapters import Chapter, UsageError, chapter_parameters, discover_chapters, select_chapters


def available_profiles() -> list[str]:
    return sorted(p.stem for p in paths.profiles_dir().glob("*.yml"))


def load_profile(name: str) -> dict[str, Any]:
    """A profile as ``{"description": str, "chapters": {stem: {param: value}}}``."""
    valid = available_profiles()
    if name not in valid:
        raise UsageError(f"unknown profile {name!r}; valid profiles: {', '.join(valid)}")
    data = _read_yaml(paths.profiles_dir() / f"{name}.yml")
    chapters = data.get("chapters") or {}
    if not isinstance(chapters, dict) or not all(isinstance(v, dict) for v in chapters.values()):
        raise UsageError(f"profile {name!r}: 'chapters' must map chapter names to parameter overrides")
    return {"name": name, "description": data.get("description", ""), "chapters": chapters}


def _read_yaml(path) -> dict[str, Any]:
    """A profile file's mapping; a file that is not valid YAML or not a mapping is a UsageError naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise UsageError(f"profile file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"profile file {path} must be a mapping with 'description' and 'chapters' at its top level, "
                         f"not a {type(data).__name__}")
    return data


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """``["epochs=3", "seeds=[0, 1]"]`` -> ``{"epochs": 3, "seeds": [0, 1]}`` (YAML values)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise UsageError(f"bad parameter {item!r}; expected name=value, e.g. -p epochs=3")
        try:
            out[name.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = str(getattr(exc, "problem", None) or exc).strip()
            raise UsageError(f"bad parameter value in -p {item!r}: not a YAML value ({problem}); "
                             "e.g. -p 'seeds=[0, 1]', -p lr=0.1, -p model=resnet18") from None
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
