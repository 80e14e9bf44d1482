"""Batch transfer shared by ``fit`` and ``evaluate`` (device choice is
``coreprune.torch_utils``'s ``resolve_device`` and ``model_device``)."""

from __future__ import annotations

import torch


def unpack_batch(
    batch: object, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move an ``(inputs, targets)`` batch to ``device`` (non-blocking from pinned memory)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError("the loader must yield (inputs, targets) pairs")
    x, y = batch
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("the loader must yield tensors (inputs, targets)")
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)
