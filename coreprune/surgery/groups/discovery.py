"""The group discovery: walk the traced graph once, then turn every prunable channel space into
a `ChannelGroup` (a simple one carries the pair the pair walk certifies) and every other layer
into a `BlockedLayer` with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import fx, nn

from coreprune.surgery.graph.ops import _is_meta
from coreprune.surgery.graph.pair import BlockedLayer, FxTraceError, PrunablePair
from coreprune.surgery.graph.trace import _trace as trace_graph
from coreprune.surgery.graph.trace import _Tracer
from coreprune.surgery.graph.walk import find_prunable_pairs
from coreprune.surgery.groups.function_steps import _FunctionSteps
from coreprune.surgery.groups.group import ChannelGroup, is_depthwise
from coreprune.surgery.groups.module_steps import _ModuleSteps
from coreprune.surgery.groups.spaces import _Space, _Tag
from coreprune.surgery.registry import layer_kind, norm_kind


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


class _Discovery(_ModuleSteps, _FunctionSteps):
    """One walk over the graph, node by node in forward order, giving each traced tensor a tag."""

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


def find_channel_groups(
    model: nn.Module,
) -> tuple[list[ChannelGroup], list[BlockedLayer]]:
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
        return _with_joins(group), None
    pair = pairs.get(producers[0])
    if pair is not None and pair.consumer == consumers[0].name:
        return ChannelGroup(**{**group.__dict__, "pair": pair}), None
    reason = pair_reason.get(producers[0], "the pair walk refuses it")
    if "activation" in reason:
        return None, reason
    return _with_joins(group, "single path"), None


def _with_joins(group: ChannelGroup, label: str = "") -> ChannelGroup:
    joins = list(group.joins)
    if len(group.producers) > 1 and not joins:
        joins.append("shared channels")
    if len(group.consumers) > 1 and "several readers" not in joins:
        joins.append("several readers")
    if label and not joins:
        joins.append(label)
    return ChannelGroup(**{**group.__dict__, "joins": tuple(joins)})


def forward_order(model: nn.Module) -> list[str]:
    """Names of the modules the traced forward calls, in the order it first calls them."""
    graph = _trace(model)
    return list(dict.fromkeys(str(n.target) for n in graph.nodes if n.op == "call_module"))
