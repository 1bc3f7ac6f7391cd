"""Circular convolutional networks, whose NTKs the DFT diagonalises: the frequency bridge.

Two small networks on images ``x`` of shape (C, H, W), with ``N = H W`` positions and
full-size circular filters (Gunasekar et al. 2018); ``x_hat_c(k)`` is the DFT of channel
``c`` (``torch.fft.fft2``, unnormalised) and ``*`` circular convolution.

**Linear circular CNN** (:class:`LinearCircularCNN`)::

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

    f(x) = sum_j v_j sum_p ((sum_c w_{j,c} * x_c)_p)^2,   j = 1..m.

At initialisation (i.i.d. ``w ~ N(0, s^2)``, ``v ~ N(0, t^2)``) its expected NTK is
(:func:`quadratic_cnn_ntk`)::

    E K(x, x') = m [ s^4 T(x) T(x') + (2 s^4 + 4 t^2 s^2) sum_k |S_xx'(k)|^2 ],

with ``T(x) = sum_k ||x_hat(k)||^2`` (N times the energy) and the cross-spectrum
``S_xx'(k) = sum_c x_hat_c(k) conj(x_hat'_c(k))``: again one term per frequency, now in the
*power* ``Q_x(k) = x_hat(k) x_hat(k)^H`` (``|S_xx'(k)|^2 = <Q_x(k), Q_x'(k)>``). Early in
training the kernel model moves class ``a``'s output along ``sum_i y~_ia K(x, x_i)``, so
frequency ``k`` weighs ``W_a(k) = mean_{x in a} Q_x(k) - mean_b mean_{x in b} Q_x(k)``, the
class's power minus the mean class power: the quantity the ADCS of Wang et al. compares.
Removing ``k`` from the images of class ``a`` then costs their cross-entropy
``<E_a Q(k), W_a(k)>`` (:func:`predicted_loss_maps`), a DFM predicted from the data alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

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
    "power_features",
    "predicted_loss_maps",
    "quadratic_cnn_ntk",
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
    """``f(x) = sum_j v_j sum_p ((sum_c w_{j,c} * x_c)_p)^2`` with full-size circular
    filters, ``w ~ N(0, filter_std^2)``, ``v ~ N(0, readout_std^2)``, float64."""

    def __init__(self, channels: int, size: tuple[int, int], width: int, filter_std: float, readout_std: float,
                 seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.filters = nn.Parameter(filter_std * torch.randn(width, channels, *size, generator=gen, dtype=torch.float64))
        self.readout = nn.Parameter(readout_std * torch.randn(width, generator=gen, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs (B,) of images (B, C, H, W)."""
        spec = torch.einsum("jchw,bchw->bjhw", torch.fft.fft2(self.filters), torch.fft.fft2(x.double()))
        n = x.shape[-1] * x.shape[-2]
        energy = (spec.abs() ** 2).sum((-2, -1)) / n  # Parseval: sum_p h_p^2
        return energy @ self.readout


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


def quadratic_cnn_ntk(x1: torch.Tensor, x2: torch.Tensor | None = None, *, width: int = 1, filter_std: float = 1.0,
                      readout_std: float = 1.0) -> torch.Tensor:
    """The expected NTK of a :class:`QuadraticCircularCNN` at initialisation (module docstring).

    Parameters
    ----------
    x1 : Tensor, shape (N1, C, H, W); x2 : Tensor, shape (N2, C, H, W), or None
    width, filter_std, readout_std : as the network (only their ratio shapes the kernel)

    Returns
    -------
    Tensor, shape (N1, N2), float64.
    """
    q1 = power_features(x1)
    q2 = q1 if x2 is None else power_features(x2)
    s2, t2 = filter_std ** 2, readout_std ** 2
    t1 = torch.einsum("bhwcc->b", q1).real
    t2_ = torch.einsum("bhwcc->b", q2).real
    cross = torch.einsum("ihwcd,jhwcd->ij", q1.conj(), q2).real  # sum_k <Q_x(k), Q_x'(k)> = sum_k |S(k)|^2
    return width * (s2 ** 2 * torch.outer(t1, t2_) + (2 * s2 ** 2 + 4 * t2 * s2) * cross)


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


def predicted_loss_maps(power: torch.Tensor) -> torch.Tensor:
    """The early-training loss increase the power kernel predicts for removing each frequency.

    Parameters
    ----------
    power : Tensor, shape (A, H, W, C, C), :func:`class_power`

    Returns
    -------
    Tensor, shape (A, H, W), float64, centred layout: ``<E_a Q(k), E_a Q(k) - mean_b E_b Q(k)>``
    (real part of the Frobenius product). Feed it to :func:`fslib.dfm.dominant_frequency_maps`
    for a predicted DFM.
    """
    if power.ndim != 5:
        raise ValueError(f"power must be (A, H, W, C, C), got shape {tuple(power.shape)}")
    excess = power - power.mean(0, keepdim=True)
    return torch.einsum("ahwcd,ahwcd->ahw", power.conj(), excess).real


def data_kernels(train: torch.Tensor, test: torch.Tensor, cnn: LinearCircularCNN) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The two circular-CNN kernels on a training and a held-out set of images.

    Parameters
    ----------
    train : Tensor (N, C, H, W) and test : Tensor (M, C, H, W), the model's input
    cnn : the :class:`LinearCircularCNN` whose (trace) NTK is used

    Returns
    -------
    dict ``{"linear circular CNN": (K, K_cross), "quadratic circular CNN": (K, K_cross)}``
    with ``K`` (N, N) and ``K_cross`` (M, N), float64, both divided by the mean diagonal of
    ``K`` (:func:`fslib.ntk.normalize_kernel`). The quadratic kernel uses
    ``filter_std = readout_std``.
    """
    phi_train, phi_test = circular_cnn_features(cnn, train), circular_cnn_features(cnn, test)
    out = {"linear circular CNN": (phi_train @ phi_train.T, phi_test @ phi_train.T),
           "quadratic circular CNN": (quadratic_cnn_ntk(train), quadratic_cnn_ntk(test, train))}
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
