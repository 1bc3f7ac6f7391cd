"""The only door from :mod:`fslib.dfm_search` into :mod:`fslib.dfm`.

Every name this package needs from the exact method is imported here once, so moving the
exact method (``fslib/dfm.py`` into a package) changes this file only. Two are private helpers
of the exact ablation, reused so that an exact value computed here is the same computation:
``_sinusoid_basis`` and ``_removed_components`` (a unit's real sinusoids, subtracted from a
batch of images), and ``_EvalMode`` (eval mode, restored afterwards, channels-last on a CPU).
"""

from fslib.dfm import _EvalMode as eval_mode  # noqa: F401
from fslib.dfm import _removed_components, _sinusoid_basis, ablation_units, dominant_frequency_maps  # noqa: F401  # noqa: F401
