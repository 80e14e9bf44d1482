"""Find the layer pairs a whole-model pass may prune, by reading the model's torch.fx graph.

A pair is a producer (any layer type of `coreprune.surgery.registry`: nn.Linear, nn.Conv2d, an
HF-style Conv1D) whose output units are removed and the single such layer that reads them. Removing a unit is only safe when nothing but that
consumer sees the unit, and only through channel-wise ops (a folded batch norm, one activation,
dropout, pooling, a batch-preserving flatten). Everything else (a residual add, a concat, a second
user, a shared module) ties the channels to another path, so the layer is reported as blocked,
with the reason, instead of being pruned. So is a pair whose activation the certificate does not
cover (|phi(t)| > |t| for some t): every pair returned is certifiable. When fx cannot trace a
model, pairs can be given by hand (`PrunablePair.simple`) and checked with `validate_pairs`.

A transformer feed-forward block (LayerNorm -> Linear -> GELU -> dropout -> Linear -> residual
add) is an ordinary pair: its hidden units feed only the second Linear, while the second Linear's
outputs (on the residual stream) and the attention projections are blocked with their reason.
"""

from __future__ import annotations

import builtins
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from coreprune.surgery.activations import (
    Activation,
    activation_of,
    function_activation,
    is_activation_function,
    is_activation_method,
    looks_like_activation,
    module_activation,
)
from coreprune.surgery.attention import HeadAttention
from coreprune.surgery.registry import layer_kind

__all__ = [
    "BlockedLayer",
    "FxTraceError",
    "PrunablePair",
    "find_prunable_pairs",
    "validate_pairs",
]

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


# --------------------------------------------------------------------------------------------
# What counts as a channel-wise op. Functions are matched by identity, methods by name.

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
_ADD_OPS = (operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub)
_ADD_METHODS = ("add", "add_", "sub", "sub_", "__add__", "__radd__", "__iadd__")
_CONCAT_OPS = (torch.cat, torch.concat, torch.stack)
_META_METHODS = ("size", "dim")
_META_ATTRS = ("shape", "ndim", "dtype", "device")
_SPATIAL_DIMS = ({2, 3}, {-2, -1})


# --------------------------------------------------------------------------------------------
# Public API


def find_prunable_pairs(model: nn.Module) -> tuple[list[PrunablePair], list[BlockedLayer]]:
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


def validate_pairs(model: nn.Module, pairs: Iterable[PrunablePair]) -> list[PrunablePair]:
    """Check hand-given pairs against the model's modules; return them as a list.

    Checks names, module types, groups, channel counts, the norm, the flatten/pooling layout
    and the activation (a name becomes an `Activation`; one the certificate does not cover is
    refused). It cannot check that the forward really connects them: that is the caller's claim.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(pairs, PrunablePair):
        raise TypeError("pairs must be a list of PrunablePair, got a single one; wrap it in a list")
    modules = dict(model.named_modules())
    checked: list[PrunablePair] = []
    producers: set[str] = set()
    consumers: set[str] = set()
    for i, pair in enumerate(pairs):
        where = f"pairs[{i}]"
        if not isinstance(pair, PrunablePair):
            raise TypeError(f"{where} must be a PrunablePair, got {type(pair).__name__}")
        pair = replace(pair, activation=_validate_activation(pair.activation, where))
        _validate_one(pair, modules, where)
        if pair.producer in producers:
            raise ValueError(f"{where}: producer {pair.producer!r} appears in more than one pair")
        if pair.consumer in consumers:
            raise ValueError(f"{where}: consumer {pair.consumer!r} appears in more than one pair")
        producers.add(pair.producer)
        consumers.add(pair.consumer)
        checked.append(pair)
    return checked


# --------------------------------------------------------------------------------------------
# Tracing


class _Tracer(fx.Tracer):
    """The default tracer, but every layer type of the registry (HF's Conv1D included) and every
    module that looks like an activation (HF's GELUActivation, a subclass of nn.ReLU, ...) stays
    one call, so the walk sees the layer and can ask the activation what it computes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if super().is_leaf_module(m, module_qualified_name) or layer_kind(m) is not None:
            return True
        if isinstance(m, HeadAttention):  # a cut nn.MultiheadAttention stays one call, as it was
            return True
        stateless = not any(True for _ in m.parameters()) and not any(True for _ in m.buffers())
        return stateless and looks_like_activation(m)


_BY_HAND = (
    "Pass the pairs by hand instead (compress(..., pairs=[PrunablePair(...), ...])) and check "
    "them with coreprune.surgery.graph.validate_pairs."
)


def _trace(model: nn.Module, tracer: fx.Tracer | None = None, hint: str = _BY_HAND) -> fx.Graph:
    """The model's fx graph, traced by `tracer` (default: the pair walk's); an FxTraceError
    naming `hint` when fx cannot trace it."""
    try:
        return (tracer or _Tracer()).trace(model)
    except Exception as err:  # fx raises many types; all mean the same thing here
        raise FxTraceError(
            f"torch.fx could not trace {type(model).__name__} ({type(err).__name__}: {err}). "
            + hint
        ) from err


def _tied_modules(model: nn.Module) -> dict[str, str]:
    """Module name -> the other module it shares a parameter tensor with (weight tying)."""
    owner: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, module in model.named_modules():
        for param in module._parameters.values():
            if param is None:
                continue
            first = owner.setdefault(id(param), name)
            if first != name:
                tied[name], tied[first] = first, name
    return tied


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
    def __init__(
        self, modules: Mapping[str, nn.Module], calls: Counter[Any], tied: Mapping[str, str]
    ) -> None:
        self.modules = modules
        self.calls = calls
        self.tied = tied

    def follow(self, node: fx.Node) -> PrunablePair | str:
        """The pair `node` produces, or the reason it cannot be pruned."""
        name = str(node.target)
        layer = self.modules[name]
        reason = self._module_problem(name, "it")
        if reason is not None:
            return reason
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            return _grouped_reason(name, layer, "it")
        kind = layer_kind(layer)
        problem = None if kind is None else kind.unsupported(layer)
        if problem is not None:
            return f"it ({name!r}) is {problem}"
        path = _Path(node, isinstance(layer, nn.Conv2d))
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
        reason = self._module_problem(consumer_name, "its consumer")
        if reason is not None:
            return reason
        if isinstance(consumer, nn.Conv2d) and consumer.groups != 1:
            return _grouped_reason(consumer_name, consumer, "its consumer")
        kind = layer_kind(consumer)
        problem = None if kind is None else kind.unsupported(consumer)
        if problem is not None:
            return f"its consumer ({consumer_name!r}) is {problem}"
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
    out = []
    for user in node.users:
        if user.op == "call_method" and user.target in _META_METHODS:
            continue
        if (
            user.op == "call_function"
            and user.target is builtins.getattr
            and len(user.args) > 1
            and user.args[1] in _META_ATTRS
        ):
            continue
        out.append(user)
    return out


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


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _ADD_OPS
    return node.op == "call_method" and node.target in _ADD_METHODS


def _bad_flatten(name: str, start: Any, end: Any) -> str:
    return f"flatten {name!r} uses start_dim={start}, end_dim={end}; only (1, -1) keeps the batch"


def _describe(node: fx.Node) -> str:
    target = node.target
    label = getattr(target, "__name__", None) or str(target)
    return f"{node.name!r} ({node.op} {label})"


def _non_channel_wise(user: fx.Node) -> str:
    if _is_add(user):
        return f"output feeds a residual add ({user.name!r}): channels are tied to the skip path"
    if user.op == "call_function" and user.target in _CONCAT_OPS:
        return f"output feeds a concatenation ({user.name!r}): channels tied to other inputs"
    return f"unsupported op {_describe(user)} between the producer and the next layer"


def _arg(node: fx.Node, index: int, key: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(key, default)


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


def _is_batch_flatten(first: Any, second: Any) -> bool:
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


def _validate_activation(activation: object, where: str) -> Activation:
    if not isinstance(activation, (Activation, str)):
        raise TypeError(
            f"{where}.activation must be a name like 'relu' or an Activation, got "
            f"{type(activation).__name__}"
        )
    act = activation_of(activation, f"{where}.activation")
    if not act.covered:
        raise ValueError(
            f"{where}.activation {act} is not covered: {act.reason}; the certificate needs "
            "|phi(t)| <= |t| for all t, so this pair cannot be pruned"
        )
    return act


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


def _validate_one(pair: PrunablePair, modules: Mapping[str, nn.Module], where: str) -> None:
    for role in ("producer", "consumer"):
        name = getattr(pair, role)
        if not isinstance(name, str) or name not in modules:
            raise ValueError(
                f"{where}.{role}={name!r} is not a module of the model; use a name from "
                "model.named_modules()"
            )
        layer = modules[name]
        kind = layer_kind(layer)
        if kind is None:
            raise TypeError(
                f"{where}.{role} {name!r} must be nn.Linear, nn.Conv2d or Conv1D, "
                f"got {type(layer).__name__}"
            )
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            raise ValueError(f"{where}: {_grouped_reason(name, layer, role)}")
        problem = kind.unsupported(layer)
        if problem is not None:
            raise ValueError(f"{where}: {role} {name!r} is {problem}")
    if pair.producer == pair.consumer:
        raise ValueError(f"{where}: producer and consumer are the same module {pair.producer!r}")
    producer, consumer = modules[pair.producer], modules[pair.consumer]
    if not isinstance(pair.flatten, bool):
        raise TypeError(f"{where}.flatten must be a bool, got {type(pair.flatten).__name__}")
    if not isinstance(pair.between, tuple) or not all(isinstance(b, str) for b in pair.between):
        raise TypeError(f"{where}.between must be a tuple of str (fx node names, may be empty)")
    if not isinstance(pair.pooling, tuple) or any(p not in POOLING_KINDS for p in pair.pooling):
        raise ValueError(f"{where}.pooling must be a tuple from {POOLING_KINDS}: {pair.pooling!r}")
    if pair.flatten and _is_dense(producer):
        raise ValueError(f"{where}: flatten=True needs a Conv2d producer, not {pair.producer!r}")
    if pair.pooling and _is_dense(producer):
        raise ValueError(f"{where}: pooling after the Linear {pair.producer!r} mixes its units")
    if pair.norm is not None:
        _validate_norm(pair, modules, where)
    problem = _layout_problem(producer, consumer, pair.flatten, pair.consumer)
    if problem is not None:
        raise ValueError(f"{where}: {problem}")


def _validate_norm(pair: PrunablePair, modules: Mapping[str, nn.Module], where: str) -> None:
    name = pair.norm
    if not isinstance(name, str) or name not in modules:
        raise ValueError(f"{where}.norm={name!r} is not a module of the model; use a name or None")
    norm = modules[name]
    producer = modules[pair.producer]
    expected = nn.BatchNorm2d if isinstance(producer, nn.Conv2d) else nn.BatchNorm1d
    if not isinstance(norm, expected):
        raise TypeError(
            f"{where}.norm {name!r} must be {expected.__name__}, got {type(norm).__name__}"
        )
    if norm.num_features != _out_width(producer):
        raise ValueError(
            f"{where}.norm {name!r} has {norm.num_features} features but the producer has "
            f"{_out_width(producer)} units"
        )
    if norm.running_mean is None:
        raise ValueError(f"{where}.norm {name!r} has no running statistics, so it cannot be folded")
