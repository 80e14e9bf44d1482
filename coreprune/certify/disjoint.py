"""The holdout must be used for nothing else: refuse one that shares inputs with calibration.

A held-out certificate is valid because the held-out examples are independent of every choice
made before it (`ASSUMPTION`). Calibration data steer those choices (the query spaces, the
kept units, the refitted weights), so a holdout that overlaps it certifies the model on data it
was fitted to. Exact overlap is detected by hashing each input row (its shape and float64
bytes, so a float32 copy of a float64 row still matches); near-duplicates are not detected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

from coreprune.certify._data import Batches

__all__ = ["check_disjoint", "row_digests"]


def row_digests(inputs: torch.Tensor) -> list[bytes]:
    """One 16-byte BLAKE2 digest per row of `inputs` (first dimension), of its shape and values."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.ndim == 0:
        raise ValueError("inputs must have a first (example) dimension, got a 0-d tensor")
    rows = inputs.detach().to(device="cpu", dtype=torch.float64).contiguous()
    shape = repr(tuple(rows.shape[1:])).encode()
    data = rows.numpy().reshape(rows.shape[0], -1)
    # +0.0 turns -0.0 into 0.0 so that equal inputs hash equally.
    return [hashlib.blake2b(shape + (r + 0.0).tobytes(), digest_size=16).digest() for r in data]


def check_disjoint(
    holdout: Batches | Iterable[tuple[torch.Tensor, object]], calibration: object
) -> None:
    """Raise ValueError when any held-out input equals a calibration input.

    `holdout` is a checked holdout (or any iterable of (inputs, labels) batches); `calibration`
    a tensor of inputs (one per row) or None (nothing to compare). Runs before any compression
    or model, so a holdout reused as calibration costs nothing but the hashing.
    """
    if calibration is None:
        return
    if not isinstance(calibration, torch.Tensor):
        raise TypeError(
            f"calibration must be a tensor of inputs to check it against the holdout, got "
            f"{type(calibration).__name__}"
        )
    used = set(row_digests(calibration))
    shared, first, seen = 0, -1, 0
    for x, _ in holdout:
        for offset, digest in enumerate(row_digests(x)):
            if digest in used:
                shared += 1
                first = seen + offset if first < 0 else first
        seen += len(x)
    if shared:
        raise ValueError(
            f"holdout and calibration share {shared} of the holdout's {seen} inputs (first: "
            f"held-out example {first}); the held-out certificate assumes the holdout was used "
            "for nothing else, and calibration chose the kept units and refitted weights. Draw "
            "calibration from other data (e.g. the training split), or drop the shared examples "
            "from the holdout"
        )
