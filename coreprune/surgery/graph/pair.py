"""What the pair walk hands back: a prunable (producer, consumer) pair, a layer that is not the
producer of one with the reason, and the error for a model torch.fx cannot trace.

They live apart from the walk so that the group discovery, the validation of hand-given pairs
and every caller can name them without pulling in the walk itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from coreprune.surgery.activations import Activation, activation_of

__all__ = ["POOLING_KINDS", "BlockedLayer", "FxTraceError", "PrunablePair"]

POOLING_KINDS = ("max", "avg", "adaptive_avg", "adaptive_max")


@dataclass(frozen=True)
class PrunablePair:
    """A producer whose output units may be removed, and the one layer that reads them.

    `between` lists the fx node names of the ops between the two (the norm included), in order.
    `activation` is an `Activation` in every pair `find_prunable_pairs` or `validate_pairs`
    returns; a hand-made pair may give a name ('relu', 'gelu_tanh', 'leaky_relu:0.2'), which
    `validate_pairs` converts.
    """

    producer: str
    consumer: str
    norm: str | None
    activation: Activation | str
    flatten: bool
    between: tuple[str, ...]
    pooling: tuple[str, ...]

    @classmethod
    def simple(
        cls,
        producer: str,
        consumer: str,
        activation: Activation | str = "relu",
        *,
        norm: str | None = None,
        flatten: bool = False,
        pooling: tuple[str, ...] = (),
    ) -> PrunablePair:
        """A hand-made pair from module names and the activation between them (a name or an
        `Activation`); check it against the model with `validate_pairs`."""
        if not isinstance(activation, (Activation, str)):
            raise TypeError(
                f"activation must be a name such as 'relu' or an Activation, got "
                f"{type(activation).__name__}"
            )
        act = activation_of(activation)
        return cls(producer, consumer, norm, act, flatten, (), tuple(pooling))


@dataclass(frozen=True)
class BlockedLayer:
    """A Linear/Conv2d that is not the producer of any pair, and why."""

    name: str
    reason: str


class FxTraceError(TypeError):
    """torch.fx could not trace the model; pass pairs by hand instead."""
