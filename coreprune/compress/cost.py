"""What a model costs, in parameters and multiply-accumulates, and how pruning changes it.

Counting uses PyTorch's own flop counter, so the dense and the pruned model are costed by the same
rules. Planning never runs surgery: a module's params (and MACs) are bilinear in its kept output
and input units, so `CostModel` knows the whole model's cost exactly from the kept counts alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from coreprune.surgery.graph import PrunablePair
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
class _Term:
    """A module's cost: product * out * in + linear * out, out/in possibly a pair's kept units."""

    product: int
    linear: int
    out_units: int
    in_units: int
    out_pair: int | None
    in_pair: int | None

    def cost(self, keeps: Sequence[int] | None) -> int:
        out = self.out_units if keeps is None or self.out_pair is None else keeps[self.out_pair]
        inp = self.in_units if keeps is None or self.in_pair is None else keeps[self.in_pair]
        return self.product * out * inp + self.linear * out


@dataclass(frozen=True)
class CostModel:
    """The model's params or MACs as an exact function of the kept units of every pair.

    `cost(keeps)` is the total with `keeps[i]` units kept in pair i (None: the dense model).
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
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        macs: dict[str, int] | None = None
        if metric == "macs":
            if example_input is None:
                raise ValueError("metric='macs' needs example_input (a batch the model accepts)")
            macs = module_macs(model, as_args(example_input))
        units = [_out_units(model.get_submodule(p.producer)) for p in pairs]
        roles: dict[str, dict[str, int]] = {}
        for i, pair in enumerate(pairs):
            roles.setdefault(pair.producer, {})["out"] = i
            roles.setdefault(pair.consumer, {})["in"] = i
            if pair.norm is not None:
                roles.setdefault(pair.norm, {})["out"] = i
        terms: list[_Term] = []
        covered = 0
        for name, role in roles.items():
            module = model.get_submodule(name)
            terms.append(_term(module, name, role, units, metric, macs))
            if macs is None:
                covered += sum(p.numel() for p in module.parameters(recurse=False))
            else:
                covered += macs.get(name, 0)
        total = count_params(model) if macs is None else macs["__total__"]
        return cls(metric, total - covered, tuple(terms))

    def cost(self, keeps: Sequence[int] | None = None) -> int:
        """The model's total with `keeps[i]` units kept in pair i (None: dense)."""
        return self.fixed + sum(t.cost(keeps) for t in self.terms)

    def removed(self, keeps: Sequence[int]) -> float:
        """Fraction of the dense cost removed by keeping `keeps`."""
        return removed_fraction(self.cost(None), self.cost(keeps))


def _out_units(module: nn.Module) -> int:
    kind = layer_kind(module)
    if kind is None:
        raise TypeError(f"{type(module).__name__} is not a prunable layer type")
    return kind.out_units(module)


def _term(
    module: nn.Module,
    name: str,
    role: dict[str, int],
    units: Sequence[int],
    metric: str,
    macs: dict[str, int] | None,
) -> _Term:
    out_pair, in_pair = role.get("out"), role.get("in")
    norm = norm_kind(module)
    if norm is not None:
        linear = norm.params_per_unit(module) if metric == "params" else 0
        return _Term(0, linear, norm.units(module), 1, out_pair, None)
    kind = layer_kind(module)
    assert kind is not None
    out_units = kind.out_units(module)
    in_units = kind.in_units(module)
    per_in = kind.weights_per_pair(module)
    if in_pair is not None and in_units != units[in_pair]:
        per_in *= in_units // units[in_pair]  # a flatten block: each unit feeds several inputs
        in_units = units[in_pair]
    if metric == "params":
        linear = kind.bias_params(module)
        actual = sum(p.numel() for p in module.parameters(recurse=False))
        if per_in * out_units * in_units + linear * out_units != actual:
            raise ValueError(
                f"module {name!r} ({type(module).__name__}) has {actual} parameters, not the "
                "weight + bias its shape implies; a subclass with extra parameters cannot be "
                "budgeted"
            )
        return _Term(per_in, linear, out_units, in_units, out_pair, in_pair)
    assert macs is not None
    total = macs.get(name, 0)
    if total % (out_units * in_units):
        raise ValueError(f"MACs of {name!r} ({total}) are not bilinear in its units")
    return _Term(total // (out_units * in_units), 0, out_units, in_units, out_pair, in_pair)
