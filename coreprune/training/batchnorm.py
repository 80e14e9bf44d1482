"""Re-estimating batch-norm statistics of a pruned model, without a gradient step."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from coreprune.checks import check_int

__all__ = ["recalibrated_copy"]


def recalibrated_copy(
    model: nn.Module, loader: Iterable[Any], device: torch.device | str, batches: int = 20
) -> nn.Module:
    """A copy whose batch-norm running statistics are re-estimated on `batches` training batches.

    Pruning shifts every later layer's input distribution, so the dense model's running stats no
    longer fit; re-estimating them (no gradient step) is the usual cheap repair (e.g. EagleEye's
    adaptive BN). `loader` yields `(inputs, labels)` pairs; the labels are not used. The copy is
    returned in eval mode (a model without batch norm: an unchanged copy in its own mode);
    `model` itself is left untouched.
    """
    check_int(batches, "batches", minimum=1)
    work = copy.deepcopy(model).to(device)
    norms = [m for m in work.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return work
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    work.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            work(x.to(device))
    return work.eval()
