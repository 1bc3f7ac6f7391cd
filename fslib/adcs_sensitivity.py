"""Sensitivity of claim 2's verdict: chapter 3's ADCS ranking judged again over other choices.

Chapter 3 judges the paper's claim 2 ("ADCS reveals which classes have simple, distinctive
frequency content") by the synthetic sets in which C3, the class whose content is simple
(one band), ranks first among the four classes, with :func:`fslib.report.count_verdict`.
That verdict rests on choices the paper does not fix. This module varies them one at a time
(ADCS needs no training, so every setting is cheap):

* the summary statistic that ranks the classes (:data:`STATISTICS`, columns of
  :func:`fslib.metrics.adcs_distinctiveness`);
* the ADCS variant (:data:`fslib.metrics.VARIANTS`), the normalisation before the FFT, the
  split, the number of images and the generator's seed;
* the generator's free parameters (fields of :class:`fslib.synthetic.SyntheticConfig`).

A :class:`Setup` holds one value of every choice; a setting (:data:`SETTINGS`, ``"a+b"``
combines them) overrides some of them on the chapter's own setup. :func:`measure` ranks the
classes of every set under one setup, :func:`verdict_table` gives one row per setting with
the verdict (the rule stays in :mod:`fslib.report`), :func:`verdict_cells` shows it and
:func:`summary` says in one sentence where the claim holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from fslib import metrics, report, synthetic
from fslib.constants import normalization
from fslib.images import LabeledImages
from fslib.sensitivity import sorted_pairs
from fslib.synthetic import SyntheticConfig
from fslib.synthetic.options import config_of

__all__ = ["STATISTICS", "TARGET", "GENERATOR_FIELDS", "SETTINGS", "Setup", "setting", "settings", "load_images", "measure",
           "verdict_table", "verdict_cells", "summary", "what_decides"]

STATISTICS = ("top_fraction", "top_band_share", "mean_adcs", "positive_fraction")
"""Columns of :func:`fslib.metrics.adcs_distinctiveness` that rank classes, larger = more distinctive.

``bottom_fraction`` is left out: a class every other class beats is not thereby distinctive.
"""

TARGET = "C3"
"""The class whose frequency content is simple (one band): claim 2 expects it first."""

GENERATOR_FIELDS = ("contrast", "noise_std", "c0_line_fraction", "c2_special_fraction")
"""The generator's free parameters a setting may change (the rest fix the sets' layout)."""

# One choice per setting; the values are defensible alternatives to the chapter's own ones.
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},                                   # the chapter's own setup
    "top_band_share": {"statistic": "top_band_share"},  # concentration of the owned positions in one band
    "mean_adcs": {"statistic": "mean_adcs"},         # mean ADCS over the whole spectrum
    "positive_fraction": {"statistic": "positive_fraction"},  # share of positions with ADCS > 0
    "official": {"variant": "official"},             # the official script's rule (sums, grey, ties -1)
    "paper": {"variant": "paper"},                   # the paper's equation
    "normalized": {"normalize": True},               # (x - mean) / std before the FFT, as the official script
    "unnormalized": {"normalize": False},
    "test": {"split": "test"},                       # the official script computes ADCS on the test set
    "train": {"split": "train"},
    "n1000": {"n": 1_000},                           # a tenth of the default training set
    "n10000": {"n": 10_000},
    "seed1": {"seed": 1},                            # another draw of every image
    "c2_special_0.1": {"c2_special_fraction": 0.1},  # faint special frequencies (default 0.4)
    "c2_special_0.7": {"c2_special_fraction": 0.7},  # dominant special frequencies
    "c0_lines_0.5": {"c0_line_fraction": 0.5},       # lines hold half of C0's energy (default 0.75)
    "c0_lines_1.0": {"c0_line_fraction": 1.0},       # lines only, no texture underneath
    "noise_0": {"noise_std": 0.0},                   # no pixel noise (default 0.005, ~1.3 grey levels)
    "noise_0.02": {"noise_std": 0.02},               # ~5 grey levels of noise
    "contrast_low": {"contrast": (0.05, 0.08)},      # about half the default pixel std (0.10-0.15)
    "contrast_high": {"contrast": (0.20, 0.30)},     # twice it: more clipping
}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class Setup:
    """Every choice behind the verdict, one value each (defaults: the chapter's default profile)."""

    statistic: str = "top_fraction"    # column of metrics.adcs_distinctiveness that ranks the classes
    variant: str = "paper"             # metrics.VARIANTS: the paper's equation or the official rule
    normalize: bool = False            # dataset statistics applied before the FFT (official script: yes)
    split: str = "train"               # synthetic split the maps are computed on
    n: int | None = 10_000             # images per set; None: the generator's default size of the split
    seed: int = 0                      # the generator's seed
    generator: tuple[tuple[str, Any], ...] = ()  # SyntheticConfig overrides, (field, value) pairs

    def __post_init__(self) -> None:
        checks = [
            (self.statistic in STATISTICS, "statistic", self.statistic, ", ".join(STATISTICS)),
            (self.variant in metrics.VARIANTS, "variant", self.variant, ", ".join(metrics.VARIANTS)),
            (isinstance(self.normalize, bool), "normalize", self.normalize, "True or False"),
            (self.split in synthetic.SPLITS, "split", self.split, ", ".join(synthetic.SPLITS)),
            (self.n is None or _positive_int(self.n), "n", self.n, "a positive integer or None"),
            (isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0, "seed", self.seed,
             "an integer >= 0"),
        ]
        for ok, name, value, valid in checks:
            if not ok:
                raise ValueError(f"unknown {name} {value!r}; valid: {valid}")
        items = sorted_pairs(self.generator)
        bad = [k for k, _ in items if k not in GENERATOR_FIELDS]
        if bad:
            raise ValueError(f"unknown generator fields {bad}; valid: {', '.join(GENERATOR_FIELDS)}")
        object.__setattr__(self, "generator", items)
        self.config()  # SyntheticConfig checks the values

    def config(self) -> SyntheticConfig:
        """The generator's config: :class:`~fslib.synthetic.SyntheticConfig` with ``generator``
        applied (:func:`fslib.synthetic.options.config_of`, the check training runs use too)."""
        return config_of(self.generator)  # checks every value against its valid range

    def maps_key(self) -> tuple:
        """What the ADCS maps depend on (everything but the statistic)."""
        return tuple(v for k, v in asdict(self).items() if k != "statistic")


_SETUP_FIELDS = {f.name for f in fields(Setup)} - {"generator"}


def setting(name: str, base: Setup | None = None) -> Setup:
    """The registered setting ``name`` applied to ``base`` (default :class:`Setup`); ``"a+b"`` combines.

    >>> setting("official+n1000").variant, setting("official+n1000").n
    ('official', 1000)
    """
    base = Setup() if base is None else base
    merged: dict[str, Any] = {}
    for part in str(name).split("+"):
        if part not in SETTINGS:
            raise ValueError(f"unknown ADCS setting {part!r} in {name!r}; valid: {', '.join(SETTINGS)} (combine with '+')")
        clash = {k for k, v in SETTINGS[part].items() if k in merged and merged[k] != v}
        if clash:
            raise ValueError(f"setting {name!r} sets {sorted(clash)} twice with different values")
        merged.update(SETTINGS[part])
    own = {k: v for k, v in merged.items() if k in _SETUP_FIELDS}
    generator = {**dict(base.generator), **{k: v for k, v in merged.items() if k not in _SETUP_FIELDS}}
    return replace(base, **own, generator=tuple(generator.items()))


def settings(names: Sequence[str], base: Setup | None = None) -> dict[str, Setup]:
    """:func:`setting` of every name, in order; at least one, no name twice."""
    names = list(names)
    if not names:
        raise ValueError("need at least one ADCS setting")
    if len(set(names)) != len(names):
        raise ValueError(f"ADCS setting names must be unique, got {names}")
    return {n: setting(n, base) for n in names}


Loader = Callable[..., LabeledImages]


def load_images(name: str, split: str, n: int | None, seed: int, *, config: SyntheticConfig) -> LabeledImages:
    """The default loader of :func:`measure`: the book's generator from the synthetic cache
    (:func:`fslib.synthetic.load_labeled`, shared with the chapters); any other generator
    setting generated in memory and not cached (the table's alternatives would add about
    1.2 GB to the cache to save half a minute of generation)."""
    if config == SyntheticConfig():
        return synthetic.load_labeled(name, split, n, seed)
    out = synthetic.generate(name, split, n, seed, config=config)
    return LabeledImages(out.images, out.labels, synthetic.CLASSES, name, split, "fslib.synthetic (not cached)",
                         {"seed": seed})


def _maps(setup: Setup, dataset: str, device: str | torch.device, loader: Loader) -> torch.Tensor:
    d = loader(dataset, setup.split, setup.n, setup.seed, config=setup.config())
    stats = normalization(dataset) if setup.normalize else None
    return metrics.adcs(d.images, d.labels, len(d.classes), setup.variant, normalize=stats, device=device)


def _ranked(table: pd.DataFrame, statistic: str) -> pd.DataFrame:
    """Classes by ``statistic``, ties broken as :func:`~fslib.metrics.adcs_distinctiveness` ranks."""
    out = table.sort_values([statistic, "top_fraction", "mean_adcs"], ascending=False, kind="stable")
    return out.reset_index(drop=True).assign(rank=lambda t: t.index + 1)


def measure(setup: Setup, datasets: Sequence[str], *, device: str | torch.device = "auto",
            loader: Loader | None = None, maps: dict | None = None) -> pd.DataFrame:
    """Rank the classes of every synthetic set under ``setup``, one row per set.

    Parameters
    ----------
    setup : the choices (statistic, variant, normalisation, split, images, seed, generator)
    datasets : synthetic sets, e.g. ``["syn_b1", ..., "syn_b4"]``
    device : where the FFTs run
    loader : ``loader(name, split, n, seed, config=...) -> LabeledImages``; default
        :func:`load_images` (the book's generator cached, the others generated each time)
    maps : a dict shared between calls: ADCS maps ``(C, H, W)`` under ``(maps_key, dataset)``,
        so settings that differ only in the statistic compute each map once

    Returns
    -------
    DataFrame with columns dataset, target_rank (1 = first), target_value (the target's
    statistic), first (the class ranked first), first_value and tied (another class has
    the target's value of the statistic).
    """
    if not datasets:
        raise ValueError("need at least one synthetic set")
    loader = load_images if loader is None else loader
    maps = {} if maps is None else maps
    rows = []
    for name in datasets:
        key = (setup.maps_key(), name)
        if key not in maps:
            maps[key] = _maps(setup, name, device, loader)
        ranked = _ranked(metrics.adcs_distinctiveness(maps[key], synthetic.CLASSES, setup.variant), setup.statistic)
        target = ranked[ranked["class"] == TARGET].iloc[0]
        value = float(target[setup.statistic])
        rows.append({"dataset": name, "target_rank": int(target["rank"]), "target_value": value,
                     "first": str(ranked["class"].iloc[0]), "first_value": float(ranked[setup.statistic].iloc[0]),
                     "tied": bool((ranked[ranked["class"] != TARGET][setup.statistic] == value).any())})
    return pd.DataFrame(rows)


def _changes(setup: Setup, base: Setup) -> str:
    new, old = asdict(setup), asdict(base)
    diff = [f"{k} = {v} (was {old[k]})" for k, v in new.items() if k != "generator" and v != old[k]]
    cfg0 = base.config()
    diff += [f"{k} = {v} (was {getattr(cfg0, k)})" for k, v in setup.generator if getattr(cfg0, k) != v]
    return "; ".join(diff) if diff else "-"


def verdict_table(names: Sequence[str], datasets: Sequence[str], base: Setup | None = None, *,
                  device: str | torch.device = "auto", loader: Loader | None = None,
                  maps: dict | None = None) -> pd.DataFrame:
    """Claim 2's verdict under every setting, by :func:`fslib.report.count_verdict`.

    The verdict counts the sets in which the target class (C3) ranks first by the
    setting's statistic, of all sets: "holds" on every set, "partly" on some.

    Parameters
    ----------
    names : registered setting names (:data:`SETTINGS`, ``"a+b"``); ``"default"`` (the
        base itself) is always the first row
    datasets : the synthetic sets
    base : the chapter's setup, which every setting changes (``"default"`` keeps it)
    device, loader, maps : as in :func:`measure` (``maps`` may hold maps computed before)

    Returns
    -------
    DataFrame indexed by setting, with changes (what differs from ``base``), kind
    (``"statistic"``, ``"maps"``: anything the ADCS maps depend on, ``"statistic+maps"`` or
    ``"none"``), statistic, verdict, n_first, total, target_rank, first, target_value and first_value (per set,
    in the order of ``datasets``, as lists), tied (any set with a tie at the target) and
    setup (the :class:`Setup` of the row).
    """
    base = Setup() if base is None else base
    grid = settings(["default", *(n for n in names if n != "default")], base)
    maps = {} if maps is None else maps
    rows = []
    for name, setup in grid.items():
        m = measure(setup, datasets, device=device, loader=loader, maps=maps)
        n_first = int((m["target_rank"] == 1).sum())
        kind = [k for k, changed in (("statistic", setup.statistic != base.statistic),
                                     ("maps", setup.maps_key() != base.maps_key())) if changed]
        rows.append({"setting": name, "changes": _changes(setup, base), "kind": "+".join(kind) or "none",
                     "statistic": setup.statistic,
                     "verdict": report.count_verdict(n_first, len(m)), "n_first": n_first, "total": len(m),
                     **{c: m[c].tolist() for c in ("target_rank", "first", "target_value", "first_value")},
                     "tied": bool(m["tied"].any()), "setup": setup})
    return pd.DataFrame(rows).set_index("setting")


def verdict_cells(table: pd.DataFrame, default: str = "default") -> pd.DataFrame:
    """The table as text cells, ``"partly (1/4)"``; the ``default`` setting gets " (default)".

    Returns
    -------
    DataFrame indexed by setting: changes, verdict, "C3 rank" (per set, ``=`` marks a tie),
    "ranked first" (per set), "C3 / first value" (the statistic, per set).
    """
    if default not in table.index:
        raise ValueError(f"default setting {default!r} is not in the table; settings: {list(table.index)}")
    out = pd.DataFrame(index=table.index)
    out["changes"] = table["changes"]
    out["verdict"] = [f"{v} ({n}/{t})" for v, n, t in zip(table["verdict"], table["n_first"], table["total"])]
    out[f"{TARGET} rank"] = [", ".join(map(str, r)) + (" (a tie)" if tied else "")
                             for r, tied in zip(table["target_rank"], table["tied"])]
    out["ranked first"] = [", ".join(f) for f in table["first"]]
    out[f"{TARGET} / first value"] = [", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(t, f))
                                      for t, f in zip(table["target_value"], table["first_value"])]
    out.index = [f"{s} (default)" if s == default else s for s in table.index]
    out.index.name = "setting"
    return out


def summary(table: pd.DataFrame) -> str:
    """Under which settings claim 2 holds, partly holds and does not hold, in words.

    "holds" is always named (``"holds under no setting"`` when none), the others when some
    setting has them.

    >>> t = pd.DataFrame({"verdict": ["partly", "holds", "partly"]}, index=["default", "a", "b"])
    >>> summary(t)
    'holds under a; partly under default and b'
    """
    if "verdict" not in table.columns or table.empty:
        raise ValueError("need a non-empty verdict_table")
    return report.settings_summary(table["verdict"].to_dict())


def what_decides(table: pd.DataFrame, default: str = "default") -> str:
    """Which kind of choice changes the verdict: the statistic, the maps (data and preprocessing), both.

    Counts, for the settings that change only the statistic and for those that change only
    the maps (column ``kind`` of :func:`verdict_table`), how many give another verdict than
    the ``default`` row.

    >>> t = pd.DataFrame({"kind": ["none", "statistic", "statistic", "maps"],
    ...                   "verdict": ["partly", "holds", "partly", "partly"]}, index=["default", "a", "b", "c"])
    >>> what_decides(t)
    'the statistic changes the verdict (1 of 2 settings: a); the data and preprocessing leave it unchanged (0 of 1 settings)'
    """
    if default not in table.index or not {"kind", "verdict"} <= set(table.columns):
        raise ValueError(f"need a verdict_table with a {default!r} row and the columns kind and verdict")
    ref = table.loc[default, "verdict"]
    parts = []
    for kind, what, plural in (("statistic", "the statistic", False), ("maps", "the data and preprocessing", True)):
        rows = table[(table["kind"] == kind) & (table.index != default)]
        moved = [str(s) for s in rows.index[rows["verdict"] != ref]]
        if rows.empty:
            parts.append(f"{what} {'were' if plural else 'was'} not varied")
        elif moved:
            verb = "change" if plural else "changes"
            parts.append(f"{what} {verb} the verdict ({len(moved)} of {len(rows)} settings: {', '.join(moved)})")
        else:
            parts.append(f"{what} {'leave' if plural else 'leaves'} it unchanged (0 of {len(rows)} settings)")
    return "; ".join(parts)
