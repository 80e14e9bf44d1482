"""The constructor arguments of a zoo model for a dataset, derived from the dataset's spec.

A model's input layer must match the images it will see (channels, and for models with a
flattening classifier, the image size) and its output layer the number of classes. The
command line, the comparison and the training demo all build models through this one place,
so a LeNet-300-100 on CIFAR-10 gets 3*32*32 = 3072 inputs, never the 784 of a digit.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from coreprune.checks import check_int
from coreprune.harness.data import dataset_spec
from coreprune.zoo import MODEL_NAMES, build_model

__all__ = ["build_for_dataset", "default_image_size", "model_kwargs"]

# Five 2x2 poolings: the CIFAR-style VGGs are run on 32 px (28 px digits are zero-padded).
_NEEDS_32 = ("vgg11", "vgg13", "vgg16", "vgg19")
# Models whose first linear layer is sized from the image side.
_SIZED_BY_IMAGE = ("lenet5", "vgg_small")


def _check_model(model: str) -> str:
    if not isinstance(model, str):
        raise TypeError(f"model must be a str, got {type(model).__name__}")
    if model.lower() not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r}; valid names: {', '.join(MODEL_NAMES)}")
    return model.lower()


def default_image_size(model: str, dataset: str) -> int:
    """The side the images are given at: the dataset's native size, or 32 for the VGGs."""
    name = _check_model(model)
    native = dataset_spec(dataset).native_size
    return max(32, native) if name in _NEEDS_32 else native


def model_kwargs(model: str, dataset: str, image_size: int | None = None) -> dict[str, Any]:
    """`build_model(model, **kwargs)` arguments for `dataset` images of side `image_size`.

    `image_size=None` takes `default_image_size`; a side below the dataset's native size is
    refused (the loaders only pad).
    """
    name = _check_model(model)
    spec = dataset_spec(dataset)
    if image_size is None:
        size = default_image_size(name, dataset)
    else:
        size = check_int(image_size, "image_size (or None)")
    if size < spec.native_size:
        raise ValueError(
            f"image_size={size} is smaller than {dataset}'s {spec.native_size} px; "
            "use image_size >= the native size (images are only padded)"
        )
    if name == "lenet300100":
        return {"in_features": spec.in_channels * size * size, "num_classes": spec.num_classes}
    kwargs: dict[str, Any] = {"in_channels": spec.in_channels, "num_classes": spec.num_classes}
    if name in _SIZED_BY_IMAGE:
        kwargs["image_size"] = size
    if name in ("resnet18", "resnet50"):
        kwargs["small_input"] = size <= 64  # CIFAR stem (3x3, no max-pool) for small images
    return kwargs


def build_for_dataset(
    model: str, dataset: str, image_size: int | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh `model` sized for `dataset`, and the kwargs it was built with (for saving)."""
    kwargs = model_kwargs(model, dataset, image_size)
    return build_model(model, **kwargs), kwargs
