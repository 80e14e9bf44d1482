"""What the group discovery hands back: a coupled channel group and its members, and the two
kinds of grouped convolution that decide how a member is sliced.

They live apart from the discovery so that the cost model, the planners and `compress` can name
a group (and build the simple group of a pair with `group_from_pair`) without the walk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from coreprune.surgery.graph.pair import PrunablePair
from coreprune.surgery.registry import layer_kind

__all__ = [
    "ChannelGroup",
    "ChannelWise",
    "Consumer",
    "group_from_pair",
    "is_depthwise",
    "is_grouped",
]


@dataclass(frozen=True)
class Consumer:
    """A registry layer reading the group's channels at `offset` of its `total` input channels;
    after a flatten each channel feeds `block` consecutive inputs (1 otherwise)."""

    name: str
    offset: int
    total: int
    block: int = 1


@dataclass(frozen=True)
class ChannelWise:
    """A module sliced on both sides at `offset` of its `total` channels.

    `kind`: "norm" (a batch norm or a subclass of one, fused activation included), "depthwise"
    (a depthwise conv), "probed" (a leaf module whose 1-D per-channel tensors are sliced) or
    "tensors" (module tensors a functional batch norm reads; `attrs` names them).
    """

    name: str
    offset: int
    total: int
    kind: str
    attrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that every member loses together.

    `producers`: groups=1 layers writing all `width` channels (sliced on their output).
    `producer_norms`: for each producer, the batch norm right after it (before any join), or None.
    `channelwise`: norms, depthwise convs and other channel-wise modules on the channels.
    `consumers`: layers reading the channels (sliced on their input).
    `gates`: layers writing a gate that multiplies the channels (sliced on their output).
    `joins`: what ties the channels ("residual add", "gate", "concatenation", "depthwise", ...).
    `pair`: the certified pair for a simple group (one producer -> one consumer), else None.
    `blocks`: the channels fall into this many equal blocks (a grouped conv reads or writes
    them) and every block keeps the same number of channels; 1 otherwise.
    """

    producers: tuple[str, ...]
    producer_norms: tuple[str | None, ...]
    channelwise: tuple[ChannelWise, ...]
    consumers: tuple[Consumer, ...]
    gates: tuple[str, ...]
    width: int
    joins: tuple[str, ...] = ()
    pair: PrunablePair | None = field(default=None, compare=False)
    blocks: int = 1

    @property
    def simple(self) -> bool:
        """One producer -> one consumer with nothing coupling them: today's `PrunablePair`."""
        return self.pair is not None

    @property
    def modules(self) -> tuple[str, ...]:
        """Every member module name, once, in a fixed order."""
        names: dict[str, None] = {}
        for name in self.producers:
            names[name] = None
        for norm in self.producer_norms:
            if norm is not None:
                names[norm] = None
        for member in self.channelwise:
            names[member.name] = None
        for name in self.gates:
            names[name] = None
        for consumer in self.consumers:
            names[consumer.name] = None
        return tuple(names)

    @property
    def describe(self) -> str:
        """A short label: what ties the channels (for reports)."""
        return ", ".join(self.joins) if self.joins else "single pair"


def is_grouped(module: nn.Module) -> bool:
    """A Conv2d with groups > 1 that is not depthwise (see `is_depthwise`)."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and not is_depthwise(module)


def is_depthwise(module: nn.Module) -> bool:
    """A Conv2d with groups == in_channels == out_channels > 1 (one filter per channel)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def group_from_pair(model: nn.Module, pair: PrunablePair) -> ChannelGroup:
    """The simple group of a (validated) pair: its producer, norm and consumer."""
    producer = model.get_submodule(pair.producer)
    consumer = model.get_submodule(pair.consumer)
    pk, ck = layer_kind(producer), layer_kind(consumer)
    if pk is None or ck is None:
        raise TypeError(f"pair {pair.producer!r} -> {pair.consumer!r}: not registry layers")
    width = pk.out_units(producer)
    total_in = ck.in_units(consumer)
    channelwise: tuple[ChannelWise, ...] = ()
    if pair.norm is not None:
        channelwise = (ChannelWise(pair.norm, 0, width, "norm"),)
    return ChannelGroup(
        producers=(pair.producer,),
        producer_norms=(pair.norm,),
        channelwise=channelwise,
        consumers=(Consumer(pair.consumer, 0, width, total_in // width),),
        gates=(),
        width=width,
        pair=pair,
    )
