"""Network slimming's unit score: the |gamma| of the batch norm after each producer."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from coreprune.scoring.base import UnitScorer
from coreprune.scoring.gates import UnitGates

__all__ = ["BNScale"]


class BNScale(UnitScorer):
    """Network-slimming / early-bird unit score: |gamma| of the batch norm after the producer.

    Unit-level only: a batch-norm scale belongs to a whole channel, so there is no per-weight
    form; use it with `coreprune.compress(..., method=BNScale())`.
    """

    name: ClassVar[str] = "bn_scale"

    def unit_scores(
        self, model: nn.Module, gates: UnitGates, example_input: torch.Tensor | None
    ) -> list[torch.Tensor]:
        scores = []
        for pair, norm in zip(gates.pairs, gates.norms, strict=True):
            if norm is None:
                raise ValueError(
                    f"producer {pair.producer!r} has no batch norm after it, so BNScale has no "
                    "gamma to score it by; pass compress pairs= without it (see bn_pairs)"
                )
            gamma = getattr(norm, "weight", None)
            if gamma is None:
                raise ValueError(
                    f"batch norm {pair.norm!r} (after {pair.producer!r}) has affine=False, so no "
                    "gamma; build it with affine=True"
                )
            scores.append(gamma.detach().abs().double())
        return scores
