"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the "python version" pickle batches.

Pickle can run arbitrary code, so we unpickle with an allow-list holding only what numpy
needs to rebuild an array (and a latin-1 ``_codecs.encode`` that protocol-2 pickles of bytes
use). Anything else in the file is refused.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .raw import ImageData

_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The only use of ``_codecs.encode`` a data pickle needs: str -> bytes as latin-1."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # numpy 2 home
        return getattr(__import__(module, fromlist=[name]), name)


def load_pickle_batch(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Unpickle one batch with the numpy-only allow-list; keys come back as ``str``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR batch not found: {path}")
    raw = path.read_bytes()
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path}: not a valid CIFAR pickle batch ({error})") from error
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise ValueError(f"{path}: corrupt or truncated pickle ({error!r})") from error
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _parse_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle_batch(path)
    for key in ("data", label_key):
        if key not in batch:
            raise ValueError(f"{path}: missing key {key!r} (found {sorted(batch)})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{path}: 'data' must be a 2-D uint8 array")
    if data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' rows must have 3072 values, got {data.shape[1]}")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {label_key!r} is not a list of integers") from error
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: {data.shape[0]} images but {label_key!r} has shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels must lie in [0, {num_classes})")
    return data.reshape(-1, 3, 32, 32), labels


def _load(
    root: Path, train: list[str], test: list[str], label_key: str, num_classes: int
) -> ImageData:
    if not root.is_dir():
        names = ", ".join(train + test)
        raise FileNotFoundError(
            f"CIFAR folder {root} does not exist; download the python version of the "
            f"dataset and put its batches ({names}) there"
        )
    parts = {}
    for split, files in (("train", train), ("test", test)):
        arrays = [_parse_batch(root / n, label_key, num_classes) for n in files]
        parts[f"{split}_images"] = torch.from_numpy(np.concatenate([a for a, _ in arrays]))
        parts[f"{split}_labels"] = torch.from_numpy(np.concatenate([b for _, b in arrays]))
    return ImageData(num_classes=num_classes, **parts)


def load_cifar10(root: str | os.PathLike[str]) -> ImageData:
    """CIFAR-10 from ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` in ``root``
    (the ``cifar-10-batches-py`` folder). Images come back as uint8 (N, 3, 32, 32)."""
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return _load(_root(root, "load_cifar10"), train, ["test_batch"], "labels", 10)


def load_cifar100(
    root: str | os.PathLike[str], label_mode: Literal["fine", "coarse"] = "fine"
) -> ImageData:
    """CIFAR-100 from ``train`` and ``test`` in ``root`` (the ``cifar-100-python`` folder);
    ``label_mode`` picks the 100 fine or the 20 coarse classes."""
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    classes = 100 if label_mode == "fine" else 20
    return _load(_root(root, "load_cifar100"), ["train"], ["test"], f"{label_mode}_labels", classes)


def _root(root: str | os.PathLike[str] | None, caller: str) -> Path:
    if root is None:
        raise TypeError(f"{caller} needs root=, the folder holding the python pickle batches")
    return Path(root)
