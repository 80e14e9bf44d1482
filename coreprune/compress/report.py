"""The report of a whole-model compression: per-pair rows, totals and the budget outcome."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from coreprune.compress.cost import removed_fraction
from coreprune.coreset.certificate import Certificate
from coreprune.coreset.refit import GapCertificate
from coreprune.surgery.graph import BlockedLayer

__all__ = ["CompressReport", "CompressResult", "CompressStep", "LayerRow", "combine_steps"]


@dataclass(frozen=True)
class LayerRow:
    """One pruned pair. Params/MACs cover producer + norm + consumer, in the input and output model.

    `keep` indexes the producer's units as they were in the input model; `scale` multiplies each
    kept unit's outgoing weights (all 1 in select mode). `eps`, `delta`, `vacuous`, `query` and
    `sensitivity` come from the layer's certificate, and are None for methods without one; that
    certificate covers the consumer as sliced (and scaled). `compensate` names how the consumer was
    rewired; `eps_rewired` is the certified relative error of the rewired consumer (inf when the
    rewiring is not covered, None without a certificate), and `rewiring` describes the fit.
    `gap` (the refit choice with least squares) compares the kept set's refit error on the
    calibration rows with a proven lower bound for any choice of as many units (Theorem G); for
    a coupled group, of its channel choice on the dense model's consumer inputs.

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
    gap: GapCertificate | None = field(default=None, repr=False)


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
    # compress(..., steps=n): every step, in order (empty for a one-step compression).
    steps: tuple[CompressStep, ...] = ()
    # what the user should do next, e.g. re-estimate batch norm after data-free pruning
    advice: tuple[str, ...] = ()

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
        gaps = any(r.gap is not None for r in self.rows)
        head += ["delta"] * sampled + ["rewiring", "rewired eps"] * rewired
        head += ["refit residual (≥ bound, gap)"] * gaps
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
            if gaps:
                cells.append(_gap(r.gap))
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
        lines += [f"- advice: {text}" for text in self.advice]
        if self.steps:
            lines.append(f"- steps ({len(self.steps)}):")
            lines += [f"  - {s.describe()}" for s in self.steps]
        if self.pairs_by_hand:
            lines.append("- pairs given by hand: no blocked-layer analysis")
        elif self.blocked:
            lines.append(f"- blocked layers ({len(self.blocked)}):")
            lines += [f"  - `{b.name}`: {b.reason}" for b in self.blocked]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


@dataclass(frozen=True)
class CompressStep:
    """One step of an iterative compression (`compress(..., steps=n)`).

    `target` is the fraction of this step's input model asked to be removed, chosen so that the
    model left after the step costs (1 - overall target)^(step / n) of the dense model;
    `removed` is what was removed from the dense model by then (both in the budget's metric).
    `report` is the step's own report, relative to its input model; None when the step was
    skipped because the earlier steps had already removed at least its share.
    """

    step: int
    target: float
    removed: float
    report: CompressReport | None

    def describe(self) -> str:
        """One line: what the step asked, what it did, and where the whole run then stood."""
        overall = f"{100 * self.removed:.2f}% of the dense model removed after it"
        if self.report is None:
            return (
                f"step {self.step}: skipped, the earlier steps had already removed its share; "
                + overall
            )
        achieved = self.report.achieved if self.report.achieved is not None else float("nan")
        return (
            f"step {self.step}: target {100 * self.target:.2f}% of its input, achieved "
            f"{100 * achieved:.2f}% ({self.report.params_before:,} → "
            f"{self.report.params_after:,} params); " + overall
        )


def combine_steps(
    steps: Sequence[CompressStep], *, target: float, metric: str, seconds: float
) -> CompressReport:
    """The report of a whole iterative run, against the dense model it started from.

    Totals, `target` and `achieved` compare the last step's output with the first step's input.
    Each row follows one pair through the steps: units, params and MACs before are the dense
    model's, `keep` indexes the dense model's units and `scale` multiplies the scales of every
    step. A per-layer certificate covers one step's change only, and errors of several steps
    are not certified to add up, so when more than one step pruned, the rows carry no eps (each
    step's report in `steps` keeps its own). `seconds` is the whole run's wall time.
    """
    ran = [s.report for s in steps if s.report is not None]
    if not ran:
        raise ValueError("an iterative compression needs at least one step that ran")
    first, last = ran[0], ran[-1]
    earlier: list[dict[tuple[str, str], LayerRow]] = [
        {(r.producer, r.consumer): r for r in report.rows} for report in ran[:-1]
    ]
    rows = []
    for row in last.rows:
        key = (row.producer, row.consumer)
        keep, scale, start = row.keep, row.scale, row
        for step_rows in reversed(earlier):
            before = step_rows.get(key)
            if before is None or before.units_after != start.units_before:
                break  # not the same units: the row starts at the step after
            # The later step's unit i is this step's kept unit before.keep[i], whose outgoing
            # weights this step already multiplied by before.scale[i].
            scale = before.scale[keep] * scale
            keep = before.keep[keep]
            start = before
        combined = replace(
            row,
            units_before=start.units_before,
            params_before=start.params_before,
            macs_before=start.macs_before,
            keep=keep,
            scale=scale,
        )
        if len(ran) > 1:
            note = (
                f"pruned in {len(ran)} steps: each step's certificate covers that step only "
                "(report.steps)"
            )
            combined = replace(
                combined, eps=None, delta=None, vacuous=None, certificate=None,
                eps_rewired=None, note="; ".join(p for p in (row.note, note) if p),
            )  # fmt: skip
        rows.append(combined)
    if metric == "macs":
        assert first.macs_before is not None and last.macs_after is not None
        achieved = removed_fraction(first.macs_before, last.macs_after)
    else:
        achieved = removed_fraction(first.params_before, last.params_after)
    skipped = len(steps) - len(ran)
    budget = (
        f"target {100 * target:g}% of {metric} removed in {len(steps)} steps, each removing the "
        f"same fraction of what remains ({last.allocation} allocation"
        + (f"; {skipped} skipped" if skipped else "")
        + f"); achieved {100 * achieved:.2f}% {metric} removed from the dense model"
    )
    return replace(
        last,
        rows=tuple(rows),
        target=target,
        achieved=achieved,
        target_reached=achieved >= target - 1e-12,
        budget=budget,
        params_before=first.params_before,
        prunable_params_before=first.prunable_params_before,
        macs_before=first.macs_before,
        seconds=seconds,
        steps=tuple(steps),
    )


@dataclass(frozen=True)
class CompressResult:
    """The compressed model (a new module) and its report."""

    model: nn.Module
    report: CompressReport

    def __str__(self) -> str:
        return self.report.to_markdown()


def _gap(gap: GapCertificate | None) -> str:
    """ "0.21 (≥ 0.15, 1.4×)": the refit's relative residual, the proven bound, their ratio."""
    if gap is None:
        return "—"
    ratio = f"{gap.ratio:.3g}×" if gap.informative else "no bound"
    return f"{gap.residual:.3g} (≥ {gap.lower:.3g}, {ratio})"


def _eps(value: float | None, vacuous: bool | None) -> str:
    if value is None:
        return "—"
    text = "∞ (not covered)" if value == float("inf") else f"{value:.4g}"
    return text + (" (vacuous)" if vacuous else "")
