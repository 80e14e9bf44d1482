"""Accuracy and mean cross-entropy of a classifier over a whole loader."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ._device import model_device, resolve_device, unpack_batch


def evaluate(
    model: nn.Module, loader: DataLoader, device: str | torch.device | None = None
) -> dict[str, float]:
    """Return ``{"accuracy": fraction correct, "loss": mean cross-entropy}`` over ``loader``.

    Runs in eval mode (batch-norm running statistics, no dropout) and restores the model's
    previous mode. ``device=None`` uses the device the model is on; a given device moves the
    model there (in place) first.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    target = model_device(model) if device is None else resolve_device(device)
    model.to(target)
    channels_last = target.type == "cuda"
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=target)
    correct = torch.zeros((), dtype=torch.int64, device=target)
    count = 0
    try:
        with torch.inference_mode():
            for batch in loader:
                x, y = unpack_batch(batch, target, channels_last)
                logits = model(x).float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
                correct += (logits.argmax(dim=1) == y).sum()
                count += len(y)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("loader yielded no examples; cannot evaluate on an empty loader")
    return {"accuracy": correct.item() / count, "loss": loss_sum.item() / count}
