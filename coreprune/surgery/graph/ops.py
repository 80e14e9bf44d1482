"""Which fx ops are channel-wise, and how an fx node's arguments are read.

The pair walk and the group discovery (`coreprune.surgery.groups`) both read a traced graph op
by op; they take their vocabulary from here so that both recognise the same dropout, pooling,
flatten, add and shape-query ops. Functions are matched by identity, methods by name.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_POOL_MODULES: dict[type[nn.Module], str] = {
    nn.MaxPool2d: "max",
    nn.AvgPool2d: "avg",
    nn.AdaptiveAvgPool2d: "adaptive_avg",
    nn.AdaptiveMaxPool2d: "adaptive_max",
}
_DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout)
_POOL_FUNCTIONS: dict[Callable[..., Any], str] = {
    F.max_pool2d: "max", torch.max_pool2d: "max", F.avg_pool2d: "avg",
    F.adaptive_avg_pool2d: "adaptive_avg", F.adaptive_max_pool2d: "adaptive_max",
}  # fmt: skip
_PASS_METHODS = ("contiguous",)
_FLATTEN_FUNCTIONS = (torch.flatten, torch.reshape)
_FLATTEN_METHODS = ("flatten", "view", "reshape")
_MEAN = (torch.mean, "mean")
_ADD_OPS = (
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    torch.add,
    torch.sub,
)
_ADD_METHODS = ("add", "add_", "sub", "sub_", "__add__", "__radd__", "__iadd__")
_CONCAT_OPS = (torch.cat, torch.concat, torch.stack)
_META_METHODS = ("size", "dim")
_META_ATTRS = ("shape", "ndim", "dtype", "device")
_SPATIAL_DIMS = ({2, 3}, {-2, -1})


def _arg(node: fx.Node, index: int, key: str, default: Any) -> Any:
    """Argument `index` of the call, given by position or as keyword `key`."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(key, default)


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _ADD_OPS
    return node.op == "call_method" and node.target in _ADD_METHODS


def _is_meta(node: fx.Node) -> bool:
    """A shape query such as `x.size(0)` or `x.shape`: it reads no values."""
    if node.op == "call_method" and node.target in _META_METHODS:
        return True
    return (
        node.op == "call_function"
        and node.target is builtins.getattr
        and len(node.args) > 1
        and node.args[1] in _META_ATTRS
    )


def _describe(node: fx.Node) -> str:
    target = node.target
    label = getattr(target, "__name__", None) or str(target)
    return f"{node.name!r} ({node.op} {label})"


def _is_batch_flatten(first: Any, second: Any) -> bool:
    """A two-entry reshape that keeps the batch: (x.size(0), -1) or (-1, K)."""
    if first == -1:
        return isinstance(second, int) and not isinstance(second, bool) and second > 0
    return second == -1 and _is_batch_size(first)


def _is_batch_size(arg: Any) -> bool:
    """`x.size(0)`, `x.shape[0]` or `x.size()[0]`."""
    if not isinstance(arg, fx.Node):
        return False
    if arg.op == "call_method" and arg.target == "size":
        return bool((len(arg.args) == 2 and arg.args[1] == 0) or arg.kwargs.get("dim") == 0)
    if arg.op == "call_function" and arg.target is operator.getitem and arg.args[1] == 0:
        source = arg.args[0]
        if not isinstance(source, fx.Node):
            return False
        if source.op == "call_method" and source.target == "size" and len(source.args) == 1:
            return True
        return (
            source.op == "call_function"
            and source.target is builtins.getattr
            and source.args[1] == "shape"
        )
    return False
