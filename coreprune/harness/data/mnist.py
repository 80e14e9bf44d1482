"""MNIST and Fashion-MNIST from their four IDX files (gzipped or not)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .idx import read_idx
from .raw import ImageData

DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find(root: Path, stem: str, how_to_get: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"missing {stem}.gz (or {stem}) in {root}; {how_to_get}")


def _load_images(path: Path) -> torch.Tensor:
    array = read_idx(path)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != (28, 28):
        raise ValueError(
            f"{path}: expected uint8 images of shape (N, 28, 28), got {array.dtype} {array.shape}"
        )
    return torch.from_numpy(array)


def _load_labels(path: Path) -> torch.Tensor:
    array = read_idx(path)
    if array.dtype != np.uint8 or array.ndim != 1:
        raise ValueError(f"{path}: expected 1-D uint8 labels, got {array.dtype} {array.shape}")
    if array.size and array.max() > 9:
        raise ValueError(f"{path}: labels must lie in 0..9, found {int(array.max())}")
    return torch.from_numpy(array.astype(np.int64))


def _load_folder(root: Path, how_to_get: str) -> ImageData:
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist; {how_to_get}")
    paths = {key: _find(root, stem, how_to_get) for key, stem in _STEMS.items()}
    data = {
        key: (_load_images if key.endswith("images") else _load_labels)(path)
        for key, path in paths.items()
    }
    for split in ("train", "test"):
        n_images, n_labels = len(data[f"{split}_images"]), len(data[f"{split}_labels"])
        if n_images != n_labels:
            raise ValueError(
                f"{paths[f'{split}_images']} has {n_images} images but "
                f"{paths[f'{split}_labels']} has {n_labels} labels"
            )
    return ImageData(num_classes=10, **data)


def load_fashion_mnist(root: str | os.PathLike[str] | None = None) -> ImageData:
    """Fashion-MNIST (Xiao et al., 2017): 60k train / 10k test 28x28 grey images, 10 classes.

    ``root`` defaults to the Debian package's folder ``/usr/share/datasets/fashion-mnist``.
    """
    if root is None:
        hint = "install it with `apt-get install dataset-fashion-mnist` or pass root="
        return _load_folder(DEFAULT_FASHION_MNIST_ROOT, hint)
    return _load_folder(Path(root), _hint(root))


def load_mnist(root: str | os.PathLike[str]) -> ImageData:
    """MNIST digits (LeCun et al.) from a folder holding the four IDX files."""
    if root is None:
        raise TypeError(f"load_mnist needs root=, a folder with the IDX files; {_hint('it')}")
    return _load_folder(Path(root), _hint(root))


def _hint(root: str | os.PathLike[str]) -> str:
    stems = ", ".join(f"{s}.gz" for s in _STEMS.values())
    return f"put the IDX files ({stems}) in {root}"
