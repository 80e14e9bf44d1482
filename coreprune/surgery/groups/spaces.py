"""The bookkeeping of the group discovery: channel spaces merged by union-find, and the tag
each traced tensor carries (which spaces, at which offsets, in which layout).

The walk's steps for modules (`module_steps`) and for functions and methods (`function_steps`)
both extend `_Spaces`; it holds the state they share and the tag changes both make (a flatten,
a pooling, an activation).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from torch import fx, nn

from coreprune.surgery.graph.ops import _describe
from coreprune.surgery.graph.trace import _tied_modules
from coreprune.surgery.groups.group import ChannelWise, Consumer

_GATE_NAMES = ("sigmoid", "hardsigmoid")


@dataclass
class _Space:
    width: int | None = None
    producers: list[str] = field(default_factory=list)
    norms_after: dict[str, str] = field(default_factory=dict)
    channelwise: list[ChannelWise] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    gates: list[str] = field(default_factory=list)
    joins: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    first: int = 1 << 30
    blocks: int = 1


@dataclass(frozen=True)
class _Tag:
    """What a traced tensor carries: channel spaces (several after a concat) with their widths,
    where the channels sit ("conv": dim 1, "dense": last dim, "flat": flattened conv channels),
    the producer whose raw output it still is (for its norm), and whether it is a gate."""

    spaces: tuple[int, ...]
    widths: tuple[int | None, ...]
    layout: str
    fresh: str | None = None
    gate: bool = False

    @property
    def total(self) -> int | None:
        if any(w is None for w in self.widths):
            return None
        return sum(w for w in self.widths if w is not None)

    def offsets(self) -> list[int]:
        out, at = [], 0
        for w in self.widths:
            out.append(at)
            at += w or 0
        return out

    def plain(self) -> _Tag:
        return _Tag(self.spaces, self.widths, self.layout)


class _Spaces:
    """One discovery's state: the model's modules, how often the forward calls each and which
    share weights, the channel spaces (union-find), each traced tensor's tag, and the position
    at which each module is first called."""

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.model = model
        self.graph = graph
        self.modules = dict(model.named_modules())
        self.calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
        self.tied = _tied_modules(model)
        self.parent: list[int] = []
        self.spaces: list[_Space] = []
        self.tags: dict[fx.Node, _Tag] = {}
        self.order: dict[str, int] = {}

    # union-find ------------------------------------------------------------------------------
    def new(self, width: int | None, position: int) -> int:
        self.parent.append(len(self.parent))
        self.spaces.append(_Space(width=width, first=position))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int, join: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            self.spaces[ra].joins.append(join)
            return
        sa, sb = self.spaces[ra], self.spaces[rb]
        self.parent[rb] = ra
        if sa.width is None:
            sa.width = sb.width
        elif sb.width is not None and sb.width != sa.width:
            sa.blocked.append(f"{join} joins {sa.width} and {sb.width} channels")
        sa.producers += sb.producers
        sa.norms_after.update(sb.norms_after)
        sa.channelwise += sb.channelwise
        sa.consumers += sb.consumers
        sa.gates += sb.gates
        sa.joins += [*sb.joins, join]
        sa.blocked += sb.blocked
        sa.first = min(sa.first, sb.first)
        sa.blocks = math.lcm(sa.blocks, sb.blocks)

    def space(self, i: int) -> _Space:
        return self.spaces[self.find(i)]

    def block(self, tag: _Tag | None, reason: str) -> None:
        if tag is None:
            return
        for s in tag.spaces:
            self.space(s).blocked.append(reason)

    # tags ------------------------------------------------------------------------------------
    def _input_tags(self, node: fx.Node) -> list[_Tag]:
        found: list[_Tag] = []

        def collect(n: fx.Node) -> fx.Node:
            tag = self.tags.get(n)
            if tag is not None and tag not in found:
                found.append(tag)
            return n

        fx.node.map_arg((node.args, node.kwargs), collect)
        return found

    def _first(self, node: fx.Node) -> _Tag | None:
        arg = node.args[0] if node.args else None
        return self.tags.get(arg) if isinstance(arg, fx.Node) else None

    def _only_first(self, node: fx.Node, inputs: list[_Tag]) -> _Tag | str:
        first = self._first(node)
        if first is None or len(inputs) != 1:
            return f"{_describe(node)} reads the channels in a way that is not channel-wise"
        return first

    def _flatten(self, tag: _Tag, where: str) -> _Tag | str:
        if tag.layout == "conv":
            return _Tag(tag.spaces, tag.widths, "flat")
        return f"flatten {where!r} regroups units that are not conv channels"

    def _pool(self, tag: _Tag, where: str) -> _Tag | str:
        if tag.layout != "conv":
            return f"pooling {where!r} mixes units that are not conv channels"
        return tag.plain()

    def _activation(self, tag: _Tag, gate: bool) -> _Tag:
        return _Tag(tag.spaces, tag.widths, tag.layout, None, gate or tag.gate)
