"""Write smaller modules: keep some units of a layer and rescale how the next layer reads them.

Every function builds a new module of the same class, device and dtype (forward hooks, train
flags and `requires_grad` carried over); the input is only read. The per-type work lives in
`coreprune.surgery.registry`.
"""

from __future__ import annotations

import torch

from coreprune.surgery.registry import layer_kind, norm_kind
from coreprune.surgery.units import Norm, Producer

__all__ = ["slice_consumer", "slice_norm", "slice_producer"]


def slice_producer(layer: Producer, keep: torch.Tensor) -> Producer:
    """The kept output units (rows / filters) of `layer`, as a new module."""
    kind = layer_kind(layer)
    if kind is None:
        raise TypeError(f"layer must be nn.Linear or nn.Conv2d, got {type(layer).__name__}")
    return kind.slice_outputs(layer, keep)  # type: ignore[return-value]


def slice_norm(norm: Norm, keep: torch.Tensor) -> Norm:
    """The kept channels of a batch norm, statistics included."""
    kind = norm_kind(norm)
    if kind is None:
        raise TypeError(f"norm must be nn.BatchNorm1d/2d, got {type(norm).__name__}")
    return kind.slice(norm, keep)  # type: ignore[return-value]


def slice_consumer(
    next_layer: Producer, n_units: int, keep: torch.Tensor, scale: torch.Tensor | None = None
) -> Producer:
    """`next_layer` reading only the kept units, each unit's input weights multiplied by its scale.

    After a flatten, unit i feeds a contiguous block of input columns; the whole block is kept
    and scaled.
    """
    kind = layer_kind(next_layer)
    if kind is None:
        raise TypeError(
            f"next_layer must be nn.Linear or nn.Conv2d, got {type(next_layer).__name__}"
        )
    return kind.slice_inputs(next_layer, n_units, keep, scale)  # type: ignore[return-value]
