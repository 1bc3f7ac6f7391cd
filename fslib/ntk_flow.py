"""Kernel gradient flow: the outputs a fixed NTK predicts, and what they say about learning.

Under the squared loss ``1/2 ||f - Y||^2`` and gradient flow with a fixed kernel ``K`` (the
lazy regime of Jacot et al.), the outputs on the training images are

    f_t = (I - exp(-eta K t)) Y,

so the component of ``Y`` along eigenvector ``u_i`` of ``K`` is fitted at the rate
``exp(-eta lambda_i t)`` (:func:`kernel_flow`, which also gives the outputs on held-out
images). From them, chapter 10 reads a kernel's prediction about a classification task:

* :func:`class_curves`: per-class accuracy and false-positive rate of the kernel model over
  time, in the tracking-table format of :mod:`fslib.dynamics`, so chapter 2's definition
  of "learned" (:func:`fslib.dynamics.learned_at`) applies to kernels as to networks;
* :func:`predict_learning` (class speeds with a permutation null, and the held-out curves)
  and :func:`order_agreement` (a predicted order against a measured one);
* :func:`split_kernel` and :func:`log_times`, helpers for both.

The kernels themselves come from :mod:`fslib.ntk` (empirical NTKs and their spectra),
:mod:`fslib.ntk_linear` and :mod:`fslib.ntk_fourier` (closed forms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from fslib.ntk import (
    _targets,
    centred_onehot,
    flatten_kernel,
    ntk_eigen,
    rayleigh_null,
    rayleigh_speed,
)

__all__ = [
    "KernelPrediction",
    "class_curves",
    "kernel_flow",
    "log_times",
    "order_agreement",
    "predict_learning",
    "split_kernel",
]


def kernel_flow(
    kernel: torch.Tensor,
    targets: torch.Tensor,
    times: Sequence[float],
    *,
    lr: float = 1.0,
    cross: torch.Tensor | None = None,
    initial: torch.Tensor | None = None,
    initial_cross: torch.Tensor | None = None,
) -> torch.Tensor:
    """Outputs of gradient flow on the squared loss with a fixed kernel, in closed form.

    On the training points ``f_t = (I - exp(-lr K t)) Y``; on other points ``x`` (kernel
    ``cross = K(x, X)``) ``f_t(x) = K(x, X) K^+ (I - exp(-lr K t)) Y``, computed through the
    eigen-decomposition as ``K(x, X) U diag((1 - exp(-lr lambda t)) / lambda) U^T Y``
    (which tends to ``lr t`` where ``lambda = 0``). Outputs start at 0; the loss is
    ``1/2 ||f - Y||^2`` (a mean over N images divides ``lr`` by N). A network whose outputs
    do not start at 0 follows the same formulas for ``f_t - f_0`` with targets ``Y - f_0``
    (``initial`` and ``initial_cross``).

    Parameters
    ----------
    kernel : Tensor, shape (N, N) (one kernel shared by the C outputs) or (N, N, C, C)
    targets : Tensor, shape (N, C) or (N,)
    times : the times ``t`` (gradient-descent steps when ``lr`` is the step size)
    lr : float, the learning rate ``eta``
    cross : Tensor, shape (M, N) or (M, N, C, C), or None for the training points
    initial : Tensor, shape (N, C) or (N,), the outputs at t = 0 on the training points
        (default 0)
    initial_cross : Tensor, shape (M, C) or (M,), the outputs at t = 0 on the other points

    Returns
    -------
    Tensor, shape (T, N or M, C), float64.
    """
    full = kernel.ndim == 4
    lam, u = ntk_eigen(kernel)
    y = _targets(targets, kernel.shape[0])
    n, c = y.shape
    f0 = torch.zeros_like(y) if initial is None else _targets(initial, n)
    y = y - f0
    if cross is not None:
        m = cross.shape[0]
        g0 = torch.zeros(m, c, dtype=torch.float64) if initial_cross is None else _targets(initial_cross, m)
    if full and kernel.shape[2] != c:
        raise ValueError(f"a full kernel with {kernel.shape[2]} outputs for targets with {c} columns")
    yv = y.reshape(-1, 1) if full else y  # (N C, 1) in (sample, output) order, or (N, C)
    coef = u.T @ yv
    out = []
    for t in times:
        if cross is None:
            gain = -torch.expm1(-lr * lam * float(t))
            f = (u @ (gain[:, None] * coef)).reshape(-1, c) + f0
        else:
            gain = torch.where(lam > 0, -torch.expm1(-lr * lam * float(t)) / lam.clamp_min(1e-300),
                               torch.full_like(lam, lr * float(t)))
            f = (flatten_kernel(cross.double().cpu()) @ (u @ (gain[:, None] * coef))).reshape(-1, c) + g0
        out.append(f)
    return torch.stack(out)


def class_curves(outputs: torch.Tensor, labels: torch.Tensor, times: Sequence[float], set: str = "test") -> pd.DataFrame:
    """Per-class accuracy and false-positive rate of predicted outputs over time.

    Parameters
    ----------
    outputs : Tensor, shape (T, N, C), e.g. from :func:`kernel_flow`
    labels : Tensor, shape (N,)
    times : the T times (written to the ``iteration`` column)
    set : name written to the ``set`` column

    Returns
    -------
    DataFrame with columns iteration, set, class, accuracy, fpr (the tracking-table format
    of :mod:`fslib.dynamics`, so :func:`fslib.dynamics.learned_at` applies). At ``t = 0``
    every output is 0 and ``argmax`` picks class 0 for every image: the FPR condition of
    ``learned_at`` is what keeps that from counting.
    """
    labels = torch.as_tensor(labels).long().cpu()
    if outputs.ndim != 3 or outputs.shape[1] != len(labels) or outputs.shape[0] != len(times):
        raise ValueError(f"outputs must be (T, N, C) with T = {len(times)} and N = {len(labels)}, "
                         f"got {tuple(outputs.shape)}")
    c = outputs.shape[2]
    pred = outputs.argmax(2)  # (T, N)
    rows = []
    for t, p in zip(times, pred):
        for k in range(c):
            own, other = labels == k, labels != k
            acc = float((p[own] == k).double().mean()) if own.any() else math.nan
            fpr = float((p[other] == k).double().mean()) if other.any() else math.nan
            rows.append((float(t), set, k, acc, fpr))
    return pd.DataFrame(rows, columns=["iteration", "set", "class", "accuracy", "fpr"])


def log_times(start: float, stop: float, n: int) -> np.ndarray:
    """``n`` times spaced evenly on a log scale from ``start`` to ``stop``, with 0 first.

    >>> log_times(0.1, 10.0, 4).round(6).tolist()
    [0.0, 0.1, 1.0, 10.0]
    """
    if not 0 < start < stop or n < 2:
        raise ValueError(f"need 0 < start < stop and n >= 2, got start={start}, stop={stop}, n={n}")
    return np.concatenate([[0.0], np.geomspace(start, stop, n - 1)])



@dataclass(frozen=True)
class KernelPrediction:
    """What a kernel predicts about learning a classification task (:func:`predict_learning`).

    Attributes
    ----------
    speed : Tensor (C,), :func:`rayleigh_speed` of each class indicator on the training
        images (normalised kernel: 1 is the speed of an average direction)
    null : Tensor (n_perm * C,), the same for permuted labels (:func:`rayleigh_null`)
    curves : DataFrame, per-class held-out accuracy and FPR over kernel time
        (:func:`class_curves`)
    final_accuracy : float, held-out accuracy at the last time
    """

    speed: torch.Tensor
    null: torch.Tensor
    curves: pd.DataFrame
    final_accuracy: float


def predict_learning(kernel: torch.Tensor, cross: torch.Tensor, labels: torch.Tensor, test_labels: torch.Tensor,
                     num_classes: int, times: Sequence[float], *, n_perm: int = 100, seed: int = 0) -> KernelPrediction:
    """The learning order a kernel predicts: class speeds, and held-out per-class curves of
    the kernel model trained by gradient flow on centred one-hot targets.

    Parameters
    ----------
    kernel : Tensor (N, N), the Gram matrix of the training images (normalised with
        :func:`normalize_kernel` so that times are comparable between kernels)
    cross : Tensor (M, N), the kernel between held-out and training images, same scale
    labels : Tensor (N,); test_labels : Tensor (M,)
    num_classes : int; times : kernel times ``lr t``
    n_perm, seed : the permutation null of the speeds

    Returns
    -------
    KernelPrediction
    """
    y = centred_onehot(labels, num_classes)
    outputs = kernel_flow(kernel, y, times, cross=cross)
    test_labels = torch.as_tensor(test_labels).long().cpu()
    return KernelPrediction(
        speed=rayleigh_speed(kernel, y),
        null=rayleigh_null(kernel, labels, num_classes, n_perm, seed),
        curves=class_curves(outputs, test_labels, times),
        final_accuracy=float((outputs[-1].argmax(1) == test_labels).double().mean()),
    )


def split_kernel(kernel: torch.Tensor, fit: torch.Tensor, held: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training block ``K[fit, fit]`` (normalised, :func:`normalize_kernel`) and the
    held-out block ``K[held, fit]`` on the same scale, of a Gram matrix (N, N)."""
    if kernel.ndim != 2:
        raise ValueError(f"split_kernel needs a (N, N) kernel, got shape {tuple(kernel.shape)}")
    train = kernel[fit][:, fit].double()
    scale = torch.diagonal(train).mean()
    return train / scale, kernel[held][:, fit].double() / scale


def order_agreement(predicted: pd.DataFrame, measured: pd.DataFrame) -> pd.Series:
    """Spearman rank correlation, per row, between predicted and measured learning times.

    Parameters
    ----------
    predicted, measured : DataFrames indexed alike (e.g. by dataset), one column per class,
        holding when each class is learned (any increasing scale: iterations, kernel time,
        ranks); NaN (never learned) ranks after every finite time, ties share their rank

    Returns
    -------
    Series, one correlation per row of ``measured`` (NaN where either side has no spread,
    for example when no class is ever learned).

    >>> m = pd.DataFrame({"C0": [1.0], "C1": [2.0], "C2": [float("nan")]})
    >>> order_agreement(pd.DataFrame({"C0": [0.1], "C1": [0.5], "C2": [0.9]}), m).tolist()
    [1.0]
    """
    cols = list(measured.columns)
    out = {}
    for key in measured.index:
        a = predicted.loc[key, cols].astype(float).rank(na_option="bottom")
        b = measured.loc[key, cols].astype(float).rank(na_option="bottom")
        out[key] = float(a.corr(b)) if a.nunique() > 1 and b.nunique() > 1 else float("nan")
    return pd.Series(out, name="spearman")
