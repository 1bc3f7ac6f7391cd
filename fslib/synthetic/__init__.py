"""Syn_B1..Syn_B4: the paper's synthetic datasets, rebuilt from their measured properties.

The paper's generator is not published, so this module designs one that has the properties
the paper's figures show (see ``shared/paper/README.md`` and chapter 1). Every image is

    x = clip(0.5 + colour * pattern + noise, 0, 1), stored as uint8 (``round(255 x)``),

with ``pattern`` a zero-mean grey image of unit standard deviation, ``colour`` a random
non-negative per-channel vector (same distribution for every class) and ``noise`` a faint
i.i.d. Gaussian pixel noise. In ``syn_bk`` (k = 1..4, band Bk of :mod:`fslib.spectral`):

* C0: thin 45-degree lines (energy on the ``u = v`` diagonal, across all bands) on a faint
  broadband texture;
* C1: broadband texture with no energy in band Bk;
* C2: broadband texture plus a fixed set of special frequencies present in every image
  (the planted candidate shortcut, :func:`special_frequencies`);
* C3: texture band-limited to band Bk (the "simple" class).

"Broadband" means a random complex Gaussian coefficient on every allowed position of the
centred spectrum, scaled so each allowed band carries the same expected energy. Patterns
are built in the frequency domain in batches (no per-image loops), with :mod:`fslib.spectral`
conventions (centred spectra, conjugate partners, band masks).

Generation is deterministic: images come in chunks of ``SyntheticConfig.chunk`` images,
each drawn from a ``torch.Generator`` seeded from ``(version, name, split, seed, chunk
index)``, so ``load(name, n=m)`` is the first ``m`` images of ``load(name, n=M)`` for
``m <= M``, and the train and test splits are independent draws. Results are cached under
``fslib.paths.cache_dir("synthetic")`` keyed by the generator version and the arguments.

Modules: :mod:`~fslib.synthetic.generator` (the design and the cached generation),
:mod:`~fslib.synthetic.variants` (band-pass / band-stop test sets, planted targets),
:mod:`~fslib.synthetic.options` (the generator's free parameters as dataset options of a
training run) and :mod:`~fslib.synthetic.properties` (the measured properties of chapter 1).
"""

from fslib.synthetic.generator import (
    CLASSES,
    DATASETS,
    GENERATOR_VERSION,
    SPLITS,
    Generated,
    SyntheticConfig,
    class_support,
    dataset_band,
    generate,
    load,
    load_labeled,
    special_frequencies,
)
from fslib.synthetic.options import OPTIONS, config_of, options_of, resolve_options
from fslib.synthetic.properties import (
    band_energy_table,
    class_spectra,
    colour_probe_accuracy,
    config_table,
    examples,
    properties,
    properties_table,
    special_amplitude_ratio,
    variant_examples,
)
from fslib.synthetic.variants import VARIANT_KINDS, VARIANTS, planted_targets, variant

__all__ = [
    "GENERATOR_VERSION", "DATASETS", "CLASSES", "SPLITS", "VARIANT_KINDS", "VARIANTS", "SyntheticConfig", "Generated",
    "dataset_band", "generate", "load", "load_labeled", "variant", "planted_targets", "special_frequencies",
    "class_support", "special_amplitude_ratio", "colour_probe_accuracy", "band_energy_table", "properties",
    "properties_table", "config_table", "examples", "class_spectra", "variant_examples",
    "OPTIONS", "resolve_options", "config_of", "options_of",
]
