"""Training objectives: the loss a training step minimises, by name (``TrainConfig.objective``).

``"ce"`` is the paper's cross-entropy (with ``TrainConfig.label_smoothing``). Other objectives
(for example adversarial augmentations with a consistency loss) register themselves with
:func:`register_objective`; the trainer calls ``OBJECTIVES[cfg.objective](model, x, y, cfg,
generator)`` on every normalised batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from fslib.augment.adversarial import aaua_aad_objective

if TYPE_CHECKING:  # annotations only: fslib.train imports this registry
    from fslib.train import TrainConfig

Objective = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""``objective(model, x, y, cfg, generator) -> (loss, logits)``: one training step's loss on the
normalised batch ``x`` (the options are ``dict(cfg.objective_options)``)."""


def _cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(x)
    return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing), logits


OBJECTIVES: dict[str, Objective] = {"ce": _cross_entropy, "aaua_aad": aaua_aad_objective}
"""Training objectives by name (``TrainConfig.objective``); ``"ce"`` is the paper's cross-entropy,
``"aaua_aad"`` AAUA + AAD with a Jensen-Shannon consistency (:mod:`fslib.augment.adversarial`)."""


def register_objective(name: str, fn: Objective) -> None:
    """Make ``fn`` available as ``TrainConfig(objective=name)``; a taken name raises ValueError."""
    if name in OBJECTIVES and OBJECTIVES[name] is not fn:
        raise ValueError(f"objective {name!r} is already registered; taken: {', '.join(OBJECTIVES)}")
    OBJECTIVES[name] = fn
