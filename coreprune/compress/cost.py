"""What a model costs, in parameters and multiply-accumulates, and how pruning changes it.

Counting uses PyTorch's own flop counter, so the dense and the pruned model are costed by the same
rules. Planning never runs surgery: a module's params (and MACs) are bilinear in its kept output
and input units, so `CostModel` knows the whole model's cost exactly from the kept counts alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from coreprune.surgery.graph import PrunablePair
from coreprune.surgery.groups import ChannelGroup, group_from_pair
from coreprune.surgery.registry import layer_kind, norm_kind
from coreprune.torch_utils import eval_mode

__all__ = [
    "METRICS",
    "CostModel",
    "Inputs",
    "as_args",
    "count_macs",
    "count_params",
    "module_macs",
    "removed_fraction",
]

METRICS = ("params", "macs")
Inputs = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]


def count_params(model: nn.Module) -> int:
    """Number of parameter entries; a parameter shared by several modules counts once."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters())


def as_args(value: object, name: str = "example_input") -> tuple[torch.Tensor, ...]:
    """The forward's positional arguments: a tensor, or a non-empty tuple/list of tensors."""
    if isinstance(value, torch.Tensor):
        return (value,)
    if (
        isinstance(value, (tuple, list))
        and value
        and all(isinstance(v, torch.Tensor) for v in value)
    ):
        return tuple(value)
    raise TypeError(f"{name} must be a tensor or a tuple of tensors (the forward's arguments)")


def count_macs(model: nn.Module, example_input: Inputs) -> int:
    """Multiply-accumulates of one eval-mode forward on `example_input` (the whole batch).

    Counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions; bias adds,
    norms, activations and pooling are not counted) as FLOPs / 2. Pass a batch of one for a
    per-sample figure.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    args = as_args(example_input)
    counter = FlopCounterMode(display=False)
    with eval_mode(model, no_grad=True), counter:
        model(*args)
    flops = int(counter.get_total_flops())
    if flops % 2:
        raise ValueError(f"the flop counter returned an odd total ({flops}); not 2 x MACs")
    return flops // 2


def module_macs(model: nn.Module, args: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """MACs of every prunable layer on one eval forward, plus the model's total under '__total__'.

    Per module: output entries x inputs per output (the rule PyTorch's flop counter uses).
    """
    macs: dict[str, int] = {}
    handles = []

    def make(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, _inp: Any, out: Any) -> None:
            kind = layer_kind(module)
            assert kind is not None
            macs[name] = macs.get(name, 0) + out.numel() * kind.inputs_per_output(module)

        return hook

    for name, module in model.named_modules():
        if layer_kind(module) is not None:
            handles.append(module.register_forward_hook(make(name)))
    try:
        total = count_macs(model, args)
    finally:
        for handle in handles:
            handle.remove()
    macs["__total__"] = total
    return macs


def removed_fraction(before: int, after: int) -> float:
    """(before - after) / before, 0 for an empty model."""
    return 0.0 if before == 0 else (before - after) / before


@dataclass(frozen=True)
class _Width:
    """A module side's channel count: `base` plus the kept count of each group in `groups`
    (`dense` is the count with nothing pruned)."""

    dense: int
    groups: tuple[int, ...] = ()
    widths: tuple[int, ...] = ()

    def at(self, keeps: Sequence[int] | None) -> int:
        if keeps is None or not self.groups:
            return self.dense
        return self.dense + sum(keeps[g] - w for g, w in zip(self.groups, self.widths, strict=True))


@dataclass(frozen=True)
class _Term:
    """A module's cost: product * out * in + linear * out, out/in possibly group-indexed."""

    product: int | Fraction
    linear: int
    out: _Width
    inp: _Width

    def cost(self, keeps: Sequence[int] | None) -> int:
        out = self.out.at(keeps)
        return int(self.product * out * self.inp.at(keeps)) + self.linear * out


@dataclass(frozen=True)
class CostModel:
    """The model's params or MACs as an exact function of the kept units of every pair (or
    channel group).

    `cost(keeps)` is the total with `keeps[i]` units kept in pair (group) i (None: dense). Every
    member of a group is covered: producers and gates (out side), consumers (in side), norms,
    depthwise convs and channel-wise modules (linear in the group's channels); a module reading
    a concatenation has its input width summed over the groups it reads.
    """

    metric: str
    fixed: int
    terms: tuple[_Term, ...]

    @classmethod
    def build(
        cls,
        model: nn.Module,
        pairs: Sequence[PrunablePair],
        metric: str = "params",
        example_input: Inputs | None = None,
    ) -> CostModel:
        """The cost model of `model` pruned at `pairs` (MACs need `example_input`)."""
        groups = [group_from_pair(model, pair) for pair in pairs]
        return cls.build_groups(model, groups, metric, example_input)

    @classmethod
    def build_groups(
        cls,
        model: nn.Module,
        groups: Sequence[ChannelGroup],
        metric: str = "params",
        example_input: Inputs | None = None,
    ) -> CostModel:
        """The cost model of `model` pruned at channel `groups` (MACs need `example_input`)."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        macs: dict[str, int] | None = None
        if metric == "macs":
            if example_input is None:
                raise ValueError("metric='macs' needs example_input (a batch the model accepts)")
            macs = module_macs(model, as_args(example_input))
        sides: dict[str, _Sides] = {}
        for index, group in enumerate(groups):
            for name in (*group.producers, *group.gates):
                sides.setdefault(name, _Sides()).out.append((index, group.width))
            for consumer in group.consumers:
                side = sides.setdefault(consumer.name, _Sides())
                side.inp.append((index, group.width))
                side.block = consumer.block
            for member in group.channelwise:
                side = sides.setdefault(member.name, _Sides())
                side.both.append((index, group.width))
                side.kind, side.attrs = member.kind, member.attrs
        terms: list[_Term] = []
        covered = 0
        for name, side in sides.items():
            module = model.get_submodule(name)
            term, own = _term(module, name, side, metric, macs)
            terms.append(term)
            covered += own
        total = count_params(model) if macs is None else macs["__total__"]
        return cls(metric, total - covered, tuple(terms))

    def cost(self, keeps: Sequence[int] | None = None) -> int:
        """The model's total with `keeps[i]` units kept in pair (group) i (None: dense)."""
        return self.fixed + sum(t.cost(keeps) for t in self.terms)

    def removed(self, keeps: Sequence[int]) -> float:
        """Fraction of the dense cost removed by keeping `keeps`."""
        return removed_fraction(self.cost(None), self.cost(keeps))


@dataclass
class _Sides:
    out: list[tuple[int, int]] = field(default_factory=list)
    inp: list[tuple[int, int]] = field(default_factory=list)
    both: list[tuple[int, int]] = field(default_factory=list)
    block: int = 1
    kind: str = ""
    attrs: tuple[str, ...] = ()


def _width(dense: int, parts: Sequence[tuple[int, int]]) -> _Width:
    return _Width(dense, tuple(g for g, _ in parts), tuple(w for _, w in parts))


def _own_params(module: nn.Module, attrs: tuple[str, ...] = ()) -> int:
    if attrs:
        return sum(
            t.numel() for a in attrs if isinstance(t := getattr(module, a, None), nn.Parameter)
        )
    return sum(p.numel() for p in module.parameters(recurse=False))


def _term(
    module: nn.Module, name: str, side: _Sides, metric: str, macs: dict[str, int] | None
) -> tuple[_Term, int]:
    """The module's term and the part of the total it covers."""
    own = _own_params(module, side.attrs) if macs is None else macs.get(name, 0)
    if side.both:
        norm = norm_kind(module)
        channels = _channel_count(module, side)
        width = _width(channels, side.both)
        if metric == "params":
            per_channel, rest = divmod(own, channels)
            if rest:
                raise ValueError(
                    f"module {name!r} ({type(module).__name__}) has {own} parameters, not a "
                    f"multiple of its {channels} channels; it cannot be budgeted"
                )
            if norm is not None and per_channel != norm.params_per_unit(module):
                raise ValueError(f"norm {name!r} has parameters beyond its affine scale/shift")
            return _Term(0, per_channel, width, _Width(1)), own
        if own % channels:
            raise ValueError(f"MACs of {name!r} ({own}) are not linear in its channels")
        return _Term(0, own // channels, width, _Width(1)), own
    kind = layer_kind(module)
    if kind is None:
        raise TypeError(f"{type(module).__name__} ({name!r}) is not a prunable layer type")
    out_units = kind.out_units(module)
    in_units = kind.in_units(module)
    per_in = kind.weights_per_pair(module)
    if side.block > 1:
        per_in *= side.block  # a flatten block: each channel feeds several inputs
        in_units //= side.block
    out, inp = _width(out_units, side.out), _width(in_units, side.inp)
    groups = int(getattr(module, "groups", 1))  # a grouped conv: each output reads in/groups
    product: int | Fraction = per_in if groups == 1 else Fraction(per_in, groups)
    if metric == "params":
        linear = kind.bias_params(module)
        if product * out_units * in_units + linear * out_units != own:
            raise ValueError(
                f"module {name!r} ({type(module).__name__}) has {own} parameters, not the "
                "weight + bias its shape implies; a subclass with extra parameters cannot be "
                "budgeted"
            )
        return _Term(product, linear, out, inp), own
    if groups == 1 and own % (out_units * in_units):
        raise ValueError(f"MACs of {name!r} ({own}) are not bilinear in its units")
    per_mac = Fraction(own, out_units * in_units)
    return _Term(int(per_mac) if per_mac.denominator == 1 else per_mac, 0, out, inp), own


def _channel_count(module: nn.Module, side: _Sides) -> int:
    if side.attrs:
        return int(getattr(module, side.attrs[0]).shape[0])
    norm = norm_kind(module)
    if norm is not None:
        return norm.units(module)
    if isinstance(module, nn.Conv2d):
        return int(module.out_channels)
    for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
        if tensor.ndim == 1:
            return int(tensor.shape[0])
    raise ValueError(f"cannot tell how many channels {type(module).__name__} has")
