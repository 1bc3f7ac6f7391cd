"""The GPU path, checked: the paper's recipe and the shortcut search on one CUDA device.

What it runs (118 s on one H200, CIFAR-10 preparation included; ``--quick`` is a CPU-sized smoke of the same code):

1. the paper-width CIFAR-10 ResNet18 trained for ``--epochs`` epochs with the paper's recipe
   (``TrainConfig`` defaults: SGD, batch 64, lr 0.01, plateau), through ``fslib.runs`` as the
   book trains; training throughput (img/s), test accuracy, and the time of the paper's 200
   epochs at that throughput;
2. exact DFMs at 32 px (``fslib.dfm.ablation_loss``, every conjugate pair) on ``--n-rank``
   test images of that model: seconds and forward passes per second;
3. at 224 px (a paper-width ImageNet-style ResNet18, CIFAR-10 test images resized; the timings
   do not depend on the content): the first-order loss map of ``fslib.dfm.search`` on
   ``--n-rank`` images, and the exact ablation of ten images (one per class) with 2 x 2 blocks,
   whose time per image extrapolates the exact ranking of ``--n-rank`` images.

Every figure is printed as ``name: value`` lines; nothing is asserted. Without CUDA the
script says so and stops (exit status 2), unless ``--quick`` asks for the CPU smoke.

    FSLIB_DATA=/path/to/data python benchmarks/gpu_check.py            # on a GPU machine
    FSLIB_DATA=../shared/data python benchmarks/gpu_check.py --quick   # the code path on a CPU
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from fslib import data, dfm, inference, models, runs
from fslib.train import TrainConfig

PAPER_EPOCHS = 200


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def _line(name: str, value) -> None:
    print(f"{name}: {value}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs with the paper's recipe (default 3)")
    parser.add_argument("--n-rank", type=int, default=500, help="images the DFMs are ranked on (paper: 50 per class)")
    parser.add_argument("--quick", action="store_true", help="CPU smoke of the same code: tiny sizes")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.quick:
        print("gpu_check: no CUDA device here; run it on a GPU machine (or --quick for a CPU smoke)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _line("device", torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu")
    _line("torch", torch.__version__)

    # 1. the paper's recipe, paper width, a few epochs
    cfg = TrainConfig(dataset="cifar10", epochs=args.epochs)
    if args.quick:
        cfg = replace(cfg, width=0.125, epochs=1, n_train=640, n_test=200)
    run, wall = _timed(lambda: runs.get_or_train(cfg, device=str(device), progress=False), device)
    seconds = run.metrics["train_seconds"]  # the epochs themselves, as recorded when the run was trained
    n_train = run.metrics["n_train"]
    per_epoch = seconds / cfg.epochs
    _line("train_epochs", cfg.epochs)
    _line("train_seconds", f"{seconds:.1f} (this call: {wall:.1f} s, data preparation and caching included)")
    _line("train_img_per_s", f"{n_train * cfg.epochs / seconds:.0f}")
    _line("test_acc", f"{run.metrics['test_acc']:.4f}")
    _line("paper_training_200_epochs_minutes", f"{per_epoch * PAPER_EPOCHS / 60:.1f}")

    # 2. exact DFMs at 32 px
    test = data.load("cifar10", split="test")
    n = min(args.n_rank if not args.quick else 20, len(test))
    pick = torch.arange(n) * (len(test) // n)
    x32 = inference.normalize(test.images[pick], run.mean, run.std)
    y = test.labels[pick].long()
    maps, exact32 = _timed(lambda: dfm.ablation_loss(run.model, x32, y, 10, device=device, progress=False), device)
    units = len(dfm.ablation_units(32, 32, 1).positions)
    _line("exact32_images", n)
    _line("exact32_seconds", f"{exact32:.1f}")
    _line("exact32_forwards_per_s", f"{units * n / exact32:.0f}")
    _line("exact32_dfm_classes", int((dfm.dominant_frequency_maps(maps, 0.05).flatten(1).sum(1) > 0).sum()))

    # 3. 224 px: first-order maps and the exact ablation of one image
    size = 224 if not args.quick else 64
    net = models.build("resnet18_imagenet", 10).to(device)  # torchvision's ResNet18, the paper's ImageNet-10 model
    x224 = F.interpolate(x32, size=(size, size), mode="bilinear", align_corners=False)
    try:
        from fslib.dfm.search.firstorder import first_order_loss
    except ImportError:
        _line("firstorder224", "not available in this checkout (fslib.dfm.search)")
    else:
        _, fo = _timed(lambda: first_order_loss(net, x224, y, 10, patch_size=2, device=device, progress=False), device)
        _line("firstorder224_images", n)
        _line("firstorder224_seconds", f"{fo:.1f}")
    first = torch.stack([(y == c).nonzero()[0, 0] for c in range(10)])  # one image per class: every class is needed
    _, ten = _timed(lambda: dfm.ablation_loss(net, x224[first], y[first], 10, patch_size=2, device=device, progress=False),
                    device)
    one = ten / len(first)
    units224 = len(dfm.ablation_units(size, size, 2).positions)
    _line("exact224_units_per_image", units224)
    _line("exact224_seconds_per_image", f"{one:.2f}")
    _line("exact224_extrapolated_minutes", f"{one * n / 60:.1f} for {n} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
