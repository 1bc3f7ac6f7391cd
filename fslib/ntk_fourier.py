"""Circular convolutional networks, whose NTKs the DFT diagonalises: the frequency bridge.

Two small networks on images ``x`` of shape (C, H, W), with ``N = H W`` positions and
circular convolutions (``*``); ``x_hat_c(k)`` is the DFT of channel ``c``
(``torch.fft.fft2``, unnormalised).

**Linear circular CNN** (:class:`LinearCircularCNN`), full-size filters (Gunasekar et al. 2018)::

    h = w_{L-1} * ... * w_2 * (sum_c w_{1,c} * x_c),      f_a(x) = <v_a, h>.

In the Fourier domain every frequency is its own product of scalars, so at *any* weights
the NTK is ``K_ab(x, x') = (1/N) sum_k x_hat(k)^H M_ab(k) x_hat'(k)`` with a (C, C) matrix
``M_ab(k)`` per frequency (:func:`circular_cnn_ntk`, :func:`circular_cnn_blocks`): the
frequencies do not mix, which is the statement "the DFT diagonalises the kernel"
(:func:`circular_cnn_operator` builds it as a matrix on pixel space to check). On data whose
distribution is shift-invariant (the synthetic sets: random phases and offsets), its
eigenfunctions are the Fourier coefficients ``x_hat(k)``, with eigenvalue ``M(k)`` times
the mean power at ``k``. A linear network sees only ``x_hat(k)``, whose class means are all
zero when phases are random: it has nothing to learn the synthetic classes with.

**Quadratic circular CNN** (:class:`QuadraticCircularCNN`), the smallest nonlinear step::

    f(x) = sum_j v_j sum_p ((sum_c w_{j,c} * x_c)_p)^2,   j = 1..m,

with filters on an ``s x s`` support. At initialisation (i.i.d. ``w ~ N(0, s_w^2)``,
``v ~ N(0, t^2)``) its expected NTK is (:func:`quadratic_cnn_ntk`)::

    E K(x, x') = (m / N^2) [ s_w^4 |S|^2 T(x) T(x') + (2 s_w^4 + 4 t^2 s_w^2)
                             sum_{k, k'} <Q_x(k), Q_x'(k')> |D(k - k')|^2 ],

with ``T(x)`` N times the image's energy, ``Q_x(k) = x_hat(k) x_hat(k)^H`` the power at
``k`` and ``|D|^2`` the squared frequency response of the filter support. With full-size
filters ``|D|^2 = N^2 delta``: one term per frequency, the kernel compares power spectra
bin by bin. With 3x3 filters (those of the book's ResNet18) it compares them blurred over
about ``N / 3`` bins, roughly band by band. Early in training the kernel model moves class
``a``'s output along ``sum_i y~_ia K(x, x_i)``, so frequency ``k`` weighs the class's
excess power ``E_a Q - mean_b E_b Q`` (blurred by ``|D|^2``): the quantity the ADCS of
Wang et al. compares with signs. Removing ``k`` from the images of class ``a`` then costs
their cross-entropy :func:`predicted_loss_maps`, a DFM predicted from the data alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from fslib import spectral

__all__ = [
    "LinearCircularCNN",
    "QuadraticCircularCNN",
    "circular_cnn_blocks",
    "circular_cnn_features",
    "circular_cnn_ntk",
    "circular_cnn_operator",
    "circular_conv",
    "class_power",
    "cue_strengths",
    "data_kernels",
    "dft_matrix",
    "lag_weights",
    "power_features",
    "predicted_loss_maps",
    "quadratic_cnn_ntk",
    "quadratic_name",
]


def circular_conv(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(w * x)_p = sum_q w_q x_{p - q}`` (indices mod H, W) over the last two axes,
    computed directly (a reference for the FFT forms; O(N^2)).

    >>> x = torch.zeros(3, 3); x[0, 0] = 1.0
    >>> w = torch.arange(9.0).reshape(3, 3)
    >>> torch.equal(circular_conv(w, x), w)   # a delta returns the filter
    True
    """
    h, wd = x.shape[-2:]
    out = torch.zeros(torch.broadcast_shapes(w.shape, x.shape), dtype=torch.promote_types(w.dtype, x.dtype))
    for qr in range(h):
        for qc in range(wd):
            out = out + w[..., qr, qc, None, None] * torch.roll(x, shifts=(qr, qc), dims=(-2, -1))
    return out


def dft_matrix(h: int, w: int) -> torch.Tensor:
    """The unitary 2-D DFT on flattened (H, W) arrays, complex128 (N, N):
    ``F @ x.flatten() == fft2(x, norm="ortho").flatten()``."""
    fh = torch.fft.fft(torch.eye(h, dtype=torch.complex128), norm="ortho")
    fw = torch.fft.fft(torch.eye(w, dtype=torch.complex128), norm="ortho")
    return torch.kron(fh, fw)


# --------------------------------------------------------------------------- linear circular CNN
class LinearCircularCNN(nn.Module):
    """A linear CNN with full-size circular filters and a dense readout, float64.

    Parameters
    ----------
    channels : input channels C
    size : (H, W)
    depth : number of convolutions (>= 1); the first maps C channels to 1
    outputs : number of outputs A (one readout map each)
    seed : initial weights ``N(0, 1 / fan_in)`` (fan-in ``C N`` for the first layer, ``N``
        for the others)
    """

    def __init__(self, channels: int, size: tuple[int, int], depth: int = 2, outputs: int = 1, seed: int = 0) -> None:
        super().__init__()
        if depth < 1 or outputs < 1 or channels < 1:
            raise ValueError(f"need depth, outputs and channels >= 1, got {depth}, {outputs}, {channels}")
        h, w = size
        n = h * w
        gen = torch.Generator().manual_seed(seed)

        def draw(*shape, fan):
            return nn.Parameter(torch.randn(*shape, generator=gen, dtype=torch.float64) / math.sqrt(fan))

        self.first = draw(channels, h, w, fan=channels * n)
        self.hidden = nn.ParameterList([draw(h, w, fan=n) for _ in range(depth - 1)])
        self.readout = draw(outputs, h, w, fan=n)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden map ``h``, (B, H, W)."""
        spec = (torch.fft.fft2(self.first) * torch.fft.fft2(x)).sum(-3)
        for w in self.hidden:
            spec = spec * torch.fft.fft2(w)
        return torch.fft.ifft2(spec).real

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs (B, A) of images ``x`` (B, C, H, W)."""
        return torch.einsum("bhw,ahw->ba", self.features(x.double()), self.readout)


def circular_cnn_blocks(model: LinearCircularCNN) -> torch.Tensor:
    """The per-frequency matrices ``M_ab(k)`` of the NTK of ``model`` at its weights.

    Returns
    -------
    Tensor, shape (A, A, H, W, C, C), complex128, uncentred frequency layout (as ``fft2``):
    ``K_ab(x, x') = (1/N) sum_k x_hat(k)^H M_ab(k) x_hat'(k)``. Terms: the readout
    (``delta_ab |G|^2 conj(w1) w1^T``), each hidden filter
    (``v_a conj(v_b) |G / w_l|^2 conj(w1) w1^T``) and the first layer
    (``v_a conj(v_b) |G|^2 I``), with ``w1(k)`` the first layer's C filters, ``G(k)`` the
    product of the hidden filters and ``v_a(k)`` the readouts, all as DFTs.
    """
    w1 = torch.fft.fft2(model.first.detach())  # (C, H, W)
    hidden = [torch.fft.fft2(w.detach()) for w in model.hidden]  # each (H, W)
    v = torch.fft.fft2(model.readout.detach())  # (A, H, W)
    a, c = v.shape[0], w1.shape[0]
    gain = torch.ones_like(v[0].real)
    for g in hidden:
        gain = gain * g.abs() ** 2
    outer = torch.einsum("chw,dhw->hwcd", w1.conj(), w1)  # conj(w1) w1^T per frequency
    eye = torch.eye(c, dtype=torch.complex128)
    vv = torch.einsum("ahw,bhw->abhw", v, v.conj())
    blocks = torch.eye(a, dtype=torch.complex128)[:, :, None, None, None, None] * (gain[..., None, None] * outer)
    blocks = blocks + vv[..., None, None] * (gain[..., None, None] * eye)
    for i in range(len(hidden)):
        others = torch.ones_like(gain)
        for j, g in enumerate(hidden):
            if j != i:
                others = others * g.abs() ** 2
        blocks = blocks + vv[..., None, None] * (others[..., None, None] * outer)
    return blocks


def circular_cnn_ntk(model: LinearCircularCNN, x1: torch.Tensor, x2: torch.Tensor | None = None,
                     kind: str = "full") -> torch.Tensor:
    """Closed-form NTK of a :class:`LinearCircularCNN` (exact at the current weights).

    Parameters
    ----------
    x1 : Tensor, shape (N1, C, H, W); x2 : Tensor, shape (N2, C, H, W), or None for ``x1``
    kind : ``"full"`` (N1, N2, A, A) or ``"trace"`` (N1, N2), as :func:`fslib.ntk.empirical_ntk`

    Returns
    -------
    Tensor, float64.
    """
    if kind not in ("full", "trace"):
        raise ValueError(f"unknown NTK kind {kind!r}; valid: full, trace")
    x2 = x1 if x2 is None else x2
    f1, f2 = torch.fft.fft2(x1.double()), torch.fft.fft2(x2.double())  # (N, C, H, W)
    blocks = circular_cnn_blocks(model)
    n = f1.shape[-1] * f1.shape[-2]
    if kind == "trace":
        m = torch.einsum("aahwcd->hwcd", blocks)
        return torch.einsum("ichw,hwcd,jdhw->ij", f1.conj(), m, f2).real / n
    return torch.einsum("ichw,abhwcd,jdhw->ijab", f1.conj(), blocks, f2).real / n


def circular_cnn_features(model: LinearCircularCNN, images: torch.Tensor) -> torch.Tensor:
    """Real features whose inner products are the trace NTK of ``model``.

    With ``M(k) = sum_a M_aa(k) = R(k)^H R(k)``, the features of ``x`` are the real and
    imaginary parts of ``R(k) x_hat(k) / sqrt N`` for every k: shape (B, 2 N C), float64.
    Computing a Gram matrix from them costs one matrix product.
    """
    m = torch.einsum("aahwcd->hwcd", circular_cnn_blocks(model))
    lam, vec = torch.linalg.eigh(m)  # Hermitian per frequency
    root = vec * lam.clamp_min(0).sqrt()[..., None, :]  # M = root root^H
    f = torch.fft.fft2(images.double())  # (B, C, H, W)
    z = torch.einsum("hwcd,bchw->bhwd", root.conj(), f) / math.sqrt(f.shape[-1] * f.shape[-2])
    return torch.cat([z.real.flatten(1), z.imag.flatten(1)], dim=1)


def circular_cnn_operator(model: LinearCircularCNN, a: int = 0, b: int = 0) -> torch.Tensor:
    """The NTK block ``K_ab`` as a matrix on flattened images: ``K_ab(x, x') = x . Omega x'``.

    Returns
    -------
    Tensor, shape (C N, C N), float64, indexed (channel, row, column). The DFT
    diagonalises it: ``(I_C kron F) Omega (I_C kron F)^H`` is zero between different
    frequencies (``F`` = :func:`dft_matrix`).
    """
    c, h, w = model.first.shape
    basis = torch.eye(c * h * w, dtype=torch.float64).reshape(-1, c, h, w)
    return circular_cnn_ntk(model, basis)[:, :, a, b]


# --------------------------------------------------------------------------- quadratic circular CNN
class QuadraticCircularCNN(nn.Module):
    """``f(x) = sum_j v_j sum_p ((sum_c w_{j,c} * x_c)_p)^2`` with circular filters on an
    ``s x s`` support (``filter_size``; None: the whole image), ``w ~ N(0, filter_std^2)``,
    ``v ~ N(0, readout_std^2)``, float64."""

    def __init__(self, channels: int, size: tuple[int, int], width: int, filter_std: float, readout_std: float,
                 seed: int = 0, filter_size: int | None = None) -> None:
        super().__init__()
        side = _filter_side(size, filter_size)
        gen = torch.Generator().manual_seed(seed)
        self.size = tuple(size)
        self.filters = nn.Parameter(filter_std * torch.randn(width, channels, *side, generator=gen, dtype=torch.float64))
        self.readout = nn.Parameter(readout_std * torch.randn(width, generator=gen, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs (B,) of images (B, C, H, W)."""
        h, w = self.size
        full = nn.functional.pad(self.filters, (0, w - self.filters.shape[-1], 0, h - self.filters.shape[-2]))
        spec = torch.einsum("jchw,bchw->bjhw", torch.fft.fft2(full), torch.fft.fft2(x.double()))
        energy = (spec.abs() ** 2).sum((-2, -1)) / (h * w)  # Parseval: sum_p h_p^2
        return energy @ self.readout


def _filter_side(size: tuple[int, int], filter_size: int | None) -> tuple[int, int]:
    if filter_size is None:
        return tuple(size)
    if not 1 <= filter_size <= min(size):
        raise ValueError(f"filter_size must lie in [1, {min(size)}] or be None (full size), got {filter_size}")
    return filter_size, filter_size


def lag_weights(size: tuple[int, int], filter_size: int | None = None) -> torch.Tensor:
    """``c(d)``: the number of pairs of filter taps ``(r, u)`` with ``r - u = d`` (mod the
    image size), for every circular lag ``d``; shape (H, W), float64, lag 0 at [0, 0].

    Its DFT is ``|D(k)|^2``, the squared frequency response of the filter support (a Fejer
    kernel): how far apart two frequencies a filter of that size can still tell apart.

    >>> lag_weights((4, 4), 2)[:, 0].tolist()
    [4.0, 2.0, 0.0, 2.0]
    """
    weights = []
    for n, s in zip(size, _filter_side(size, filter_size)):
        d = torch.arange(n, dtype=torch.float64)
        weights.append((s - d).clamp_min(0) + (s - (n - d)).clamp_min(0) * (d > 0))
    return weights[0][:, None] * weights[1][None, :]


def power_features(images: torch.Tensor) -> torch.Tensor:
    """The per-frequency channel power ``Q_x(k) = x_hat(k) x_hat(k)^H``, centred layout.

    Parameters
    ----------
    images : Tensor, shape (B, C, H, W), float (the model's input)

    Returns
    -------
    Tensor, shape (B, H, W, C, C), complex128 (Hermitian in the last two axes; its trace
    is the power ``sum_c |x_hat_c(k)|^2``).
    """
    f = spectral.fft_centred(images.double())  # (B, C, H, W)
    return torch.einsum("bchw,bdhw->bhwcd", f, f.conj())


def _autocorrelation_features(images: torch.Tensor, filter_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``sqrt(c(d)) rho_x(d)`` at the lags a filter can see, flattened (B, L C C), and the
    energies ``T(x)`` (B,); ``rho_x(d) = N sum_p x(p + d) x(p)^T`` is N times the
    channel cross-correlation at lag ``d``."""
    x = images.double()
    n = x.shape[-1] * x.shape[-2]
    f = torch.fft.fft2(x)
    rho = n * torch.fft.ifft2(torch.einsum("bchw,bdhw->bcdhw", f, f.conj())).real  # (B, C, C, H, W)
    weight = lag_weights(tuple(x.shape[-2:]), filter_size)
    keep = weight > 0
    feats = rho[..., keep] * weight[keep].sqrt()  # (B, C, C, L)
    return feats.flatten(1), torch.einsum("bcc->b", rho[..., 0, 0])


def quadratic_cnn_ntk(x1: torch.Tensor, x2: torch.Tensor | None = None, *, width: int = 1, filter_std: float = 1.0,
                      readout_std: float = 1.0, filter_size: int | None = None) -> torch.Tensor:
    """The expected NTK of a :class:`QuadraticCircularCNN` at initialisation.

    ``E K = (m / N^2) [s^4 |S|^2 T T' + (2 s^4 + 4 t^2 s^2) sum_d c(d) <rho_x(d), rho_x'(d)>]``
    with ``m`` = width, ``s`` = filter_std, ``t`` = readout_std, ``|S|`` taps per filter and
    channel, ``c(d)`` = :func:`lag_weights`. In the Fourier domain the second term is
    ``sum_{k, k'} <Q_x(k), Q_x'(k')> |D(k - k')|^2``: with full-size filters
    (``|D|^2 = N^2 delta``) one term per frequency, ``N^2 sum_k <Q_x(k), Q_x'(k)>``; with
    small filters the power spectra are compared after blurring over about ``N / s`` bins.

    Parameters
    ----------
    x1 : Tensor, shape (N1, C, H, W); x2 : Tensor, shape (N2, C, H, W), or None
    width, filter_std, readout_std, filter_size : as the network

    Returns
    -------
    Tensor, shape (N1, N2), float64.
    """
    f1, t1 = _autocorrelation_features(x1, filter_size)
    f2, t2 = (f1, t1) if x2 is None else _autocorrelation_features(x2, filter_size)
    h, w = x1.shape[-2:]
    taps = math.prod(_filter_side((h, w), filter_size))
    s2, r2 = filter_std ** 2, readout_std ** 2
    scale = width / (h * w) ** 2
    return scale * (s2 ** 2 * taps ** 2 * torch.outer(t1, t2) + (2 * s2 ** 2 + 4 * r2 * s2) * (f1 @ f2.T))


# --------------------------------------------------------------------------- frequency prediction
def class_power(images: torch.Tensor, labels: torch.Tensor, num_classes: int, batch_size: int = 256) -> torch.Tensor:
    """``E_a Q(k)``: the mean channel-power matrix of every class at every frequency.

    Returns
    -------
    Tensor, shape (num_classes, H, W, C, C), complex128, centred layout.
    """
    labels = torch.as_tensor(labels).long().cpu()
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"every class needs an image; counts per class: {counts.tolist()}")
    total = None
    for start in range(0, len(images), batch_size):
        q = power_features(images[start:start + batch_size])
        onehot = torch.nn.functional.one_hot(labels[start:start + batch_size], num_classes).to(q.dtype)
        part = torch.einsum("ba,bhwcd->ahwcd", onehot, q)
        total = part if total is None else total + part
    return total / counts.to(torch.float64)[:, None, None, None, None]


def predicted_loss_maps(power: torch.Tensor, filter_size: int | None = None) -> torch.Tensor:
    """The early-training loss increase the power kernel predicts for removing each frequency.

    Early in training the kernel model of :func:`quadratic_cnn_ntk` moves class ``a``'s
    output along ``sum_{k, k'} <Q_x(k), W_a(k')> |D(k - k')|^2`` with the class's excess
    power ``W_a = E_a Q - mean_b E_b Q``; removing frequency ``k`` from the images of class
    ``a`` then raises their cross-entropy (uniform softmax, centred targets) by
    ``<E_a Q(k), (|D|^2 * W_a)(k)> / N^2``: the excess blurred over the frequency resolution
    of the filters.

    Parameters
    ----------
    power : Tensor, shape (A, H, W, C, C), :func:`class_power` (centred layout)
    filter_size : int or None, the filters' side (None: full size, no blurring)

    Returns
    -------
    Tensor, shape (A, H, W), float64, centred layout. Feed it to
    :func:`fslib.dfm.dominant_frequency_maps` for a predicted DFM.
    """
    if power.ndim != 5:
        raise ValueError(f"power must be (A, H, W, C, C), got shape {tuple(power.shape)}")
    h, w = power.shape[1:3]
    excess = (power - power.mean(0, keepdim=True)).permute(0, 3, 4, 1, 2)  # (A, C, C, H, W)
    lags = torch.fft.ifft2(torch.fft.ifftshift(excess, dim=(-2, -1)))
    blurred = torch.fft.fftshift(torch.fft.fft2(lags * lag_weights((h, w), filter_size)), dim=(-2, -1)) / (h * w)
    return torch.einsum("ahwcd,acdhw->ahw", power.conj(), blurred).real


def quadratic_name(filter_size: int | None) -> str:
    """Display name of a quadratic circular CNN kernel: ``"quadratic CNN, 3x3 filters"``."""
    return "quadratic CNN, full-size filters" if filter_size is None else f"quadratic CNN, {filter_size}x{filter_size} filters"


def data_kernels(train: torch.Tensor, test: torch.Tensor, cnn: LinearCircularCNN,
                 filter_sizes: Sequence[int | None] = (None, 3)) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The circular-CNN kernels on a training and a held-out set of images.

    Parameters
    ----------
    train : Tensor (N, C, H, W) and test : Tensor (M, C, H, W), the model's input
    cnn : the :class:`LinearCircularCNN` whose (trace) NTK is used
    filter_sizes : the quadratic circular CNNs (:func:`quadratic_cnn_ntk`,
        ``filter_std = readout_std``), by filter side (None: full size)

    Returns
    -------
    dict ``{"linear circular CNN": (K, K_cross), quadratic_name(s): (K, K_cross), ...}``
    with ``K`` (N, N) and ``K_cross`` (M, N), float64, both divided by the mean diagonal of
    ``K`` (:func:`fslib.ntk.normalize_kernel`).
    """
    phi_train, phi_test = circular_cnn_features(cnn, train), circular_cnn_features(cnn, test)
    out = {"linear circular CNN": (phi_train @ phi_train.T, phi_test @ phi_train.T)}
    for size in filter_sizes:
        out[quadratic_name(size)] = (quadratic_cnn_ntk(train, filter_size=size),
                                     quadratic_cnn_ntk(test, train, filter_size=size))
    return {name: (k / torch.diagonal(k).mean(), c / torch.diagonal(k).mean()) for name, (k, c) in out.items()}


def cue_strengths(images: torch.Tensor, masks: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """The share of each image's non-DC power inside each of several sets of frequencies.

    Parameters
    ----------
    images : Tensor (N, C, H, W), float (the model's input)
    masks : mapping name -> bool Tensor (H, W), centred layout (e.g. band k, C2's special
        frequencies, C0's diagonal)

    Returns
    -------
    DataFrame, one row per image, one column per mask, values in [0, 1].
    """
    power = spectral.amplitude_spectrum(images.double()).pow(2).sum(1)  # (N, H, W)
    h, w = power.shape[-2:]
    power[:, h // 2, w // 2] = 0
    total = power.sum((-2, -1)).clamp_min(1e-300)
    return pd.DataFrame({name: ((power * m.to(power.dtype)).sum((-2, -1)) / total).numpy()
                         for name, m in masks.items()})
