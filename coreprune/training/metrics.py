"""Accuracy and mean cross-entropy of a classifier over a whole loader."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from coreprune.checks import check_module
from coreprune.torch_utils import eval_mode, model_device, resolve_device

from ._device import unpack_batch


def evaluate(
    model: nn.Module, loader: DataLoader, device: str | torch.device | None = None
) -> dict[str, float]:
    """Return ``{"accuracy": fraction correct, "loss": mean cross-entropy}`` over ``loader``.

    Runs in eval mode (batch-norm running statistics, no dropout) and restores every
    submodule's previous train flag. ``device=None`` uses the device the model is on; a given device moves the
    model there (in place) first.
    """
    check_module(model, "model")
    target = model_device(model) if device is None else resolve_device(device)
    model.to(target)
    channels_last = target.type == "cuda"
    loss_sum = torch.zeros((), dtype=torch.float64, device=target)
    correct = torch.zeros((), dtype=torch.int64, device=target)
    count = 0
    with eval_mode(model), torch.inference_mode():
        for batch in loader:
            x, y = unpack_batch(batch, target, channels_last)
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(dim=1) == y).sum()
            count += len(y)
    if count == 0:
        raise ValueError("loader yielded no examples; cannot evaluate on an empty loader")
    return {"accuracy": correct.item() / count, "loss": loss_sum.item() / count}
