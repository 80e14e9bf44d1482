"""Greedy structured OBS as a chooser: keep the units whose loss the consumer's least-squares
refit can least make up (`coreprune.coreset.refit`), and hand the refitted weights on.

For a single pair it removes units in 5% steps from the consumer's least-squares problem, in
the network as compressed so far; for a coupled group it sums the refit errors of every
consumer. Whole blocks are needed for grouped convs, so those fall back to the group's
root-mean-square channel scores, and the note says so.
"""

from __future__ import annotations

import torch
from torch import nn

from coreprune.compress.allocate import keep_top_blocks
from coreprune.compress.capture import LayerRecords
from coreprune.compress.choosers.base import Choice, ChoiceContext, Chooser, ones
from coreprune.compress.choosers.group_scores import GroupScores, group_scores
from coreprune.compress.choosers.worst_case import modules_of, nonzero_units, out_units
from coreprune.compress.refit_choice import group_selection, pair_selection
from coreprune.surgery.graph import PrunablePair
from coreprune.surgery.groups import ChannelGroup

__all__ = ["GreedyOBS", "cached_group_scores", "top_scored"]

PAIR_NOTE = "units chosen for the least-squares refit (greedy structured OBS)"
GROUP_NOTE = "channels chosen by the summed least-squares refit error of its consumers (greedy OBS)"


def cached_group_scores(
    model: nn.Module, group: ChannelGroup, context: ChoiceContext, *, mean_square: bool
) -> GroupScores:
    """`group_scores` on the dense model, computed once per run (allocation and choice both
    read them before any group is cut)."""
    key = ("group_scores", group.producers, group.gates, mean_square)
    if key not in context.cache:
        context.cache[key] = group_scores(
            model, group, context.calibration, mean_square=mean_square
        )
    scores: GroupScores = context.cache[key]
    return scores


def top_scored(scores: GroupScores, group: ChannelGroup, count: int) -> Choice:
    """The group's `count` top-scored channels, whole blocks for grouped convs."""
    mask = keep_top_blocks(scores.per_unit, count, group.blocks)
    return Choice.of(torch.nonzero(mask).flatten(), f"channels chosen by {scores.how}")


class GreedyOBS(Chooser):
    """Chooses for what the least-squares refit of the consumer(s) loses; needs calibration."""

    name = "greedy_obs"
    rewires_by_default = True
    needs_calibration = True

    def choose(
        self, model: nn.Module, item: ChannelGroup, count: int | None, context: ChoiceContext
    ) -> Choice:
        calibration, target_of = context.calibration, context.target_of
        if count is None or calibration is None or target_of is None:
            raise ValueError(
                "greedy OBS keeps a given number of units, chosen on calibration data: pass "
                "target= and calibration="
            )
        if item.pair is None:
            return self._group(model, item, count, context)
        producer, norm, _ = modules_of(model, item.pair)
        nonzero = nonzero_units(producer, norm)
        if nonzero.numel() == 0:  # every unit outputs 0: any one unit is as good as another
            return Choice.of(torch.zeros(1, dtype=torch.long), "every unit is all-zero")
        return self.pair_choice(model, item.pair, min(count, nonzero.numel()), context, nonzero)

    def pair_choice(
        self, model: nn.Module, pair: PrunablePair, count: int, context: ChoiceContext,
        nonzero: torch.Tensor,
    ) -> Choice:  # fmt: skip
        """`count` of the pair's `nonzero` units (the ones not all-zero, which a caller that
        has already found them passes on rather than have them folded again)."""
        assert context.calibration is not None and context.target_of is not None
        alive = torch.zeros(out_units(model.get_submodule(pair.producer)), dtype=torch.bool)
        alive[nonzero] = True
        sel = pair_selection(
            model, pair, count, context.calibration, context.target_of, context.ridge, alive
        )
        return Choice(sel.keep, ones(sel.keep.numel()), note=PAIR_NOTE, selection=sel)

    def _group(
        self, model: nn.Module, group: ChannelGroup, count: int, context: ChoiceContext
    ) -> Choice:
        assert context.calibration is not None and context.target_of is not None
        if group.blocks == 1:
            records = context.records
            if records is None:
                names = [c.name for c in group.consumers]
                records = LayerRecords(model, context.calibration, inputs=names)
            sel = group_selection(model, group, count, records, context.target_of, context.ridge)
            if sel is not None:
                return Choice(sel.keep, ones(sel.keep.numel()), note=GROUP_NOTE, selection=sel)
        return top_scored(
            cached_group_scores(model, group, context, mean_square=True), group, count
        )
