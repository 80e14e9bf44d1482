"""Dense models trained on Fashion-MNIST, shipped with the package as small safetensors files.

Pruning needs a well-trained dense model to start from, and training one on a CPU takes
minutes (LeNet-300-100, the small ViT) to half an hour (ResNet-20). ``load_pretrained(name)`` returns one
ready to prune or evaluate. How each file was made (command line, seed, schedule, accuracies,
machine) is in ``manifest.json`` next to the weights, written by
``benchmarks/train_fixtures.py``, which also remakes them.

All models take 1x28x28 inputs normalised as ``coreprune.harness.data.make_loaders``
normalises Fashion-MNIST, and output 10 logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from coreprune.zoo import build_model

__all__ = ["PRETRAINED", "PRETRAINED_DIR", "load_pretrained", "manifest"]

PRETRAINED_DIR = Path(__file__).resolve().parent
DATASET = "fashion_mnist"
_SCRIPT = "benchmarks/train_fixtures.py"

#: The names ``load_pretrained`` accepts: registry model names, all trained on Fashion-MNIST.
PRETRAINED: tuple[str, ...] = ("lenet300100", "vgg_small", "resnet20", "vit_small")


def _path(name: str) -> Path:
    return PRETRAINED_DIR / f"{name}_{DATASET}.safetensors"


def _architecture(name: str) -> nn.Module:
    if name == "lenet300100":
        return build_model(name, in_features=784, num_classes=10)
    return build_model(name, in_channels=1, num_classes=10)


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in PRETRAINED:
        raise ValueError(f"no pretrained model {name!r}; available: {', '.join(PRETRAINED)}")
    return name


def manifest() -> dict[str, Any]:
    """The provenance of every shipped file (see ``benchmarks/train_fixtures.py``)."""
    path = PRETRAINED_DIR / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `python {_SCRIPT}` to make it")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def load_pretrained(name: str) -> nn.Module:
    """The registered architecture ``name`` with its Fashion-MNIST weights, in eval mode.

    Every tensor of the file must match the architecture's state dict in name and shape, and
    none may be missing or extra, so a file from a changed architecture fails loudly here
    instead of giving a silently wrong model. Each call returns a fresh model.
    """
    key = _check_name(name)
    path = _path(key)
    if not path.exists():
        raise FileNotFoundError(
            f"weights for {key!r} not found at {path}; run "
            f"`python {_SCRIPT} --models {key}` to train them"
        )
    model = _architecture(key)
    tensors = load_file(str(path))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{path.name} does not match {key}: missing {missing}, unexpected {extra}")
    wrong = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tensors[k].shape != v.shape or tensors[k].dtype != v.dtype
    ]
    if wrong:
        raise ValueError(f"{path.name} does not match {key}: " + "; ".join(wrong))
    model.load_state_dict(tensors, strict=True)
    return model.eval()
