"""Dataset specs, a batched tensor dataset, and ``make_loaders`` (train / val / test).

The validation part is a fixed seeded 10% of the official training set (``seed`` picks the
split, never the shuffling), so methods are tuned on the same examples and test stays unseen.
Shuffling and augmentation draw from torch's global RNG; seed it with
``coreprune.harness.training.set_seed`` for reproducible runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from coreprune.checks import check_int

from .cifar import load_cifar10, load_cifar100
from .mnist import load_fashion_mnist, load_mnist
from .raw import ImageData
from .splits import check_partition, load_split, train_val_split
from .transforms import Compose, Normalize, PadTo, RandomCrop, RandomHorizontalFlip, ToFloat


@dataclass(frozen=True)
class DatasetSpec:
    """What the loaders need to know about a dataset.

    ``mean``/``std`` are per-channel statistics of the training images at native size.
    ``flip`` says whether a horizontal mirror keeps the label: yes for garments and CIFAR
    objects, no for digits (a mirrored 3 is not a 3).
    """

    name: str
    num_classes: int
    in_channels: int
    native_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    crop_padding: int
    needs_root: bool


DATASETS: dict[str, DatasetSpec] = {
    # Fashion-MNIST statistics measured on the 60k training images here: 0.2860, 0.3530.
    "fashion_mnist": DatasetSpec("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,), True, 2, False),
    "mnist": DatasetSpec("mnist", 10, 1, 28, (0.1307,), (0.3081,), False, 2, True),
    "cifar10": DatasetSpec(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True, 4, True
    ),
    "cifar100": DatasetSpec(
        "cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True, 4, True
    ),
}

_LOADERS: dict[str, Callable[..., ImageData]] = {
    "fashion_mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
}


def dataset_spec(name: str) -> DatasetSpec:
    """Look up a dataset by name; unknown names raise ValueError listing the valid ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[name]


_WHERE = {
    "mnist": "the four MNIST IDX files (train-images-idx3-ubyte.gz, ...)",
    "cifar10": "the CIFAR-10 python batches (the extracted cifar-10-batches-py folder of "
    "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html)",
    "cifar100": "the CIFAR-100 python files (the extracted cifar-100-python folder of "
    "cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html)",
}


def load_dataset(name: str, root: str | os.PathLike[str] | None = None) -> ImageData:
    """Load the raw train/test tensors of a named dataset."""
    spec = dataset_spec(name)
    if root is None and spec.needs_root:
        raise ValueError(f"dataset {name!r} needs root=, the folder holding {_WHERE[name]}")
    return _LOADERS[name](root)


class TransformedTensorDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images and labels in memory, transformed on access.

    ``__getitems__`` lets ``DataLoader`` fetch a whole batch with one call, so the transform
    runs once per batch instead of once per image.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) must match")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def _apply(self, batch: torch.Tensor) -> torch.Tensor:
        return batch if self.transform is None else self.transform(batch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._apply(self.images[index].unsqueeze(0))[0], self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        images = self._apply(self.images[index])
        return list(zip(images.unbind(0), self.labels[index].unbind(0), strict=True))


def build_transform(spec: DatasetSpec, *, image_size: int, augment: bool) -> Compose:
    """uint8 -> float, zero-pad to ``image_size``, [random crop, flip], normalise."""
    steps: list[object] = [ToFloat()]
    if image_size != spec.native_size:
        steps.append(PadTo(image_size))
    if augment:
        steps.append(RandomCrop(spec.crop_padding))
        if spec.flip:
            steps.append(RandomHorizontalFlip())
    steps.append(Normalize(spec.mean, spec.std))
    return Compose(steps)


def _given_split(
    split: tuple[torch.Tensor, torch.Tensor] | str | os.PathLike[str], n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A user-given split, checked to partition the ``n`` training examples."""
    if isinstance(split, (str, os.PathLike)):
        train_idx, val_idx = load_split(split)
    elif isinstance(split, tuple) and len(split) == 2:
        train_idx, val_idx = split
        if not all(isinstance(t, torch.Tensor) and t.ndim == 1 for t in split):
            raise TypeError("split must hold two 1-D index tensors (train_idx, val_idx)")
        check_partition(train_idx.tolist(), val_idx.tolist(), n, "split")
    else:
        raise TypeError(
            f"split must be (train_idx, val_idx) or a path from save_split, got {type(split).__name__}"
        )
    if len(train_idx) + len(val_idx) != n:
        raise ValueError(
            f"split covers {len(train_idx) + len(val_idx)} examples but the dataset's training "
            f"set has {n}; use the split saved for this dataset"
        )
    return train_idx.long(), val_idx.long()


class Loaders(NamedTuple):
    train: DataLoader
    val: DataLoader
    test: DataLoader


def make_loaders(
    name: str = "fashion_mnist",
    root: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 128,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: bool = True,
    image_size: int | None = None,
    limit: int | None = None,
    num_workers: int = 0,
    eval_batch_size: int | None = None,
    data: ImageData | None = None,
    split: tuple[torch.Tensor, torch.Tensor] | str | os.PathLike[str] | None = None,
) -> Loaders:
    """Train (shuffled, augmented if ``augment``), validation and test loaders.

    - ``seed`` fixes the train/validation split (see ``train_val_split``).
    - ``image_size``: None keeps the native size; 32 zero-pads 28 px digits for CIFAR-style
      models. Shrinking is refused.
    - ``limit`` caps each of the three parts at that many examples (the first ones of the
      split, or of test), for quick runs.
    - ``data`` uses already-loaded tensors instead of reading ``root``.
    - ``split``: a ``(train_idx, val_idx)`` pair or a file written by ``save_split`` to use
      instead of the seeded split (to rerun on the split saved with earlier results);
      ``val_fraction`` and ``seed`` are then ignored.
    """
    spec = dataset_spec(name)
    check_int(batch_size, "batch_size", minimum=1)
    eval_batch = check_int(
        batch_size if eval_batch_size is None else eval_batch_size, "eval_batch_size", minimum=1
    )
    check_int(num_workers, "num_workers", minimum=0)
    size = (
        spec.native_size if image_size is None else check_int(image_size, "image_size", minimum=1)
    )
    if size < spec.native_size:
        raise ValueError(
            f"image_size={size} is smaller than {name}'s {spec.native_size} px; "
            "only padding is supported, use image_size >= native size"
        )
    if limit is not None:
        check_int(limit, "limit", minimum=1)
    if data is None:
        data = load_dataset(name, root)
    elif not isinstance(data, ImageData):
        raise TypeError(f"data must be an ImageData, got {type(data).__name__}")

    if split is None:
        train_idx, val_idx = train_val_split(len(data.train_labels), val_fraction, seed)
    else:
        train_idx, val_idx = _given_split(split, len(data.train_labels))
    test_idx = torch.arange(len(data.test_labels))
    if limit is not None:
        train_idx, val_idx, test_idx = train_idx[:limit], val_idx[:limit], test_idx[:limit]

    train_tf = build_transform(spec, image_size=size, augment=augment)
    eval_tf = build_transform(spec, image_size=size, augment=False)
    pin = torch.cuda.is_available()

    def loader(images: torch.Tensor, labels: torch.Tensor, tf: Compose, train: bool) -> DataLoader:
        return DataLoader(
            TransformedTensorDataset(images, labels, tf),
            batch_size=batch_size if train else eval_batch,
            shuffle=train,
            num_workers=num_workers,
            pin_memory=pin,
        )

    return Loaders(
        train=loader(data.train_images[train_idx], data.train_labels[train_idx], train_tf, True),
        val=loader(data.train_images[val_idx], data.train_labels[val_idx], eval_tf, False),
        test=loader(data.test_images[test_idx], data.test_labels[test_idx], eval_tf, False),
    )
