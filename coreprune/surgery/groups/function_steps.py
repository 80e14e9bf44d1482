"""The group discovery's step for a called function or method: the ops that tie channel spaces
together (a residual add, a gate product, a concatenation, a functional batch norm) and those
that keep or reshape them (activations, dropout, pooling, flatten, a spatial mean).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from coreprune.surgery.activations import is_activation_function, is_activation_method
from coreprune.surgery.graph.ops import (
    _DROPOUT_FUNCTIONS,
    _FLATTEN_FUNCTIONS,
    _FLATTEN_METHODS,
    _PASS_METHODS,
    _POOL_FUNCTIONS,
    _SPATIAL_DIMS,
    _arg,
    _describe,
    _is_add,
    _is_batch_flatten,
)
from coreprune.surgery.groups.group import ChannelWise
from coreprune.surgery.groups.spaces import _GATE_NAMES, _Spaces, _Tag

_MUL_OPS = (operator.mul, operator.imul, torch.mul)
_MUL_METHODS = ("mul", "mul_", "__mul__", "__rmul__")
_DIV_OPS = (operator.truediv, operator.itruediv, torch.div)
_CAT_OPS = (torch.cat, torch.concat)
_BATCH_NORM_FUNCTIONS = (F.batch_norm, torch.batch_norm)


class _FunctionSteps(_Spaces):
    """The steps for `call_function` and `call_method` nodes."""

    def _function(self, node: fx.Node, inputs: list[_Tag]) -> _Tag | str:
        target = node.target
        if _is_add(node):
            return self._binary(node, inputs, "residual add")
        if _is_mul(node):
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
        for i, key in (
            (1, "running_mean"),
            (2, "running_var"),
            (3, "weight"),
            (4, "bias"),
        ):
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
        if not (isinstance(dims, (tuple, list)) and set(dims) in _SPATIAL_DIMS):
            return f"mean {node.name!r} is not a global spatial average"
        if tag.layout != "conv":
            return f"mean {node.name!r} averages units that are not conv channels"
        return tag.plain() if keepdim is True else _Tag(tag.spaces, tag.widths, "flat")


def _is_mul(node: fx.Node) -> bool:
    """An elementwise product, as a function or a method (the counterpart of `_is_add`)."""
    if node.op == "call_function":
        return node.target in _MUL_OPS
    return node.op == "call_method" and node.target in _MUL_METHODS
