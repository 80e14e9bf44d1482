"""Residual networks (He et al., 2016): CIFAR ResNet-20/32/56/110 and ImageNet-style
ResNet-18/50.

Conventions that the surgery's torch.fx analysis relies on:
- every module is called once per forward (each block owns its ReLUs);
- residuals are a plain ``out + identity``; an identity shortcut is no module at all
  (``downsample is None``), so the add reads the block input directly;
- when the shape changes the shortcut is a 1x1 conv + BN ("option B"), also for the CIFAR
  nets, whose paper used zero-padding ("option A"). Option B adds 2,752 parameters to
  ResNet-20 and ResNet-56 at width 1 but keeps every tensor a real module output.
Convs carry no bias since a batch norm follows each one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._checks import check_int_tuple, check_positive_int, check_width, scaled
from ._init import kaiming_init_


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)


def _projection(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    """Option-B shortcut: a 1x1 conv + BN when the shape changes, else None (identity)."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(_conv(in_ch, out_ch, 1, stride), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv(planes, planes, 3, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _projection(in_channels, planes, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(x4)-BN, add the shortcut, ReLU.

    The stride sits on the 3x3 conv (the "v1.5" placement used by most reference code)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = _conv(in_channels, planes, 1, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = _conv(planes, out_channels, 1, 1)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = _projection(in_channels, out_channels, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


def _stage(
    block: type[BasicBlock] | type[Bottleneck],
    in_channels: int,
    planes: int,
    blocks: int,
    stride: int,
) -> tuple[nn.Sequential, int]:
    """A stage of ``blocks`` blocks; the first one may stride. Returns (stage, out channels)."""
    layers: list[nn.Module] = []
    for i in range(blocks):
        layers.append(block(in_channels, planes, stride if i == 0 else 1))
        in_channels = planes * block.expansion
    return nn.Sequential(*layers), in_channels


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images: a 3x3 stem of 16 channels, three stages of n basic
    blocks at 16/32/64 channels (times ``width_multiplier``), global average pool, linear."""

    def __init__(
        self,
        depth: int = 20,
        in_channels: int = 3,
        num_classes: int = 10,
        width_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        check_positive_int(depth, "depth")
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 56, 110...), got {depth}")
        check_positive_int(in_channels, "in_channels")
        check_positive_int(num_classes, "num_classes")
        width = check_width(width_multiplier)
        n = (depth - 2) // 6
        widths = [scaled(c, width) for c in (16, 32, 64)]
        self.depth = depth
        self.conv1 = _conv(in_channels, widths[0], 3, 1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1, channels = _stage(BasicBlock, widths[0], widths[0], n, 1)
        self.layer2, channels = _stage(BasicBlock, channels, widths[1], n, 2)
        self.layer3, channels = _stage(BasicBlock, channels, widths[2], n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


class ResNet(nn.Module):
    """ImageNet-style ResNet: four stages at 64/128/256/512 planes (times ``width_multiplier``).

    ``small_input=True`` swaps the 7x7 stride-2 stem and its max-pool for a 3x3 stride-1 stem,
    the usual change that keeps enough resolution on 28-32 px images.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: Sequence[int],
        in_channels: int = 3,
        num_classes: int = 10,
        width_multiplier: float = 1.0,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        stages = check_int_tuple(blocks_per_stage, "blocks_per_stage")
        if len(stages) != 4:
            raise ValueError(f"blocks_per_stage must have 4 entries, got {len(stages)}")
        check_positive_int(in_channels, "in_channels")
        check_positive_int(num_classes, "num_classes")
        width = check_width(width_multiplier)
        if not isinstance(small_input, bool):
            raise TypeError(f"small_input must be a bool, got {type(small_input).__name__}")
        widths = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.small_input = small_input
        if small_input:
            self.conv1 = _conv(in_channels, widths[0], 3, 1)
            self.maxpool: nn.MaxPool2d | None = None
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        channels = widths[0]
        self.layer1, channels = _stage(block, channels, widths[0], stages[0], 1)
        self.layer2, channels = _stage(block, channels, widths[1], stages[1], 2)
        self.layer3, channels = _stage(block, channels, widths[2], stages[2], 2)
        self.layer4, channels = _stage(block, channels, widths[3], stages[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def _cifar(depth: int, in_channels: int, num_classes: int, width_multiplier: float) -> CifarResNet:
    return CifarResNet(depth, in_channels, num_classes, width_multiplier)


def resnet20(
    in_channels: int = 3, num_classes: int = 10, width_multiplier: float = 1.0
) -> CifarResNet:
    """CIFAR ResNet-20 (3 blocks per stage)."""
    return _cifar(20, in_channels, num_classes, width_multiplier)


def resnet32(
    in_channels: int = 3, num_classes: int = 10, width_multiplier: float = 1.0
) -> CifarResNet:
    """CIFAR ResNet-32 (5 blocks per stage)."""
    return _cifar(32, in_channels, num_classes, width_multiplier)


def resnet56(
    in_channels: int = 3, num_classes: int = 10, width_multiplier: float = 1.0
) -> CifarResNet:
    """CIFAR ResNet-56 (9 blocks per stage)."""
    return _cifar(56, in_channels, num_classes, width_multiplier)


def resnet110(
    in_channels: int = 3, num_classes: int = 10, width_multiplier: float = 1.0
) -> CifarResNet:
    """CIFAR ResNet-110 (18 blocks per stage)."""
    return _cifar(110, in_channels, num_classes, width_multiplier)


def resnet18(
    in_channels: int = 3,
    num_classes: int = 10,
    width_multiplier: float = 1.0,
    small_input: bool = False,
) -> ResNet:
    """ResNet-18: basic blocks, 2-2-2-2."""
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, num_classes, width_multiplier, small_input)


def resnet50(
    in_channels: int = 3,
    num_classes: int = 10,
    width_multiplier: float = 1.0,
    small_input: bool = False,
) -> ResNet:
    """ResNet-50: bottleneck blocks, 3-4-6-3."""
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, num_classes, width_multiplier, small_input)
