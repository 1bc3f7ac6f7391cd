"""Sensitivity of a verdict: the claims of chapter 2 judged again over a grid of training settings.

A verdict of the book ("C3 is learned first: partly") is measured under one training
setup. This module asks whether another, equally defensible setup gives another verdict:

* a :class:`Setting` is a name and :class:`~fslib.train.TrainConfig` overrides (the
  training transform, the architecture, the width, the learning rate, the synthetic
  generator's free parameters as ``dataset_options``, ...); the registry :data:`SETTINGS`
  names the ones the book uses, and ``"none+alexnet"`` combines registered settings (the
  generator options of ``"c2_share_high+noise_high"`` are merged);
* :func:`train_grid` trains (or loads from the run cache, :func:`fslib.runs.get_or_train`)
  one run per setting, dataset and seed, from a recipe (default
  :func:`fslib.recipes.synthetic`) with the setting's overrides and ``common`` overrides
  (e.g. :func:`fine_tracking`) applied;
* :func:`run_table` measures the chapter-2 quantities of every run with the existing
  definitions (:func:`fslib.dynamics.learned_at` for "learned first",
  :func:`fslib.dynamics.bandstop_test` for the band-stop retention), one row per run;
* :func:`claim_verdicts` turns that table into the verdicts of claims 1a, 1b and 1c per
  setting with :func:`fslib.report.count_verdict` (the verdict rules stay in
  :mod:`fslib.report`), and :func:`verdict_cells` / :func:`summary` show them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

from fslib import dynamics, recipes, report, runs
from fslib.synthetic import CLASSES as SYNTHETIC_CLASSES
from fslib.synthetic import SyntheticConfig
from fslib.train import TrainConfig

__all__ = ["sorted_pairs", "Setting", "SETTINGS", "CLAIMS", "setting", "settings", "generator_table", "fine_tracking",
           "train_grid", "measure_run", "run_table", "claim_verdicts", "verdict_cells", "summary"]

TARGET, SHORTCUT = SYNTHETIC_CLASSES.index("C3"), SYNTHETIC_CLASSES.index("C2")
"""Claim 1a/1b's class (content in a single band) and claim 1c's class (special frequencies)."""

# The settings the book varies. Each changes one choice of the recipe; "+" combines them.
SETTINGS: dict[str, dict[str, Any]] = {
    "official": {"augment": "official"},   # Pad(4) + flip + RandomResizedCrop(0.08-1): official code, our default
    "none": {"augment": "none"},           # no augmentation: the images as generated
    "flipcrop": {"augment": "flipcrop"},   # Pad(4) + flip + random 32-px crop, no resize (frequencies unchanged)
    "alexnet": {"model": "alexnet", "width": 1.0},  # the released synthetic script's architecture
    "full_width": {"width": 1.0},          # ResNet18 at the paper's width (the recipe's is 0.25)
    "lr_high": {"lr": 0.05},               # 5x the paper's SGD learning rate of 0.01
    "lr_low": {"lr": 0.002},               # a fifth of it
    # The generator's free parameters (fslib.synthetic.OPTIONS; the paper's are unknown, chapter 1
    # gives ours): each moves one cue of the design so that a claim may turn on it, within the
    # range that keeps chapter 1's properties P1-P5.
    "c2_share_low": {"dataset_options": (("c2_special_fraction", 0.2),)},   # C2's special frequencies at half
    #   their share (0.4): still at least 3x the median amplitude (P3), but a weaker shortcut for claim 1c
    "c2_share_high": {"dataset_options": (("c2_special_fraction", 0.7),)},  # C2 mostly its special frequencies:
    #   the strongest cue claim 1c can test (a two-band stop still keeps two of the four pairs)
    "c0_lines_low": {"dataset_options": (("c0_line_fraction", 0.5),)},      # C0's lines and texture at equal
    #   energy (0.75): a weaker diagonal cue, since C0, not C3, is often learned first (claims 1a, 1b)
    "noise_high": {"dataset_options": (("noise_std", 0.02),)},              # 4x the pixel noise (5.1 grey
    #   levels, 1.3 by default), still a fifth of the patterns' std: white noise fills the high band most (1b)
}

CLAIMS = {
    "1a": "C3 is learned first on every set",
    "1b": "C3 is learned first on the set biased to the highest band",
    "1c": "C2 keeps its accuracy under band-stop",
}
"""The chapter-2 claims judged by :func:`claim_verdicts`."""

_FIELDS = {f.name for f in fields(TrainConfig)}


def sorted_pairs(items: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """A mapping or ``(name, value)`` pairs as sorted, hashable pairs (lists become tuples).

    >>> sorted_pairs({"b": [1, 2], "a": 0})
    (('a', 0), ('b', (1, 2)))
    """
    pairs = items.items() if isinstance(items, Mapping) else items
    return tuple(sorted((str(k), tuple(v) if isinstance(v, list) else v) for k, v in pairs))


@dataclass(frozen=True)
class Setting:
    """A named training setup: ``overrides`` replace fields of a recipe's config.

    Parameters
    ----------
    name : label of the setting in the tables
    overrides : ``(field, value)`` pairs of :class:`~fslib.train.TrainConfig` (a dict is accepted)
    """

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a setting needs a non-empty name, got {self.name!r}")
        items = sorted_pairs(self.overrides)
        bad = [k for k, _ in items if k not in _FIELDS]
        if bad:
            raise ValueError(f"setting {self.name!r}: unknown TrainConfig fields {bad}; valid: {', '.join(sorted(_FIELDS))}")
        if len({k for k, _ in items}) != len(items):
            raise ValueError(f"setting {self.name!r} sets a field twice: {items}")
        object.__setattr__(self, "overrides", items)

    def config(self, base: TrainConfig, common: Mapping[str, Any] | None = None) -> TrainConfig:
        """``base`` with ``common`` and then this setting's overrides applied (checked by TrainConfig)."""
        common = dict(Setting("common", common or {}).overrides)
        try:
            return replace(replace(base, **common), **dict(self.overrides))
        except ValueError as exc:
            raise ValueError(f"setting {self.name!r}: {exc}") from None


def setting(name: str | Setting) -> Setting:
    """The registered setting ``name`` (``"a+b"`` combines ``a`` and ``b``), or ``name`` itself if a Setting."""
    if isinstance(name, Setting):
        return name
    merged: dict[str, Any] = {}
    options: dict[str, Any] = {}  # generator options merge field by field
    for part in str(name).split("+"):
        if part not in SETTINGS:
            raise ValueError(f"unknown setting {part!r} in {name!r}; valid: {', '.join(SETTINGS)} (combine with '+')")
        own = dict(SETTINGS[part])
        own_options = dict(own.pop("dataset_options", ()))
        clash = {k for k in own if k in merged and merged[k] != own[k]}
        clash |= {f"dataset_options.{k}" for k in own_options if k in options and options[k] != own_options[k]}
        if clash:
            raise ValueError(f"setting {name!r} sets {sorted(clash)} twice with different values")
        merged.update(own)
        options.update(own_options)
    if options:
        merged["dataset_options"] = tuple(sorted(options.items()))
    return Setting(str(name), merged)


def settings(names: Sequence[str | Setting]) -> list[Setting]:
    """:func:`setting` of every name; at least one, no name twice."""
    out = [setting(n) for n in names]
    if not out:
        raise ValueError("need at least one setting")
    seen = [s.name for s in out]
    if len(set(seen)) != len(seen):
        raise ValueError(f"setting names must be unique, got {seen}")
    return out


def generator_table(names: Sequence[str | Setting]) -> pd.DataFrame:
    """What each setting changes in the synthetic generator: one row per changed option.

    Parameters
    ----------
    names : setting names or :class:`Setting` objects (settings without generator options
        give no rows)

    Returns
    -------
    DataFrame with columns setting, option (a field of :data:`fslib.synthetic.OPTIONS`),
    value (the setting's) and default (:class:`fslib.synthetic.SyntheticConfig`'s).

    >>> generator_table(["noise_high", "none"]).values.tolist()
    [['noise_high', 'noise_std', 0.02, 0.005]]
    """
    default = SyntheticConfig()
    rows = [(s.name, k, v, getattr(default, k)) for s in settings(names)
            for k, v in dict(dict(s.overrides).get("dataset_options", ())).items()]
    return pd.DataFrame(rows, columns=["setting", "option", "value", "default"])


def fine_tracking(every: int = 2, until: int = 150) -> dict[str, Any]:
    """Overrides that record the test set every ``every`` iterations and stop training at ``until``.

    Early learning is fast (a class can go from chance to 98 % within 40 iterations), so
    the order of classes needs records a few iterations apart; only the test set is
    recorded, the only one the verdicts read.
    """
    if every < 1 or until < every:
        raise ValueError(f"need 1 <= every <= until iterations, got every={every}, until={until}")
    return {"track_every": int(every), "track_until": int(until), "max_iters": int(until), "track_sets": ("test",)}


Recipe = Callable[..., TrainConfig]


def train_grid(
    names: Sequence[str | Setting],
    datasets: Sequence[str],
    seeds: Sequence[int],
    scale: str = "default",
    *,
    common: Mapping[str, Any] | None = None,
    recipe: Recipe | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    loader: Callable[..., Any] | None = None,
) -> dict[tuple[str, str, int], runs.Run]:
    """One finished run per setting, dataset and seed, from the run cache or trained now.

    Parameters
    ----------
    names : registered setting names (:data:`SETTINGS`, ``"a+b"``) or :class:`Setting` objects
    datasets, seeds : the grid's datasets (``"syn_b1"``, ...) and training seeds
    scale : the recipe's scale (:data:`fslib.recipes.SCALES`)
    common : overrides applied to every setting before its own (e.g. :func:`fine_tracking`)
    recipe : ``recipe(dataset, seed=seed, scale=scale) -> TrainConfig``; default
        :func:`fslib.recipes.synthetic`
    device, progress, loader : passed to :func:`fslib.runs.get_or_train`

    Returns
    -------
    dict ``(setting name, dataset, seed) -> Run``. All configs are built (and checked)
    before the first run trains; runs train seed by seed, so an interrupted grid leaves
    whole seeds in the cache.
    """
    recipe = recipes.synthetic if recipe is None else recipe
    grid = settings(names)
    if not datasets or not seeds:
        raise ValueError(f"need at least one dataset and one seed, got datasets={list(datasets)}, seeds={list(seeds)}")
    configs = {(s.name, d, int(seed)): s.config(recipe(d, seed=int(seed), scale=scale), common)
               for seed in seeds for s in grid for d in datasets}
    trained = {key: runs.get_or_train(cfg, device=device, progress=progress, loader=loader)
               for key, cfg in configs.items()}
    return {(s.name, d, int(seed)): trained[(s.name, d, int(seed))] for s in grid for d in datasets for seed in seeds}


def measure_run(run: runs.Run, *, threshold: float = 0.9, tolerance: float = 0.1, max_fpr: float = 0.1,
                n_bandstop: int | None = None, bandstop: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The chapter-2 quantities of one synthetic run.

    "Learned" is :func:`fslib.dynamics.learned_at` on the run's test-set records within its
    tracking window; the retention of a class is its accuracy under band-stop divided by
    its accuracy on the original images (:func:`fslib.dynamics.bandstop_test`), averaged
    over the six band pairs.

    Parameters
    ----------
    run : a finished synthetic run with test-set tracking records
    threshold, tolerance, max_fpr : the definition of learned (:func:`fslib.dynamics.learned_at`)
    n_bandstop : test images of the band-stop test (None: the run's ``n_test``)
    bandstop : the run's :func:`fslib.dynamics.bandstop_test` result if already computed
        (``n_bandstop`` is then unused)

    Returns
    -------
    dict with first (the class or tied classes learned first, ``"-"`` if none), c3_first
    (bool, ties count), c3_alone (bool), c2_retention, others_retention (mean over C0, C1,
    C3), test_acc, iterations, train_seconds (wall) and train_cpu_seconds (CPU, all
    threads; NaN for runs cached before it was recorded), both measured when the run was
    trained, and bandstop_seconds (wall, now).
    """
    cfg = run.config
    if run.tracking.empty or "test" not in set(run.tracking["set"]):
        raise ValueError(f"run {run.path.name} has no test-set tracking records; train it with track_sets "
                         "including 'test' (see fine_tracking)")
    first = dynamics.learned_at(run.tracking, threshold, tolerance=tolerance, max_fpr=max_fpr,
                                until=cfg.track_until or None)
    it = first.set_index("class")["iteration"]
    learned_first = it.notna() & (it == it.min())
    t0 = time.perf_counter()
    result = dynamics.bandstop_test(run, n=n_bandstop) if bandstop is None else bandstop
    stop = dynamics.bandstop_accuracy_table({(cfg.dataset, cfg.seed): result})
    retention = stop[stop["removed"] != "none"].groupby("class")["retention"].mean()
    return {
        "first": dynamics.rank_orders(first, SYNTHETIC_CLASSES)["first"].iloc[0],
        "c3_first": bool(learned_first.get(TARGET, False)),
        "c3_alone": bool(learned_first.get(TARGET, False) and learned_first.sum() == 1),
        "c2_retention": float(retention[SHORTCUT]),
        "others_retention": float(retention.drop(SHORTCUT).mean()),
        "test_acc": float(run.metrics["test_acc"]),
        "iterations": int(run.metrics["iterations"]),
        "train_seconds": float(run.metrics["train_seconds"]),
        "train_cpu_seconds": float(run.metrics.get("train_cpu_seconds", float("nan"))),
        "bandstop_seconds": time.perf_counter() - t0,
    }


def run_table(grid: Mapping[tuple[str, str, int], runs.Run],
              bandstop: Mapping[tuple[str, str, int], Mapping[str, Any]] | None = None, **kwargs) -> pd.DataFrame:
    """:func:`measure_run` of every run of :func:`train_grid`, one row per run.

    Parameters
    ----------
    grid : ``(setting, dataset, seed) -> Run``
    bandstop : band-stop results already computed, under the same keys (e.g. the chapter's own)
    kwargs : passed to :func:`measure_run`

    Returns
    -------
    DataFrame with columns setting, dataset, seed, run (the cache folder), then the keys of
    :func:`measure_run`.
    """
    if not grid:
        raise ValueError("no runs given")
    bandstop = bandstop or {}
    rows = [{"setting": name, "dataset": d, "seed": int(s), "run": run.path.name,
             **measure_run(run, bandstop=bandstop.get((name, d, s)), **kwargs)}
            for (name, d, s), run in grid.items()]
    return pd.DataFrame(rows)


def claim_verdicts(table: pd.DataFrame, *, high: str = "syn_b4", keep: float = 0.9) -> pd.DataFrame:
    """Verdicts of claims 1a, 1b and 1c per setting, by :func:`fslib.report.count_verdict`.

    * 1a counts the runs in which C3 is learned first (alone or tied), of all runs;
    * 1b the same on dataset ``high`` only (``report.NOT_JUDGED`` if the grid lacks it);
    * 1c the datasets on which C2 keeps at least ``keep`` of its accuracy under band-stop,
      on average over the pairs and seeds, of all datasets (the chapter's criterion).

    Parameters
    ----------
    table : output of :func:`run_table`
    high : the set biased to the highest band
    keep : share of its accuracy C2 must keep, in (0, 1]

    Returns
    -------
    DataFrame indexed by setting (in the table's order) with, per claim ``k``, the columns
    ``k`` (verdict), ``k_n`` and ``k_total`` (the counts behind it), plus runs,
    c2_retention, others_retention and test_acc (means over the runs; test_acc NaN if the
    table has no such column).
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep must lie in (0, 1], got {keep!r}")
    missing = {"setting", "dataset", "seed", "c3_first", "c2_retention", "others_retention"} - set(table.columns)
    if missing or table.empty:
        raise ValueError(f"need a non-empty run_table, missing columns {sorted(missing)}")
    rows = []
    for name, g in table.groupby("setting", sort=False):
        on_high = g[g["dataset"] == high]
        per_set = g.groupby("dataset")["c2_retention"].mean()
        row = {"setting": name, "runs": len(g),
               "1a_n": int(g["c3_first"].sum()), "1a_total": len(g),
               "1b_n": int(on_high["c3_first"].sum()), "1b_total": len(on_high),
               "1c_n": int((per_set >= keep).sum()), "1c_total": len(per_set),
               "c2_retention": float(g["c2_retention"].mean()), "others_retention": float(g["others_retention"].mean()),
               "test_acc": float(g["test_acc"].mean()) if "test_acc" in g else float("nan")}
        for claim in CLAIMS:
            n, total = row[f"{claim}_n"], row[f"{claim}_total"]
            row[claim] = report.count_verdict(n, total) if total else report.NOT_JUDGED
        rows.append(row)
    cols = ["runs", *(c for k in CLAIMS for c in (k, f"{k}_n", f"{k}_total")), "c2_retention", "others_retention",
            "test_acc"]
    return pd.DataFrame(rows).set_index("setting")[cols]


def _share(x: float) -> str:
    return f"{x:.2f}" if pd.notna(x) else "-"  # NaN: the class had no correct original image in any run


def verdict_cells(verdicts: pd.DataFrame, default: str | None = None) -> pd.DataFrame:
    """The verdicts as table cells, ``"partly (4/12)"``; the ``default`` setting's name gets " (default)".

    Returns
    -------
    DataFrame indexed by setting, one column per claim of :data:`CLAIMS`, plus "C2 / others
    retention" and "test accuracy" (means over the runs).
    """
    if default is not None and default not in verdicts.index:
        raise ValueError(f"default setting {default!r} is not in the table; settings: {list(verdicts.index)}")
    out = pd.DataFrame({k: [f"{v} ({n}/{t})" if t else v for v, n, t in
                            zip(verdicts[k], verdicts[f"{k}_n"], verdicts[f"{k}_total"])] for k in CLAIMS},
                       index=verdicts.index)
    out["C2 / others retention"] = [f"{_share(a)} / {_share(b)}" for a, b in zip(verdicts["c2_retention"],
                                                                             verdicts["others_retention"])]
    out["test accuracy"] = [f"{a:.0%}" for a in verdicts["test_acc"]]
    out.index = [f"{s} (default)" if s == default else s for s in verdicts.index]
    out.index.name = "setting"
    return out


def summary(verdicts: pd.DataFrame, claim: str) -> str:
    """Under which settings ``claim`` holds, partly holds and does not hold, in words.

    "holds" is always named (``"holds under no setting"`` when none); the other verdicts
    only when some setting has them.

    >>> v = pd.DataFrame({"1a": ["partly", "partly", "does not hold"]}, index=["none", "official", "flipcrop"])
    >>> summary(v, "1a")
    'holds under no setting; partly under none and official; does not hold under flipcrop'
    """
    if claim not in CLAIMS:
        raise ValueError(f"unknown claim {claim!r}; valid: {', '.join(CLAIMS)}")
    return report.settings_summary(verdicts[claim].to_dict())
