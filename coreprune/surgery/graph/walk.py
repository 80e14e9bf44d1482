"""The pair walk: from each layer's node in the traced graph, follow its output through
channel-wise ops to the one layer that reads it, or stop with the reason it cannot be pruned.

Only channel-wise ops may sit between the two (a folded batch norm, one certifiable activation,
dropout, pooling, a batch-preserving flatten), and nothing but the consumer may see the units;
every other op ties the channels to another path and blocks the producer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from coreprune.surgery.activations import (
    Activation,
    function_activation,
    is_activation_function,
    is_activation_method,
    module_activation,
)
from coreprune.surgery.graph.layout import _grouped_reason, _layout_problem, _out_width
from coreprune.surgery.graph.ops import (
    _CONCAT_OPS,
    _DROPOUT_FUNCTIONS,
    _DROPOUT_MODULES,
    _FLATTEN_FUNCTIONS,
    _FLATTEN_METHODS,
    _MEAN,
    _PASS_METHODS,
    _POOL_FUNCTIONS,
    _POOL_MODULES,
    _SPATIAL_DIMS,
    _arg,
    _describe,
    _is_add,
    _is_batch_flatten,
    _is_meta,
)
from coreprune.surgery.graph.pair import BlockedLayer, PrunablePair
from coreprune.surgery.graph.trace import _tied_modules, _trace
from coreprune.surgery.registry import layer_kind


def find_prunable_pairs(
    model: nn.Module,
) -> tuple[list[PrunablePair], list[BlockedLayer]]:
    """Every prunable (producer, consumer) pair of `model`, and every other prunable-type layer
    (Linear, Conv2d, Conv1D) with why it is not a producer.

    The model is traced with `torch.fx.symbolic_trace` and only read. Raises `FxTraceError` (a
    `TypeError`) when fx cannot trace it; then build the pairs by hand and check them with
    `validate_pairs`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    graph = _trace(model)
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    tied = _tied_modules(model)
    walker = _Walker(modules, calls, tied)
    pairs: list[PrunablePair] = []
    blocked: list[BlockedLayer] = []
    seen: set[str] = set()
    for node in graph.nodes:
        if node.op != "call_module" or node.target in seen:
            continue
        if layer_kind(modules[node.target]) is None:
            continue
        seen.add(str(node.target))
        outcome = walker.follow(node)
        if isinstance(outcome, PrunablePair):
            pairs.append(outcome)
        else:
            blocked.append(BlockedLayer(str(node.target), outcome))
    leaves = {str(n.target) for n in graph.nodes if n.op == "call_module"}
    for name, module in modules.items():
        if layer_kind(module) is not None and name not in seen:
            blocked.append(BlockedLayer(name, _never_called(name, leaves, modules)))
    return pairs, blocked


def _never_called(name: str, leaves: set[str], modules: Mapping[str, nn.Module]) -> str:
    """Why a layer has no node of its own: it runs inside a module fx keeps whole, or not at all."""
    parts = name.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:depth])
        if parent in leaves:
            kind = type(modules[parent]).__name__
            return (
                f"it runs inside {parent!r} ({kind}), which the traced forward calls as one "
                "module, so its units cannot be followed"
            )
    return (
        "never called as its own module in the traced forward (it runs inside another module, "
        "through a custom subclass's forward, or not at all)"
    )


# --------------------------------------------------------------------------------------------
# Following one producer's output


@dataclass
class _Path:
    """What has been seen between the producer and the current node."""

    producer: fx.Node
    is_conv: bool
    norm: str | None = None
    activation: Activation | None = None
    flatten: bool = False
    between: list[str] = field(default_factory=list)
    pooling: list[str] = field(default_factory=list)


class _Walker:
    """Follows one producer's output at a time, knowing the model's modules, how often the
    forward calls each, and which share weights."""

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        calls: Counter[Any],
        tied: Mapping[str, str],
    ) -> None:
        self.modules = modules
        self.calls = calls
        self.tied = tied

    def follow(self, node: fx.Node) -> PrunablePair | str:
        """The pair `node` produces, or the reason it cannot be pruned."""
        name = str(node.target)
        reason = self._end_problem(name, "it")
        if reason is not None:
            return reason
        path = _Path(node, isinstance(self.modules[name], nn.Conv2d))
        cur = node
        while True:
            users = _value_users(cur)
            where = "its output" if cur is node else f"the output of {cur.name!r}"
            if not users:
                return f"{where} is never used, so no layer reads its units"
            if len(users) > 1:
                names = ", ".join(repr(u.name) for u in users)
                extra = " (including a residual add)" if any(_is_add(u) for u in users) else ""
                return (
                    f"{where} has {len(users)} users ({names}){extra}: its channels are shared, "
                    "so they cannot be removed for one consumer"
                )
            user = users[0]
            if user.op == "output":
                if cur is node:
                    return "final layer: its output is the model's output, no layer reads its units"
                return f"{where} is the model's output, no layer reads its units"
            step = self._step(user, cur, path)
            if isinstance(step, (PrunablePair, str)):
                return step
            cur = user

    def _end_problem(self, name: str, who: str) -> str | None:
        """Why the layer `name` cannot be either end of a pair (`who` names its role in the
        reason): called more than once, tied, grouped, or a variant its registry entry refuses."""
        reason = self._module_problem(name, who)
        if reason is not None:
            return reason
        layer = self.modules[name]
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            return _grouped_reason(name, layer, who)
        kind = layer_kind(layer)
        problem = None if kind is None else kind.unsupported(layer)
        if problem is not None:
            return f"{who} ({name!r}) is {problem}"
        return None

    def _module_problem(self, name: str, who: str) -> str | None:
        count = self.calls[name]
        if count > 1:
            return f"{who} ({name!r}) is called {count} times in forward: one weight, many calls"
        if name in self.tied:
            return f"{who} ({name!r}) shares a parameter with {self.tied[name]!r} (tied weights)"
        return None

    def _step(self, user: fx.Node, cur: fx.Node, path: _Path) -> PrunablePair | str | None:
        """Absorb one op into `path`; return the pair at the consumer, a reason, or None."""
        if _is_add(user) or (user.op == "call_function" and user.target in _CONCAT_OPS):
            return _non_channel_wise(user)
        if not _reads_only_first_arg(user, cur):
            return f"{_describe(user)} uses {cur.name!r} in a way that is not channel-wise"
        if user.op == "call_module":
            return self._module_step(user, path)
        if user.op == "call_function":
            return self._function_step(user, path)
        if user.op == "call_method":
            return self._method_step(user, path)
        return f"unsupported op {_describe(user)} between the producer and the next layer"

    def _module_step(self, user: fx.Node, path: _Path) -> PrunablePair | str | None:
        name = str(user.target)
        module = self.modules[name]
        if layer_kind(module) is not None:
            return self._finish(user, path)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return self._norm_step(user, name, module, path)
        if isinstance(module, (*_DROPOUT_MODULES, nn.Identity)):
            path.between.append(user.name)
            return None
        try:
            act = module_activation(module, f"activation {name!r}")
        except ValueError as err:
            return f"activation not certifiable: {err}"
        if act is not None:
            return _set_activation(path, user, act)
        kind = _POOL_MODULES.get(type(module))
        if kind is not None:
            if getattr(module, "return_indices", False):
                return f"pooling {name!r} returns indices (a tuple), not channel-wise data"
            return _add_pooling(path, user, kind)
        if isinstance(module, nn.Flatten):
            if (module.start_dim, module.end_dim) != (1, -1):
                return _bad_flatten(name, module.start_dim, module.end_dim)
            return _add_flatten(path, user)
        return f"unsupported module {name!r} ({type(module).__name__}) before the next layer"

    def _norm_step(self, user: fx.Node, name: str, norm: nn.Module, path: _Path) -> str | None:
        producer = self.modules[str(path.producer.target)]
        if path.between:
            return (
                f"batch norm {name!r} is not directly after the producer (after "
                f"{', '.join(path.between)}), so it cannot be folded into it"
            )
        reason = self._module_problem(name, "its batch norm")
        if reason is not None:
            return reason
        expected = nn.BatchNorm2d if path.is_conv else nn.BatchNorm1d
        if not isinstance(norm, expected):
            return f"batch norm {name!r} is {type(norm).__name__}; need {expected.__name__}"
        assert isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d))
        if norm.num_features != _out_width(producer):
            width = _out_width(producer)
            return f"batch norm {name!r} has {norm.num_features} features, not {width}"
        if norm.running_mean is None:
            return (
                f"batch norm {name!r} has no running statistics (track_running_stats=False), "
                "so it cannot be folded"
            )
        path.norm = name
        path.between.append(user.name)
        return None

    def _function_step(self, user: fx.Node, path: _Path) -> str | None:
        target = user.target
        if is_activation_function(target):
            act = _function_activation(user)
            if isinstance(act, str):
                return act
            return _set_activation(path, user, act)
        if target in _DROPOUT_FUNCTIONS:
            path.between.append(user.name)
            return None
        if target in _POOL_FUNCTIONS:
            if _arg(user, 5, "return_indices", False):
                return f"pooling {user.name!r} returns indices (a tuple), not channel-wise data"
            return _add_pooling(path, user, _POOL_FUNCTIONS[target])
        if target in _FLATTEN_FUNCTIONS:
            return _flatten_call(path, user)
        if target is _MEAN[0]:
            return _mean_step(path, user)
        return _non_channel_wise(user)

    def _method_step(self, user: fx.Node, path: _Path) -> str | None:
        target = str(user.target)
        if is_activation_method(target):
            return _set_activation(path, user, function_activation(target, method=True))
        if target in _PASS_METHODS:
            path.between.append(user.name)
            return None
        if target in _FLATTEN_METHODS:
            return _flatten_call(path, user)
        if target == _MEAN[1]:
            return _mean_step(path, user)
        return _non_channel_wise(user)

    def _finish(self, user: fx.Node, path: _Path) -> PrunablePair | str:
        producer_name = str(path.producer.target)
        consumer_name = str(user.target)
        producer = self.modules[producer_name]
        consumer = self.modules[consumer_name]
        reason = self._end_problem(consumer_name, "its consumer")
        if reason is not None:
            return reason
        layout = _layout_problem(producer, consumer, path.flatten, consumer_name)
        if layout is not None:
            return layout
        return PrunablePair(
            producer=producer_name,
            consumer=consumer_name,
            norm=path.norm,
            activation=path.activation or Activation("identity"),
            flatten=path.flatten,
            between=tuple(path.between),
            pooling=tuple(path.pooling),
        )


# --------------------------------------------------------------------------------------------
# Small helpers for the walk


def _value_users(node: fx.Node) -> list[fx.Node]:
    """Users that read the values, ignoring shape queries such as `x.size(0)`."""
    return [user for user in node.users if not _is_meta(user)]


def _reads_only_first_arg(user: fx.Node, cur: fx.Node) -> bool:
    if user.op == "output":
        return True
    if not user.args or user.args[0] is not cur:
        return False
    found: list[fx.Node] = []

    def collect(node: fx.Node) -> fx.Node:
        found.append(node)
        return node

    fx.node.map_arg([*user.args[1:], *user.kwargs.values()], collect)
    return all(n is not cur for n in found)


def _bad_flatten(name: str, start: Any, end: Any) -> str:
    return f"flatten {name!r} uses start_dim={start}, end_dim={end}; only (1, -1) keeps the batch"


def _non_channel_wise(user: fx.Node) -> str:
    if _is_add(user):
        return f"output feeds a residual add ({user.name!r}): channels are tied to the skip path"
    if user.op == "call_function" and user.target in _CONCAT_OPS:
        return f"output feeds a concatenation ({user.name!r}): channels tied to other inputs"
    return f"unsupported op {_describe(user)} between the producer and the next layer"


def _set_activation(path: _Path, user: fx.Node, act: Activation) -> str | None:
    if path.activation is not None:
        return (
            f"two activations ({path.activation}, then {act} at {user.name!r}) between the "
            "producer and the next layer; only one is supported"
        )
    if not act.covered:
        return (
            f"activation not certifiable: activation {act} is not covered: {act.reason} "
            f"(at {user.name!r})"
        )
    if path.flatten:
        return f"activation {user.name!r} comes after the flatten; put it before"
    path.activation = act
    path.between.append(user.name)
    return None


def _add_pooling(path: _Path, user: fx.Node, kind: str) -> str | None:
    if not path.is_conv:
        return f"pooling {user.name!r} after a Linear producer mixes its units"
    if path.flatten:
        return f"pooling {user.name!r} comes after the flatten"
    path.pooling.append(kind)
    path.between.append(user.name)
    return None


def _add_flatten(path: _Path, user: fx.Node) -> str | None:
    if not path.is_conv:
        return (
            f"flatten {user.name!r} after a Linear producer: where its units land depends on the "
            "input rank"
        )
    path.flatten = True
    path.between.append(user.name)
    return None


def _flatten_call(path: _Path, user: fx.Node) -> str | None:
    """torch.flatten(x, 1), x.flatten(1), x.view(x.size(0), -1), x.reshape(-1, K), ..."""
    target = user.target
    if target is torch.flatten or target == "flatten":
        start = _arg(user, 1, "start_dim", 0)
        end = _arg(user, 2, "end_dim", -1)
        if (start, end) != (1, -1):
            return _bad_flatten(user.name, start, end)
        return _add_flatten(path, user)
    shape: list[Any] = list(user.args[1:]) or [user.kwargs.get("shape", ())]
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = list(shape[0])
    if len(shape) == 2 and _is_batch_flatten(shape[0], shape[1]):
        return _add_flatten(path, user)
    if not path.is_conv:
        return (
            f"reshape {user.name!r} regroups the Linear producer's units (as splitting attention "
            "heads does), so they cannot be removed one by one"
        )
    return f"reshape {user.name!r} is not a batch-preserving flatten (x.view(x.size(0), -1))"


def _mean_step(path: _Path, user: fx.Node) -> str | None:
    """x.mean((2, 3)) is a global average pool (and a flatten unless keepdim=True)."""
    dims = _arg(user, 1, "dim", None)
    keepdim = _arg(user, 2, "keepdim", False)
    spatial = isinstance(dims, (tuple, list)) and set(dims) in _SPATIAL_DIMS
    if not spatial or not isinstance(keepdim, bool):
        return f"mean {user.name!r} is not a global spatial average (dims (2, 3))"
    reason = _add_pooling(path, user, "adaptive_avg")
    if reason is not None or keepdim:
        return reason
    path.flatten = True
    return None


def _function_activation(user: fx.Node) -> Activation | str:
    """The activation an fx call computes, or why it cannot be read (a non-constant parameter)."""
    args, kwargs = user.args[1:], dict(user.kwargs)
    found: list[fx.Node] = []

    def collect(node: fx.Node) -> fx.Node:
        found.append(node)
        return node

    fx.node.map_arg([*args, *kwargs.values()], collect)
    label = getattr(user.target, "__name__", str(user.target))
    if found:
        return (
            f"activation {user.name!r} ({label}) has a parameter that is not a constant "
            f"({', '.join(n.name for n in found)})"
        )
    try:
        return function_activation(user.target, tuple(args), kwargs)
    except (TypeError, ValueError) as err:
        return f"activation {user.name!r} ({label}) cannot be read: {err}"
