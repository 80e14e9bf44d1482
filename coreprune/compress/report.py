"""The report of a whole-model compression: per-pair rows, totals and the budget outcome."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from coreprune.compress.cost import removed_fraction
from coreprune.coreset.certificate import Certificate
from coreprune.surgery.graph import BlockedLayer

__all__ = ["CompressReport", "CompressResult", "LayerRow"]


@dataclass(frozen=True)
class LayerRow:
    """One pruned pair. Params/MACs cover producer + norm + consumer, in the input and output model.

    `keep` indexes the producer's units as they were in the input model; `scale` multiplies each
    kept unit's outgoing weights (all 1 in select mode). `eps`, `delta`, `vacuous`, `query` and
    `sensitivity` come from the layer's certificate, and are None for methods without one; that
    certificate covers the consumer as sliced (and scaled). `compensate` names how the consumer was
    rewired; `eps_rewired` is the certified relative error of the rewired consumer (inf when the
    rewiring is not covered, None without a certificate), and `rewiring` describes the fit.

    A coupled channel group (a residual stream, a gated or depthwise block, a concatenation) is
    one row: `producer` / `consumer` join its producers / consumers with " + ", `modules` lists
    every member (its params and MACs cover them all) and `eps` is None: worst-case
    certificates cover single pairs only.
    """

    producer: str
    consumer: str
    norm: str | None
    units_before: int
    units_after: int
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    eps: float | None
    delta: float | None
    vacuous: bool | None
    query: str | None
    sensitivity: str | None
    note: str
    keep: torch.Tensor = field(repr=False)
    scale: torch.Tensor = field(repr=False)
    certificate: Certificate | None = field(default=None, repr=False)
    compensate: str = "none"
    eps_rewired: float | None = None
    rewiring: str = ""
    modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompressReport(Sequence[LayerRow]):
    """Per-layer rows (iterate or index it like a list) plus model totals and the budget outcome.

    Totals count every parameter once. `prunable_*` counts the modules of the pairs (producers,
    norms, consumers, each once), so it is below the sum of the rows when a consumer is also the
    next pair's producer. `achieved` is the removed fraction in the budget's metric.
    """

    rows: tuple[LayerRow, ...]
    blocked: tuple[BlockedLayer, ...]
    pairs_by_hand: bool
    method: str
    mode: str
    allocation: str | None
    metric: str | None
    eps: float | None
    target: float | None
    achieved: float | None
    target_reached: bool | None
    budget: str
    params_before: int
    params_after: int
    prunable_params_before: int
    prunable_params_after: int
    macs_before: int | None
    macs_after: int | None
    seconds: float

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Any:
        return self.rows[index]

    def __iter__(self) -> Iterator[LayerRow]:
        return iter(self.rows)

    @property
    def params_removed(self) -> float:
        """Fraction of the whole model's parameters removed."""
        return removed_fraction(self.params_before, self.params_after)

    @property
    def prunable_params_removed(self) -> float:
        """Fraction of the prunable modules' parameters removed."""
        return removed_fraction(self.prunable_params_before, self.prunable_params_after)

    @property
    def macs_removed(self) -> float | None:
        """Fraction of MACs removed (None without `example_input`)."""
        if self.macs_before is None or self.macs_after is None:
            return None
        return removed_fraction(self.macs_before, self.macs_after)

    def to_markdown(self) -> str:
        """A per-layer table, the totals, the budget outcome and the blocked layers."""
        rewired = any(r.compensate != "none" for r in self.rows)
        sampled = any(r.delta for r in self.rows)
        head = ["producer", "consumer", "units", "eps"]
        head += ["delta"] * sampled + ["rewiring", "rewired eps"] * rewired
        head += ["query space", "params", "MACs", "notes"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        notes: dict[str, int] = {}
        for r in self.rows:
            refs = []
            for part in (p for p in r.note.split("; ") if p):
                refs.append(str(notes.setdefault(part, len(notes) + 1)))
            cells = [
                r.producer + (f" (+{r.norm})" if r.norm else ""),
                r.consumer,
                f"{r.units_before} → {r.units_after}",
                _eps(r.eps, r.vacuous),
            ]
            if sampled:
                cells.append("—" if r.delta is None else f"{r.delta:g}")
            if rewired:
                cells += [r.compensate, _eps(r.eps_rewired, None)]
            macs = "—" if r.macs_before is None else f"{r.macs_before:,} → {r.macs_after:,}"
            cells += [
                r.query or "—",
                f"{r.params_before:,} → {r.params_after:,}",
                macs,
                ", ".join(f"[{n}]" for n in refs),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if notes:
            lines += ["", *(f"[{n}] {text}" for text, n in notes.items())]
        lines.append(
            "\nParams and MACs of a row count its producer, norm and consumer; a consumer that "
            "is also the next row's producer appears in both rows (the totals below count it once)."
        )
        lines += [
            "",
            f"- method: {self.method}, mode: {self.mode}, {self.budget}",
            f"- params: {self.params_before:,} → {self.params_after:,} "
            f"({100 * self.params_removed:.2f}% of the model removed; prunable modules "
            f"{self.prunable_params_before:,} → {self.prunable_params_after:,}, "
            f"{100 * self.prunable_params_removed:.2f}% removed)",
        ]
        if self.macs_before is not None and self.macs_after is not None:
            lines.append(
                f"- MACs: {self.macs_before:,} → {self.macs_after:,} "
                f"({100 * (self.macs_removed or 0.0):.2f}% removed)"
            )
        lines.append(f"- wall time: {self.seconds:.2f} s")
        if self.pairs_by_hand:
            lines.append("- pairs given by hand: no blocked-layer analysis")
        elif self.blocked:
            lines.append(f"- blocked layers ({len(self.blocked)}):")
            lines += [f"  - `{b.name}`: {b.reason}" for b in self.blocked]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


@dataclass(frozen=True)
class CompressResult:
    """The compressed model (a new module) and its report."""

    model: nn.Module
    report: CompressReport

    def __str__(self) -> str:
        return self.report.to_markdown()


def _eps(value: float | None, vacuous: bool | None) -> str:
    if value is None:
        return "—"
    text = "∞ (not covered)" if value == float("inf") else f"{value:.4g}"
    return text + (" (vacuous)" if vacuous else "")
