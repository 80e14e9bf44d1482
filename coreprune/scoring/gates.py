"""Per-unit gates: a multiplier c_i on each unit's output, the handle unit-level scores use.

A gate sits on the unit's output after its batch norm (or on the producer when there is none),
which is exactly what the surgery removes: c_i = 0 is the pruned network, c_i = 1 the dense one.
Derivatives with respect to c are the unit forms of SNIP and SynFlow (docs/baselines.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from coreprune.surgery.activations import Activation
from coreprune.surgery.graph import PrunablePair
from coreprune.surgery.groups import ChannelGroup
from coreprune.surgery.registry import layer_kind

__all__ = [
    "UnitGates",
    "group_gate_pairs",
    "param_unit_rows",
    "reduce_group_scores",
    "unit_params",
    "unit_rows",
]


def _kind_of(module: nn.Module, name: str) -> Any:
    kind = layer_kind(module)
    if kind is None:
        raise TypeError(
            f"{name} is {type(module).__name__}; gates need a layer the surgery registry knows "
            "(nn.Linear, nn.Conv2d, HF-style Conv1D)"
        )
    return kind


def _device(module: nn.Module) -> torch.device:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight.device


def unit_rows(producer: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like ``producer.weight`` (the weight, its gradient, a score) as one row
    per unit, through the registry's unit view. Scorers read units this way, never as
    ``weight`` rows: an HF Conv1D stores its weight (inputs, outputs), so its rows are inputs."""
    return _kind_of(producer, "producer").unit_view(producer, tensor)


class UnitGates:
    """Forward hooks that multiply each pair's unit outputs by a gate vector.

    Use as a context manager; the hooks are removed on exit. `values[p]` is pair p's gate
    (float, one entry per producer unit); set `requires_grad` on it to read gate derivatives.
    """

    def __init__(
        self,
        model: nn.Module,
        pairs: Sequence[PrunablePair],
        *,
        dtype: torch.dtype = torch.float32,
        masks: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.pairs = list(pairs)
        self.producers: list[Any] = []
        self.norms: list[nn.Module | None] = []
        self.consumers: list[Any] = []
        self.values: list[torch.Tensor] = []
        for index, pair in enumerate(self.pairs):
            producer = model.get_submodule(pair.producer)
            consumer = model.get_submodule(pair.consumer)
            _kind_of(consumer, f"consumer {pair.consumer!r}")
            self.producers.append(producer)
            self.norms.append(None if pair.norm is None else model.get_submodule(pair.norm))
            self.consumers.append(consumer)
            n = _kind_of(producer, f"producer {pair.producer!r}").out_units(producer)
            gate = torch.ones(n, dtype=dtype, device=_device(producer))
            if masks is not None:
                gate = masks[index].to(gate.device, dtype)
            self.values.append(gate)
        self._handles: list[Any] = []

    def units(self, index: int) -> int:
        return self.values[index].numel()

    def require_grad(self) -> None:
        """Make every gate a fresh leaf that records its gradient."""
        self.values = [v.detach().clone().requires_grad_(True) for v in self.values]

    def __enter__(self) -> UnitGates:
        for index in range(len(self.pairs)):
            norm = self.norms[index]
            target = norm if norm is not None else self.producers[index]
            self._handles.append(target.register_forward_hook(self._hook(index)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, index: int) -> Any:
        # A conv's units are its channels (dim 1); a Linear's are its last dim, whatever leading
        # dims (batch, tokens) its output has.
        channels_first = isinstance(self.producers[index], nn.Conv2d)

        def multiply(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            gate = self.values[index]
            if channels_first:
                shape = (1, -1) + (1,) * (output.ndim - 2)
            else:
                shape = (1,) * (output.ndim - 1) + (-1,)
            return output * gate.to(output.dtype).view(shape)

        return multiply


def unit_params(gates: UnitGates, index: int) -> list[torch.Tensor]:
    """The parameters pair ``index``'s units own row-wise: filter, bias, batch-norm scale and
    shift. Zeroing all of them switches the units off, which is what the "sum" unit forms of
    SNIP and GraSP score."""
    out = [gates.producers[index].weight]
    bias = gates.producers[index].bias
    if bias is not None:
        out.append(bias)
    norm = gates.norms[index]
    if norm is not None:
        for name in ("weight", "bias"):
            p = getattr(norm, name, None)
            if isinstance(p, torch.Tensor):
                out.append(p)
    return out


def param_unit_rows(
    gates: UnitGates, index: int, param: torch.Tensor, tensor: torch.Tensor
) -> torch.Tensor:
    """``tensor`` (shaped like ``param``, one of ``unit_params(gates, index)``) as one row per
    unit: the producer's weight through the registry's unit view, a bias or norm vector as
    (n, 1)."""
    producer = gates.producers[index]
    if param is producer.weight:
        return unit_rows(producer, tensor)
    return tensor.reshape(gates.units(index), -1)


def group_gate_pairs(groups: Sequence[ChannelGroup]) -> tuple[list[PrunablePair], list[int]]:
    """Gate pairs for channel groups, and the group each one belongs to.

    A simple group is its pair. A coupled group gets one pair per producer (the producer, the
    batch norm right after it, and the group's first consumer), so `UnitGates` puts a gate on
    every producer's post-norm output; with the same mask on all of them, a gate at 0 switches
    the channel off on every path that writes it (exactly, for a residual stream whose norms sit
    before the add). Gate producers (a squeeze-excitation's last layer) are not scored.
    Scores are summed per group (`reduce_group_scores`): for gate derivatives this is the
    derivative with respect to one gate shared by all producers of the channel.
    """
    pairs: list[PrunablePair] = []
    owners: list[int] = []
    for index, group in enumerate(groups):
        if group.pair is not None:
            pairs.append(group.pair)
            owners.append(index)
            continue
        for producer, norm in zip(group.producers, group.producer_norms, strict=True):
            pairs.append(
                PrunablePair(
                    producer, group.consumers[0].name, norm, Activation("identity"), False, (), ()
                )
            )
            owners.append(index)
    return pairs, owners


def reduce_group_scores(
    scores: Sequence[torch.Tensor], owners: Sequence[int], n_groups: int
) -> list[torch.Tensor]:
    """Per-group scores: the sum of the per-producer unit scores of each group."""
    if len(scores) != len(owners):
        raise ValueError(f"got {len(scores)} score vectors for {len(owners)} gate pairs")
    out: list[torch.Tensor | None] = [None] * n_groups
    for score, owner in zip(scores, owners, strict=True):
        score = score.detach().double().cpu()
        current = out[owner]
        out[owner] = score if current is None else current + score
    if any(s is None for s in out):
        raise ValueError("a group has no scored producer")
    return [s for s in out if s is not None]
