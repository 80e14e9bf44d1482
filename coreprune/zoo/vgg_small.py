"""A small VGG-BN for 28x28 grey images (Fashion-MNIST, MNIST).

The CIFAR-style VGGs in ``vgg.py`` pool 28 px down to 1 px and average away all spatial
layout; for 28 px input a shallower net with three stages (28-14-7-3) and a two-layer
classifier on the 3x3 map keeps the layout, trains to ~93% on Fashion-MNIST in a few CPU
epochs, and still has both kinds of prunable pair the library handles: conv -> conv through
BN-ReLU(-pool), and conv -> flatten -> linear.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_positive_int, check_width, scaled
from ._init import kaiming_init_

#: Conv widths per stage (two convs each), before ``width_multiplier``.
STAGE_WIDTHS: tuple[int, int, int] = (32, 64, 128)


class VGGSmall(nn.Module):
    """conv3x3-BN-ReLU x2, max-pool, for each of three stages; then flatten,
    Linear(C*3*3 -> hidden)-ReLU, Linear(hidden -> classes).

    Pools floor (28-14-7-3), so ``image_size`` must be at least 8 (one pixel after the
    third pool); the classifier's input size follows from it.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width_multiplier: float = 1.0,
        hidden: int = 256,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(num_classes, "num_classes")
        check_positive_int(hidden, "hidden")
        check_positive_int(image_size, "image_size")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 (three 2x2 pools), got {image_size}")
        width = check_width(width_multiplier)
        layers: list[nn.Module] = []
        channels = in_channels
        for stage_width in STAGE_WIDTHS:
            out = scaled(stage_width, width)
            for _ in range(2):
                layers += [
                    nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(),
                ]
                channels = out
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        side = image_size // 8
        self.classifier = nn.Sequential(
            nn.Linear(channels * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def vgg_small(
    in_channels: int = 1,
    num_classes: int = 10,
    width_multiplier: float = 1.0,
    hidden: int = 256,
    image_size: int = 28,
) -> VGGSmall:
    """Small VGG-BN for 28x28 grey input (6 convs, 2 linears)."""
    return VGGSmall(in_channels, num_classes, width_multiplier, hidden, image_size)
