"""Random pruning: i.i.d. uniform scores, the floor every informed method must beat."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from coreprune.checks import check_int
from coreprune.torch_utils import module_weight

from .base import Pruner
from .gates import UnitGates

__all__ = ["Random"]


class Random(Pruner):
    """Uniform random scores, seeded: `seed` (an int, default 0) or a torch.Generator to draw from.

    With an int, each scoring call starts from that seed, so equal calls give equal masks.
    """

    name: ClassVar[str] = "random"

    def __init__(self, seed: int | torch.Generator = 0) -> None:
        if not isinstance(seed, torch.Generator):
            check_int(seed, "seed (or a torch.Generator)")
        self.seed = seed

    def _generator(self) -> torch.Generator:
        if isinstance(self.seed, torch.Generator):
            return self.seed
        return torch.Generator().manual_seed(self.seed)

    def weight_scores(
        self, model: nn.Module, names: Sequence[str], example_input: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        gen = self._generator()
        out = {}
        for name in names:
            weight = module_weight(model, name)
            out[name] = torch.rand(weight.shape, generator=gen, dtype=torch.float64)
        return out

    def unit_scores(
        self, model: nn.Module, gates: UnitGates, example_input: torch.Tensor | None
    ) -> list[torch.Tensor]:
        gen = self._generator()
        return [torch.rand(gates.units(i), generator=gen, dtype=torch.float64)
                for i in range(len(gates.pairs))]  # fmt: skip

    def __repr__(self) -> str:
        seed = "generator" if isinstance(self.seed, torch.Generator) else self.seed
        return f"Random(seed={seed})"
