"""Coupled channel groups: every layer, norm and op that must lose the same channels together.

A *channel space* is a set of channels that several tensors share one for one. The model's
torch.fx graph is walked once and every channel-carrying tensor gets a space; spaces are merged
where an op ties channels together:

- a residual add or subtract of two traced tensors (x + f(x)): one space;
- an elementwise product of two traced tensors (squeeze-excitation x * sigmoid(fc(pool(x))), a
  gated unit a * b): one space; a side that went through a sigmoid-like activation is a *gate*,
  and the layer writing it is a gate member (sliced on its output only, not scored);
- a channel-wise op or module keeps its input's space: batch norms (any `BatchNorm` subclass,
  so fused norm + activation modules such as timm's `BatchNormAct2d` count; the functional
  `F.batch_norm` on module tensors too), activations, dropout, identity, pooling, and leaf modules
  that pass a probe (perturbing input channel c changes only output channel c);
- a depthwise convolution (groups == in == out channels) keeps its input's space and is sliced
  on both sides;
- a concatenation along channels keeps each input's space: its readers read several spaces at
  offsets, and each space is pruned on its own.

Grouped convolutions (1 < groups, not depthwise) tie channels in per-group blocks: output block
b reads only input block b. They are pruned by whole per-group blocks: a space a grouped conv
reads or writes gets `blocks` = its number of groups (the least common multiple when several
do), and every block keeps the same number of channels, so the conv stays a grouped conv with
fewer channels per group (kept counts are rounded to multiples of `blocks`). A grouped conv fed
by a concatenation is refused.

A space is prunable when at least one registry layer with groups=1 writes it (a producer), every
reader is a registry layer (a consumer) or a channel-wise op, and it never reaches the model's
input or output. `find_channel_groups` returns one frozen `ChannelGroup` per prunable space, in
forward order. A group with exactly one producer, one consumer and nothing coupling it is the
classic pair: `ChannelGroup.pair` holds the `PrunablePair` the fx pair walk finds for it, and
`simple` is True.
"""

from __future__ import annotations

import builtins
import copy
import math
import operator
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from coreprune.surgery.activations import (
    is_activation_function,
    is_activation_method,
    looks_like_activation,
    module_activation,
)
from coreprune.surgery.graph import (
    _ADD_METHODS,
    _ADD_OPS,
    _DROPOUT_FUNCTIONS,
    _DROPOUT_MODULES,
    _FLATTEN_FUNCTIONS,
    _FLATTEN_METHODS,
    _META_ATTRS,
    _META_METHODS,
    _PASS_METHODS,
    _POOL_FUNCTIONS,
    _POOL_MODULES,
    BlockedLayer,
    FxTraceError,
    PrunablePair,
    _arg,
    _is_batch_flatten,
    _tied_modules,
    _Tracer,
    find_prunable_pairs,
)
from coreprune.surgery.graph import _trace as trace_graph
from coreprune.surgery.registry import layer_kind, norm_kind

__all__ = [
    "ChannelGroup",
    "ChannelWise",
    "Consumer",
    "find_channel_groups",
    "forward_order",
    "group_from_pair",
    "is_depthwise",
    "is_grouped",
]

_MUL_OPS = (operator.mul, operator.imul, torch.mul)
_MUL_METHODS = ("mul", "mul_", "__mul__", "__rmul__")
_DIV_OPS = (operator.truediv, operator.itruediv, torch.div)
_CAT_OPS = (torch.cat, torch.concat)
_GATE_NAMES = ("sigmoid", "hardsigmoid")
_BATCH_NORM_FUNCTIONS = (F.batch_norm, torch.batch_norm)
_PROBE_SIZE = 5


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


# --------------------------------------------------------------------------------------------
# Discovery


class _GroupTracer(_Tracer):
    """The pair walk's tracer, plus every batch norm subclass (fused norm + activation modules)
    kept as one call, so it is seen as a norm instead of its functional insides."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return norm_kind(m) is not None or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> fx.Graph:
    hint = (
        "Pass the pairs by hand instead (compress(..., pairs=[PrunablePair(...), ...], "
        "groups=False))."
    )
    return trace_graph(model, _GroupTracer(), hint)


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


class _Discovery:
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

    # walk ------------------------------------------------------------------------------------
    def run(self) -> None:
        for position, node in enumerate(self.graph.nodes):
            inputs = self._input_tags(node)
            if node.op == "placeholder":
                sid = self.new(None, position)
                self.space(sid).blocked.append("it carries the model's input")
                self.tags[node] = _Tag((sid,), (None,), "any")
                continue
            if node.op == "output":
                for tag in inputs:
                    self.block(tag, "it reaches the model's output")
                continue
            if node.op == "call_module":
                self.order.setdefault(str(node.target), position)
            if node.op == "get_attr" or not (inputs or self._is_layer(node)):
                continue
            if node.op == "call_module":
                out = self._module(node, inputs, position)
            elif _is_meta(node):
                continue
            else:
                out = self._function(node, inputs)
            if isinstance(out, _Tag):
                self.tags[node] = out
            else:
                for tag in inputs:
                    self.block(tag, out)

    def _is_layer(self, node: fx.Node) -> bool:
        return node.op == "call_module" and layer_kind(self.modules[str(node.target)]) is not None

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

    # modules ---------------------------------------------------------------------------------
    def _module(self, node: fx.Node, inputs: list[_Tag], position: int) -> _Tag | str:
        name = str(node.target)
        module = self.modules[name]
        tag = self._only_first(node, inputs)
        problem = self._module_problem(name)
        kind = layer_kind(module)
        if kind is not None:
            return self._layer(node, name, module, tag, problem, position)
        if isinstance(tag, str):
            return tag
        if problem is not None:
            return problem
        if norm_kind(module) is not None:
            return self._norm(name, module, tag)
        if isinstance(module, (*_DROPOUT_MODULES, nn.Identity)):
            return tag
        if isinstance(module, nn.Flatten):
            if (module.start_dim, module.end_dim) != (1, -1):
                return f"flatten {name!r} does not keep the batch (start_dim=1, end_dim=-1)"
            return self._flatten(tag, name)
        if type(module) in _POOL_MODULES:
            if getattr(module, "return_indices", False):
                return f"pooling {name!r} returns indices"
            return self._pool(tag, name)
        if looks_like_activation(module):
            try:
                act = module_activation(module, name)
            except ValueError as err:
                return f"activation {name!r} is not elementwise: {err}"
            gate = act is not None and act.name in _GATE_NAMES
            return self._activation(tag, gate)
        return self._probe(name, module, tag)

    def _module_problem(self, name: str) -> str | None:
        module = self.modules[name]
        stateful = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
        if self.calls[name] > 1 and stateful:
            return (
                f"{name!r} is called {self.calls[name]} times in forward (one weight, many calls)"
            )
        if name in self.tied:
            return f"{name!r} shares a parameter with {self.tied[name]!r} (tied weights)"
        return None

    def _layer(
        self,
        node: fx.Node,
        name: str,
        module: nn.Module,
        tag: _Tag | str,
        problem: str | None,
        position: int,
    ) -> _Tag | str:
        kind = layer_kind(module)
        assert kind is not None
        in_tag = tag if isinstance(tag, _Tag) else None
        if isinstance(tag, str):
            for t in self._input_tags(node):
                self.block(t, tag)
        if not (is_depthwise(module) or is_grouped(module)):
            problem = problem or kind.unsupported(module)
        if is_depthwise(module) and problem is None and in_tag is not None:
            return self._depthwise(name, module, in_tag)
        if is_depthwise(module) and problem is None:
            problem = f"depthwise conv {name!r} reads channels that are not traced"
        if is_grouped(module) and in_tag is not None and len(in_tag.spaces) > 1:
            problem = (
                f"{name!r} is a grouped convolution (groups={module.groups}) fed by a "
                "concatenation: its blocks do not line up with the concatenated channels"
            )
        out_width = kind.out_units(module)
        sid = self.new(out_width, position)
        layout = "conv" if isinstance(module, nn.Conv2d) else "dense"
        out = _Tag((sid,), (out_width,), layout, fresh=name)
        if problem is not None:
            self.block(in_tag, problem)
            self.space(sid).blocked.append(problem)
            return out
        self.space(sid).producers.append(name)
        if is_grouped(module):
            assert isinstance(module, nn.Conv2d)
            self.space(sid).blocks = math.lcm(self.space(sid).blocks, module.groups)
            self.space(sid).joins.append(f"grouped conv {name!r} (groups={module.groups})")
            if in_tag is not None:
                space = self.space(in_tag.spaces[0])
                space.blocks = math.lcm(space.blocks, module.groups)
                space.joins.append(f"grouped conv {name!r} (groups={module.groups})")
        if in_tag is not None:
            reason = self._read(name, module, in_tag)
            if reason is not None:
                self.block(in_tag, reason)
        return out

    def _read(self, name: str, module: nn.Module, tag: _Tag) -> str | None:
        """Record `module` as a consumer of every space in `tag`, or say why it cannot read them."""
        kind = layer_kind(module)
        assert kind is not None
        total = tag.total
        if total is None:
            return f"{name!r} reads channels whose width is unknown"
        width = kind.in_units(module)
        conv = isinstance(module, nn.Conv2d)
        if tag.layout == "any":
            return None
        if conv and tag.layout != "conv":
            return f"the conv {name!r} reads features that are not channels"
        if not conv and tag.layout == "conv":
            return f"{name!r} reads a conv output without a flatten (it mixes a spatial dimension)"
        block = 1
        if tag.layout == "flat":
            if width % total:
                return f"{name!r} reads {width} features, not a multiple of {total} channels"
            block = width // total
        elif width != total:
            return f"{name!r} reads {width} channels, not {total}"
        for sid, offset in zip(tag.spaces, tag.offsets(), strict=True):
            self.space(sid).consumers.append(Consumer(name, offset, total, block))
        return None

    def _depthwise(self, name: str, module: nn.Module, tag: _Tag) -> _Tag | str:
        if tag.layout != "conv" or tag.total != module.in_channels:
            return f"depthwise conv {name!r} does not read exactly the traced channels"
        for sid, offset in zip(tag.spaces, tag.offsets(), strict=True):
            self.space(sid).channelwise.append(
                ChannelWise(name, offset, int(module.in_channels), "depthwise")
            )
            self.space(sid).joins.append("depthwise conv")
        return tag.plain()

    def _norm(self, name: str, module: nn.Module, tag: _Tag) -> _Tag | str:
        kind = norm_kind(module)
        assert kind is not None
        problem = kind.unsupported(module)
        if problem is not None:
            return f"batch norm {name!r}: {problem}"
        if tag.total != kind.units(module) or tag.layout not in ("conv", "dense"):
            return f"batch norm {name!r} has {kind.units(module)} features, not {tag.total}"
        fused = type(module) not in (nn.BatchNorm1d, nn.BatchNorm2d)
        for sid, offset in zip(tag.spaces, tag.offsets(), strict=True):
            space = self.space(sid)
            space.channelwise.append(ChannelWise(name, offset, kind.units(module), "norm"))
            if fused:
                space.joins.append(f"fused norm {type(module).__name__}")
        if tag.fresh is not None and len(tag.spaces) == 1:
            self.space(tag.spaces[0]).norms_after[tag.fresh] = name
        return tag.plain()

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

    def _probe(self, name: str, module: nn.Module, tag: _Tag) -> _Tag | str:
        """A leaf module is channel-wise when perturbing input channel c changes only output
        channel c (checked on random inputs); its tensors must be 1-D per-channel."""
        total = tag.total
        label = f"module {name!r} ({type(module).__name__})"
        if total is None or tag.layout not in ("conv", "dense"):
            return f"{label} cannot be probed (unknown width)"
        tensors = [*module.parameters(), *module.buffers()]
        if any(t.ndim != 1 or t.shape[0] != total for t in tensors if t.is_floating_point()):
            return f"{label} has tensors that are not one entry per channel"
        probe = copy.deepcopy(module).eval()
        shape = (2, total, _PROBE_SIZE, _PROBE_SIZE) if tag.layout == "conv" else (2, total)
        gen = torch.Generator().manual_seed(0)
        try:
            with torch.no_grad():
                x = torch.randn(shape, generator=gen)
                base = probe(x)
                for c in sorted({0, total - 1}):
                    bumped = x.clone()
                    bumped[:, c] += 1.0
                    changed = (probe(bumped) - base).abs()
                    others = torch.ones(total, dtype=torch.bool)
                    others[c] = False
                    if not isinstance(base, torch.Tensor) or base.shape != x.shape:
                        return f"{label} changes the shape of its input"
                    if changed[:, others].max() > 0:
                        return f"{label} is not channel-wise (it mixes channels)"
        except Exception as err:  # a probe failing for any reason means: not understood
            return f"{label} could not be probed ({type(err).__name__}: {err})"
        for sid, offset in zip(tag.spaces, tag.offsets(), strict=True):
            self.space(sid).channelwise.append(ChannelWise(name, offset, total, "probed"))
        return tag.plain()

    # functions and methods -------------------------------------------------------------------
    def _function(self, node: fx.Node, inputs: list[_Tag]) -> _Tag | str:
        target = node.target
        if _is_join(node, _ADD_OPS, _ADD_METHODS):
            return self._binary(node, inputs, "residual add")
        if _is_join(node, _MUL_OPS, _MUL_METHODS):
            return self._binary(node, inputs, "gate")
        if node.op == "call_function" and target in _DIV_OPS:
            return self._scalar_only(node, inputs)
        if node.op == "call_function" and target in _CAT_OPS:
            return self._concat(node, inputs)
        if node.op == "call_function" and target in _BATCH_NORM_FUNCTIONS:
            return self._functional_norm(node, inputs)
        tag = self._only_first(node, inputs)
        if isinstance(tag, str):
            return tag
        if node.op == "call_function":
            if is_activation_function(target):
                gate = getattr(target, "__name__", "") in _GATE_NAMES
                return self._activation(tag, gate)
            if target in _DROPOUT_FUNCTIONS:
                return tag
            if target in _POOL_FUNCTIONS:
                return self._pool(tag, node.name)
            if target in _FLATTEN_FUNCTIONS:
                return self._flatten_call(node, tag)
            if target is torch.mean:
                return self._mean(node, tag)
        elif node.op == "call_method":
            method = str(target)
            if is_activation_method(method):
                return self._activation(tag, method.rstrip("_") in _GATE_NAMES)
            if method in _PASS_METHODS or method == "clone":
                return tag
            if method in _FLATTEN_METHODS:
                return self._flatten_call(node, tag)
            if method == "mean":
                return self._mean(node, tag)
        return f"{_describe(node)} is not channel-wise"

    def _binary(self, node: fx.Node, inputs: list[_Tag], join: str) -> _Tag | str:
        operands = [a for a in (*node.args[:2], *node.kwargs.values()) if a is not None]
        if len(operands) < 2:
            return f"{_describe(node)} is not channel-wise"
        tags = [self.tags.get(a) if isinstance(a, fx.Node) else None for a in operands[:2]]
        constant = [not isinstance(a, fx.Node) for a in operands[:2]]
        if tags[0] is not None and tags[1] is not None:
            a, b = tags[0], tags[1]
            if len(a.spaces) != 1 or len(b.spaces) != 1:
                return f"{_describe(node)} joins concatenated channels"
            if a.layout != b.layout and "any" not in (a.layout, b.layout):
                return f"{_describe(node)} joins tensors of different layouts"
            if join == "gate" and a.gate != b.gate:
                gate = a if a.gate else b
                space = self.space(gate.spaces[0])
                space.gates += space.producers
                space.producers = []
            self.union(a.spaces[0], b.spaces[0], join)
            layout = a.layout if a.layout != "any" else b.layout
            return _Tag((self.find(a.spaces[0]),), (a.widths[0] or b.widths[0],), layout)
        if any(t is not None for t in tags) and any(constant):
            tag = tags[0] or tags[1]
            assert tag is not None
            return tag.plain()
        return f"{_describe(node)} combines the channels with an untraced tensor"

    def _scalar_only(self, node: fx.Node, inputs: list[_Tag]) -> _Tag | str:
        first = self._first(node)
        if first is not None and len(node.args) > 1 and not isinstance(node.args[1], fx.Node):
            return first.plain()
        return f"{_describe(node)} is not channel-wise"

    def _concat(self, node: fx.Node, inputs: list[_Tag]) -> _Tag | str:
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = _arg(node, 1, "dim", 0)
        if not isinstance(parts, (list, tuple)):
            return f"{_describe(node)} has no list of tensors"
        tags = [self.tags.get(p) if isinstance(p, fx.Node) else None for p in parts]
        if any(t is None for t in tags):
            return f"concatenation {node.name!r} mixes traced and untraced tensors"
        layouts = {t.layout for t in tags if t is not None} - {"any"}
        if len(layouts) > 1:
            return f"concatenation {node.name!r} joins different layouts"
        layout = layouts.pop() if layouts else "any"
        if not ((layout == "conv" and dim == 1) or (layout == "dense" and dim == -1)):
            return f"concatenation {node.name!r} is not along the channels (dim={dim})"
        spaces: list[int] = []
        widths: list[int | None] = []
        for t in tags:
            assert t is not None
            spaces += t.spaces
            widths += t.widths
        for sid in spaces:
            self.space(sid).joins.append("concatenation")
        if len(set(map(self.find, spaces))) != len(spaces):
            return f"concatenation {node.name!r} repeats the same channels"
        return _Tag(tuple(spaces), tuple(widths), layout)

    def _functional_norm(self, node: fx.Node, inputs: list[_Tag]) -> _Tag | str:
        tag = self._first(node)
        if tag is None or len(inputs) != 1:
            return f"{_describe(node)} reads the channels in a way that is not channel-wise"
        attrs: list[str] = []
        for i, key in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
            arg = _arg(node, i, key, None)
            if arg is None:
                continue
            if not (isinstance(arg, fx.Node) and arg.op == "get_attr"):
                return f"batch norm {node.name!r} reads a {key} that is not a module tensor"
            attrs.append(str(arg.target))
        owners = {a.rsplit(".", 1)[0] if "." in a else "" for a in attrs}
        if len(owners) != 1 or tag.total is None:
            return f"batch norm {node.name!r} reads tensors of several modules"
        owner = owners.pop()
        local = tuple(a.rsplit(".", 1)[-1] for a in attrs)
        for sid, offset in zip(tag.spaces, tag.offsets(), strict=True):
            self.space(sid).channelwise.append(
                ChannelWise(owner, offset, tag.total, "tensors", local)
            )
            self.space(sid).joins.append("functional batch norm")
        return tag.plain()

    def _flatten_call(self, node: fx.Node, tag: _Tag) -> _Tag | str:
        target = node.target
        if target is torch.flatten or target == "flatten":
            start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
            if (start, end) != (1, -1):
                return f"flatten {node.name!r} does not keep the batch"
            return self._flatten(tag, node.name)
        shape: list[Any] = list(node.args[1:]) or [node.kwargs.get("shape", ())]
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = list(shape[0])
        if len(shape) == 2 and _is_batch_flatten(shape[0], shape[1]):
            return self._flatten(tag, node.name)
        return f"reshape {node.name!r} is not a batch-preserving flatten"

    def _mean(self, node: fx.Node, tag: _Tag) -> _Tag | str:
        dims = _arg(node, 1, "dim", None)
        keepdim = _arg(node, 2, "keepdim", False)
        if not (isinstance(dims, (tuple, list)) and set(dims) in ({2, 3}, {-2, -1})):
            return f"mean {node.name!r} is not a global spatial average"
        if tag.layout != "conv":
            return f"mean {node.name!r} averages units that are not conv channels"
        return tag.plain() if keepdim is True else _Tag(tag.spaces, tag.widths, "flat")


def _is_meta(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target in _META_METHODS:
        return True
    return (
        node.op == "call_function"
        and node.target is builtins.getattr
        and len(node.args) > 1
        and node.args[1] in _META_ATTRS
    )


def _is_join(node: fx.Node, ops: tuple[Any, ...], methods: tuple[str, ...]) -> bool:
    if node.op == "call_function":
        return node.target in ops
    return node.op == "call_method" and node.target in methods


def _describe(node: fx.Node) -> str:
    label = getattr(node.target, "__name__", None) or str(node.target)
    return f"{node.name!r} ({node.op} {label})"


def find_channel_groups(model: nn.Module) -> tuple[list[ChannelGroup], list[BlockedLayer]]:
    """Every prunable channel group of `model` in forward order, and every registry layer whose
    output channels are not prunable, with the reason.

    Simple groups carry the `PrunablePair` of `coreprune.surgery.graph.find_prunable_pairs`
    (its certified path is unchanged). A one-producer, one-consumer space that the pair walk
    refuses for its activation stays blocked with that reason. Raises `FxTraceError` when fx
    cannot trace the model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    graph = _trace(model)
    found = _Discovery(model, graph)
    found.run()
    try:
        pairs, pair_blocked = find_prunable_pairs(model)
    except FxTraceError:  # e.g. a fused norm's forward branches on its input: no pair is simple
        pairs, pair_blocked = [], []
    by_producer = {p.producer: p for p in pairs}
    pair_reason = {b.name: b.reason for b in pair_blocked}
    groups: list[tuple[int, ChannelGroup]] = []
    blocked: list[BlockedLayer] = []
    roots = sorted({found.find(i) for i in range(len(found.parent))})
    for root in roots:
        space = found.spaces[root]
        writers = space.producers + space.gates
        reason = _space_problem(space)
        if reason is None:
            group, reason = _group_of(space, by_producer, pair_reason, found.order)
            if group is not None:
                groups.append((space.first, group))
                continue
        for name in writers:
            # Without a join the pair walk's reason is as precise, and is kept as it was.
            why = pair_reason.get(name) if not space.joins else None
            blocked.append(BlockedLayer(name, why or reason or "not prunable"))
    covered = {name for _, g in groups for name in (*g.producers, *g.gates)}
    covered |= {b.name for b in blocked}
    for name, module in found.modules.items():
        if layer_kind(module) is not None and name not in covered:
            if is_depthwise(module) and name in found.order:
                continue  # a channel-wise member of a blocked space; not a producer itself
            reason = pair_reason.get(name, "it writes no prunable channels")
            blocked.append(BlockedLayer(name, reason))
    groups.sort(key=lambda item: item[0])
    return [g for _, g in groups], blocked


def _space_problem(space: _Space) -> str | None:
    if space.blocked:
        unique = list(dict.fromkeys(space.blocked))
        more = f" (and {len(unique) - 3} more reasons)" if len(unique) > 3 else ""
        return "; ".join(unique[:3]) + more
    if not space.producers:
        return "no layer with groups=1 writes these channels"
    if not space.consumers:
        return "no layer reads these channels"
    if space.width is None:
        return "the channel count is unknown"
    if space.width % space.blocks:
        return f"{space.width} channels do not split into {space.blocks} equal blocks"
    return None


def _group_of(
    space: _Space,
    pairs: Mapping[str, PrunablePair],
    pair_reason: Mapping[str, str],
    order: Mapping[str, int],
) -> tuple[ChannelGroup | None, str | None]:
    assert space.width is not None
    last = len(order)
    producers = tuple(sorted(dict.fromkeys(space.producers), key=lambda n: order.get(n, last)))
    consumers = tuple(sorted(dict.fromkeys(space.consumers), key=lambda c: order.get(c.name, last)))
    channelwise = tuple(
        sorted(dict.fromkeys(space.channelwise), key=lambda c: order.get(c.name, last))
    )
    joins = tuple(dict.fromkeys(space.joins))
    group = ChannelGroup(
        producers=producers,
        producer_norms=tuple(space.norms_after.get(p) for p in producers),
        channelwise=channelwise,
        consumers=consumers,
        gates=tuple(dict.fromkeys(space.gates)),
        width=space.width,
        joins=joins,
        blocks=space.blocks,
    )
    coupled = bool(joins) or len(producers) > 1 or len(consumers) > 1 or bool(group.gates)
    extra = [m for m in channelwise if m.kind != "norm" or m.name != group.producer_norms[0]]
    if coupled or extra:
        return _with_joins(group, extra), None
    pair = pairs.get(producers[0])
    if pair is not None and pair.consumer == consumers[0].name:
        return ChannelGroup(**{**group.__dict__, "pair": pair}), None
    reason = pair_reason.get(producers[0], "the pair walk refuses it")
    if "activation" in reason:
        return None, reason
    return _with_joins(group, extra, "single path"), None


def _with_joins(group: ChannelGroup, extra: Iterable[ChannelWise], label: str = "") -> ChannelGroup:
    joins = list(group.joins)
    if len(group.producers) > 1 and not joins:
        joins.append("shared channels")
    if len(group.consumers) > 1 and "several readers" not in joins:
        joins.append("several readers")
    if label and not joins:
        joins.append(label)
    del extra
    return ChannelGroup(**{**group.__dict__, "joins": tuple(joins)})


def forward_order(model: nn.Module) -> list[str]:
    """Names of the modules the traced forward calls, in the order it first calls them."""
    graph = _trace(model)
    return list(dict.fromkeys(str(n.target) for n in graph.nodes if n.op == "call_module"))
