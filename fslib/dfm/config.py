"""The settings of a shortcut analysis: one frozen carrier, part of every DFM cache key.

:class:`DFMConfig` holds how the frequencies are ranked (the search ``method`` and its
options, the patch size) and how the DFMs are tested (threshold, bootstrap, null, seed, the
verdict's TPR and FPR bounds). Its defaults are the paper's (official code's) values. The
ranking part (:meth:`DFMConfig.ranking_key`) keys the cached DFMs, so two methods, or two
settings of one method, never share a cache file; the test part
(:meth:`DFMConfig.test_key`) keys the cached test tables.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fslib.dfm.methods import METHODS

PAPER_THRESHOLDS = (0.01, 0.05, 0.10, 0.20)  # official code saves DFMs at 1, 5, 10, 20 %


def _check_top(top: float) -> None:
    if isinstance(top, bool) or not (isinstance(top, (int, float)) and 0 < top <= 1):
        raise ValueError(f"top must be a fraction in (0, 1], e.g. 0.05 for 5 %, got {top!r}")


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 <= value <= 1):
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")


@dataclass(frozen=True)
class DFMConfig:
    """Settings of a DFM analysis; defaults are the paper's (official code's) values.

    ``options`` holds method-specific settings (for example the number of candidate units a
    verified method checks exactly); it is stored as sorted ``(name, value)`` pairs so the
    config stays hashable, and read back with :attr:`option`.

    >>> DFMConfig().ranking_key()
    {'method': 'exact', 'options': {}, 'patch_size': 1}
    >>> DFMConfig(method="bogus")
    Traceback (most recent call last):
    ...
    ValueError: unknown DFM method 'bogus'; valid: exact, first_order, verified, race, set_search, hfss
    """

    method: str = "exact"                    # how frequencies are ranked: fslib.dfm.methods.METHODS
    top: float = 0.05                        # paper: top 5 % of the H x W positions
    thresholds: tuple[float, ...] = PAPER_THRESHOLDS  # official code saves DFMs at 1, 5, 10, 20 %
    patch_size: int = 1                      # official default 1; paper likely 2 at 224 px
    n_boot: int = 1000                       # bootstrap resamples for the TPR / FPR intervals
    n_null: int = 100                        # random same-profile masks per class (null)
    seed: int = 0                            # the null masks, the bootstrap and the rank/score split
    paper_tpr: float = 0.6                   # follow-up paper: TPR >= 0.6 is a strong shortcut
    max_fpr: float = 0.1                     # the book: a strong shortcut keeps FPR <= 0.1
    options: tuple[tuple[str, Any], ...] = field(default=())  # method-specific settings

    def __post_init__(self) -> None:
        if isinstance(self.options, dict):
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))
        if isinstance(self.thresholds, list):
            object.__setattr__(self, "thresholds", tuple(self.thresholds))
        if self.method not in METHODS:
            raise ValueError(f"unknown DFM method {self.method!r}; valid: {', '.join(METHODS)}")
        _check_top(self.top)
        if not self.thresholds:
            raise ValueError("thresholds must hold at least one fraction, e.g. (0.05,)")
        for t in self.thresholds:
            _check_top(t)
        if isinstance(self.patch_size, bool) or not (isinstance(self.patch_size, int) and self.patch_size >= 1):
            raise ValueError(f"patch_size must be a positive int, got {self.patch_size!r}")
        for name in ("n_boot", "n_null", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        _check_fraction("paper_tpr", self.paper_tpr)
        _check_fraction("max_fpr", self.max_fpr)
        try:
            json.dumps(dict(self.options))
        except (TypeError, ValueError):
            raise ValueError(f"options must be JSON values, got {self.options!r}") from None

    @property
    def option(self) -> dict[str, Any]:
        """The method-specific settings as a dict."""
        return dict(self.options)

    @property
    def all_thresholds(self) -> tuple[float, ...]:
        """``thresholds`` with ``top`` added (in order, without repeats)."""
        return tuple(dict.fromkeys([*(float(t) for t in self.thresholds), float(self.top)]))

    def ranking_key(self) -> dict[str, Any]:
        """What decides the ranked maps: the method, its options and the patch size."""
        return {"method": self.method, "options": self.option, "patch_size": self.patch_size}

    def test_key(self) -> dict[str, Any]:
        """What decides a shortcut-test table besides the images and the DFMs."""
        return {"n_boot": self.n_boot, "n_null": self.n_null, "seed": self.seed, "paper_tpr": self.paper_tpr}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (provenance records)."""
        d = asdict(self)
        d["thresholds"], d["options"] = list(self.thresholds), self.option
        return d

    def with_(self, **changes: Any) -> "DFMConfig":
        """A copy with some fields changed (``dataclasses.replace``)."""
        return replace(self, **changes)
