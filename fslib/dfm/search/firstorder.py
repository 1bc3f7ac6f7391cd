"""First-order loss maps: every frequency (or patch) removal estimated from one backward pass.

With the orthonormal 2-D DFT, removing the set of frequencies ``S`` (closed under conjugation)
from an input ``x`` changes a differentiable function ``f`` by about

    f(x - c_S) - f(x)  ~  -<grad f(x), c_S>  =  -Re sum_{q in S} conj(G_q) X_q,

summed over channels, where ``c_S`` is the removed image component, ``X`` the DFT of ``x`` and
``G`` the DFT of ``grad f(x)`` (Parseval). One forward and one backward pass per image thus
estimate every removal of :func:`fslib.dfm.ablation_loss` at once, in the same units (single
conjugate pairs or patch blocks with their true conjugate blocks), the same layout and the
same values (class-mean cross-entropy after the removal). The derivation is in the book's
related-work notes (``related.md``: the signed product of the two transforms, not the gradient
magnitude that saliency methods use).

Two estimators:

* ``"tangent"``: ``f`` is the cross-entropy itself. Cheapest (one backward pass per image),
  but blind where the softmax saturates: a confidently classified image has an almost zero
  loss gradient even when a removal would flip its prediction.
* ``"logit"``: ``f`` is each logit. The logits are linearised (``z - J c_S``) and the
  cross-entropy is evaluated *exactly* on the linearised logits, so saturation is handled;
  what remains approximate is the network's own non-linearity. Costs one backward pass per
  tracked logit (``logits=None``: all classes; ``logits=k``: the true class and the ``k - 1``
  highest others of each image, the rest kept fixed).

``rectify=True`` averages ``L_i + max(0, estimated change_i)`` over a class's images: an
estimated *decrease* of an image's loss counts as no change. This is a screen, not an
estimate: on trained CIFAR-10 ResNet18s the sign of the first-order change of a single
image is often wrong for the units that reach the exact DFM (their class-mean effect is a
small average of large per-image effects of both signs), and the signed class mean ranks
some of them last; the rectified mean keeps every unit with a large per-image increase near
the top (``benchmarks/dfm_search.py``: the exact top set within the top 4x DFM size for most
classes, against about none for the signed mean).

``steps = k > 1`` averages the gradients over ``k`` points of the straight path from the image
to the image with every unit removed (``(1 - j / k) x``, ``j = 0..k-1``): integrated gradients
with the all-removed (zero, i.e. mean-colour) input as baseline, a left Riemann sum. It is
exact for the removal of everything at once; for one unit it is a heuristic (a single unit's
own path cannot be shared between units), at ``k`` times the cost.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fslib import distributed
from fslib.device import resolve_device
from fslib.dfm.search.result import PassCounter, SearchResult, check_fraction, check_inputs, check_model_gradient
from fslib.dfm.select import dominant_frequency_maps
from fslib.dfm.units import ablation_units
from fslib.inference import eval_mode
from fslib.spectral import fft_centred

__all__ = ["ESTIMATORS", "position_products", "unit_sums", "first_order_loss", "first_order_unit_losses",
           "first_order_dfms"]

ESTIMATORS = ("tangent", "logit")


def position_products(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``Re(conj(G_q) X_q) / (H W)`` summed over channels: each position's share of ``<grad, x>``.

    Summing it over a conjugate-closed set ``S`` gives ``<grad, c_S>`` exactly (Parseval with
    the unnormalised FFT), so the first-order change of removing ``S`` is minus that sum.

    Parameters
    ----------
    x, grad : Tensor, shape (B, C, H, W), real

    Returns
    -------
    Tensor, shape (B, H * W), float64, centred flat positions.

    >>> x = torch.randn(2, 3, 8, 8, dtype=torch.float64); g = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    >>> torch.allclose(position_products(x, g).sum(1), (x * g).sum((1, 2, 3)))
    True
    """
    b, _, h, w = x.shape
    xs, gs = fft_centred(x.double()), fft_centred(grad.double())
    prod = (gs.real * xs.real + gs.imag * xs.imag).sum(1)
    return prod.reshape(b, h * w) / (h * w)


def unit_sums(products: torch.Tensor, units) -> torch.Tensor:
    """Sum of :func:`position_products` over each unit's removed set, ``(B, U)`` float64.

    ``units`` is :func:`fslib.dfm.ablation_units`; a pair's partner has the same product as its
    representative (both spectra are of real images), hence the weight 2.
    """
    pos = units.positions.to(products.device)
    wts = units.weights.to(products.device, torch.float64)
    return (products[:, pos] * wts).sum(-1)


def _auto_batch(c: int, h: int, w: int, batch_size: int | None) -> int:
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        return batch_size
    return int(max(1, min(64, (1 << 21) // (c * h * w))))  # 64 at 32 px, 13 at 224 px


class _NoParamGrad:
    """Turn off parameter gradients for a block: a backward pass then computes only what the
    input gradient needs. Restores each parameter's flag afterwards."""

    def __init__(self, model: torch.nn.Module):
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p in self.params:
            p.requires_grad_(True)


def _estimate_batch(model, x, y, units, estimator, logits, steps, counter) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image loss ``(B,)`` and estimated loss after removing each unit ``(B, U)``, float64."""
    b = x.shape[0]
    z0 = tracked = dsum = None
    for j in range(steps):
        xt = (x * (1.0 - j / steps)).detach().requires_grad_(True)
        out = model(xt)
        if not out.requires_grad:
            check_model_gradient(None, out)
        if j == 0:  # the image itself: its logits, and which logits to track
            z0 = out.detach().double()
            if estimator == "logit":
                m = z0.shape[1] if logits is None else min(int(logits), z0.shape[1])
                others = z0.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)[:, : m - 1]
                tracked = torch.cat([y[:, None], others], 1)  # (B, m): true class first
            n_track = 1 if tracked is None else tracked.shape[1]
            dsum = torch.zeros(n_track, b, len(units), dtype=torch.float64, device=x.device)
        for t in range(n_track):
            if tracked is None:
                f = F.cross_entropy(out, y, reduction="sum")
            else:
                f = out.gather(1, tracked[:, t : t + 1]).sum()
            (grad,) = torch.autograd.grad(f, xt, retain_graph=t + 1 < n_track, allow_unused=True)
            check_model_gradient(grad, out)
            counter.add_backward(b)
            dsum[t] += unit_sums(position_products(x, grad), units)
    loss0 = F.cross_entropy(z0, y, reduction="none")
    delta = dsum / steps  # first-order decrease of f per unit: f(x - c_u) ~ f(x) - delta
    if tracked is None:
        return loss0, loss0[:, None] - delta[0]
    zt = z0.gather(1, tracked)  # (B, m)
    rest = z0.scatter(1, tracked, float("-inf")).logsumexp(1)  # untracked logits, unchanged
    new = zt[:, None, :] - delta.permute(1, 2, 0)  # (B, U, m)
    lse = torch.cat([rest[:, None, None].expand(b, new.shape[1], 1), new], 2).logsumexp(2)
    return loss0, lse - new[..., 0]


def first_order_loss(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    patch_size: int = 1,
    estimator: str = "tangent",
    logits: int | None = None,
    steps: int = 1,
    rectify: bool = False,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    counter: PassCounter | None = None,
) -> torch.Tensor:
    """Estimated per-class loss after removing each frequency (pair) or patch, first order.

    The same units, layout and meaning as :func:`fslib.dfm.ablation_loss` (entry ``[c, r, s]``
    is the mean cross-entropy over class ``c``'s images after removing the unit that owns
    ``(r, s)``), estimated from the input gradient instead of one forward pass per unit.

    Parameters
    ----------
    model : nn.Module
        Maps ``(B, C, H, W)`` to logits ``(B, num_classes)``; evaluated in eval mode (its mode
        and parameter ``requires_grad`` flags are restored). Must be differentiable in its input.
    images : Tensor, shape (N, C, H, W), float, normalised as the model takes them
    labels : Tensor, shape (N,), int; every class needs an image
    num_classes : int
    patch_size : int, units as in :func:`fslib.dfm.ablation_units`
    estimator : ``"tangent"`` or ``"logit"`` (see the module docstring)
    logits : int or None, logits tracked by the ``"logit"`` estimator (None: all)
    steps : int, points of the path integral (1: the tangent at the image)
    rectify : bool, count an image's estimated loss decrease as no change (see the module
        docstring: a screen, not an estimate)
    batch_size : int or None, images per backward pass (None: 64 at 32 px, 13 at 224 px)
    device : str or torch.device, ``"auto"``: CUDA when present
    progress : bool, a tqdm bar over images
    counter : PassCounter or None, counts the passes when given

    Returns
    -------
    Tensor, shape (num_classes, H, W), float64, centred layout.

    Notes
    -----
    Under ``torchrun`` (:mod:`fslib.distributed`) the batches of images are shared among the
    ranks (rank ``r`` takes batches ``r, r + W, ...``) and the per-class sums are added with one
    all-reduce: every rank returns the same maps, equal to a single process's up to the order of
    the floating-point sums.
    """
    labels = check_inputs(images, labels, num_classes)
    n, _, h, w = images.shape
    units = ablation_units(h, w, patch_size)
    sums = torch.zeros(num_classes, len(units), dtype=torch.float64)
    for start, loss0, est in _estimates(model, images, labels, units, estimator, logits, steps, batch_size, device,
                                        progress, counter):
        if rectify:
            est = loss0[:, None] + (est - loss0[:, None]).clamp_min(0)
        sums.index_add_(0, labels[start : start + len(est)], est)
    distributed.all_reduce_sum(sums)  # under torchrun each rank summed its own batches
    means = sums / torch.bincount(labels, minlength=num_classes).double()[:, None]
    return means[:, units.owner.flatten()].reshape(num_classes, h, w)


def first_order_unit_losses(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    patch_size: int = 1,
    estimator: str = "tangent",
    logits: int | None = None,
    steps: int = 1,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    counter: PassCounter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image loss and estimated loss after removing each unit.

    What :func:`first_order_loss` averages per class; units as :func:`fslib.dfm.ablation_units`.
    Parameters as in :func:`first_order_loss`.

    Returns
    -------
    (losses, estimates) : Tensors (N,) and (N, U), float64.
    """
    labels = check_inputs(images, labels, num_classes)
    n, _, h, w = images.shape
    units = ablation_units(h, w, patch_size)
    out = torch.zeros(n, len(units), dtype=torch.float64)
    losses = torch.zeros(n, dtype=torch.float64)
    for start, loss0, est in _estimates(model, images, labels, units, estimator, logits, steps, batch_size, device,
                                        progress, counter):
        out[start : start + len(est)] = est
        losses[start : start + len(est)] = loss0
    distributed.all_reduce_sum(out)  # under torchrun: every other rank's rows are zero here
    distributed.all_reduce_sum(losses)
    return losses, out


def _estimates(model, images, labels, units, estimator, logits, steps, batch_size, device, progress, counter):
    """Yield ``(start, losses (B,), estimates (B, U))`` batch by batch, float64 on the CPU."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if logits is not None and (isinstance(logits, bool) or not isinstance(logits, int) or logits < 1):
        raise ValueError(f"logits must be a positive int or None (all), got {logits!r}")
    n, c, h, w = images.shape
    dev = resolve_device(device)
    model.to(dev)
    bs = _auto_batch(c, h, w, batch_size)
    counter = counter if counter is not None else PassCounter(model)
    rank, world_size = distributed.world()
    starts = list(range(0, n, bs))[rank::world_size]  # under torchrun: every world_size-th batch
    mine = sum(min(bs, n - start) for start in starts)
    bar = tqdm(total=mine, disable=not progress or rank > 0, desc=f"first-order ({estimator})", unit="img")
    with eval_mode(model, cpu_channels_last=True), _NoParamGrad(model), torch.enable_grad(), counter:
        for start in starts:
            x = images[start : start + bs].to(dev)
            y = labels[start : start + bs].to(dev)
            loss0, est = _estimate_batch(model, x, y, units, estimator, logits, steps, counter)
            yield start, loss0.cpu(), est.cpu()
            bar.update(len(x))
    bar.close()


def first_order_dfms(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    top: float = 0.05,
    patch_size: int = 1,
    estimator: str = "tangent",
    logits: int | None = None,
    steps: int = 1,
    rectify: bool = False,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> SearchResult:
    """:func:`first_order_loss` thresholded into DFMs (:func:`fslib.dfm.dominant_frequency_maps`).

    Returns
    -------
    SearchResult, ``maps`` the first-order loss maps, ``provenance["method"] = "first_order"``.
    """
    top = check_fraction(top)
    counter = PassCounter(model)
    start = time.perf_counter()
    maps = first_order_loss(model, images, labels, num_classes, patch_size=patch_size, estimator=estimator,
                            logits=logits, steps=steps, rectify=rectify, batch_size=batch_size, device=device,
                            progress=progress, counter=counter)
    seconds = time.perf_counter() - start
    settings = {"top": top, "patch_size": patch_size, "estimator": estimator, "logits": logits, "steps": steps,
                "rectify": rectify}
    provenance = {"method": "first_order", "settings": settings, "seconds": seconds, "n_images": len(labels),
                  **counter.record(len(labels))}
    return SearchResult(maps, dominant_frequency_maps(maps, top), provenance)
