"""The generator's free parameters as dataset options: what a training run may change, and the check.

A synthetic set (``syn_b1``..``syn_b4``) takes ``options`` in :func:`fslib.data.load` and in
``TrainConfig.dataset_options``: overrides of the free fields of
:class:`~fslib.synthetic.SyntheticConfig` listed in :data:`OPTIONS` (the shares of the
planted cues, the noise, the contrast, the lines of C0). :func:`resolve_options` checks them
and keeps only the fields that differ from the defaults, sorted: the default generator is
``()`` however it is spelt, so a run that changes nothing keeps the hash it had before
options existed, and two spellings of one generator share one hash. :func:`config_of` turns
options into the :class:`~fslib.synthetic.SyntheticConfig` that generates the images (its
design keys the synthetic cache, :func:`fslib.synthetic.load`).

The other fields are not options: ``size`` is the registry's resolution, ``n_train`` and
``n_test`` are ``TrainConfig.n_train`` / ``n_test``, ``chunk`` only redraws the same
distribution, and ``c2_special`` (the positions) is a design choice of chapter 1, not a share.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from typing import Any, Mapping

from fslib.synthetic.generator import SyntheticConfig, dataset_band

_DEFAULT = SyntheticConfig()

OPTIONS: dict[str, str] = {
    "c2_special_fraction": "a number in (0, 1): share of C2's pattern energy in its special frequencies",
    "c0_line_fraction": "a number in (0, 1]: share of C0's pattern energy in its diagonal lines",
    "noise_std": "a number in [0, 0.25]: i.i.d. Gaussian pixel noise std, [0, 1] units",
    "contrast": "a pair (low, high) with 0 < low <= high <= 0.5: range of the strongest channel's pixel std",
    "c0_lines": f"a pair of integers (low, high) with 1 <= low <= high <= {_DEFAULT.size}: lines per C0 image",
    "c0_line_weight": "a pair (low, high) with 0 < low <= high <= 1: range of each line's relative brightness",
}
"""The free fields of :class:`~fslib.synthetic.SyntheticConfig` a run may change, with their valid values."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _pair(value: Any, integer: bool = False) -> tuple | None:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return None
    if integer:
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        return (int(value[0]), int(value[1])) if ok else None
    low, high = (_number(v) for v in value)
    return None if low is None or high is None else (low, high)


def _check(field: str, value: Any) -> Any:
    """``value`` in its normal form (float, or a tuple), or ValueError naming the valid range."""
    if field in ("c2_special_fraction", "c0_line_fraction", "noise_std"):
        x = _number(value)
        ok = x is not None and {"c2_special_fraction": lambda: 0 < x < 1, "c0_line_fraction": lambda: 0 < x <= 1,
                                "noise_std": lambda: 0 <= x <= 0.25}[field]()
    else:
        x = _pair(value, integer=field == "c0_lines")
        upper = {"contrast": 0.5, "c0_lines": _DEFAULT.size, "c0_line_weight": 1.0}[field]
        lower_ok = x is not None and (x[0] >= 1 if field == "c0_lines" else x[0] > 0)
        ok = lower_ok and x[0] <= x[1] <= upper
    if not ok:
        raise ValueError(f"synthetic option {field}={value!r} is out of range; valid: {OPTIONS[field]}")
    return x


def resolve_options(name: str, options: Mapping[str, Any] | Any = ()) -> tuple[tuple[str, Any], ...]:
    """The checked options of a synthetic set: the fields that differ from the defaults, sorted.

    Parameters
    ----------
    name : ``"syn_b1"`` .. ``"syn_b4"``
    options : mapping or ``(field, value)`` pairs, fields of :data:`OPTIONS`; pairs may be
        lists (as read from JSON or YAML)

    Returns
    -------
    tuple of ``(field, value)``, floats and tuples; ``()`` for the default generator.

    >>> resolve_options("syn_b4", {"noise_std": 0.02, "c0_line_fraction": 0.75})
    (('noise_std', 0.02),)
    >>> resolve_options("syn_b4", [("contrast", [0.1, 0.15])])
    ()
    """
    dataset_band(name)
    given = list(options.items() if isinstance(options, Mapping) else options)
    unknown = sorted({str(k) for k, _ in given} - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} of {name!r}; valid: {', '.join(OPTIONS)}")
    if len({k for k, _ in given}) != len(given):
        raise ValueError(f"an option of {name!r} is given twice: {given}")
    checked = {str(k): _check(str(k), v) for k, v in given}
    config = replace(_DEFAULT, **checked)  # the dataclass's own checks too
    default = asdict(_DEFAULT)
    return tuple(sorted((k, v) for k, v in asdict(config).items() if k in checked and v != default[k]))


def config_of(options: Mapping[str, Any] | Any = ()) -> SyntheticConfig:
    """The :class:`~fslib.synthetic.SyntheticConfig` of checked options (:func:`resolve_options`);
    the defaults for ``()``.

    >>> config_of({"noise_std": 0.02}).noise_std, config_of(()) == SyntheticConfig()
    (0.02, True)
    """
    pairs = options.items() if isinstance(options, Mapping) else options
    return replace(_DEFAULT, **{str(k): _check(str(k), v) for k, v in pairs})


def options_of(config: SyntheticConfig | None) -> tuple[tuple[str, Any], ...]:
    """The options a config changes (its :data:`OPTIONS` fields that differ from the defaults), sorted.

    >>> options_of(SyntheticConfig(noise_std=0.02, chunk=64))
    (('noise_std', 0.02),)
    """
    if config is None:
        return ()
    default = asdict(_DEFAULT)
    return tuple(sorted((k, v) for k, v in asdict(config).items() if k in OPTIONS and v != default[k]))
