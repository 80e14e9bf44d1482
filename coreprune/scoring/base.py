"""What every baseline provides: scores per weight and per unit, higher = more important.

The pruning loops (`prune_weights` for masks, `coreprune.compress` for units) are shared by every
method, so methods differ only in how they score; budgets, tie-breaking and surgery are common.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from coreprune.checks import check_int

from .gates import UnitGates

__all__ = ["Pruner", "UnitScorer", "WeightScorer"]


class UnitScorer(ABC):
    """Scores units (output rows / filters) for physical removal: `coreprune.compress`.

    `rounds` > 1 means the loop re-scores that many times on an exponential schedule
    (SynFlow's iterative pruning); pruned units then stay pruned. `needs_data` records whether
    the method must be built with labelled data (e.g. `SNIP(loader)`), so a bare name cannot
    stand for it.
    """

    name: ClassVar[str]
    needs_data: ClassVar[bool] = False
    rounds: int = 1

    @abstractmethod
    def unit_scores(
        self, model: nn.Module, gates: UnitGates, example_input: torch.Tensor | None
    ) -> list[torch.Tensor]:
        """One score per producer unit of each gated pair (pruned units have gate 0)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class WeightScorer(ABC):
    """Scores single weights for masks: `coreprune.scoring.prune_weights`."""

    name: ClassVar[str]
    needs_data: ClassVar[bool] = False
    rounds: int = 1

    @abstractmethod
    def weight_scores(
        self, model: nn.Module, names: Sequence[str], example_input: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """One score per entry of `model.get_submodule(name).weight`, for each name.

        `model` is a working copy whose pruned weights are already zero; it may be modified.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Pruner(UnitScorer, WeightScorer):
    """A scoring rule with both forms, per weight and per unit (every classic baseline).

    Higher scores are kept. Budgets, tie-breaking and surgery are shared by every method.
    """


def check_shape(value: object, name: str) -> tuple[int, ...]:
    """A per-example input shape such as (C, H, W): a non-empty sequence of ints >= 1."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of ints such as (3, 32, 32), got {value!r}")
    if len(value) == 0:
        raise ValueError(f"{name} is empty; give the per-example shape such as (3, 32, 32)")
    return tuple(check_int(s, f"{name}[{i}]", minimum=1) for i, s in enumerate(value))


def input_like(
    shape: Sequence[int] | None, example_input: torch.Tensor | None, who: str
) -> tuple[int, ...]:
    """The per-example input shape, from the method's own setting or an example batch."""
    if shape is not None:
        return check_shape(shape, "input_shape")
    if example_input is None:
        raise ValueError(
            f"{who} needs the input shape: pass input_shape=(C, H, W) to it, or example_input= "
            "(a batch the model accepts) to the pruning call"
        )
    if not isinstance(example_input, torch.Tensor) or example_input.ndim < 2:
        raise TypeError("example_input must be a batched tensor (batch first)")
    return tuple(example_input.shape[1:])
