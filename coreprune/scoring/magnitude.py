"""Magnitude pruning: |w| per weight (Han et al. 2015), filter L1 or L2 norm per unit (Li et al.
2017, "Pruning Filters for Efficient ConvNets")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from coreprune.checks import check_int
from coreprune.torch_utils import module_weight

from .base import Pruner
from .gates import UnitGates, unit_rows

__all__ = ["Magnitude"]


class Magnitude(Pruner):
    """Keep the largest weights, or the units whose incoming filter has the largest norm.

    A unit's score is the `p`-norm of its filter (kernel weights only, as in Li et al.: the bias
    and the following batch norm are not part of it). p = 1 is Li et al.'s choice and the default.
    """

    name: ClassVar[str] = "magnitude"

    def __init__(self, p: int = 1) -> None:
        self.p = check_int(p, "p", minimum=1)
        if self.p not in (1, 2):
            raise ValueError(f"p must be 1 (filter L1, Li et al.) or 2 (filter L2), got {p!r}")

    def weight_scores(
        self, model: nn.Module, names: Sequence[str], example_input: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        return {name: module_weight(model, name).detach().abs() for name in names}

    def unit_scores(
        self, model: nn.Module, gates: UnitGates, example_input: torch.Tensor | None
    ) -> list[torch.Tensor]:
        return [
            torch.linalg.vector_norm(unit_rows(p, p.weight.detach()).double(), ord=self.p, dim=1)
            for p in gates.producers
        ]

    def __repr__(self) -> str:
        return f"Magnitude(p={self.p})"
