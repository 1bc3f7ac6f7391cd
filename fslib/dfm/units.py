"""Ablation units: which frequencies the exact ablation removes together.

One unit per conjugate pair (``patch_size = 1``, the paper's 32x32 setting) or per block and
its true conjugate block (``patch_size = p > 1``, the paper's likely 2x2 patches at 224 px),
each evaluated once; and the real sinusoids a unit removes from an image, computed for a
batch of units and images at once. Positions are in the centred layout of
:mod:`fslib.spectral` (DC at ``(H // 2, W // 2)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fslib.spectral import conjugate_index, conjugate_pairs


@dataclass(frozen=True)
class AblationUnits:
    """The sets of positions removed together by :func:`ablation_loss`.

    Attributes
    ----------
    positions : Tensor, shape (U, M), int64
        Flat centred indices ``r * W + s`` of one member of every conjugate pair in the
        removed set of each unit (padded with 0 where ``weights`` is 0).
    weights : Tensor, shape (U, M), float64
        2 for a pair whose partner is another position (its sinusoid counts twice), 1 for a
        self-conjugate position, 0 for padding.
    owner : Tensor, shape (H, W), int64
        The unit whose value fills each position of the loss map.
    size : Tensor, shape (U,), int64
        Number of positions each unit removes (both members of every pair).
    """

    positions: torch.Tensor
    weights: torch.Tensor
    owner: torch.Tensor
    size: torch.Tensor

    def __len__(self) -> int:
        return int(self.positions.shape[0])


def ablation_units(h: int, w: int, patch_size: int = 1) -> AblationUnits:
    """Enumerate the removals of an ``H x W`` spectrum, each evaluated once.

    ``patch_size = 1``: one unit per conjugate pair, in the order of
    :func:`fslib.spectral.conjugate_pairs`; both members own the unit's value.

    ``patch_size = p > 1``: the centred layout is cut into blocks on a grid of stride ``p``
    starting at centred index 0 (as in the official code). When ``H`` or ``W`` is not a
    multiple of ``p`` the last row / column of blocks is truncated to the remaining
    ``H % p`` rows / ``W % p`` columns. A unit removes a block ``B`` together with its true
    conjugate block ``conj(B)`` (the position-wise partners of ``B``, which may overlap ``B``
    or straddle several grid blocks); its value fills ``B``. Blocks whose removed sets
    coincide (``conj(B1) == B2``) form one unit, evaluated once, whose value fills both.
    For even ``p`` the mirror of a grid block is never a grid block (the mirror centre, DC,
    is a position, not a block edge), so the loss map is block-constant but, unlike for
    ``p = 1``, not conjugate-symmetric.

    Note on odd sizes: the true conjugate of centred index ``k`` is ``(2 * (n // 2) - k) % n``
    (see :mod:`fslib.spectral`), which equals ``(n - k) % n`` only for even ``n``.

    >>> u = ablation_units(32, 32)
    >>> len(u), int(u.size.sum())       # 514 pairs cover the 1024 positions once
    (514, 1024)
    >>> len(ablation_units(8, 8, 2))    # 16 blocks, none its own mirror
    16
    """
    if not (isinstance(patch_size, int) and patch_size >= 1):
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    if patch_size > min(h, w):
        raise ValueError(f"patch_size={patch_size} exceeds the image size {h}x{w}")
    if patch_size == 1:
        pairs = conjugate_pairs(h, w)
        rep = pairs[:, 0] * w + pairs[:, 1]
        partner = pairs[:, 2] * w + pairs[:, 3]
        self_conj = rep == partner
        owner = torch.empty(h * w, dtype=torch.long)
        idx = torch.arange(len(pairs))
        owner[rep] = idx
        owner[partner] = idx
        return AblationUnits(
            positions=rep[:, None],
            weights=torch.where(self_conj, 1.0, 2.0).to(torch.float64)[:, None],
            owner=owner.reshape(h, w),
            size=torch.where(self_conj, 1, 2).long(),
        )
    rows_c = conjugate_index(h).tolist()
    cols_c = conjugate_index(w).tolist()
    keys: dict[tuple[int, ...], int] = {}
    members: list[list[int]] = []
    owner = torch.empty(h, w, dtype=torch.long)
    for r0 in range(0, h, patch_size):
        rows = range(r0, min(r0 + patch_size, h))
        for s0 in range(0, w, patch_size):
            cols = range(s0, min(s0 + patch_size, w))
            block = {r * w + s for r in rows for s in cols}
            mirror = {rows_c[r] * w + cols_c[s] for r in rows for s in cols}
            key = tuple(sorted(block | mirror))
            if key not in keys:
                keys[key] = len(members)
                members.append(list(key))
            owner[r0 : r0 + patch_size, s0 : s0 + patch_size] = keys[key]
    reps, wts, sizes = [], [], []
    for flat in members:
        rep, wt = [], []
        for q in flat:
            partner = rows_c[q // w] * w + cols_c[q % w]
            if q <= partner:
                rep.append(q)
                wt.append(1.0 if q == partner else 2.0)
        reps.append(rep)
        wts.append(wt)
        sizes.append(len(flat))
    m = max(len(r) for r in reps)
    positions = torch.zeros(len(reps), m, dtype=torch.long)
    weights = torch.zeros(len(reps), m, dtype=torch.float64)
    for i, (rep, wt) in enumerate(zip(reps, wts)):
        positions[i, : len(rep)] = torch.tensor(rep)
        weights[i, : len(wt)] = torch.tensor(wt)
    return AblationUnits(positions, weights, owner, torch.tensor(sizes))


def _sinusoid_basis(units_pos: torch.Tensor, h: int, w: int, dtype, device) -> torch.Tensor:
    """``cat(cos, sin)`` of the centred frequencies at flat positions, ``(K, 2M, H*W)``.

    Phases are reduced modulo ``H * W`` in integers first, so they stay exact at any size.
    """
    fr = (units_pos // w - h // 2).to(torch.int64)  # (K, M) frequencies in cycles per image
    fs = (units_pos % w - w // 2).to(torch.int64)
    y = torch.arange(h, dtype=torch.int64)
    x = torch.arange(w, dtype=torch.int64)
    turns = (fr[..., None, None] * y[:, None] * w + fs[..., None, None] * x[None, :] * h) % (h * w)
    theta = (2 * math.pi / (h * w)) * turns.to(torch.float64).reshape(*units_pos.shape, h * w)
    return torch.cat([torch.cos(theta), torch.sin(theta)], dim=1).to(device=device, dtype=dtype)


def _removed_components(
    spectra: torch.Tensor, positions: torch.Tensor, weights: torch.Tensor, basis: torch.Tensor
) -> torch.Tensor:
    """Real image components of K removal sets for G images, ``(K, G, C, H*W)``.

    For a real image with centred spectrum X, a conjugate pair {q, q'} contributes
    ``2 Re(X[q] e_q) / (HW)`` and a self-conjugate position ``Re(X[q] e_q) / (HW)``.
    """
    g, c, hw = spectra.shape
    k, m = positions.shape
    coef = spectra[:, :, positions.reshape(-1)].reshape(g, c, k, m)  # (G, C, K, M) complex
    scale = (weights / hw).to(spectra.real.dtype)  # (K, M)
    a = torch.cat([coef.real * scale, -coef.imag * scale], dim=-1)  # (G, C, K, 2M)
    a = a.permute(2, 0, 1, 3).reshape(k, g * c, 2 * m)
    return torch.bmm(a, basis).reshape(k, g, c, hw)
