"""Speed of ``fslib.dfm.ablation_loss`` against the official algorithm, on one CPU, in one run.

Usage::

    .venv/bin/python benchmarks/dfm_speed.py            # ~5 minutes on a loaded 2-core CPU
    .venv/bin/python benchmarks/dfm_speed.py --per-class 5 --official-freqs 4   # quick look

The model is the book's CIFAR-style ResNet18 at width 0.25 (``fslib.models``; a small conv
net when that module is absent), given a few full-batch Adam steps on the benchmark's
random images so that removing a frequency changes its losses visibly (a random
initialisation barely reacts, which would make the value comparison vacuous; the fit is
crude, and the eval-mode loss stays high because BatchNorm's running statistics lag).

What it measures (same model, images and threads for every number):

1. The official algorithm, re-implemented straightforwardly: for every class and every
   position of the official enumeration (``r`` in ``0..H-1``, ``c`` in ``0..W//2``), mask
   the centred spectrum of every test batch of 100 (FFT, a Python loop over images and
   channels multiplying the mask, inverse FFT, real part) and forward every batch that
   contains the class. The images are class-interleaved as in CIFAR-10's test set, so every
   batch contains every class. It is timed on a subset of (class, position) combinations,
   half before and half after the fast run (the machine is shared, so its load drifts), and
   extrapolated per combination to all ``C * H * (W//2 + 1)``. The mask removes the
   position and its true conjugate partner (the official script skips the partner on row 0
   and column 0); this changes no cost.
2. ``ablation_loss`` on all conjugate pairs, timed in full.
3. Plain inference (no ablation) at the batch size ``ablation_loss`` forwards, timed before
   and after; the floor ratio is ablation images/s (pairs x images / time) over it.

Printed: the speed ratio (target >= 10), the largest difference between the two loss values
on the combinations both computed, and the floor ratio (target >= 0.8).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from fslib import dfm
from fslib.spectral import conjugate_index


def build_model(num_classes: int, width: float) -> tuple[nn.Module, str]:
    """The book's CIFAR-style ResNet18 when fslib.models exists, else a small conv net."""
    try:
        from fslib.models import build
    except ImportError:
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1, stride=2), nn.BatchNorm2d(128), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes),
        )
        return model, "local 3-layer conv net (fslib.models not available)"
    return build("resnet18", num_classes, width=width), f"fslib.models resnet18 (CIFAR-style), width={width}"


def fit(model, images, labels, steps, lr=1e-2):
    """A few full-batch Adam steps, so the losses respond to single frequencies (a random
    initialisation barely does, which would make the value comparison vacuous)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        opt.step()
    model.eval()


def official_style(model, images, labels, combos, batch_size=100):
    """Per (class, position): mask every batch's spectrum, forward batches holding the class.

    Returns ``{(class, r, s): mean cross-entropy over the class's images}``.
    """
    n, c, h, w = images.shape
    rc, cc = conjugate_index(h), conjugate_index(w)
    out = {}
    with torch.inference_mode():
        for cls, r, s in combos:
            mask = torch.ones(h, w)
            mask[r, s] = 0
            mask[rc[r], cc[s]] = 0
            loss_sum, count = 0.0, 0
            for start in range(0, n, batch_size):
                x, y = images[start : start + batch_size], labels[start : start + batch_size]
                if not bool((y == cls).any()):
                    continue
                spec = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
                for i in range(x.shape[0]):  # as in the official script
                    for ch in range(c):
                        spec[i, ch] = spec[i, ch] * mask
                x1 = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1))).real
                loss = F.cross_entropy(model(x1), y, reduction="none")
                loss_sum += float(loss[y == cls].double().sum())
                count += int((y == cls).sum())
            out[(cls, r, s)] = loss_sum / count
    return out


def plain_rate(model, images, batch_size, seconds):
    """Images per second of plain inference at ``batch_size`` (repeating the images)."""
    reps = -(-batch_size // images.shape[0])
    x = images.repeat(reps, 1, 1, 1)[:batch_size]
    with torch.inference_mode():
        model(x)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            done += batch_size
    return done / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=20, help="images per class")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--width", type=float, default=0.25, help="ResNet18 width multiplier")
    p.add_argument("--official-classes", type=int, default=3, help="classes timed with the official loop")
    p.add_argument("--official-freqs", type=int, default=6, help="positions per class timed with the official loop")
    p.add_argument("--batch-size", type=int, default=None, help="ablation_loss batch size (default: auto)")
    p.add_argument("--train-steps", type=int, default=20, help="full-batch Adam steps before measuring")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, model_name = build_model(args.classes, args.width)
    n = args.classes * args.per_class
    images = torch.randn(n, 3, args.size, args.size)  # as if normalised
    labels = torch.arange(n) % args.classes  # class-interleaved, like CIFAR-10's test set
    fit(model, images, labels, args.train_steps)
    h = w = args.size
    units = dfm.ablation_units(h, w, 1)
    official_positions = h * (w // 2 + 1)
    gen = torch.Generator().manual_seed(args.seed)
    pos = torch.randperm(official_positions, generator=gen)[: args.official_freqs]
    combos = [(cls, int(q) // (w // 2 + 1), int(q) % (w // 2 + 1)) for cls in range(args.official_classes) for q in pos]
    half = len(combos) // 2
    bs = args.batch_size or dfm._auto_batch_size(3, h, w, 4, torch.device("cpu"))
    fwd_batch = min(n, bs) * max(1, bs // min(n, bs))

    print(f"model: {model_name}; {sum(t.numel() for t in model.parameters()):,} parameters")
    print(f"images: {n} ({args.classes} classes x {args.per_class}, interleaved), {h}x{w}; "
          f"threads: {args.threads}; ablation forward batch: {fwd_batch}")

    plain_before = plain_rate(model, images, fwd_batch, 5.0)
    t0 = time.perf_counter()
    ref = official_style(model, images, labels, combos[:half])
    t_off = time.perf_counter() - t0

    t0 = time.perf_counter()
    maps = dfm.ablation_loss(model, images, labels, args.classes, batch_size=bs, device="cpu", progress=False)
    t_fast = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref.update(official_style(model, images, labels, combos[half:]))
    t_off += time.perf_counter() - t0
    plain_after = plain_rate(model, images, fwd_batch, 5.0)
    plain = (plain_before + plain_after) / 2

    per_combo = t_off / len(combos)
    t_off_total = per_combo * args.classes * official_positions
    diff = max(abs(ref[k] - float(maps[k])) for k in ref)
    fast_rate = len(units) * n / t_fast

    print(f"official-style: {len(combos)} (class, position) combinations in {t_off:.1f} s = "
          f"{per_combo:.3f} s each; extrapolated to {args.classes} x {official_positions} = "
          f"{args.classes * official_positions} combinations: {t_off_total:.0f} s "
          f"({args.classes * official_positions * n:,} image forwards)")
    print(f"ablation_loss: {len(units)} conjugate pairs x {n} images = {len(units) * n:,} image forwards "
          f"in {t_fast:.1f} s ({fast_rate:.0f} images/s)")
    print(f"speed ratio (official extrapolated / ablation_loss): {t_off_total / t_fast:.1f}x  (target >= 10)")
    base = dfm.class_losses(model, images, labels, args.classes, device="cpu")
    spread = (maps - base[:, None, None]).abs().max()
    print(f"max |difference| of the loss on the {len(ref)} combinations both computed: {diff:.2e} "
          f"(largest change of a class loss by any removal: {spread:.2e}; unablated mean loss {base.mean():.3f})")
    print(f"plain inference at batch {fwd_batch}: {plain_before:.0f} images/s before, {plain_after:.0f} after")
    print(f"floor ratio (ablation images/s / plain inference images/s): {fast_rate / plain:.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
