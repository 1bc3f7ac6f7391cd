"""fslib: frequency shortcuts in image classifiers.

The library behind *fsbook*, a reproduction of Wang et al., "What do neural networks
learn in image classification? A frequency shortcut perspective" (ICCV 2023). One concept
per module, in layers that import only from the layers above them:

* foundations: :mod:`~fslib.paths`, :mod:`~fslib.io`, :mod:`~fslib.artefacts` (verified
  caches), :mod:`~fslib.device`,
  :mod:`~fslib.constants`, :mod:`~fslib.spectral` (Fourier conventions, bands),
  :mod:`~fslib.images` (``LabeledImages``), :mod:`~fslib.models`, :mod:`~fslib.inference`
  (the one way to run a model; the ``Analysable`` protocol);
* data: :mod:`~fslib.synthetic` (Syn_B1..Syn_B4), :mod:`~fslib.data` (natural images);
* training: :mod:`~fslib.augment`, :mod:`~fslib.tracking`, :mod:`~fslib.train`,
  :mod:`~fslib.recipes`, :mod:`~fslib.runs` (the run cache);
* analysis: :mod:`~fslib.metrics` (ADCS), :mod:`~fslib.stability`, :mod:`~fslib.dfm`
  (Dominant Frequency Maps and the shortcut test);
* chapters' helpers: :mod:`~fslib.dynamics`, :mod:`~fslib.ood`, :mod:`~fslib.compare`,
  :mod:`~fslib.report` (verdict rules, differences from the paper);
* figures: :mod:`~fslib.plot`; tooling: :mod:`~fslib.shortcuts` (your own model: the API and
  ``python -m fslib shortcuts``), :mod:`~fslib.book`, :mod:`~fslib.cli`.
"""

__version__ = "0.1.0"
