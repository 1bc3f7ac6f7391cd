"""Your own model: the frequency-shortcut analysis of any classifier on any image folder.

The API (:mod:`~fslib.shortcuts.analysis`): :func:`analyse` runs the book's protocol on any
model and labelled images and returns a :class:`ShortcutResult` (DFMs, the TPR / FPR table
with class names, null and intervals, a verdict per class, figures, :meth:`~ShortcutResult.save`);
:func:`estimate` says what it will cost first. The command
``python -m fslib shortcuts DATA --model SPEC`` (:mod:`~fslib.shortcuts.command`) does the
same from the command line, with the model from :mod:`~fslib.shortcuts.loading` and the
result folder of :mod:`~fslib.shortcuts.outputs`.
"""

from fslib.shortcuts.analysis import ShortcutResult, analyse, estimate
from fslib.shortcuts.loading import (
    InputError,
    build_model,
    load_weights,
    parse_model_spec,
    parse_normalization,
    probe_model,
)
from fslib.shortcuts.outputs import write_results

__all__ = ["ShortcutResult", "analyse", "estimate", "InputError", "build_model", "load_weights", "parse_model_spec",
           "parse_normalization", "probe_model", "write_results"]
