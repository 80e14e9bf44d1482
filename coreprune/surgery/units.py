"""Read a layer's units and the next layer's reading weights out of modules.

A unit is a row of an `nn.Linear` or an output filter of an `nn.Conv2d`, flattened, with its bias
appended as the last coordinate and an eval-mode batch norm that follows it folded in. The next
layer reads the units through U (k x n): for a Linear, its weight; for a Conv2d, one row per
(output channel, kernel offset); for Flatten -> Linear, one row per (output, spatial position).
Everything is returned as fresh float64 tensors: the modules are only read.
"""

from __future__ import annotations

import torch
from torch import nn

from coreprune.surgery.registry import layer_kind, norm_kind, unsupported_reason

Producer = nn.Linear | nn.Conv2d
Norm = nn.BatchNorm1d | nn.BatchNorm2d


def check_producer(layer: object, name: str = "layer") -> Producer:
    """Accept a supported layer (see `coreprune.surgery.registry`) with finite weights."""
    if layer_kind(layer) is None:
        raise TypeError(
            f"{name} must be nn.Linear, nn.Conv2d or HF-style Conv1D, got {type(layer).__name__}"
        )
    reason = unsupported_reason(layer)
    if reason is not None:
        raise ValueError(f"{name} is {reason}")
    assert isinstance(layer, nn.Module)  # the registry knows it: Linear, Conv2d or HF Conv1D
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    if weight.is_complex():
        raise TypeError(
            f"{name} has complex weights ({weight.dtype}); certificates are for real layers"
        )
    if weight.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (no values); materialise it first")
    kind = layer_kind(layer)
    assert kind is not None
    width = "in_features" if isinstance(layer, nn.Linear) else "in_channels"
    if kind.in_units(layer) == 0:
        raise ValueError(f"{name} has no inputs ({width}=0); give it at least one input")
    if kind.out_units(layer) == 0:
        raise ValueError(f"{name} has no units (shape {tuple(weight.shape)}); nothing to prune")
    _check_finite(layer, name)
    return layer  # type: ignore[return-value]  # a Conv1D is read through the registry like a Linear


def check_consumer(
    next_layer: object, n_units: int, name: str = "next_layer", *, producer: object = None
) -> Producer:
    """Accept a layer that reads `n_units` channels, or a multiple after a flatten.

    A flatten block is only possible after a conv producer: a Linear producer's consumer must
    read exactly its `n_units` outputs, so no column layout is ever guessed.
    """
    layer = check_producer(next_layer, name)
    kind = layer_kind(layer)
    assert kind is not None
    width = kind.in_units(layer)
    if width % n_units != 0:
        raise ValueError(
            f"{name} reads {width} inputs but the layer has {n_units} units; pass the layer that "
            f"directly consumes this layer's outputs"
        )
    if width != n_units and (isinstance(layer, nn.Conv2d) or isinstance(producer, nn.Linear)):
        raise ValueError(
            f"{name} reads {width} inputs but the layer has {n_units} units: a wider consumer "
            "is only read through a flatten after a conv layer; pass the layer that directly "
            "consumes this layer's outputs"
        )
    return layer


def layer_units(layer: Producer, norm: Norm | None = None) -> torch.Tensor:
    """Unit vectors p_i (n x d): flattened weights, bias last, eval-mode batch norm folded in."""
    kind = layer_kind(layer)
    if kind is None:
        raise TypeError(f"layer must be nn.Linear or nn.Conv2d, got {type(layer).__name__}")
    weight = kind.unit_weights(layer)
    n = weight.shape[0]
    if layer.bias is not None:
        bias = layer.bias.detach().to(torch.float64)
    else:
        bias = torch.zeros(n, dtype=torch.float64, device=weight.device)
    if norm is not None:
        weight, bias = _fold_norm(weight, bias, norm)
    return torch.cat([weight, bias[:, None]], dim=1)


def _fold_norm(
    weight: torch.Tensor, bias: torch.Tensor, norm: Norm
) -> tuple[torch.Tensor, torch.Tensor]:
    """BN(y) = a * y + b per channel with its running statistics, as in eval mode."""
    kind = norm_kind(norm)
    if kind is None:
        raise TypeError(f"norm must be nn.BatchNorm1d/2d, got {type(norm).__name__}")
    if norm.num_features != weight.shape[0]:
        raise ValueError(
            f"norm has {norm.num_features} features but the layer has {weight.shape[0]} units"
        )
    reason = kind.unsupported(norm)
    if reason is not None:
        raise ValueError(f"norm: {reason}; pass track_running_stats=True")
    _check_finite(norm, "norm")
    return kind.fold(weight, bias, norm)


def next_weights(
    next_layer: Producer | None, n_units: int, device: torch.device | None = None
) -> torch.Tensor:
    """U (k x n): how the next layer reads each unit; a single row of ones without a next layer."""
    if next_layer is None:
        return torch.ones(1, n_units, dtype=torch.float64, device=device)
    kind = layer_kind(next_layer)
    if kind is None:
        raise TypeError(
            f"next_layer must be nn.Linear or nn.Conv2d, got {type(next_layer).__name__}"
        )
    return kind.reading(next_layer, n_units)


def _check_finite(module: nn.Module, name: str) -> None:
    for pname, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(
                f"{name}.{pname} contains NaN or Inf; fix or re-initialise the weights"
            )
