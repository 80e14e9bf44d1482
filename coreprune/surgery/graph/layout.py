"""Whether a consumer reads its producer's units one channel (or one flatten block) each.

The pair walk checks this at the consumer it reaches and `validate_pairs` checks it for a pair
given by hand; both ask here, so a pair is refused for the same layout with the same words.
"""

from __future__ import annotations

from torch import nn

from coreprune.surgery.registry import layer_kind


def _out_width(layer: nn.Module) -> int:
    kind = layer_kind(layer)
    assert kind is not None
    return kind.out_units(layer)


def _in_width(layer: nn.Module) -> int:
    kind = layer_kind(layer)
    assert kind is not None
    return kind.in_units(layer)


def _is_dense(layer: nn.Module) -> bool:
    """Units on the last dimension (Linear, Conv1D), not on dimension 1 (Conv2d)."""
    return not isinstance(layer, nn.Conv2d)


def _grouped_reason(name: str, conv: nn.Conv2d, who: str) -> str:
    kind = "depthwise" if conv.groups == conv.in_channels and conv.groups > 1 else "grouped"
    return f"{who} ({name!r}) is a {kind} convolution (groups={conv.groups}); only groups=1 works"


def _layout_problem(
    producer: nn.Module, consumer: nn.Module, flatten: bool, consumer_name: str
) -> str | None:
    """Why `consumer` cannot read `producer`'s units one channel (or one flatten block) each."""
    width = _out_width(producer)
    if _is_dense(producer):
        if isinstance(consumer, nn.Conv2d):
            return f"a Linear producer feeds the conv {consumer_name!r}: units are not its channels"
        if _in_width(consumer) != width:
            return f"consumer {consumer_name!r} reads {_in_width(consumer)} features, not {width}"
        return None
    if isinstance(consumer, nn.Conv2d):
        if flatten:
            return f"a flatten sits between the producer and the conv {consumer_name!r}"
        if consumer.in_channels != width:
            return f"consumer {consumer_name!r} reads {consumer.in_channels} channels, not {width}"
        return None
    if not flatten:
        return (
            f"the Linear {consumer_name!r} reads the conv output without a flatten, so it mixes "
            "the last spatial dimension, not channels"
        )
    if _in_width(consumer) % width != 0:
        return (
            f"consumer {consumer_name!r} reads {_in_width(consumer)} features, not a multiple "
            f"of the producer's {width} channels"
        )
    return None
