"""AAUA and AAD (He et al., NeurIPS 2024): adversarial augmentations of the amplitude spectrum.

Two augmentations that use the model being trained to find, for each batch, the amplitude
changes that hurt it most, and a consistency loss that asks the model to answer the same on
every view:

* **AAUA**, adversarial amplitude uncertainty augmentation (:func:`aaua`): inside a
  low-frequency box around DC (:func:`lowfreq_box`), each image's amplitude spectrum is
  normalised by its own mean and standard deviation there and re-styled with new ones,
  ``mean + d_mean * u_mean`` and ``std + d_std * u_std``, where ``u`` is the spread of those
  statistics over the batch (their uncertainty) and the directions ``d`` start from N(0, 1)
  and take ``steps`` sign-gradient ascent steps on the cross-entropy.
* **AAD**, adversarial amplitude dropout (:func:`aad`): the gradient of the cross-entropy
  with respect to the amplitude, min-max scaled per image and channel to [0, 1], is the
  probability that an amplitude entry is dropped (set to zero): frequencies the model leans
  on most are dropped most often.
* The training loss (:func:`aaua_aad_objective`, registered as the objective ``"aaua_aad"``)
  is ``CE(clean) + CE(AAUA) + js_weight * JS(clean, AAUA, AAD)``, with the Jensen-Shannon
  consistency of AugMix (:func:`js_divergence`).

Images are processed in [0, 1] (the objective undoes the input normalisation and applies it
again), the phase is kept, and the FFT runs over the last two axes.

Where the released code (github.com/C0notSilly/AdvFrequency at 4c34a79, ``models/AmpAug.py``,
``utils/adv_freq.py``, ``train.py``) differs, and what fslib does:

* Its ``train.py`` trains with the AAUA view and CE only, and dumps amplitude gradients; AAD,
  the clean view and the JS loss are commented out. fslib trains the combination the paper
  describes, reconstructed from those comments (CE on clean and AAUA views, JS weight 1), but
  without their AugMix view (three views, not four).
* Its box is rows/columns ``int(0.9 * H/2) : int(1.1 * H/2)``: off-centre (3 x 3 with DC in a
  corner at 32 px) and not conjugate-symmetric. fslib's box has the same size and is centred
  on DC, so the re-styled spectrum stays Hermitian.
* Its reconstruction is ``abs(ifft)`` divided by the maximum over the whole batch (every view
  rescaled by a batch-dependent factor); fslib takes the real part, which is exact for these
  Hermitian changes, and clips to [0, 1].
* Its ``fftshift`` without ``dim`` also rolls the batch and channel axes (harmless there,
  since it is undone before any per-image step); fslib shifts the last two axes only.
* Its AAD drop masks are drawn independently per entry (not conjugate-symmetric) and may drop
  DC; fslib draws one uniform per conjugate pair and keeps DC by default (``keep_dc``), since
  with a real-part reconstruction a dropped DC turns half of an image black after clipping.
* Its adversarial forward passes run in train mode and move the BatchNorm running statistics
  (5 + 1 extra updates per step); fslib runs them in train mode but restores the statistics.
* Its random draws use torch's global RNG and no seed is set; fslib draws from the training
  loop's generator.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from fslib.constants import normalization
from fslib.spectral import conjugate_mirror, fft_centred, ifft_centred

if TYPE_CHECKING:
    from fslib.train import TrainConfig

Forward = Callable[[torch.Tensor], torch.Tensor]
"""``forward(images) -> logits``: the model on images in [0, 1] (normalisation included)."""

AAUA_STEPS = 5         # official AmpUCNoise default
AAUA_STEP_SIZE = 1.0   # official alpha: a sign step of 1 on the N(0, 1) scale of the directions
BOX_RATIO = 0.1        # official: +-10 % of the half-size around DC
AAD_THRESHOLD = 1.0    # official AmpDrop default: drop probability = the scaled gradient
JS_WEIGHT = 1.0        # official train.py (commented): CE + CE + JS, no weight


def lowfreq_box(h: int, w: int, ratio: float = BOX_RATIO) -> torch.Tensor:
    """The low-frequency box of AAUA: a square centred on DC, bool ``(H, W)``.

    Its half-width is ``max(1, int(ratio * (min(H, W) // 2)))`` bins, the size of the released
    code's box (3 x 3 at 32 px, 23 x 23 at 224 px), centred and so conjugate-symmetric.

    >>> lowfreq_box(32, 32).nonzero().tolist()[0], int(lowfreq_box(32, 32).sum()), int(lowfreq_box(224, 224).sum())
    ([15, 15], 9, 529)
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"box ratio must be in (0, 1], got {ratio!r}")
    r = max(1, int(ratio * (min(h, w) // 2)))
    box = torch.zeros(h, w, dtype=torch.bool)
    box[max(0, h // 2 - r): h // 2 + r + 1, max(0, w // 2 - r): w // 2 + r + 1] = True
    return box


def _reconstruct(amp: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Images from a centred amplitude and phase (Hermitian by construction): real part, clipped to [0, 1]."""
    return ifft_centred(torch.complex(amp * torch.cos(phase), amp * torch.sin(phase))).clamp(0.0, 1.0)


def _check(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be float (N, C, H, W) in [0, 1], got {images.dtype} {tuple(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")


def _restyle(amp, phase, box, mean, std, new_mean, new_std) -> torch.Tensor:
    styled = (amp - mean) / (std + 1e-4) * (new_std + 1e-4) + new_mean
    return _reconstruct(torch.where(box, styled, amp), phase)


def aaua(forward: Forward, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, *,
         steps: int = AAUA_STEPS, step_size: float = AAUA_STEP_SIZE, box_ratio: float = BOX_RATIO,
         eps: float | None = None, return_directions: bool = False):
    """Adversarial amplitude uncertainty augmentation of one batch.

    Parameters
    ----------
    forward : callable, images in [0, 1] ``(N, C, H, W)`` -> logits ``(N, K)``
    images : Tensor, shape (N, C, H, W), float in [0, 1], N >= 2 (the uncertainty is a spread over the batch)
    labels : Tensor, shape (N,), int
    generator : torch.Generator (CPU), draws the initial directions
    steps : int >= 0, sign-gradient ascent steps (0: random directions only)
    step_size : float, size of each sign step
    box_ratio : float, :func:`lowfreq_box`
    eps : float or None, bound on ``|d|`` after each step (None: unbounded, as the released code)
    return_directions : also return the directions ``(d_mean, d_std)``, each ``(N, C, 1, 1)``

    Returns
    -------
    Tensor, shape (N, C, H, W), in [0, 1], detached (and the directions when asked).
    """
    _check(images, labels)
    if images.shape[0] < 2 or steps < 0:
        raise ValueError(f"AAUA needs a batch of at least 2 images and steps >= 0, got N={images.shape[0]}, steps={steps}")
    n, c, h, w = images.shape
    spec = fft_centred(images.detach().float())
    amp, phase = spec.abs(), spec.angle()
    box = lowfreq_box(h, w, box_ratio).to(images.device)
    inside = amp[..., box]                                         # (N, C, B)
    mean, std = inside.mean(-1)[..., None, None], inside.std(-1)[..., None, None]  # (N, C, 1, 1)
    u_mean, u_std = mean.std(0, keepdim=True) + 1e-4, std.std(0, keepdim=True) + 1e-4  # (1, C, 1, 1)
    d_mean, d_std = (torch.randn(n, c, 1, 1, generator=generator).to(images.device) for _ in range(2))
    for _ in range(steps):
        d_mean, d_std = d_mean.requires_grad_(True), d_std.requires_grad_(True)
        view = _restyle(amp, phase, box, mean, std, mean + d_mean * u_mean, std + d_std * u_std)
        loss = F.cross_entropy(forward(view).float(), labels)
        g_mean, g_std = torch.autograd.grad(loss, (d_mean, d_std))
        d_mean = (d_mean + step_size * g_mean.sign()).detach()
        d_std = (d_std + step_size * g_std.sign()).detach()
        if eps is not None:
            d_mean, d_std = d_mean.clamp(-eps, eps), d_std.clamp(-eps, eps)
    with torch.no_grad():
        out = _restyle(amp, phase, box, mean, std, mean + d_mean * u_mean, std + d_std * u_std).to(images.dtype)
    return (out, (d_mean, d_std)) if return_directions else out


def _pair_uniform(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Uniforms ``(N, C, H, W)`` with one draw per conjugate pair (equal at both positions)."""
    u = torch.rand(shape, generator=generator)
    h, w = shape[-2:]
    flat = torch.arange(h * w).reshape(h, w)
    first = flat <= conjugate_mirror(flat)  # the pair's representative: the smaller flat index
    return torch.where(first, u, conjugate_mirror(u))


def drop_probability(forward: Forward, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AAD's scaled gradient: d CE / d amplitude, min-max scaled to [0, 1] per image and channel.

    The batch cross-entropy's gradient with respect to every entry of the centred amplitude
    spectrum (the signed gradient, as the released code), symmetrised over conjugate pairs
    (equal there in exact arithmetic); an image and channel whose gradient is constant gets 0.

    Returns
    -------
    Tensor, shape (N, C, H, W), float32 in [0, 1], detached.
    """
    spec = fft_centred(images.detach().float())
    amp, phase = spec.abs().requires_grad_(True), spec.angle()
    loss = F.cross_entropy(forward(_reconstruct(amp, phase)).float(), labels)
    (grad,) = torch.autograd.grad(loss, amp)
    flat = grad.flatten(2)
    lo, hi = flat.min(-1).values[..., None, None], flat.max(-1).values[..., None, None]
    span = hi - lo
    scaled = torch.where(span > 0, (grad - lo) / torch.where(span > 0, span, 1.0), torch.zeros_like(grad))
    return (scaled + conjugate_mirror(scaled)) / 2


def aad(forward: Forward, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, *,
        threshold: float = AAD_THRESHOLD, keep_dc: bool = True, return_mask: bool = False):
    """Adversarial amplitude dropout of one batch.

    The gradient of the batch cross-entropy with respect to every amplitude entry, min-max
    scaled to [0, 1] per image and channel (the signed gradient, as the released code), is
    compared with ``threshold * U(0, 1)``: an entry is dropped where the scaled gradient is
    larger, so with ``threshold = 1`` its drop probability is its scaled gradient. One uniform
    is drawn per conjugate pair and the scaled gradient is symmetrised, so the result is real.
    An image and channel whose gradient is constant drops nothing.

    Parameters
    ----------
    forward : callable, images in [0, 1] -> logits
    images : Tensor, shape (N, C, H, W), float in [0, 1]
    labels : Tensor, shape (N,), int
    generator : torch.Generator (CPU)
    threshold : float > 0
    keep_dc : bool, never drop DC (the released code may)
    return_mask : also return the bool drop mask ``(N, C, H, W)``

    Returns
    -------
    Tensor, shape (N, C, H, W), in [0, 1], detached (and the drop mask when asked).
    """
    _check(images, labels)
    if not threshold > 0:
        raise ValueError(f"AAD threshold must be > 0, got {threshold!r}")
    h, w = images.shape[-2:]
    spec = fft_centred(images.detach().float())
    amp, phase = spec.abs(), spec.angle()
    scaled = drop_probability(forward, images, labels)
    drop = scaled > threshold * _pair_uniform(scaled.shape, generator).to(scaled.device)
    if keep_dc:
        drop[..., h // 2, w // 2] = False
    with torch.no_grad():
        out = _reconstruct(amp * ~drop, phase).to(images.dtype)
    return (out, drop) if return_mask else out


def js_divergence(*logits: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon consistency of several views: mean over views of KL(p_view || mixture).

    As AugMix and the released code: the mixture's probabilities are clipped to [1e-7, 1]
    before the log, KL is averaged over the batch, gradients flow through every view.

    >>> z = torch.randn(4, 10)
    >>> float(js_divergence(z, z, z)) < 1e-6
    True
    """
    if len(logits) < 2:
        raise ValueError(f"the JS consistency needs at least 2 views, got {len(logits)}")
    probs = [F.softmax(z.float(), dim=1) for z in logits]
    log_mix = torch.clamp(sum(probs) / len(probs), 1e-7, 1).log()
    return sum(F.kl_div(log_mix, p, reduction="batchmean") for p in probs) / len(probs)


@contextlib.contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as it is (train mode: batch statistics) but restore every BatchNorm
    running statistic afterwards, so extra forward passes leave no trace in them."""
    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
             and m.running_mean is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


OPTIONS = {"steps": AAUA_STEPS, "step_size": AAUA_STEP_SIZE, "box_ratio": BOX_RATIO, "eps": None,
           "threshold": AAD_THRESHOLD, "keep_dc": True, "js_weight": JS_WEIGHT}
"""The options of the ``"aaua_aad"`` objective (``TrainConfig.objective_options``) and their defaults."""


def aaua_aad_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: "TrainConfig",
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``"aaua_aad"`` training objective: ``CE(clean) + CE(AAUA) + js_weight * JS(clean, AAUA, AAD)``.

    Parameters
    ----------
    model : nn.Module, in train mode
    x : Tensor, shape (N, C, H, W), the normalised (augmented) batch
    y : Tensor, shape (N,), labels
    cfg : TrainConfig; ``cfg.objective_options`` may set any of :data:`OPTIONS`
    generator : torch.Generator (CPU), the training loop's

    Returns
    -------
    (loss, logits of the clean view ``(N, K)``). The adversarial passes leave the BatchNorm
    statistics as they were; the three views then go through the model as one batch.
    """
    opts = dict(OPTIONS)
    unknown = sorted(set(dict(cfg.objective_options)) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown aaua_aad option(s) {unknown}; valid: {', '.join(OPTIONS)}")
    opts.update(dict(cfg.objective_options))
    mean, std = (torch.tensor(v, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
                 for v in normalization(cfg.dataset))
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 else None

    def model_input(images: torch.Tensor) -> torch.Tensor:
        z = (images - mean) / std
        return z.contiguous(memory_format=layout) if layout is not None else z

    images = (x.float() * std + mean).contiguous()
    with frozen_bn_statistics(model):
        au = aaua(lambda z: model(model_input(z)), images, y, generator, steps=int(opts["steps"]),
                  step_size=float(opts["step_size"]), box_ratio=float(opts["box_ratio"]), eps=opts["eps"])
        ad = aad(lambda z: model(model_input(z)), images, y, generator, threshold=float(opts["threshold"]),
                 keep_dc=bool(opts["keep_dc"]))
    views = torch.cat([x, model_input(au).to(x.dtype), model_input(ad).to(x.dtype)])
    if layout is not None:
        views = views.contiguous(memory_format=layout)
    clean, au_logits, ad_logits = model(views).float().chunk(3)
    smoothing = cfg.label_smoothing
    loss = (F.cross_entropy(clean, y, label_smoothing=smoothing) + F.cross_entropy(au_logits, y, label_smoothing=smoothing)
            + float(opts["js_weight"]) * js_divergence(clean, au_logits, ad_logits))
    return loss, clean


def describe_options(options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The objective's settings with the defaults filled in (for tables).

    >>> describe_options({"steps": 1})["steps"], describe_options()["steps"]
    (1, 5)
    """
    return {**OPTIONS, **(options or {})}
