"""LeNet-300-100 (a fully connected MNIST baseline) and LeNet-5 (LeCun et al., 1998).

Both are the small models the pruning papers start from. Every layer is its own module so
torch.fx sees one call per module, and ReLUs are not in-place so forward hooks that keep a
layer's output see the pre-activation values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._checks import check_int_tuple, check_positive_int
from ._init import kaiming_init_


class LeNet300100(nn.Module):
    """Flatten -> Linear -> ReLU -> ... -> Linear, one hidden layer per entry of ``hidden``.

    ``in_features`` must equal C*H*W of the input (784 for 28x28 grey, 1024 for 32x32).
    """

    def __init__(
        self,
        in_features: int = 784,
        num_classes: int = 10,
        hidden: Sequence[int] = (300, 100),
    ) -> None:
        super().__init__()
        check_positive_int(in_features, "in_features")
        check_positive_int(num_classes, "num_classes")
        widths = check_int_tuple(hidden, "hidden")
        layers: list[nn.Module] = [nn.Flatten()]
        previous = in_features
        for width in widths:
            layers += [nn.Linear(previous, width), nn.ReLU()]
            previous = width
        layers.append(nn.Linear(previous, num_classes))
        self.layers = nn.Sequential(*layers)
        self.in_features = in_features
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LeNet5(nn.Module):
    """conv5x5(6)-ReLU-maxpool, conv5x5(16)-ReLU-maxpool, then Linear 120 -> 84 -> classes.

    The first conv pads by 2, so a 28x28 input gives the classic 5x5x16 feature map (and a
    32x32 input gives 6x6x16). ``image_size`` fixes the flattened size of the first linear.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(num_classes, "num_classes")
        check_positive_int(image_size, "image_size")
        side = (image_size // 2 - 4) // 2
        if image_size // 2 - 4 < 2:
            raise ValueError(f"image_size must be >= 12 for LeNet5, got {image_size}")
        self.image_size = image_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))
