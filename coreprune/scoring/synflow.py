"""SynFlow (Tanaka, Kunin, Yamins & Ganguli, NeurIPS 2020): data-free synaptic flow.

R = 1^T (prod_l |W_l|) 1 is the output sum of the linearised network (every parameter and
buffer replaced by its absolute value, batch norm in eval mode) on an all-ones input; a weight's
score is |theta * dR/dtheta|. Scores are recomputed `rounds` times while the density shrinks on
an exponential schedule, which avoids layer collapse. Computed in float64: in float32 R overflows
on deep ResNets.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from coreprune.checks import check_int
from coreprune.torch_utils import model_device, module_weight

from .base import Pruner, check_shape, input_like
from .gates import UnitGates

__all__ = ["SynFlow"]

DTYPES = (torch.float64, torch.float32)


class SynFlow(Pruner):
    """Iterative synaptic-flow scores. A unit's score is c * dR/dc for a gate c on its output,
    which by SynFlow's conservation law equals the total score flowing into (and out of) it."""

    name: ClassVar[str] = "synflow"

    def __init__(
        self,
        *,
        rounds: int = 100,
        input_shape: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        check_int(rounds, "rounds (the paper uses 100)", minimum=1)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be torch.float64 (default) or torch.float32, got {dtype}")
        self.rounds = rounds
        self.input_shape = None if input_shape is None else check_shape(input_shape, "input_shape")
        self.dtype = dtype

    def linearised(self, model: nn.Module) -> nn.Module:
        """A copy in `dtype`, eval mode, with |.| applied to every floating parameter and buffer."""
        work = copy.deepcopy(model).to(self.dtype).eval()
        with torch.no_grad():
            for value in work.state_dict().values():
                if value.is_floating_point():
                    value.abs_()
        for p in work.parameters():
            p.requires_grad_(True)
        return work

    def flow(self, model: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor:
        """R for an already linearised `model`, checked finite."""
        shape = input_like(self.input_shape, example_input, "SynFlow")
        ones = torch.ones((1, *shape), dtype=self.dtype, device=model_device(model))
        r = model(ones).sum()
        if not torch.isfinite(r):
            raise FloatingPointError(
                f"SynFlow's R is {float(r.detach())} in {self.dtype}: the product of |weights| "
                "overflowed; use dtype=torch.float64 (the default)"
            )
        return r

    def weight_scores(
        self, model: nn.Module, names: Sequence[str], example_input: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        work = self.linearised(model)
        weights = [module_weight(work, n) for n in names]
        grads = torch.autograd.grad(self.flow(work, example_input), weights)
        return {
            n: (w.detach() * g).abs().double()
            for n, w, g in zip(names, weights, grads, strict=True)
        }

    def unit_scores(
        self, model: nn.Module, gates: UnitGates, example_input: torch.Tensor | None
    ) -> list[torch.Tensor]:
        work = self.linearised(model)
        work_gates = UnitGates(work, gates.pairs, dtype=self.dtype, masks=gates.values)
        work_gates.require_grad()
        with work_gates:
            r = self.flow(work, example_input)
        grads = torch.autograd.grad(r, work_gates.values, allow_unused=True)
        out = []
        for c, g in zip(work_gates.values, grads, strict=True):
            out.append(torch.zeros(c.numel(), dtype=torch.float64) if g is None
                       else (c.detach() * g).abs().double().cpu())  # fmt: skip
        return out

    def __repr__(self) -> str:
        return f"SynFlow(rounds={self.rounds}, dtype={self.dtype})"
