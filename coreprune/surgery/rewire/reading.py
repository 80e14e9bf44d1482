"""A consumer's reading of the kept units, in both of its forms.

A rewiring produces the reading U' of the kept units (k x |keep|, in `next_weights` layout),
but its certificate compares it with U on all n units (k x n, zero in the removed units'
columns), and the pruned network needs a module. `expand_reading` scatters the first form into
the second; `consumer_from_reading` builds the module, inverting `next_weights`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from coreprune.surgery.registry import is_conv1d, layer_kind
from coreprune.surgery.units import Producer


def _check_keep(keep: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(keep, torch.Tensor):
        raise TypeError(f"keep must be a torch.Tensor of indices, got {type(keep).__name__}")
    if keep.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"keep must hold integer indices, got dtype {keep.dtype}")
    if keep.ndim != 1 or keep.numel() == 0:
        raise ValueError(f"keep must be a non-empty 1-D tensor, got shape {tuple(keep.shape)}")
    keep = keep.detach().to(device="cpu", dtype=torch.long)
    if int(keep.min()) < 0 or int(keep.max()) >= n:
        raise ValueError(f"keep holds indices outside [0, {n})")
    if torch.unique(keep).numel() != keep.numel():
        raise ValueError("keep holds repeated indices; each kept unit must appear once")
    return keep


def expand_reading(reading: torch.Tensor, keep: torch.Tensor, n_units: int) -> torch.Tensor:
    """Scatter a k x |keep| reading back to k x n, with zeros in the removed units' columns."""
    if not isinstance(reading, torch.Tensor) or reading.ndim != 2:
        raise TypeError("reading must be a 2-D torch.Tensor (k x |keep|)")
    keep = _check_keep(keep, n_units)
    if reading.shape[1] != keep.numel():
        raise ValueError(
            f"reading has {reading.shape[1]} columns but keep has {keep.numel()} indices"
        )
    full = reading.new_zeros(reading.shape[0], n_units)
    full[:, keep.to(reading.device)] = reading
    return full


def consumer_from_reading(next_layer: Producer, reading: torch.Tensor) -> Producer:
    """A copy of the dense consumer `next_layer` whose weight reads the kept units through
    `reading` (k x |keep|, in `next_weights` layout); its bias is copied unchanged.

    This inverts `next_weights`: for a Conv2d the rows are (output channel, kernel offset); for
    a Linear after a flatten, (output, position within each unit's block).
    """
    conv1d = not isinstance(next_layer, (nn.Linear, nn.Conv2d)) and is_conv1d(next_layer)
    if not isinstance(next_layer, (nn.Linear, nn.Conv2d)) and not conv1d:
        raise TypeError(
            f"next_layer must be nn.Linear, nn.Conv2d or HF-style Conv1D, got {type(next_layer)}"
        )
    if not isinstance(reading, torch.Tensor) or reading.ndim != 2 or reading.shape[1] == 0:
        raise ValueError("reading must be a 2-D tensor with at least one column")
    if conv1d:
        return _conv1d_from_reading(next_layer, reading)
    w = next_layer.weight
    kept = reading.shape[1]
    r = reading.detach().to(torch.float64)
    if isinstance(next_layer, nn.Conv2d):
        if next_layer.groups != 1:
            raise ValueError("grouped convolutions are not supported")
        kh, kw = next_layer.kernel_size
        if r.shape[0] != next_layer.out_channels * kh * kw:
            raise ValueError(
                f"reading has {r.shape[0]} rows; a Conv2d with {next_layer.out_channels} outputs "
                f"and a {kh}x{kw} kernel needs {next_layer.out_channels * kh * kw}"
            )
        new_w = r.reshape(next_layer.out_channels, kh, kw, kept).permute(0, 3, 1, 2)
    else:
        out = next_layer.out_features
        if r.shape[0] % out != 0:
            raise ValueError(f"reading has {r.shape[0]} rows, not a multiple of {out} outputs")
        block = r.shape[0] // out
        new_w = r.reshape(out, block, kept).permute(0, 2, 1).reshape(out, kept * block)
    new = _module_like(next_layer, new_w.shape[1] if isinstance(next_layer, nn.Linear) else kept)
    with torch.no_grad():
        new.weight.copy_(new_w.to(dtype=w.dtype, device=w.device))
        if next_layer.bias is not None and new.bias is not None:
            new.bias.copy_(next_layer.bias)
    return new


def _conv1d_from_reading(next_layer: nn.Module, reading: torch.Tensor) -> Producer:
    """`consumer_from_reading` for an HF Conv1D: the registry's inverse of its reading, in the
    module's own (inputs, outputs) layout, on a copy that keeps its class, hooks and flags."""
    kind = layer_kind(next_layer)
    assert kind is not None
    out = kind.out_units(next_layer)
    if reading.shape[0] % out != 0:
        raise ValueError(f"reading has {reading.shape[0]} rows, not a multiple of {out} outputs")
    weight = kind.weight_from_reading(next_layer, reading.detach().to(torch.float64))
    new = copy.deepcopy(next_layer)
    old = next_layer.weight
    assert isinstance(old, torch.Tensor)
    new.weight = nn.Parameter(
        weight.to(dtype=old.dtype, device=old.device), requires_grad=old.requires_grad
    )
    if hasattr(new, "nx"):
        setattr(new, "nx", int(weight.shape[0]))  # noqa: B010 - HF keeps the input width
    return new  # type: ignore[return-value]


def _module_like(layer: Producer, width: int) -> Producer:
    """A fresh copy of `layer` with `width` inputs (features or channels); flags preserved."""
    new = copy.deepcopy(layer)
    w = layer.weight
    if isinstance(layer, nn.Conv2d):
        shape = (layer.out_channels, width, *layer.kernel_size)
        new.in_channels = width
    else:
        shape = (layer.out_features, width)
        new.in_features = width
    new.weight = nn.Parameter(
        torch.empty(shape, dtype=w.dtype, device=w.device), requires_grad=w.requires_grad
    )
    return new
