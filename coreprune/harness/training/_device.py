"""Device choice and batch transfer shared by ``fit`` and ``evaluate``."""

from __future__ import annotations

import torch
from torch import nn


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> CUDA when available, else CPU; a CUDA request without CUDA is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a valid torch device") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use 'cpu' or None")
    return resolved


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for an empty model)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


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
