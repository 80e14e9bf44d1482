"""A fixed, seeded train/validation split, so every run and every method chooses its
hyper-parameters on the same held-out examples, and the split can be saved with results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from coreprune.checks import check_fraction, check_int

_FORMAT = "coreprune.split/1"


def train_val_split(
    n: int, val_fraction: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into sorted, disjoint (train_idx, val_idx) LongTensors.

    The validation part has ``round(n * val_fraction)`` examples, drawn by a CPU
    ``torch.Generator`` seeded with ``seed``, so the split is the same on every machine.
    """
    n = check_int(n, "n (at least 2, to leave both a train and a validation part)", minimum=2)
    check_fraction(val_fraction, "val_fraction")
    check_int(seed, "seed")
    n_val = round(n * val_fraction)
    if not 1 <= n_val <= n - 1:
        raise ValueError(
            f"val_fraction={val_fraction} of n={n} gives {n_val} validation examples; "
            "choose a fraction that leaves at least one example on each side"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    val_idx = order[:n_val].sort().values
    train_idx = order[n_val:].sort().values
    return train_idx, val_idx


def save_split(
    path: str | os.PathLike[str], train_idx: torch.Tensor, val_idx: torch.Tensor
) -> None:
    """Write a split as JSON (indices as plain lists), checked before writing."""
    n = len(train_idx) + len(val_idx)
    check_partition(train_idx.tolist(), val_idx.tolist(), n, str(path))
    payload = {
        "format": _FORMAT,
        "n": n,
        "train": [int(i) for i in train_idx.tolist()],
        "val": [int(i) for i in val_idx.tolist()],
    }
    Path(path).write_text(json.dumps(payload))


def load_split(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a split written by ``save_split``; a malformed file raises ValueError naming it."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a coreprune split file (format {_FORMAT!r})")
    train, val, n = payload.get("train"), payload.get("val"), payload.get("n")
    if not isinstance(train, list) or not isinstance(val, list) or not isinstance(n, int):
        raise ValueError(f"{path}: 'train', 'val' must be lists and 'n' an int")
    check_partition(train, val, n, str(path))
    return torch.tensor(train, dtype=torch.int64), torch.tensor(val, dtype=torch.int64)


def check_partition(train: list[object], val: list[object], n: int, name: str) -> None:
    """Raise unless train and val are disjoint and together are exactly 0..n-1."""
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in train + val):
        raise ValueError(f"{name}: split indices must be integers")
    if sorted(train + val) != list(range(n)):  # type: ignore[type-var]
        raise ValueError(f"{name}: train and val must be disjoint and cover 0..{n - 1}")
