"""The paper's architectures, built as the official code builds them.

* ``resnet18`` / ``resnet50``: the CIFAR-style ResNets of the official code at every input
  size: a 3x3 stride-1 stem without max-pool, four stages (BasicBlock [2, 2, 2, 2] or
  Bottleneck [3, 4, 6, 3]), global average pooling and one linear layer.
* ``alexnet``: the AlexNet variant the official synthetic-data script trains; it only
  accepts 32x32 inputs (its classifier expects a 2x2 feature map).
* ``vgg16``: VGG16 with batch norm, CIFAR style (global average pooling, one linear layer).
* ``resnet18_imagenet`` / ``resnet50_imagenet``: torchvision's ImageNet ResNets (7x7 stride-2
  stem and max-pool), untrained, for 224-pixel inputs.

Every CIFAR-style model takes a ``width`` multiplier on all its channel counts (1.0 is the
paper's model) so that the book's default profile can train on a CPU. Weights use
PyTorch's default initialisation, as in the official code; seed with ``torch.manual_seed``
before :func:`build` for reproducible weights.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MODELS", "build", "count_parameters", "CifarResNet", "AlexNet32", "VGG"]


def _channels(base: int, width: float) -> int:
    """``base * width`` rounded, at least 1."""
    return max(1, int(round(base * width)))


# --------------------------------------------------------------------------- ResNets
def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity, or a strided 1x1 convolution + BatchNorm where the shape changes."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck with expansion 4 (ResNet50)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet of the official code (any input size).

    Input ``(N, 3, H, W)`` float, output logits ``(N, num_classes)``.

    Parameters
    ----------
    block : BasicBlock or Bottleneck
    num_blocks : sequence of 4 int, blocks per stage
    num_classes : int
    width : float, multiplier of the stage widths 64, 128, 256, 512
    """

    def __init__(self, block: type[nn.Module], num_blocks: tuple[int, ...], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        widths = [_channels(c, width) for c in (64, 128, 256, 512)]
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        for i, (planes, n) in enumerate(zip(widths, num_blocks)):
            stages.append(self._make_stage(block, planes, n, stride=1 if i == 0 else 2))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.classifier = nn.Linear(widths[3] * block.expansion, num_classes)

    def _make_stage(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.classifier(out)


# --------------------------------------------------------------------------- AlexNet
class AlexNet32(nn.Module):
    """The official code's AlexNet for 32x32 inputs (BN after ReLU, no biases).

    Input ``(N, 3, 32, 32)`` float, output logits ``(N, num_classes)``. Other sizes fail
    with a clear error: the classifier is built for the 2x2 map that 32x32 inputs give.
    """

    def __init__(self, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (_channels(c, width) for c in (96, 256, 384, 384, 256))
        hidden = _channels(4096, width)

        def conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.ReLU(inplace=True), nn.BatchNorm2d(cout)]

        self.features = nn.Sequential(
            *conv(3, c1, stride=2), nn.MaxPool2d(2),
            *conv(c1, c2), nn.MaxPool2d(2),
            *conv(c2, c3), *conv(c3, c4), *conv(c4, c5), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(c5 * 2 * 2, hidden, bias=False), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(hidden, hidden, bias=False), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"alexnet takes 32x32 inputs (the official synthetic-data model), got {tuple(x.shape[-2:])}")
        return self.classifier(self.features(x).flatten(1))


# --------------------------------------------------------------------------- VGG
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG with batch norm, CIFAR style: conv stack, global average pool, one linear layer.

    Input ``(N, 3, H, W)`` float with H, W >= 32 (five 2x2 max-pools), output logits.
    """

    def __init__(self, cfg: tuple, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                cout = _channels(item, width)
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(out)


# --------------------------------------------------------------------------- registry
def _torchvision(name: str) -> Callable[..., nn.Module]:
    def builder(num_classes: int, width: float = 1.0) -> nn.Module:
        if width != 1.0:
            raise ValueError(f"{name}_imagenet is torchvision's model and has no width multiplier; got width={width}, use 1.0")
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)

    return builder


MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": lambda num_classes, width=1.0: CifarResNet(BasicBlock, (2, 2, 2, 2), num_classes, width),
    "resnet50": lambda num_classes, width=1.0: CifarResNet(Bottleneck, (3, 4, 6, 3), num_classes, width),
    "alexnet": lambda num_classes, width=1.0: AlexNet32(num_classes, width),
    "vgg16": lambda num_classes, width=1.0: VGG(VGG16_CFG, num_classes, width),
    "resnet18_imagenet": _torchvision("resnet18"),
    "resnet50_imagenet": _torchvision("resnet50"),
}
"""Model registry: name -> ``builder(num_classes, width=1.0)``."""


def build(name: str, num_classes: int, width: float = 1.0, **kw) -> nn.Module:
    """Build an untrained model by registry name.

    Parameters
    ----------
    name : str, one of :data:`MODELS`
    num_classes : int, size of the output layer
    width : float, channel multiplier (1.0 = the paper's model)
    **kw : passed to the builder (none of the built-in builders takes extra arguments)

    Returns
    -------
    nn.Module mapping ``(N, 3, H, W)`` float to logits ``(N, num_classes)``.

    >>> build("resnet18", 10, width=0.25)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return MODELS[name](num_classes, width=width, **kw)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
