"""Seeding and RNG snapshots: one call that seeds every RNG a training run touches, a
per-epoch seed so data order does not depend on history, and snapshots a checkpoint can hold
(plain tensors and numbers, so they load with ``torch.load(weights_only=True)``)."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from coreprune.checks import check_int

SEED_MAX = 2**32 - 1
"""The largest seed: NumPy's global RNG takes seeds in [0, 2**32)."""


def set_seed(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (CPU and all GPUs).

    Shuffling and augmentation in ``coreprune.harness.data`` draw from torch's global RNG, so this
    also fixes the data order. ``deterministic=True`` additionally asks torch for
    deterministic kernels (a process-wide switch; slower on GPU) for bit-exact GPU reruns.
    """
    check_int(seed, "seed", minimum=0, maximum=SEED_MAX)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def epoch_seed(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> int:
    """A 32-bit seed for one epoch of one process, mixed from ``(seed, epoch, rank, stream)``.

    Mixing (rather than ``seed + epoch``) keeps runs with neighbouring seeds from replaying
    each other's epochs and gives each DDP rank its own augmentation draws; ``stream``
    separates independent uses (global RNGs, a loader's own generator) within one epoch.
    """
    check_int(seed, "seed", minimum=0, maximum=SEED_MAX)
    words = [seed, epoch, rank, stream]
    state = np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)
    return int(state[0])


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed every global RNG for one epoch, so the epoch's data order and augmentation depend
    only on ``(seed, epoch, rank)`` and a resumed run replays them exactly."""
    value = epoch_seed(seed, epoch, rank)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def rng_snapshot(device: torch.device | None = None) -> dict[str, object]:
    """The state of Python's, NumPy's and torch's CPU RNGs, and of ``device``'s RNG when it
    is a CUDA device (only that one: touching the others would open a context on each)."""
    version, words, gauss = random.getstate()
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # legacy=True: (kind, keys, pos, has_gauss, cached)
    kind, keys, pos, has_gauss, cached = state
    snapshot: dict[str, object] = {
        "python": {
            "version": version,
            "words": torch.tensor(words, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        snapshot["cuda"] = torch.cuda.get_rng_state(device)
    return snapshot


def restore_rng(snapshot: dict[str, Any], device: torch.device | None = None) -> None:
    """Put back RNG states taken by ``rng_snapshot``; the CUDA state goes to ``device`` when
    that is a CUDA device (a CPU checkpoint resumed on a GPU leaves the GPU RNG as it is)."""
    py, npy = snapshot["python"], snapshot["numpy"]
    random.setstate((py["version"], tuple(py["words"].tolist()), py["gauss"]))
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(snapshot["torch"])
    cuda = snapshot.get("cuda")
    if cuda is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
