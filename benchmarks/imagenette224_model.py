"""A 10-class 224-px model for benchmarks/dfm_search.py: a narrow ImageNet-style ResNet18.

Why this model: no pretrained weights can be downloaded here, and torchvision's ResNet18
trains at about 4-8 images/s on the book's 2-core CPU (several hours for a few epochs of
Imagenette). This is the same architecture (7x7 stride-2 stem, max-pool, BasicBlock
[2, 2, 2, 2], global average pool) at a quarter of the width (16, 32, 64, 128 channels),
trained from scratch on the 5,000 Imagenette training images of ``imagenette_224.zip``:
``epochs_low`` epochs at ``low`` px (the network is fully convolutional, so a lower training
resolution is 5x cheaper), then ``epochs_full`` at 224 px, SGD + Nesterov, one-cycle lr,
RandomResizedCrop + flip, bfloat16 autocast; finally the BatchNorm statistics are
re-estimated at 224 px on ``recalibrate`` training images (forward passes only), which makes
up for most of the train/test resolution gap ("FixRes", Touvron et al. 2019). On the shared
2-core machine one epoch at 112 px took 19 minutes under heavy load, hence the short recipe. It is cached under
``cache_dir("dfm_search")`` by a hash of these settings, and loaded with
``torch.load(weights_only=True)``.

Usage::

    python benchmarks/imagenette224_model.py        # train (or load) and print the accuracy
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from fslib import augment as aug
from fslib import data
from fslib.constants import normalization
from fslib.inference import normalize
from fslib.io import atomic_torch_save, stable_hash
from fslib.models import BasicBlock
from fslib.paths import cache_dir


class NarrowResNet18(nn.Module):
    """torchvision-style (ImageNet) ResNet18 with channel widths ``widths``; logits ``(N, classes)``."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], widths[0]
        for i, width in enumerate(widths):
            for j in range(2):
                blocks.append(BasicBlock(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


SETTINGS = dict(widths=(16, 32, 64, 128), epochs_low=5, low=96, epochs_full=0, recalibrate=1000, batch_size=64,
                lr=0.1, weight_decay=5e-4, crop_scale=(0.25, 1.0), label_smoothing=0.1, seed=0)


def _normalize(images: torch.Tensor) -> torch.Tensor:
    mean, std = normalization("imagenette")
    return normalize(images, mean, std)


@torch.inference_mode()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 100) -> float:
    """Top-1 accuracy on uint8 images (normalised here)."""
    model.eval()
    hits = 0
    for s in range(0, len(labels), batch_size):
        x = _normalize(images[s : s + batch_size]).contiguous(memory_format=torch.channels_last)
        hits += int((model(x).argmax(1) == labels[s : s + batch_size]).sum())
    return hits / len(labels)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 100) -> None:
    """Re-estimate every BatchNorm's running statistics on ``images`` (uint8, 224 px)."""
    if len(images) == 0:
        return
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    model.train()
    for s in range(0, len(images), batch_size):
        model(_normalize(images[s : s + batch_size]).contiguous(memory_format=torch.channels_last))
    model.eval()


def train(settings: dict = SETTINGS, progress: bool = True) -> tuple[nn.Module, dict]:
    """Train from scratch as the module docstring says; returns (model in eval mode, record)."""
    torch.manual_seed(settings["seed"])
    model = NarrowResNet18(10, tuple(settings["widths"])).to(memory_format=torch.channels_last)
    train_set = data.load("imagenette", "train", resolution=224, progress=progress)
    images, labels = train_set.images, train_set.labels
    n, bs = len(labels), settings["batch_size"]
    epochs = settings["epochs_low"] + settings["epochs_full"]
    steps = epochs * (n // bs)
    opt = torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=0.9, nesterov=True,
                          weight_decay=settings["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings["lr"], total_steps=steps)
    start = time.perf_counter()
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(settings["seed"] * 1000 + epoch)
        perm = torch.randperm(n, generator=gen)
        size = settings["low"] if epoch < settings["epochs_low"] else 224
        model.train()
        total = 0.0
        for s in range(0, n - bs + 1, bs):
            idx = perm[s : s + bs]
            x = aug.geometric(images[idx], "official", gen, pad=0, scale=tuple(settings["crop_scale"]))
            x = _normalize(x)
            if size != 224:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), labels[idx], label_smoothing=settings["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        if progress:
            print(f"epoch {epoch + 1}/{epochs} at {size} px: train loss {total / (n // bs):.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    recalibrate_bn(model, images[perm[: settings["recalibrate"]]])
    seconds = time.perf_counter() - start
    test = data.load("imagenette", "test", resolution=224, progress=progress)
    acc = accuracy(model, test.images, test.labels)
    model = model.to(memory_format=torch.contiguous_format).eval()
    return model, {"test_acc": acc, "train_seconds": seconds, "settings": settings}


def get_model(settings: dict = SETTINGS, progress: bool = True) -> tuple[nn.Module, dict]:
    """The cached model (trained on first use); returns (model in eval mode, record)."""
    key = stable_hash({"model": "NarrowResNet18", **settings})
    path = cache_dir("dfm_search") / f"imagenette224-narrow-resnet18-{key}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        model = NarrowResNet18(10, tuple(settings["widths"]))
        model.load_state_dict(saved["state_dict"])
        return model.eval(), saved["record"]
    model, record = train(settings, progress)
    atomic_torch_save({"state_dict": model.state_dict(), "record": record}, path)
    return model, record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, record = get_model()
    print(f"Imagenette 224 px, narrow ResNet18: test accuracy {record['test_acc']:.3f} "
          f"(trained in {record['train_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
