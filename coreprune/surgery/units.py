"""Read a layer's units and the next layer's reading weights out of modules (DESIGN §1).

A unit is a row of an `nn.Linear` or an output filter of an `nn.Conv2d`, flattened, with its bias
appended as the last coordinate and an eval-mode batch norm that follows it folded in. The next
layer reads the units through U (k x n): for a Linear, its weight; for a Conv2d, one row per
(output channel, kernel offset); for Flatten -> Linear, one row per (output, spatial position).
Everything is returned as fresh float64 tensors: the modules are only read.
"""

from __future__ import annotations

import torch
from torch import nn

Producer = nn.Linear | nn.Conv2d
Norm = nn.BatchNorm1d | nn.BatchNorm2d


def check_producer(layer: object, name: str = "layer") -> Producer:
    """Accept an nn.Linear or an ungrouped nn.Conv2d with finite weights."""
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"{name} must be nn.Linear or nn.Conv2d, got {type(layer).__name__}")
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise ValueError(f"{name}: grouped convolutions (groups={layer.groups}) are not supported")
    _check_finite(layer, name)
    return layer


def check_consumer(next_layer: object, n_units: int, name: str = "next_layer") -> Producer:
    """Accept a Linear/Conv2d that reads `n_units` channels (or a multiple, after a flatten)."""
    layer = check_producer(next_layer, name)
    width = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    if width % n_units != 0:
        raise ValueError(
            f"{name} reads {width} inputs but the layer has {n_units} units; pass the layer that "
            f"directly consumes this layer's outputs"
        )
    if isinstance(layer, nn.Conv2d) and width != n_units:
        raise ValueError(f"{name} has {width} input channels but the layer has {n_units} units")
    return layer


def layer_units(layer: Producer, norm: Norm | None = None) -> torch.Tensor:
    """Unit vectors p_i (n x d): flattened weights, bias last, eval-mode batch norm folded in."""
    weight = layer.weight.detach().to(torch.float64).reshape(layer.weight.shape[0], -1)
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
    if not isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d)):
        raise TypeError(f"norm must be nn.BatchNorm1d/2d, got {type(norm).__name__}")
    if norm.num_features != weight.shape[0]:
        raise ValueError(
            f"norm has {norm.num_features} features but the layer has {weight.shape[0]} units"
        )
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError(
            "norm must track running statistics (track_running_stats=True) to be folded"
        )
    _check_finite(norm, "norm")
    scale = 1.0 / torch.sqrt(norm.running_var.detach().to(torch.float64) + norm.eps)
    shift = -norm.running_mean.detach().to(torch.float64) * scale
    if norm.affine:
        gamma = norm.weight.detach().to(torch.float64)
        scale, shift = scale * gamma, shift * gamma + norm.bias.detach().to(torch.float64)
    return weight * scale[:, None], bias * scale + shift


def next_weights(
    next_layer: Producer | None, n_units: int, device: torch.device | None = None
) -> torch.Tensor:
    """U (k x n): how the next layer reads each unit; a single row of ones without a next layer."""
    if next_layer is None:
        return torch.ones(1, n_units, dtype=torch.float64, device=device)
    w = next_layer.weight.detach().to(torch.float64)
    if isinstance(next_layer, nn.Conv2d):
        return w.permute(0, 2, 3, 1).reshape(-1, n_units)
    block = w.shape[1] // n_units
    return w.reshape(w.shape[0], n_units, block).permute(0, 2, 1).reshape(-1, n_units)


def _check_finite(module: nn.Module, name: str) -> None:
    for pname, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(
                f"{name}.{pname} contains NaN or Inf; fix or re-initialise the weights"
            )
