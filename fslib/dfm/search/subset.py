"""The exact ablation of :func:`fslib.dfm.ablation_loss`, restricted to chosen units per class.

:func:`fslib.dfm.ablation_loss` removes every unit from every image, because it scores all
classes from the same forward passes. A method that only needs some units of some classes
(the candidates of a verified search, the survivors of a race) evaluates unit ``u`` for class
``c`` on class ``c``'s images only: :func:`ablation_loss_subset`. The removal is the same
computation as in ``ablation_loss`` (the private helpers ``_sinusoid_basis`` and
``_removed_components`` of :mod:`fslib.dfm`: a unit's real sinusoids are subtracted from a
batch of images whose spectra were computed once), so a unit's value is the same number up
to floating-point rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fslib.device import resolve_device
from fslib.dfm.search.result import PassCounter, check_inputs
from fslib.dfm.units import _removed_components, _sinusoid_basis, ablation_units
from fslib.inference import eval_mode
from fslib.spectral import fft_centred

__all__ = ["ablation_batch_size", "unit_image_losses", "ablation_loss_subset", "units_to_map", "map_to_units"]


def ablation_batch_size(c: int, h: int, w: int, itemsize: int, device: torch.device, batch_size: int | None) -> int:
    """Images per forward: ``batch_size``, or (None) as many as keep the ablated inputs under
    32 MiB, at most 64 on a CPU and 1024 on an accelerator (the rule of ``ablation_loss``)."""
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        return batch_size
    cap = 64 if device.type == "cpu" else 1024
    return int(max(1, min(cap, (1 << 25) // (c * h * w * itemsize))))


@torch.inference_mode()
def unit_image_losses(model, images: torch.Tensor, labels: torch.Tensor, units, unit_ids: torch.Tensor,
                      batch_size: int, device: torch.device, spectra: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of every image after removing every listed unit, ``(K, G)`` float64.

    The caller puts the model in eval mode (:func:`fslib.inference.eval_mode`) on ``device``.

    Parameters
    ----------
    model : nn.Module
    images : Tensor, shape (G, C, H, W), float, normalised
    labels : Tensor, shape (G,), int64
    units : AblationUnits of the image size
    unit_ids : Tensor, shape (K,), int64, indices into ``units``
    batch_size : int, images per forward
    device : torch.device
    spectra : Tensor, shape (G, C, H * W), complex, or None (computed here)
    """
    g_all, c, h, w = images.shape
    k_all = len(unit_ids)
    out = torch.empty(k_all, g_all, dtype=torch.float64)
    if k_all == 0 or g_all == 0:
        return out
    g = min(g_all, batch_size)
    k = max(1, batch_size // g)
    for gs in range(0, g_all, g):
        x = images[gs : gs + g].to(device)
        y = labels[gs : gs + g].to(device)
        spec = spectra[gs : gs + g].to(device) if spectra is not None else fft_centred(x).reshape(len(x), c, h * w)
        for ks in range(0, k_all, k):
            chunk = unit_ids[ks : ks + k]
            pos, wts = units.positions[chunk], units.weights[chunk]
            basis = _sinusoid_basis(pos, h, w, images.dtype, device)
            comp = _removed_components(spec, pos.to(device), wts.to(device), basis)  # (k, g, C, HW)
            inputs = (x[None] - comp.reshape(len(chunk), len(x), c, h, w)).reshape(-1, c, h, w)
            loss = F.cross_entropy(model(inputs), y.repeat(len(chunk)), reduction="none")
            out[ks : ks + len(chunk), gs : gs + len(x)] = loss.double().cpu().reshape(len(chunk), len(x))
    return out


def ablation_loss_subset(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    selected: torch.Tensor,
    *,
    patch_size: int = 1,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    counter: PassCounter | None = None,
) -> torch.Tensor:
    """Exact class loss after removing each selected unit, evaluated on that class's images.

    Entry ``[c, u]`` equals entry ``[c]`` of :func:`fslib.dfm.ablation_loss` at any position
    owned by unit ``u`` (up to rounding) where ``selected[c, u]``, and is NaN elsewhere. The cost
    is ``sum_c selected[c].sum() * n_c`` image forwards instead of ``U * N``.

    Parameters
    ----------
    model, images, labels, num_classes, patch_size, batch_size, device, progress :
        as in :func:`fslib.dfm.ablation_loss`
    selected : Tensor, shape (num_classes, U), bool, ``U = len(ablation_units(H, W, patch_size))``
    counter : PassCounter or None, counts the passes when given

    Returns
    -------
    Tensor, shape (num_classes, U), float64.
    """
    labels = check_inputs(images, labels, num_classes)
    n, c, h, w = images.shape
    units = ablation_units(h, w, patch_size)
    if not isinstance(selected, torch.Tensor) or tuple(selected.shape) != (num_classes, len(units)):
        got = tuple(selected.shape) if isinstance(selected, torch.Tensor) else type(selected).__name__
        raise ValueError(f"selected must be bool ({num_classes}, {len(units)}) (classes, units of patch_size="
                         f"{patch_size}), got {got}")
    selected = selected.bool().cpu()
    dev = resolve_device(device)
    model.to(dev)
    bs = ablation_batch_size(c, h, w, images.element_size(), dev, batch_size)
    out = torch.full((num_classes, len(units)), float("nan"), dtype=torch.float64)
    counter = counter if counter is not None else PassCounter(model)
    bar = tqdm(total=int(sum(int(selected[k].sum()) * int((labels == k).sum()) for k in range(num_classes))),
               disable=not progress, desc="exact (subset)", unit="img")
    with eval_mode(model, cpu_channels_last=True), counter:
        for k in range(num_classes):
            ids = selected[k].nonzero().flatten()
            idx = (labels == k).nonzero().flatten()
            if len(ids) == 0:
                continue
            losses = unit_image_losses(model, images[idx], labels[idx], units, ids, bs, dev)
            out[k, ids] = losses.mean(1)
            bar.update(len(ids) * len(idx))
    bar.close()
    return out


def units_to_map(values: torch.Tensor, units) -> torch.Tensor:
    """Spread per-unit values ``(C, U)`` over the positions each unit owns: ``(C, H, W)``."""
    h, w = units.owner.shape
    return values[:, units.owner.flatten()].reshape(values.shape[0], h, w)


def map_to_units(maps: torch.Tensor, units) -> torch.Tensor:
    """Per-unit score ``(C, U)`` of a map ``(C, H, W)``: the largest value over the positions the
    unit owns (for a map made by :func:`units_to_map` this is the unit's value back)."""
    cls = maps.shape[0]
    flat = maps.reshape(cls, -1).double()
    owner = units.owner.flatten().to(flat.device)
    out = torch.full((cls, len(units)), float("-inf"), dtype=torch.float64, device=flat.device)
    return out.scatter_reduce(1, owner[None].expand(cls, -1), flat, reduce="amax", include_self=True)
