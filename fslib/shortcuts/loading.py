"""Your model from the command line: a model spec, a weights file, a normalisation, a probe.

* :func:`build_model`: ``torchvision:NAME``, ``timm:NAME`` (timm is an optional extra) or
  ``path/to/file.py:factory`` (a function returning an ``nn.Module``), untrained.
* :func:`load_weights`: a state dict read safely (``torch.load(weights_only=True)``, or
  safetensors when installed), checked key by key against the architecture.
* :func:`parse_normalization`: ``imagenet``, ``cifar10``, ``none``, ``M,S`` or
  ``M1,M2,M3,S1,S2,S3``.
* :func:`probe_model`: one forward of one image at the input size: the model takes it and
  returns one logit per class.

Every bad value raises :class:`InputError` naming the value and what would be valid (the
command prints it and exits with status 2).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from fslib import constants
from fslib.io import sha256_file

SPEC_FORMS = "torchvision:NAME, timm:NAME or path/to/file.py:FACTORY"
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema")  # common checkpoint layouts


class InputError(ValueError):
    """A bad model spec, weights file, normalisation, size or folder: exit status 2."""


def _close(name: str, valid: Sequence[str], n: int = 5) -> str:
    near = difflib.get_close_matches(name, list(valid), n=n, cutoff=0.5)
    return f"; did you mean {', '.join(near)}?" if near else ""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model`` value: ``kind`` is ``torchvision``, ``timm`` or ``file``."""

    kind: str
    name: str
    path: Path | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.name}" if self.kind == "file" else f"{self.kind}:{self.name}"


def parse_model_spec(text: str) -> ModelSpec:
    """``"torchvision:resnet18"``, ``"timm:resnet18"`` or ``"path/to/file.py:factory"``.

    >>> parse_model_spec("torchvision:resnet18")
    ModelSpec(kind='torchvision', name='resnet18', path=None)
    >>> parse_model_spec("models/net.py:build").path
    PosixPath('models/net.py')
    """
    head, sep, name = str(text).rpartition(":")
    if not sep or not head or not name:
        raise InputError(f"model {text!r}: expected {SPEC_FORMS}")
    if head in ("torchvision", "timm"):
        return ModelSpec(head, name)
    if head.endswith(".py"):
        if not name.isidentifier():
            raise InputError(f"model {text!r}: {name!r} is not a Python name; expected path/to/file.py:FACTORY")
        return ModelSpec("file", name, Path(head))
    raise InputError(f"model {text!r}: unknown kind {head!r}; expected {SPEC_FORMS}")


def _torchvision(name: str, num_classes: int) -> nn.Module:
    import torchvision

    valid = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if name not in valid:
        raise InputError(f"unknown torchvision model {name!r}{_close(name, valid)} "
                         f"(valid: torchvision.models.list_models(module=torchvision.models), {len(valid)} names)")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _timm(name: str, num_classes: int) -> nn.Module:
    try:
        timm = importlib.import_module("timm")
    except ImportError:
        raise InputError(f"model 'timm:{name}' needs timm, which is not installed: "
                         "pip install 'fslib[models]' (or pip install timm)") from None
    valid = list(timm.list_models())
    if name not in valid:
        raise InputError(f"unknown timm model {name!r}{_close(name, valid)} (valid: timm.list_models(), {len(valid)} names)")
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _from_file(path: Path, name: str, num_classes: int | None) -> nn.Module:
    if not path.is_file():
        raise InputError(f"model file {str(path)!r} does not exist (from --model {path}:{name})")
    module_name = f"fslib_user_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling of the user's classes look it up
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise InputError(f"model file {str(path)!r} failed to import: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise InputError(f"{str(path)!r} has no function {name!r}{_close(name, names)} "
                         f"(callables there: {', '.join(names) or 'none'})")
    params = inspect.signature(factory).parameters
    takes = "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    call = f"{path}:{name}(" + (f"num_classes={num_classes}" if takes and num_classes is not None else "") + ")"
    try:
        model = factory(num_classes=num_classes) if takes and num_classes is not None else factory()
    except Exception as exc:
        raise InputError(f"{call} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise InputError(f"{call} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build_model(spec: str | ModelSpec, num_classes: int | None) -> nn.Module:
    """An untrained model from a spec (weights come from :func:`load_weights`).

    Parameters
    ----------
    spec : ``torchvision:NAME``, ``timm:NAME`` or ``path/to/file.py:FACTORY``
    num_classes : outputs of the classifier. torchvision and timm models are built with it;
        a factory gets it as ``num_classes=`` when it takes that argument (or ``**kwargs``).
    """
    spec = parse_model_spec(spec) if isinstance(spec, str) else spec
    if spec.kind != "file" and num_classes is None:
        raise InputError(f"model {spec}: give the number of classes (--num-classes)")
    if spec.kind == "torchvision":
        return _torchvision(spec.name, num_classes)
    if spec.kind == "timm":
        return _timm(spec.name, num_classes)
    return _from_file(spec.path, spec.name, num_classes)


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict from a file, and a note on where in the file it was found.

    ``.safetensors`` files are read with safetensors (when installed); anything else with
    ``torch.load(..., weights_only=True)``, which refuses pickled code. A checkpoint that
    holds the state dict under one of :data:`NESTED_KEYS` is unpacked, and a ``module.``
    prefix on every key (``DataParallel``) is removed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise InputError(f"{str(path)!r} is a safetensors file and safetensors is not installed: "
                             "pip install 'fslib[models]' (or pip install safetensors)") from None
        obj, note = load_file(str(path)), "safetensors"
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"weights file {str(path)!r} cannot be read as a plain state dict with "
                             f"torch.load(weights_only=True) ({first}); save it with "
                             "torch.save(model.state_dict(), path)") from None
        note = "torch.load(weights_only=True)"
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((k for k in NESTED_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise InputError(f"weights file {str(path)!r} holds a dict that is not a state dict (keys: "
                             f"{', '.join(map(str, list(obj)[:8]))}); expected tensors, or a state dict under one of "
                             f"{', '.join(NESTED_KEYS)}")
        obj, note = obj[inner], f"{note}, key {inner!r}"
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"weights file {str(path)!r} holds {type(obj).__name__}, not a state dict")
    obj = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in obj):
        obj, note = {k[len("module."):]: v for k, v in obj.items()}, f"{note}, 'module.' prefix removed"
    return obj, note


def _listing(keys: Sequence[str], n: int = 8) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load a weights file into ``model`` strictly; a mismatch names the keys that differ.

    Returns a provenance record: ``file``, ``sha256``, ``read`` (how), ``tensors``.
    """
    state, note = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"missing from the file: {_listing(missing)}" if missing else "",
                 f"not in the model: {_listing(unexpected)}" if unexpected else "",
                 f"shape (file vs model): {_listing(shapes, 4)}" if shapes else ""]
        raise InputError(f"weights {str(path)!r} do not fit the architecture ({len(own)} tensors in the model, "
                         f"{len(state)} in the file): " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)
    return {"file": str(path), "sha256": sha256_file(path), "read": note, "tensors": len(state)}


NAMED_NORMALIZATIONS = {"imagenet": (constants.IMAGENET_MEAN, constants.IMAGENET_STD),
                        **constants.NORMALIZATION, "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}


def parse_normalization(text: str, channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel from a name or numbers.

    A name (``imagenet``, ``cifar10``, ... :data:`NAMED_NORMALIZATIONS`; ``none``: the model
    takes ``[0, 1]`` pixels), ``M,S`` (one mean and std for every channel) or
    ``M1,M2,M3,S1,S2,S3`` (the means, then the stds).

    >>> parse_normalization("0.5,0.25")
    ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    >>> parse_normalization("imagenet")[0]
    (0.485, 0.456, 0.406)
    """
    text = str(text).strip()
    if text.lower() in NAMED_NORMALIZATIONS:
        mean, std = NAMED_NORMALIZATIONS[text.lower()]
        return tuple(map(float, mean)), tuple(map(float, std))
    valid = (f"valid: a name ({', '.join(NAMED_NORMALIZATIONS)}), M,S (one mean and std for all channels) "
             f"or {channels} means then {channels} stds, comma-separated")
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"normalisation {text!r} is neither a name nor numbers{_close(text, NAMED_NORMALIZATIONS)}; "
                         f"{valid}") from None
    if len(values) == 2:
        mean, std = (values[0],) * channels, (values[1],) * channels
    elif len(values) == 2 * channels:
        mean, std = tuple(values[:channels]), tuple(values[channels:])
    else:
        raise InputError(f"normalisation {text!r} has {len(values)} numbers; {valid}")
    if any(s <= 0 for s in std):
        raise InputError(f"normalisation {text!r}: every std must be positive, got {std}")
    return mean, std


@torch.inference_mode()
def probe_model(model: nn.Module, size: int, class_names: Sequence[str], channels: int = 3) -> int:
    """One forward of one ``channels x size x size`` image: the model must take it and return
    ``(1, len(class_names))`` logits. Returns the number of outputs; raises InputError."""
    was = model.training
    model.eval()
    try:
        out = model(torch.zeros(1, channels, size, size))
    except Exception as exc:  # a shape error deep in the model: name the size, not the layer
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"the model cannot take {channels}x{size}x{size} images (--size {size}): "
                         f"{type(exc).__name__}: {first}; give the size it was trained on") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"the model returns {shape} for one image; a classifier must return logits (N, num_classes)")
    if out.shape[1] != len(class_names):
        names = ", ".join(list(class_names)[:10]) + (", ..." if len(class_names) > 10 else "")
        raise InputError(f"the model has {out.shape[1]} outputs but the data has {len(class_names)} classes ({names}); "
                         "the class folders must match the model's outputs one to one (for torchvision and timm "
                         "models, --num-classes sets the outputs)")
    return int(out.shape[1])
