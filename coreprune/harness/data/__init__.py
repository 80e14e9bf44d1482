"""Datasets without torchvision: IDX (MNIST family) and CIFAR pickle readers, a fixed
train/validation split, batched tensor transforms and ``make_loaders``."""

from .cifar import load_cifar10, load_cifar100, load_pickle_batch
from .datasets import (
    DATASETS,
    DatasetSpec,
    Loaders,
    TransformedTensorDataset,
    build_transform,
    dataset_spec,
    load_dataset,
    make_loaders,
)
from .idx import parse_idx, read_idx, write_idx
from .mnist import DEFAULT_FASHION_MNIST_ROOT, load_fashion_mnist, load_mnist
from .raw import ImageData
from .splits import load_split, save_split, train_val_split

__all__ = [
    "DATASETS",
    "DEFAULT_FASHION_MNIST_ROOT",
    "DatasetSpec",
    "ImageData",
    "Loaders",
    "TransformedTensorDataset",
    "build_transform",
    "dataset_spec",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "load_pickle_batch",
    "load_split",
    "make_loaders",
    "parse_idx",
    "read_idx",
    "save_split",
    "train_val_split",
    "write_idx",
]
