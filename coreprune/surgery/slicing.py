"""Write smaller modules: keep some units of a layer and rescale how the next layer reads them.

Every function builds a new module of the same type, device and dtype; the input is only read.
"""

from __future__ import annotations

import torch
from torch import nn

from coreprune.surgery.units import Norm, Producer


def slice_producer(layer: Producer, keep: torch.Tensor) -> Producer:
    """The kept output units (rows / filters) of `layer`, as a new module."""
    keep = keep.to(layer.weight.device)
    if isinstance(layer, nn.Linear):
        new: Producer = nn.Linear(layer.in_features, len(keep), bias=layer.bias is not None)
    else:
        new = nn.Conv2d(
            layer.in_channels,
            len(keep),
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=1,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )
    new = new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight.index_select(0, keep))
        if layer.bias is not None:
            new.bias.copy_(layer.bias.index_select(0, keep))
    new.train(layer.training)
    return new


def slice_norm(norm: Norm, keep: torch.Tensor) -> Norm:
    """The kept channels of a batch norm, statistics included."""
    new = type(norm)(
        len(keep),
        eps=norm.eps,
        momentum=norm.momentum,
        affine=norm.affine,
        track_running_stats=norm.track_running_stats,
    )
    ref = norm.weight if norm.affine else norm.running_mean
    if ref is not None:
        new = new.to(device=ref.device, dtype=ref.dtype)
    keep = keep.to(new.running_mean.device if new.running_mean is not None else "cpu")
    with torch.no_grad():
        if norm.affine:
            new.weight.copy_(norm.weight.index_select(0, keep))
            new.bias.copy_(norm.bias.index_select(0, keep))
        if norm.running_mean is not None:
            new.running_mean.copy_(norm.running_mean.index_select(0, keep))
            new.running_var.copy_(norm.running_var.index_select(0, keep))
            new.num_batches_tracked.copy_(norm.num_batches_tracked)
    new.train(norm.training)
    return new


def slice_consumer(
    next_layer: Producer, n_units: int, keep: torch.Tensor, scale: torch.Tensor
) -> Producer:
    """`next_layer` reading only the kept units, each unit's input weights multiplied by its scale.

    After a flatten, unit i feeds a contiguous block of input columns; the whole block is kept
    and scaled.
    """
    device, dtype = next_layer.weight.device, next_layer.weight.dtype
    keep, scale = keep.to(device), scale.to(device=device, dtype=torch.float64)
    w = next_layer.weight.detach()
    if isinstance(next_layer, nn.Conv2d):
        new_w = (w.index_select(1, keep).to(torch.float64) * scale[None, :, None, None]).to(dtype)
        new: Producer = nn.Conv2d(
            len(keep),
            next_layer.out_channels,
            next_layer.kernel_size,
            stride=next_layer.stride,
            padding=next_layer.padding,
            dilation=next_layer.dilation,
            groups=1,
            bias=next_layer.bias is not None,
            padding_mode=next_layer.padding_mode,
        )
    else:
        block = next_layer.in_features // n_units
        blocks = w.reshape(w.shape[0], n_units, block).index_select(1, keep).to(torch.float64)
        new_w = (blocks * scale[None, :, None]).reshape(w.shape[0], -1).to(dtype)
        new = nn.Linear(
            len(keep) * block, next_layer.out_features, bias=next_layer.bias is not None
        )
    new = new.to(device=device, dtype=dtype)
    with torch.no_grad():
        new.weight.copy_(new_w)
        if next_layer.bias is not None:
            new.bias.copy_(next_layer.bias)
    new.train(next_layer.training)
    return new
