"""fslib: frequency shortcuts in image classifiers.

The library behind *fsbook*, a reproduction of Wang et al., "What do neural networks
learn in image classification? A frequency shortcut perspective" (ICCV 2023).

Modules are named after the paper's concepts: ``spectral`` (Fourier conventions, bands,
filtering), ``synthetic`` (Syn_B1..Syn_B4), ``data`` (natural-image datasets),
``models``, ``train`` and ``runs`` (training and the run cache), ``metrics`` (ADCS),
``dfm`` (Dominant Frequency Maps and the shortcut test), ``plot`` (one function per
figure kind), ``paths``, ``io`` and ``cli``.
"""

__version__ = "0.1.0"
