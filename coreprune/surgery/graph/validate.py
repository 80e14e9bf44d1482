"""Checking pairs given by hand, for a model torch.fx cannot trace.

Every check the walk makes on the modules themselves is made here too (names, types, groups,
widths, the norm, the flatten/pooling layout, a covered activation). What the walk reads from
the graph, that the forward really connects the two layers, cannot be checked without it: that
is the caller's claim.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from torch import nn

from coreprune.surgery.activations import Activation, activation_of
from coreprune.surgery.graph.layout import (
    _grouped_reason,
    _is_dense,
    _layout_problem,
    _out_width,
)
from coreprune.surgery.graph.pair import POOLING_KINDS, PrunablePair
from coreprune.surgery.registry import layer_kind


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
