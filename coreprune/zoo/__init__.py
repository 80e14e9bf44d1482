"""Model zoo: LeNet, CIFAR-style VGG-BN, CIFAR and ImageNet-style ResNets, a small ViT, without
torchvision.

``build_model(name, **kwargs)`` is the one entry point the CLI and benchmarks use, so a model
is named by a string that can be written into configs and saved pruned-model specs.

The zoo needs only torch and ``coreprune.checks``, so it sits low in the house
(docs/architecture.md): ``coreprune.serialization`` imports it to rebuild a spec saved with
``arch=``, and the harness re-exports it as ``coreprune.harness.models``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .lenet import LeNet5, LeNet300100
from .resnet import (
    BasicBlock,
    Bottleneck,
    CifarResNet,
    ResNet,
    resnet18,
    resnet20,
    resnet32,
    resnet50,
    resnet56,
    resnet110,
)
from .vgg import VGG, VGG_CONFIGS, vgg11, vgg13, vgg16, vgg19
from .vgg_small import VGGSmall, vgg_small
from .vit import ViT, vit_small

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "lenet300100": LeNet300100,
    "lenet5": LeNet5,
    "vgg11": vgg11,
    "vgg13": vgg13,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "vgg_small": vgg_small,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vit_small": vit_small,
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build a freshly initialised model by registry name; ``kwargs`` go to its constructor
    (e.g. ``in_channels``, ``num_classes``, ``width_multiplier``; ``in_features``/``hidden``
    for lenet300100; ``image_size`` for lenet5; ``small_input`` for resnet18/50)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    try:
        return _REGISTRY[key](**kwargs)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            raise TypeError(f"build_model({name!r}): {error}") from error
        raise


__all__ = [
    "MODEL_NAMES",
    "VGG",
    "VGG_CONFIGS",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "LeNet5",
    "LeNet300100",
    "ResNet",
    "VGGSmall",
    "ViT",
    "build_model",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet50",
    "resnet56",
    "resnet110",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vgg_small",
    "vit_small",
]
