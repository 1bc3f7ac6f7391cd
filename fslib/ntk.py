"""Neural tangent kernels: the empirical NTK of a model, its spectrum and its alignment.

Lim, Kim and Moon (arXiv:2602.03066) read a network's *features* as the eigenfunctions of
its neural tangent kernel (NTK)

    K_ab(x, x') = sum_p  d f_a(x) / d theta_p  *  d f_b(x') / d theta_p,

because a model trained with the squared loss by gradient descent in the lazy regime moves
its outputs on the training images ``X`` as

    f_t(X) = (I - exp(-eta K t)) Y          (outputs start at 0; loss 1/2 ||f - Y||^2),

so the component of the targets along eigenvector ``u_i`` of the Gram matrix ``K`` is
fitted at the rate ``exp(-eta lambda_i t)``: large-eigenvalue features are learned first.
This module holds the general tools, used by chapter 10:

* :func:`empirical_ntk`: the NTK of any ``nn.Module`` on a batch of inputs, with
  ``torch.func`` (per-sample Jacobians by ``vmap(jacrev)``), chunked and memory-aware;
  :func:`calibrate_batchnorm` gives a freshly initialised network BatchNorm statistics so
  that its eval-mode function (one output per image) is meaningful;
* :func:`ntk_eigen` (eigenvalues sorted, non-negative), :func:`centre_kernel`,
  :func:`kernel_target_alignment`, :func:`eigen_alignment`, :func:`rayleigh_speed` and
  :func:`rayleigh_null`.

The trajectory above and what it predicts live in :mod:`fslib.ntk_flow`; the closed forms
of the linear case (Gaussian mixture, linear and deep linear networks) in
:mod:`fslib.ntk_linear`, those of circular CNNs in :mod:`fslib.ntk_fourier`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from fslib.device import resolve_device

__all__ = [
    "KINDS",
    "calibrate_batchnorm",
    "centre_kernel",
    "centred_onehot",
    "eigen_alignment",
    "empirical_ntk",
    "flatten_kernel",
    "jacobians",
    "kernel_target_alignment",
    "normalize_kernel",
    "ntk_eigen",
    "rayleigh_null",
    "rayleigh_speed",
]

KINDS = ("full", "trace")
"""``"full"``: the NTK of every pair of outputs, shape (N, M, C, C); ``"trace"``: the sum
over the C outputs of ``K_aa``, shape (N, M) (what the eigen-analyses use)."""


# --------------------------------------------------------------------------- empirical NTK
def _functional(model: nn.Module):
    """``(params, f)`` with ``f(params, x)`` the model on one input ``x`` (no batch axis),
    returning a 1-D tensor of outputs (a scalar output becomes shape (1,))."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def f(p, x):
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return out.reshape(-1)

    return params, f


def jacobians(model: nn.Module, inputs: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Per-sample Jacobians of the outputs with respect to every trainable parameter.

    Parameters
    ----------
    model : nn.Module mapping (B, ...) to (B, C) or (B,); used as it is (put it in eval
        mode first: in train mode BatchNorm mixes the samples of a batch)
    inputs : Tensor, shape (N, ...), on the model's device and dtype
    batch_size : int, samples per ``vmap(jacrev)`` call (memory of one call: about
        ``batch_size * C * P`` numbers plus the activations)

    Returns
    -------
    Tensor, shape (N, C, P), the model's dtype, on the model's device:
    ``[i, a, p] = d f_a(x_i) / d theta_p`` with the parameters flattened in ``named_parameters`` order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    params, f = _functional(model)
    if not params:
        raise ValueError("the model has no trainable parameters")
    jac = vmap(jacrev(f), in_dims=(None, 0))
    out = None
    for start in range(0, len(inputs), batch_size):
        parts = jac(params, inputs[start:start + batch_size])  # {name: (B, C, *shape)}
        block = torch.cat([g.flatten(2) for g in parts.values()], dim=2)
        if out is None:  # filled in place: no second copy of all the Jacobians
            out = block.new_empty(len(inputs), *block.shape[1:])
        out[start:start + len(block)] = block
    return out


def _contract(ja: torch.Tensor, jb: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "trace":
        return torch.einsum("iap,jap->ij", ja, jb)
    return torch.einsum("iap,jbp->ijab", ja, jb)


def empirical_ntk(
    model: nn.Module,
    inputs: torch.Tensor,
    inputs2: torch.Tensor | None = None,
    *,
    kind: str = "trace",
    batch_size: int = 16,
    max_bytes: int = 2 * 1024**3,
    device: str | torch.device = "auto",
) -> torch.Tensor:
    """The empirical NTK of ``model`` between two sets of inputs.

    Jacobians are computed ``batch_size`` samples at a time (:func:`jacobians`). When all of
    them fit in ``max_bytes`` they are kept and contracted once; otherwise the kernel is
    built block by block, recomputing the Jacobians of the second set for every block of
    the first (slower, bounded memory: two blocks at a time).

    Parameters
    ----------
    model : nn.Module, in eval mode (see :func:`calibrate_batchnorm` for a fresh network)
    inputs : Tensor, shape (N, ...), float
    inputs2 : Tensor, shape (M, ...), or None for ``inputs`` (the Gram matrix)
    kind : ``"trace"`` (shape (N, M)) or ``"full"`` (shape (N, M, C, C)); :data:`KINDS`
    batch_size : int, samples per Jacobian call
    max_bytes : int, memory allowed for the stored Jacobians
    device : where to compute (``"auto"``: CUDA when present); the model is moved there
        (``model.to(device)``, in place)

    Returns
    -------
    Tensor, float64 on the CPU, shape (N, M) or (N, M, C, C).

    >>> lin = nn.Linear(3, 1, bias=False)
    >>> x = torch.randn(4, 3)
    >>> torch.allclose(empirical_ntk(lin, x, device="cpu"), (x @ x.T).double(), atol=1e-5)
    True
    """
    if kind not in KINDS:
        raise ValueError(f"unknown NTK kind {kind!r}; valid: {', '.join(KINDS)}")
    dev = resolve_device(device)
    model = model.to(dev)
    dtype = next(model.parameters()).dtype
    a = inputs.to(dev, dtype)
    same = inputs2 is None
    b = a if same else inputs2.to(dev, dtype)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        n_out = _functional(model)[1](dict(model.named_parameters()), a[0]).numel()
    itemsize = torch.empty((), dtype=dtype).element_size()
    need = (len(a) + (0 if same else len(b))) * n_out * n_params * itemsize
    if need <= max_bytes:
        ja = jacobians(model, a, batch_size)
        jb = ja if same else jacobians(model, b, batch_size)
        return _contract(ja, jb, kind).double().cpu()
    per_sample = n_out * n_params * itemsize
    block = max(1, int(max_bytes // (2 * per_sample)))
    rows = []
    for i in range(0, len(a), block):
        ja = jacobians(model, a[i:i + block], batch_size)
        cols = [_contract(ja, jacobians(model, b[j:j + block], batch_size), kind).double().cpu()
                for j in range(0, len(b), block)]
        rows.append(torch.cat(cols, dim=1))
    return torch.cat(rows, dim=0)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, batch_size: int | None = None) -> nn.Module:
    """A copy of ``model`` in eval mode whose BatchNorm statistics are those of ``inputs``.

    A freshly built network has running means 0 and variances 1, so in eval mode its
    BatchNorm layers do not normalise at all; its NTK "at initialisation" would then be
    that of a different function from the one training starts from (where BatchNorm uses
    batch statistics). Here the running statistics are set from ``inputs`` (momentum
    ``None``: the average over batches of the batch statistics, exact for one batch), and
    the weights are untouched.

    Parameters
    ----------
    model : nn.Module
    inputs : Tensor, shape (N, ...), the model's input (normalised images)
    batch_size : int or None, images per forward pass (None: all at once)

    Returns
    -------
    nn.Module, a deep copy, in eval mode.
    """
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    out.train()
    dev = next(out.parameters()).device
    step = len(inputs) if batch_size is None else batch_size
    for start in range(0, len(inputs), step):
        out(inputs[start:start + step].to(dev))
    return out.eval()


# --------------------------------------------------------------------------- spectrum
def flatten_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """A full NTK (N, M, C, C) as the matrix (N C, M C) indexed by (sample, output); a
    matrix (N, M) is returned as it is."""
    if kernel.ndim == 2:
        return kernel
    if kernel.ndim != 4:
        raise ValueError(f"a kernel is (N, M) or (N, M, C, C), got shape {tuple(kernel.shape)}")
    n, m, c, _ = kernel.shape
    return kernel.permute(0, 2, 1, 3).reshape(n * c, m * c)


def normalize_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """The Gram matrix divided by its mean diagonal, so that ``trace(K) / N = 1``.

    Kernels of different models then share a time unit: ``eta t = 1`` is the time in which
    a feature of average eigenvalue is fitted to ``1 - 1/e``.
    """
    k = flatten_kernel(kernel)
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"normalize_kernel needs a square Gram matrix, got {tuple(k.shape)}")
    scale = torch.diagonal(k).mean()
    if not scale > 0:
        raise ValueError(f"the kernel's mean diagonal is {float(scale)}; a Gram matrix needs a positive one")
    return kernel / scale


def centre_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """``H K H`` with ``H = I - 1 1^T / N``: the kernel of the features minus their mean.

    Every NTK has a large constant mode (all images share, for example, the gradient of
    the output bias), which a centred target never needs; centring removes it so that the
    top eigenvectors show what separates the images (centred alignment, Cortes et al. 2012).
    """
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"centre_kernel needs a square (N, N) Gram matrix, got {tuple(kernel.shape)}")
    k = kernel.double()
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def ntk_eigen(kernel: torch.Tensor, rtol: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a Gram matrix, eigenvalues sorted from the largest.

    Parameters
    ----------
    kernel : Tensor, shape (N, N) or (N, N, C, C) (flattened by :func:`flatten_kernel`),
        symmetric positive semi-definite
    rtol : eigenvalues down to ``-rtol * max|lambda|`` are rounding and are set to 0;
        a more negative one means the matrix is not a Gram matrix and raises

    Returns
    -------
    (eigenvalues, eigenvectors) : Tensor (N',) float64, descending and >= 0, and
    Tensor (N', N') whose column ``i`` is the unit eigenvector ``u_i``.

    >>> lam, u = ntk_eigen(torch.tensor([[2.0, 1.0], [1.0, 2.0]]))
    >>> lam.tolist()
    [3.0, 1.0]
    """
    k = flatten_kernel(kernel).double()
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"ntk_eigen needs a square Gram matrix, got {tuple(k.shape)}")
    k = (k + k.T) / 2
    lam, vec = torch.linalg.eigh(k)
    lam, vec = lam.flip(0), vec.flip(1)
    floor = -rtol * lam.abs().max().clamp_min(1e-300)
    if lam[-1] < floor:
        raise ValueError(f"the kernel has eigenvalue {float(lam[-1]):.3g} < {float(floor):.3g}: not positive "
                         "semi-definite, so not a Gram matrix")
    return lam.clamp_min(0.0), vec


def centred_onehot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot targets minus their mean over the samples, float64 (N, C): the part of the
    labels a kernel has to learn (a constant output needs no feature).

    >>> centred_onehot(torch.tensor([0, 1]), 2).tolist()
    [[0.5, -0.5], [-0.5, 0.5]]
    """
    labels = torch.as_tensor(labels).long().cpu()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
    y = torch.nn.functional.one_hot(labels, num_classes).double()
    return y - y.mean(0)


def _targets(targets: torch.Tensor, n: int) -> torch.Tensor:
    t = torch.as_tensor(targets).double().cpu()
    t = t[:, None] if t.ndim == 1 else t
    if t.ndim != 2 or t.shape[0] != n:
        raise ValueError(f"targets must be (N,) or (N, T) with N = {n}, got shape {tuple(targets.shape)}")
    return t


def kernel_target_alignment(kernel: torch.Tensor, targets: torch.Tensor) -> float:
    """Kernel-target alignment ``<K, T T^T>_F / (||K||_F ||T T^T||_F)`` (Cristianini et al.).

    Parameters
    ----------
    kernel : Tensor, shape (N, N)
    targets : Tensor, shape (N,) or (N, T), e.g. :func:`centred_onehot`

    Returns
    -------
    float in [-1, 1]; 1 when ``K`` is proportional to ``T T^T``.
    """
    k = kernel.double().cpu()
    t = _targets(targets, k.shape[0])
    tt = t @ t.T
    return float((k * tt).sum() / (k.norm() * tt.norm()).clamp_min(1e-300))


def eigen_alignment(eigenvectors: torch.Tensor, targets: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Squared cosine between each of the top ``k`` eigenvectors and each target vector.

    Parameters
    ----------
    eigenvectors : Tensor, shape (N, N'), columns sorted by eigenvalue (:func:`ntk_eigen`)
    targets : Tensor, shape (N,) or (N, T); each column is compared as it is (centre it
        first if a constant offset is not of interest)
    k : int, number of eigenvectors

    Returns
    -------
    Tensor, shape (k, T), float64: ``[i, j] = (u_i . t_j)^2 / ||t_j||^2``, the share of
    target ``j`` lying along ``u_i`` (each column sums to 1 over all N' eigenvectors).
    """
    u = eigenvectors.double().cpu()[:, :k]
    t = _targets(targets, u.shape[0])
    return (u.T @ t) ** 2 / (t ** 2).sum(0).clamp_min(1e-300)


def rayleigh_speed(kernel: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How fast the kernel starts fitting each target: ``t^T K t / t^T t``.

    Under ``df/dt = -K (f - Y)`` the squared residual of target ``t`` starts decaying at
    twice this rate; it is the eigenvalue-weighted alignment ``sum_i lambda_i (u_i . t)^2 /
    ||t||^2``. Use a normalised kernel (:func:`normalize_kernel`) to compare kernels.

    Returns
    -------
    Tensor, shape (T,), float64.
    """
    k = kernel.double().cpu()
    t = _targets(targets, k.shape[0])
    return ((k @ t) * t).sum(0) / (t ** 2).sum(0).clamp_min(1e-300)


def rayleigh_null(kernel: torch.Tensor, labels: torch.Tensor, num_classes: int, n_perm: int = 100,
                  seed: int = 0) -> torch.Tensor:
    """:func:`rayleigh_speed` of class indicators under randomly permuted labels.

    The reference level of a class's speed: what a class of the same size gets from a
    kernel that knows nothing about the labels.

    Returns
    -------
    Tensor, shape (n_perm * num_classes,), float64.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels).long().cpu()
    draws = [rayleigh_speed(kernel, centred_onehot(labels[torch.randperm(len(labels), generator=gen)], num_classes))
             for _ in range(n_perm)]
    return torch.cat(draws)
