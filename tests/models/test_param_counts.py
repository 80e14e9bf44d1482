"""Parameter counts checked against arithmetic written out here, not against model output."""

from __future__ import annotations

import pytest
from torch import nn

from coreprune.harness.models import build_model


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k  # convs followed by BN have no bias


def _bn(c: int) -> int:
    return 2 * c


def _linear(fin: int, fout: int) -> int:
    return fin * fout + fout


def test_lenet300100() -> None:
    assert _count(build_model("lenet300100")) == 266_610
    assert _linear(784, 300) + _linear(300, 100) + _linear(100, 10) == 266_610


def test_lenet5_classic_count() -> None:
    # 156 + 2,416 + 48,120 + 10,164 + 850: the textbook LeNet-5 total.
    expected = (1 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + _linear(400, 120)
    expected += _linear(120, 84) + _linear(84, 10)
    assert expected == 61_706
    assert _count(build_model("lenet5")) == expected


def _vgg16_counts(width: float = 1.0) -> tuple[int, int]:
    convs = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
    cin, weights, bns = 3, 0, 0
    for c, n in convs:
        c = round(c * width)
        for _ in range(n):
            weights += _conv(cin, c, 3)
            bns += _bn(c)
            cin = c
    return weights, bns + _linear(cin, 10)


def test_vgg16_conv_weights() -> None:
    weights, rest = _vgg16_counts()
    assert weights == 14_710_464  # the familiar "14.7M" of CIFAR VGG-16
    model = build_model("vgg16")
    conv_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv_weights == weights
    assert _count(model) == weights + rest == 14_724_042


def test_vgg16_width_multiplier_scales_channels() -> None:
    weights, rest = _vgg16_counts(0.5)
    assert _count(build_model("vgg16", width_multiplier=0.5)) == weights + rest


def _cifar_resnet(depth: int, cin: int = 3) -> int:
    n = (depth - 2) // 6
    total = _conv(cin, 16, 3) + _bn(16)
    prev = 16
    for c in (16, 32, 64):
        for i in range(n):
            total += _conv(prev if i == 0 else c, c, 3) + _bn(c) + _conv(c, c, 3) + _bn(c)
            if i == 0 and prev != c:
                total += _conv(prev, c, 1) + _bn(c)  # option-B projection
        prev = c
    return total + _linear(64, 10)


# Option A (zero-padding shortcut) counts from the literature, plus our two projections:
# 16->32 (512 + 64) and 32->64 (2,048 + 128) = 2,752 parameters.
_PROJECTIONS = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


@pytest.mark.parametrize(
    ("depth", "option_a"), [(20, 269_722), (32, 464_154), (56, 853_018), (110, 1_727_962)]
)
def test_cifar_resnets(depth: int, option_a: int) -> None:
    assert _PROJECTIONS == 2_752
    assert _cifar_resnet(depth) == option_a + _PROJECTIONS
    assert _count(build_model(f"resnet{depth}")) == option_a + _PROJECTIONS


def test_cifar_resnet_grey_input() -> None:
    # one input channel instead of three removes 2 * 16 * 3 * 3 stem weights
    assert _count(build_model("resnet20", in_channels=1)) == 269_722 + _PROJECTIONS - 288


@pytest.mark.parametrize(("name", "expected"), [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_imagenet_resnets(name: str, expected: int) -> None:
    # the standard ImageNet totals (1000 classes, 7x7 stem)
    assert _count(build_model(name, num_classes=1000)) == expected


def test_small_input_stem_count() -> None:
    # 3x3 stem instead of 7x7 over 3 channels and 64 filters: 64*3*(49-9) fewer weights
    full = _count(build_model("resnet18", num_classes=1000))
    small = _count(build_model("resnet18", num_classes=1000, small_input=True))
    assert full - small == 64 * 3 * 40


def test_vgg_small() -> None:
    cin, expected = 1, 0
    for c in (32, 64, 128):
        for _ in range(2):
            expected += _conv(cin, c, 3) + _bn(c)
            cin = c
    expected += _linear(128 * 3 * 3, 256) + _linear(256, 10)
    assert expected == 584_618
    assert _count(build_model("vgg_small")) == expected
