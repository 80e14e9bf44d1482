"""A user's model outside the zoo, for `coreprune compress --model-factory` tests."""

from __future__ import annotations

from torch import nn


def small_convnet() -> nn.Module:
    """conv-BN-ReLU x2, pooled to a linear classifier: 1x28x28 images, 10 classes."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def not_a_model() -> str:
    return "a string"
