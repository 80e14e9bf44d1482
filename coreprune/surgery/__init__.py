"""Read units out of modules and write smaller modules back."""

from coreprune.surgery.activations import Activation, resolve_activation
from coreprune.surgery.slicing import slice_consumer, slice_norm, slice_producer
from coreprune.surgery.units import layer_units, next_weights

__all__ = [
    "Activation",
    "layer_units",
    "next_weights",
    "resolve_activation",
    "slice_consumer",
    "slice_norm",
    "slice_producer",
]
