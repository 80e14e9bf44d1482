"""CIFAR-style VGG with batch norm (Simonyan & Zisserman 2015; BN variant as used by
Li et al. 2017 and the SynFlow paper).

Each stage is conv3x3-BN-ReLU repeated, then a 2x2 max-pool. Pools use ``ceil_mode`` so a
28x28 input shrinks 28-14-7-4-2-1 without dropping border rows, exactly like 32-16-8-4-2-1; an
adaptive average pool then makes any remaining spatial size 1x1. The classifier is a single
linear layer by default (optionally preceded by hidden Linear-ReLU layers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ._checks import check_int_tuple, check_positive_int, check_width, scaled
from ._init import kaiming_init_

Pool = Literal["M"]


def _stages(*stages: tuple[int, int]) -> tuple[int | Pool, ...]:
    """Expand (width, convs) pairs into a config, each stage ending in a pool."""
    config: list[int | Pool] = []
    for width, convs in stages:
        config += [width] * convs + ["M"]
    return tuple(config)


VGG_CONFIGS: dict[str, tuple[int | Pool, ...]] = {
    "vgg11": _stages((64, 1), (128, 1), (256, 2), (512, 2), (512, 2)),
    "vgg13": _stages((64, 2), (128, 2), (256, 2), (512, 2), (512, 2)),
    "vgg16": _stages((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)),
    "vgg19": _stages((64, 2), (128, 2), (256, 4), (512, 4), (512, 4)),
}


class VGG(nn.Module):
    """VGG-BN built from a config: ints are conv widths (before ``width_multiplier``), "M" is a
    max-pool. Convs have no bias because the batch norm after them supplies one."""

    def __init__(
        self,
        config: Sequence[int | str],
        in_channels: int = 3,
        num_classes: int = 10,
        width_multiplier: float = 1.0,
        hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(num_classes, "num_classes")
        width = check_width(width_multiplier)
        hidden_widths = check_int_tuple(hidden, "hidden", allow_empty=True)
        layers: list[nn.Module] = []
        channels = in_channels
        n_convs = 0
        for i, item in enumerate(config):
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
                continue
            if isinstance(item, bool) or not isinstance(item, int):
                raise ValueError(f"config[{i}] must be a channel count or 'M', got {item!r}")
            out = scaled(item, width)
            layers += [
                nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
            ]
            channels = out
            n_convs += 1
        if n_convs == 0:
            raise ValueError("config must contain at least one conv layer")
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        head: list[nn.Module] = []
        for h in hidden_widths:
            head += [nn.Linear(channels, h), nn.ReLU()]
            channels = h
        head.append(nn.Linear(channels, num_classes))
        self.classifier = nn.Sequential(*head)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def vgg11(
    in_channels: int = 3,
    num_classes: int = 10,
    width_multiplier: float = 1.0,
    hidden: Sequence[int] = (),
) -> VGG:
    """VGG-11 with batch norm (8 convs)."""
    return VGG(VGG_CONFIGS["vgg11"], in_channels, num_classes, width_multiplier, hidden)


def vgg13(
    in_channels: int = 3,
    num_classes: int = 10,
    width_multiplier: float = 1.0,
    hidden: Sequence[int] = (),
) -> VGG:
    """VGG-13 with batch norm (10 convs)."""
    return VGG(VGG_CONFIGS["vgg13"], in_channels, num_classes, width_multiplier, hidden)


def vgg16(
    in_channels: int = 3,
    num_classes: int = 10,
    width_multiplier: float = 1.0,
    hidden: Sequence[int] = (),
) -> VGG:
    """VGG-16 with batch norm (13 convs)."""
    return VGG(VGG_CONFIGS["vgg16"], in_channels, num_classes, width_multiplier, hidden)


def vgg19(
    in_channels: int = 3,
    num_classes: int = 10,
    width_multiplier: float = 1.0,
    hidden: Sequence[int] = (),
) -> VGG:
    """VGG-19 with batch norm (16 convs)."""
    return VGG(VGG_CONFIGS["vgg19"], in_channels, num_classes, width_multiplier, hidden)
