"""The linear case of Lim, Kim and Moon: shortcuts from imbalanced clusters, in closed form.

The data (:func:`gaussian_mixture`) are four Gaussian clusters in ``R^D``: the label
``y = +-1`` sets the mean along a *core* axis (``e_0``), a *shortcut* attribute ``s = +-1``
the mean along a *shortcut* axis (``e_1``)::

    x = core * y * e_0 + shortcut * s * e_1 + noise * eps,   eps ~ N(0, I_D).

Most samples are *bias-aligned* (``s = y``): there the shortcut predicts the label as well
as the core feature. A few are *bias-conflicting* (``s = -y``): only the core feature is
right. With equal strengths ``core = shortcut`` the imbalance is the only asymmetry between
the two axes.

For a linear model ``f(x) = w . x`` the NTK is the linear kernel ``K = X X^T``
(:func:`linear_ntk`); for a deep linear network ``f(x) = W_L ... W_1 x`` it is
``K(x, x') = sum_l ||W_L ... W_{l+1}||^2 (W_{l-1} ... W_1 x) . (W_{l-1} ... W_1 x')``
(:func:`deep_linear_ntk`), which concentrates around ``(1 + (L - 1) m / D) x . x'`` at
LeCun initialisation (:func:`deep_linear_ntk_scale`). Both are ``x^T M x'``: their
eigenfunctions are the principal directions of the data's second moment. In the signal
plane these are ``v_+ = (e_0 + e_1) / sqrt 2`` (the *majority* feature: it separates the
bias-aligned clusters and is blind to the conflicting ones, the function a shortcut-reliant
classifier computes) and ``v_- = (e_0 - e_1) / sqrt 2`` (the *minority* feature, the only
one that separates the conflicting clusters), with eigenvalues in the ratio of the
cluster sizes (:func:`population_moments`).

:func:`train_gd` trains any of these models by full-batch gradient descent on the squared
loss and records its outputs, for comparison with :func:`fslib.ntk_flow.kernel_flow`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch
from torch import nn

from fslib import ntk, ntk_flow
from fslib.device import one_thread

__all__ = [
    "Mixture",
    "MixtureConfig",
    "TwoLayerReLU",
    "converged_weights",
    "deep_linear",
    "deep_linear_ntk",
    "deep_linear_ntk_scale",
    "end_to_end_weights",
    "feature_influence",
    "fitted_components",
    "gaussian_mixture",
    "linear_model",
    "linear_ntk",
    "noise_sweep",
    "population_moments",
    "shortcut_summary",
    "signal_directions",
    "train_against_kernel",
    "train_gd",
]


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class MixtureConfig:
    """A Gaussian mixture with bias-aligned and bias-conflicting clusters."""

    dim: int = 20               # input dimensions D; axis 0 is the core feature, axis 1 the shortcut
    n_aligned: int = 90         # samples in each bias-aligned cluster (s = y); two clusters
    n_conflicting: int = 10     # samples in each bias-conflicting cluster (s = -y); two clusters
    core: float = 1.0           # |mean| along the core axis
    shortcut: float = 1.0       # |mean| along the shortcut axis (equal to core: imbalance is the only asymmetry)
    noise: float = 0.5          # within-cluster standard deviation, every axis

    def __post_init__(self) -> None:
        if self.dim < 2:
            raise ValueError(f"dim must be >= 2 (a core and a shortcut axis), got {self.dim}")
        if self.n_aligned < 0 or self.n_conflicting < 0 or self.n_aligned + self.n_conflicting == 0:
            raise ValueError(f"cluster sizes must be >= 0 and not both 0, got {self.n_aligned}, {self.n_conflicting}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")

    @property
    def conflicting_fraction(self) -> float:
        """``rho``: the share of bias-conflicting samples."""
        return self.n_conflicting / (self.n_aligned + self.n_conflicting)


@dataclass(frozen=True)
class Mixture:
    """Samples of a :class:`MixtureConfig`.

    Attributes
    ----------
    x : Tensor, shape (N, D), float64
    y : Tensor, shape (N,), float64, the label, +1 or -1
    s : Tensor, shape (N,), float64, the shortcut attribute, +1 or -1
    """

    x: torch.Tensor
    y: torch.Tensor
    s: torch.Tensor

    @property
    def aligned(self) -> torch.Tensor:
        """Bool (N,): bias-aligned samples (``s = y``)."""
        return self.s == self.y

    def __len__(self) -> int:
        return len(self.y)


def gaussian_mixture(config: MixtureConfig, seed: int = 0, *, n_aligned: int | None = None,
                     n_conflicting: int | None = None) -> Mixture:
    """Draw the four clusters (sizes from ``config`` unless given; a balanced test set
    passes ``n_aligned = n_conflicting``), ordered: aligned ``y = +1``, aligned ``y = -1``,
    conflicting ``y = +1``, conflicting ``y = -1``.

    >>> m = gaussian_mixture(MixtureConfig(dim=3, n_aligned=2, n_conflicting=1, noise=0.0))
    >>> m.x[:, :2].tolist()
    [[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]
    """
    na = config.n_aligned if n_aligned is None else int(n_aligned)
    nc = config.n_conflicting if n_conflicting is None else int(n_conflicting)
    if na < 0 or nc < 0 or na + nc == 0:
        raise ValueError(f"cluster sizes must be >= 0 and not both 0, got {na}, {nc}")
    y = torch.cat([torch.ones(na), -torch.ones(na), torch.ones(nc), -torch.ones(nc)]).double()
    s = torch.cat([y[: 2 * na], -y[2 * na:]])
    gen = torch.Generator().manual_seed(seed)
    x = config.noise * torch.randn(len(y), config.dim, generator=gen, dtype=torch.float64)
    x[:, 0] += config.core * y
    x[:, 1] += config.shortcut * s
    return Mixture(x, y, s)


def population_moments(config: MixtureConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The second moment ``E[x x^T]`` and the label correlation ``E[y x]`` of the mixture
    in the signal plane (axes 0 and 1; the other axes carry ``noise^2 I`` and no label).

    Returns
    -------
    (moment, correlation) : Tensor (2, 2) and Tensor (2,), float64. With
    ``rho`` the conflicting share,
    ``moment = [[a^2, a b (1 - 2 rho)], [a b (1 - 2 rho), b^2]] + noise^2 I`` and
    ``correlation = (a, b (1 - 2 rho))`` (``a = core``, ``b = shortcut``).
    """
    a, b, r = config.core, config.shortcut, config.conflicting_fraction
    moment = torch.tensor([[a * a, a * b * (1 - 2 * r)], [a * b * (1 - 2 * r), b * b]], dtype=torch.float64)
    moment += config.noise ** 2 * torch.eye(2, dtype=torch.float64)
    return moment, torch.tensor([a, b * (1 - 2 * r)], dtype=torch.float64)


def converged_weights(config: MixtureConfig) -> torch.Tensor:
    """Weights ``(w_core, w_shortcut)`` of the least-squares linear model on infinitely many
    samples: where gradient descent on the squared loss ends. Without within-cluster noise
    the shortcut weight is 0; the noise acts as a ridge penalty that shrinks the
    small-eigenvalue (minority) direction most, so the shortcut keeps a weight.

    >>> converged_weights(MixtureConfig(noise=0.0)).tolist()
    [1.0, 0.0]
    """
    moment, corr = population_moments(config)
    return torch.linalg.solve(moment, corr)


def signal_directions(dim: int) -> torch.Tensor:
    """``v_+ = (e_0 + e_1) / sqrt 2`` and ``v_- = (e_0 - e_1) / sqrt 2`` as rows, (2, D)."""
    v = torch.zeros(2, dim, dtype=torch.float64)
    v[:, 0] = 1 / math.sqrt(2)
    v[0, 1], v[1, 1] = 1 / math.sqrt(2), -1 / math.sqrt(2)
    return v


# --------------------------------------------------------------------------- linear models
def linear_ntk(x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """NTK of ``f(x) = w . x``: ``x1 @ x2.T``, shape (N, M), float64."""
    x2 = x1 if x2 is None else x2
    return x1.double() @ x2.double().T


def linear_model(dim: int) -> nn.Module:
    """``f(x) = w . x`` with ``w = 0``: outputs start at 0, as :func:`fslib.ntk_flow.kernel_flow`
    assumes; float64."""
    model = nn.Linear(dim, 1, bias=False).double()
    nn.init.zeros_(model.weight)
    return model


def deep_linear(dim: int, width: int, depth: int, seed: int = 0) -> nn.Sequential:
    """A deep linear network ``R^D -> R``: ``depth`` bias-free layers, the hidden ones of
    ``width`` units, LeCun-normal initialisation (``N(0, 1 / fan_in)``), float64."""
    if depth < 1 or width < 1:
        raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
    gen = torch.Generator().manual_seed(seed)
    sizes = [dim] + [width] * (depth - 1) + [1]
    layers = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layer = nn.Linear(fan_in, fan_out, bias=False).double()
        with torch.no_grad():
            layer.weight.copy_(torch.randn(fan_out, fan_in, generator=gen, dtype=torch.float64) / math.sqrt(fan_in))
        layers.append(layer)
    return nn.Sequential(*layers)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers or any(m.bias is not None for m in layers):
        raise ValueError("expected a stack of bias-free nn.Linear layers (linear_model or deep_linear)")
    return [m.weight.detach().double() for m in layers]


def end_to_end_weights(model: nn.Module) -> torch.Tensor:
    """The vector ``w`` with ``f(x) = w . x`` of a linear or deep linear network, (D,)."""
    w = _weights(model)
    prod = w[0]
    for layer in w[1:]:
        prod = layer @ prod
    return prod.reshape(-1)


def deep_linear_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """Closed-form NTK of a (deep) linear network at its current weights.

    ``K(x, x') = sum_l ||a_l||^2 h_{l-1}(x) . h_{l-1}(x')`` with ``h_l = W_l ... W_1 x``
    (``h_0 = x``) and ``a_l^T = W_L ... W_{l+1}`` (``a_L = 1``): the gradient of the output
    with respect to ``W_l`` is the outer product ``a_l h_{l-1}^T``.

    Parameters
    ----------
    model : :func:`deep_linear` or :func:`linear_model` (bias-free linear layers, scalar output)
    x1 : Tensor, shape (N, D); x2 : Tensor, shape (M, D), or None for ``x1``

    Returns
    -------
    Tensor, shape (N, M), float64.
    """
    w = _weights(model)
    if w[-1].shape[0] != 1:
        raise ValueError(f"deep_linear_ntk needs a scalar output, got {w[-1].shape[0]} outputs")
    x2 = x1 if x2 is None else x2
    h1, h2 = x1.double(), x2.double()
    kernel = torch.zeros(len(h1), len(h2), dtype=torch.float64)
    for i, layer in enumerate(w):
        back = torch.eye(layer.shape[0], dtype=torch.float64)
        for later in w[i + 1:]:
            back = later @ back  # ends as the row W_L ... W_{l+1}
        kernel += float((back ** 2).sum()) * (h1 @ h2.T)
        h1, h2 = h1 @ layer.T, h2 @ layer.T
    return kernel


def deep_linear_ntk_scale(dim: int, width: int, depth: int) -> float:
    """``c`` in ``E K(x, x') = c x . x'`` for :func:`deep_linear` at initialisation:
    ``1 + (depth - 1) width / dim`` (the first layer's term is ``x . x'``, each later one
    ``(width / dim) x . x'``, and every ``||a_l||^2`` is 1 in expectation)."""
    return 1.0 + (depth - 1) * width / dim


class TwoLayerReLU(nn.Module):
    """``f(x) = v . relu(W x / sqrt D) / sqrt m`` with ``W``, ``v`` standard normal (the
    NTK parametrisation: the kernel stays near its initial value as ``m`` grows), float64."""

    def __init__(self, dim: int, width: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.hidden = nn.Parameter(torch.randn(width, dim, generator=gen, dtype=torch.float64))
        self.readout = nn.Parameter(torch.randn(width, generator=gen, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, m = self.hidden.shape[1], self.hidden.shape[0]
        return torch.relu(x @ self.hidden.T / math.sqrt(d)) @ self.readout / math.sqrt(m)


# --------------------------------------------------------------------------- training
def train_gd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float, steps: int, every: int = 1,
             x_test: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Full-batch gradient descent on ``1/2 sum_i (f(x_i) - y_i)^2``, recording outputs.

    The loss is a sum, not a mean, so that the step ``lr`` is the ``eta`` of
    :func:`fslib.ntk_flow.kernel_flow`: for a linear model the outputs follow
    ``f_t = (I - (I - lr K)^t) Y`` exactly, and ``(I - exp(-lr K t)) Y`` up to
    ``O(lr lambda_max)``.

    Parameters
    ----------
    model : nn.Module with scalar outputs (trained in place)
    x : Tensor, shape (N, D); y : Tensor, shape (N,)
    lr : float; steps : int; every : int, record every ``every`` steps (and the last)
    x_test : Tensor, shape (M, D), or None

    Returns
    -------
    dict with ``steps`` (T,) int64, ``train`` (T, N) and, with ``x_test``, ``test`` (T, M)
    outputs, float64 (recorded before the step of that index).
    """
    if steps < 0 or every < 1 or not lr > 0:
        raise ValueError(f"need steps >= 0, every >= 1 and lr > 0, got steps={steps}, every={every}, lr={lr}")
    dtype = next(model.parameters()).dtype
    x, y = x.to(dtype), y.to(dtype).reshape(-1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    record = {"steps": [], "train": [], "test": []}

    def log(t: int) -> None:
        with torch.no_grad():
            record["steps"].append(t)
            record["train"].append(model(x).reshape(-1).double())
            if x_test is not None:
                record["test"].append(model(x_test.to(dtype)).reshape(-1).double())

    for t in range(steps):
        if t % every == 0:
            log(t)
        opt.zero_grad()
        loss = 0.5 * ((model(x).reshape(-1) - y) ** 2).sum()
        loss.backward()
        opt.step()
    log(steps)
    out = {"steps": torch.tensor(record["steps"]), "train": torch.stack(record["train"])}
    if x_test is not None:
        out["test"] = torch.stack(record["test"])
    return out


def fitted_components(outputs: torch.Tensor, targets: torch.Tensor, eigenvectors: torch.Tensor, k: int = 2,
                      initial: torch.Tensor | None = None) -> torch.Tensor:
    """How much of each of the top ``k`` eigen-components of the targets has been fitted.

    ``(u_i . (f_t - f_0)) / (u_i . (Y - f_0))``, which the kernel flow predicts to be
    ``1 - exp(-lr lambda_i t)``.

    Parameters
    ----------
    outputs : Tensor, shape (T, N); targets : Tensor, shape (N,)
    eigenvectors : Tensor, shape (N, N'), columns sorted (:func:`fslib.ntk.ntk_eigen`)
    initial : Tensor, shape (N,), the outputs at t = 0 (default ``outputs[0]``)

    Returns
    -------
    Tensor, shape (T, k), float64.
    """
    f0 = outputs[0] if initial is None else initial
    u = eigenvectors[:, :k].double()
    return (outputs.double() - f0) @ u / ((targets.double() - f0) @ u)


def feature_influence(weights: torch.Tensor, directions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Share of a linear model's output energy carried by each direction.

    With ``weights`` written as ``sum_i (w . v_i) v_i + rest`` over orthonormal
    ``directions`` ``v_i``, the output on ``x`` splits into ``(w . v_i)(v_i . x)`` terms.

    Parameters
    ----------
    weights : Tensor, shape (D,); directions : Tensor, shape (K, D), orthonormal rows
    x : Tensor, shape (N, D)

    Returns
    -------
    Tensor, shape (K + 1,), float64: ``mean_x ((w . v_i)(v_i . x))^2 / mean_x (w . x)^2``
    for each direction, then the same for the remainder (the shares need not sum to 1:
    the parts are not orthogonal over a finite sample).
    """
    w, v, x = weights.double(), directions.double(), x.double()
    parts = (v @ w)[:, None] * (v @ x.T)  # (K, N)
    rest = x @ w - parts.sum(0)
    total = ((x @ w) ** 2).mean().clamp_min(1e-300)
    return torch.cat([(parts ** 2).mean(1), (rest ** 2).mean()[None]]) / total


def train_against_kernel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr_fraction: float = 0.05,
                         fit_time: float = 4.0, records: int = 40, k: int = 2) -> dict:
    """Train ``model`` by gradient descent and compare it with the flow of its initial NTK.

    The step is ``lr = lr_fraction / lambda_1`` and training lasts ``fit_time / (lr
    lambda_2)`` steps (``lambda_i`` of the empirical NTK at initialisation), long enough to
    fit the second eigen-component to ``1 - exp(-fit_time)``.

    Returns
    -------
    dict with ``lr``, ``steps``, ``eigenvalues`` (of the initial NTK), ``kernel`` and
    ``kernel_after`` (N, N), ``record`` (:func:`train_gd`), ``table`` (DataFrame with
    columns step, component, measured, predicted: :func:`fitted_components` against
    ``1 - exp(-lr lambda_i t)``) and ``deviation`` (the largest ``|f_t - flow_t|`` over
    steps and samples, divided by ``max |y|``).
    """
    with one_thread():  # hundreds of tiny ops: 5 s on one thread against 60 s on two shared cores
        return _train_against_kernel(model, x, y, lr_fraction, fit_time, records, k)


def _train_against_kernel(model, x, y, lr_fraction, fit_time, records, k) -> dict:
    kernel = ntk.empirical_ntk(model, x, device="cpu")
    lam, u = ntk.ntk_eigen(kernel)
    lr = lr_fraction / float(lam[0])
    steps = math.ceil(fit_time / (lr * float(lam[1])))
    record = train_gd(model, x, y, lr=lr, steps=steps, every=max(1, steps // records))
    times = record["steps"].double()
    flow = ntk_flow.kernel_flow(kernel, y, times.tolist(), lr=lr, initial=record["train"][0])[..., 0]
    measured = fitted_components(record["train"], y, u, k)
    predicted = 1 - torch.exp(-lr * lam[:k][None, :] * times[:, None])
    table = pd.DataFrame([(int(t), i + 1, float(measured[j, i]), float(predicted[j, i]))
                          for j, t in enumerate(record["steps"]) for i in range(k)],
                         columns=["step", "component", "measured", "predicted"])
    return {"lr": lr, "steps": steps, "eigenvalues": lam, "kernel": kernel,
            "kernel_after": ntk.empirical_ntk(model, x, device="cpu"), "record": record, "table": table,
            "deviation": float((record["train"] - flow).abs().max() / y.abs().max())}


def shortcut_summary(weights: torch.Tensor, config: MixtureConfig, aligned: Mixture, conflicting: Mixture) -> dict:
    """How much a linear predictor ``f(x) = w . x`` relies on the shortcut.

    Returns
    -------
    dict with ``w_core``, ``w_shortcut``, ``ratio`` (their quotient), ``majority`` and
    ``minority`` (the weight along ``v_+`` and ``v_-`` relative to the core-only predictor
    ``w = e_0 / core``, which has ``1 / (core sqrt 2)`` on both: 1 means fully fitted),
    ``acc_aligned`` and ``acc_conflicting`` (sign accuracy on the two test sets).
    """
    w = weights.double()
    v = signal_directions(len(w)) @ w * config.core * math.sqrt(2)

    def acc(m: Mixture) -> float:
        return float((torch.sign(m.x @ w) == m.y).double().mean())

    return {"w_core": float(w[0]), "w_shortcut": float(w[1]), "ratio": float(w[1] / w[0]),
            "majority": float(v[0]), "minority": float(v[1]),
            "acc_aligned": acc(aligned), "acc_conflicting": acc(conflicting)}


def noise_sweep(config: MixtureConfig, noises: Sequence[float], rhos: Sequence[float], seed: int = 0) -> pd.DataFrame:
    """Shortcut weight over core weight where training ends, against within-cluster noise.

    ``kind = "population"``: :func:`converged_weights` for every conflicting share ``rho``
    (cluster sizes rescaled, same total); ``kind = "N samples"``: the least-squares fit to
    a sample of ``config`` (its own ``rho``) at every noise level.

    Returns
    -------
    DataFrame with columns noise, rho, ratio, kind.
    """
    total = config.n_aligned + config.n_conflicting
    rows = []
    for rho in rhos:
        conflicting = round(rho * total)
        for noise in noises:
            cfg = replace(config, n_aligned=total - conflicting, n_conflicting=conflicting, noise=float(noise))
            w = converged_weights(cfg)
            rows.append((float(noise), cfg.conflicting_fraction, float(w[1] / w[0]), "population"))
    for noise in noises:
        cfg = replace(config, noise=float(noise))
        m = gaussian_mixture(cfg, seed)
        w = torch.linalg.lstsq(m.x, m.y[:, None]).solution.reshape(-1)
        rows.append((float(noise), cfg.conflicting_fraction, float(w[1] / w[0]), f"{len(m)} samples"))
    return pd.DataFrame(rows, columns=["noise", "rho", "ratio", "kind"]).astype({"rho": float}).round({"rho": 4})
