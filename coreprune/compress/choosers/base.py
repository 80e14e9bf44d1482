"""The one interface every selection method meets inside `compress`: a `Chooser`.

A chooser is asked, for a single pair or a coupled channel group in the network as compressed
so far, which of the producer's units stay. It returns a `Choice`: the kept units, optional
scales, optional refitted consumer weights (a `Selection`) and an optional certificate.
`compress` only calls this interface; it never names a method. The coreset, its greedy
structured OBS and every unit scorer are choosers; `registry.CHOOSERS` names them.

Two hooks are optional:
- `plan` chooses every item's kept units up front, on the dense model, with the budget in
  hand. Scorers do this: one pass of gate derivatives scores every layer at once, and
  iterative scorers re-score on a schedule. When it returns None, compress allocates the kept
  counts and calls `choose` item by item.
- `error_curve` gives, for `allocation="global"`, the error of removing the m lowest units of
  an item, m = 0..n, so one level can be set across layers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from coreprune.compress.capture import LayerRecords
from coreprune.compress.cost import CostModel
from coreprune.compress.refit_choice import TargetOf
from coreprune.coreset.certificate import Certificate
from coreprune.coreset.refit import Selection
from coreprune.surgery.groups import ChannelGroup

__all__ = [
    "Budget",
    "Choice",
    "ChoiceContext",
    "ChoiceSettings",
    "Chooser",
    "Plan",
    "group_label",
    "ones",
]


def ones(n: int) -> torch.Tensor:
    """Unit scales: the kept units pass on unchanged."""
    return torch.ones(n, dtype=torch.float64)


def group_label(group: ChannelGroup) -> str:
    """How an item is named in messages: its pair, or its producers."""
    if group.pair is not None:
        return f"{group.pair.producer}' -> '{group.pair.consumer}"
    return " + ".join(group.producers)


@dataclass(frozen=True)
class Choice:
    """What a chooser keeps of one pair or group.

    `keep` indexes the producer's current units; `scale` multiplies each kept unit's reading
    (1 unless the method reweights). `certificate` and `per_next` (worst-case sensitivities over
    all n units, k x n) come with certifying methods; `selection` carries the consumer's
    refitted weights and the optimality gap when the method solved the refit itself. `note`
    says how the units were chosen, for the report.
    """

    keep: torch.Tensor
    scale: torch.Tensor
    certificate: Certificate | None = None
    per_next: torch.Tensor | None = None
    note: str = ""
    selection: Selection | None = None

    @classmethod
    def of(cls, keep: torch.Tensor, note: str = "") -> Choice:
        """Kept units with unit scales and nothing else."""
        return cls(keep, ones(keep.numel()), note=note)


@dataclass(frozen=True)
class ChoiceSettings:
    """The knobs `compress` takes for choosing, checked once (`compress.options`). A chooser
    reads the ones it understands in `from_settings`."""

    mode: str
    eps: float | None
    delta: float
    sensitivity: str
    generator: torch.Generator | None
    rank: int
    rank_given: bool
    choice: str
    worst_case: bool


@dataclass
class ChoiceContext:
    """What one compress run knows when it asks a chooser: the calibration batch, the dense
    consumers' outputs (`target_of(model, consumer)`), recorded dense inputs of coupled groups'
    consumers, the refit's ridge, an example input, and a per-run scratch space (`cache`) so
    a chooser can keep what it computed on the dense model without holding state itself."""

    calibration: torch.Tensor | None = None
    target_of: TargetOf | None = None
    records: LayerRecords | None = None
    ridge: float = 1e-4
    example: torch.Tensor | None = None
    progress: bool = False
    cache: dict[Any, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Budget:
    """The budget a planning chooser must meet: remove `target` of the cost, with `allocation`
    "uniform" or "global", no item under its floor, counts rounded to `round_to`; `refine`
    raises uniform counts one group at a time while the target still holds."""

    target: float
    allocation: str
    cost: CostModel
    units: list[int]
    floors: list[int]
    round_to: list[int]
    refine: bool


@dataclass(frozen=True)
class Plan:
    """Every item's choice, made up front, and how the budget was met (for the report)."""

    choices: list[Choice]
    label: str


class Chooser(ABC):
    """Chooses which units of each pair and coupled group stay.

    Class attributes say what `compress` may ask of it, so wrong calls are refused before any
    work: `certifies` (its certificates can size layers: `eps=`), `modes` (the `mode=` values it
    understands), `needs_calibration` (it chooses on `calibration=` data) and
    `rewires_by_default` (compress rewires its consumers unless `compensate=` says otherwise;
    peers run as their authors ship them, without). `name` labels it in reports.
    """

    name: str
    certifies: ClassVar[bool] = False
    modes: ClassVar[tuple[str, ...]] = ("select",)
    needs_calibration: ClassVar[bool] = False
    rewires_by_default: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, settings: ChoiceSettings) -> Chooser:
        """The chooser `compress(method=name)` builds; by default one without options."""
        del settings
        return cls()

    @classmethod
    def allocates_globally(cls) -> bool:
        """Whether `allocation="global"` can be met: the chooser levels error curves or plans
        the budget itself (checked before any work)."""
        return cls.error_curve is not Chooser.error_curve or cls.plan is not Chooser.plan

    def plan(
        self, model: nn.Module, items: list[ChannelGroup], budget: Budget, context: ChoiceContext
    ) -> Plan | None:
        """Every item's choice up front, on the dense `model`; None: choose item by item."""
        del model, items, budget, context
        return None

    def error_curve(
        self, model: nn.Module, item: ChannelGroup, context: ChoiceContext
    ) -> torch.Tensor:
        """The error of removing the m lowest units of `item`, m = 0..n (float64, starting at 0,
        non-decreasing): what `allocation="global"` levels across items."""
        del model, item, context
        raise ValueError(
            f"method {self.name!r} gives no error curve, which allocation='global' needs; "
            "use allocation='uniform'"
        )

    def global_label(self, level: float, coupled: bool) -> str:
        """How the global allocation's common level reads in the report."""
        del coupled
        return f"common {self.name} error level {level:.4g}, on the dense model"

    @abstractmethod
    def choose(
        self, model: nn.Module, item: ChannelGroup, count: int | None, context: ChoiceContext
    ) -> Choice:
        """Which units of `item` stay, in `model` as compressed so far.

        `item.pair` is set for a single pair and None for a coupled group (chosen on the dense
        model, before any group is cut). `count` is the number to keep; None only for a
        certifying chooser under `eps=`, which then sizes the layer itself. The model must not
        be changed.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
