"""A unit scorer (magnitude, SNIP, SynFlow, ...) as a chooser: every pair and coupled group is
scored at once on the dense model, through gates, and the budget is met on those scores.

A coupled group's score is the sum of its producers' unit scores (`group_gate_pairs`). An
iterative scorer (`rounds` > 1) re-scores on the exponential schedule
1 - (1 - target)^(k / rounds), pruned units staying pruned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from coreprune.compress import allocate
from coreprune.compress.choosers.base import (
    Budget,
    Choice,
    ChoiceContext,
    Chooser,
    Plan,
    group_label,
)
from coreprune.scoring.base import UnitScorer
from coreprune.scoring.gates import UnitGates, group_gate_pairs, reduce_group_scores
from coreprune.surgery.groups import ChannelGroup

__all__ = ["ScorerChooser", "ranked_scores"]


class ScorerChooser(Chooser):
    """Chooses with `scorer`'s unit scores; its consumers are left as sliced unless
    `compensate=` asks for a rewiring (peers run as their authors ship them)."""

    def __init__(self, scorer: UnitScorer) -> None:
        self.scorer = scorer
        self.name = scorer.name

    def __repr__(self) -> str:
        return f"ScorerChooser({self.scorer!r})"

    def plan(
        self, model: nn.Module, items: list[ChannelGroup], budget: Budget, context: ChoiceContext
    ) -> Plan:
        sets = self.kept_units(model, items, budget, context)
        note = f"channels ranked by the sum of {self.name} unit scores of producers"
        choices = [
            Choice.of(s, "" if g.pair is not None else note)
            for s, g in zip(sets, items, strict=True)
        ]
        return Plan(choices, f"{self.name} unit scores")

    def choose(
        self, model: nn.Module, item: ChannelGroup, count: int | None, context: ChoiceContext
    ) -> Choice:
        """`item` alone, scored in `model` as it is: its `count` top-scored units."""
        if count is None:
            raise ValueError(f"method {self.name!r} keeps a given number of units: pass target=")
        gate_pairs, owners = group_gate_pairs([item])
        raw = self.scorer.unit_scores(model, UnitGates(model, gate_pairs), context.example)
        alive = [torch.ones(item.width, dtype=torch.bool)]
        ranked_scores(self.scorer, [p.producer for p in gate_pairs], raw, [alive[0]] * len(raw))
        summed = ranked_scores(
            self.scorer, [group_label(item)], reduce_group_scores(raw, owners, 1), alive
        )
        kept = allocate.keep_top_blocks(summed[0], count, item.blocks)
        return Choice.of(torch.nonzero(kept).flatten())

    def kept_units(
        self, model: nn.Module, items: list[ChannelGroup], budget: Budget, context: ChoiceContext
    ) -> list[torch.Tensor]:
        """Kept units of every item, scored on the dense model (re-scored over `rounds`)."""
        scorer, units, floors = self.scorer, budget.units, budget.floors
        cost, round_to = budget.cost, budget.round_to
        alive = [torch.ones(n, dtype=torch.bool) for n in units]
        gate_pairs, owners = group_gate_pairs(items)
        bar = tqdm(
            range(1, scorer.rounds + 1), desc=f"score ({scorer.name})",
            disable=not context.progress,
        )  # fmt: skip
        for k in bar:
            fraction = 1 - (1 - budget.target) ** (k / scorer.rounds)
            gates = UnitGates(model, gate_pairs, masks=[alive[o].float() for o in owners])
            raw = scorer.unit_scores(model, gates, context.example)
            labels = [p.producer for p in gate_pairs]
            ranked_scores(scorer, labels, raw, [alive[o] for o in owners])
            summed = reduce_group_scores(raw, owners, len(items))
            ranked = ranked_scores(scorer, [group_label(g) for g in items], summed, alive)
            if budget.allocation == "uniform":
                keeps = allocate.uniform(cost, units, floors, fraction, round_to)
                if budget.refine:
                    keeps = allocate.refine_up(cost, units, keeps, fraction, round_to)
                alive = [
                    allocate.keep_top_blocks(r, c, g.blocks)
                    for r, c, g in zip(ranked, keeps, items, strict=True)
                ]
            else:
                alive = allocate.global_by_scores(cost, ranked, floors, fraction)
                if max(round_to) > 1:
                    alive = allocate.round_masks(ranked, alive, round_to)
                alive = [
                    a if g.blocks == 1 else allocate.keep_top_blocks(r, int(a.sum()), g.blocks)
                    for a, r, g in zip(alive, ranked, items, strict=True)
                ]
        return [torch.nonzero(a).flatten() for a in alive]


def ranked_scores(
    scorer: UnitScorer,
    labels: list[str],
    scores: Sequence[torch.Tensor],
    alive: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """Checked scores as float64, with already pruned units at -inf (they stay pruned)."""
    if len(scores) != len(labels):
        raise ValueError(f"{scorer!r} returned {len(scores)} score vectors for {len(labels)} pairs")
    out = []
    for label, score, mask in zip(labels, scores, alive, strict=True):
        score = score.detach().double().cpu()
        if score.shape != mask.shape or not torch.isfinite(score).all():
            raise ValueError(
                f"{scorer!r} must return {mask.numel()} finite scores for {label!r}, "
                f"got shape {tuple(score.shape)}"
            )
        out.append(torch.where(mask, score, torch.full_like(score, -torch.inf)))
    return out
