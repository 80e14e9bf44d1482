"""Planning: how many units each pair and group keeps (and, for scorers, which ones), before
any surgery: the cost model, the floors and the allocation, for the coreset and every scorer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from coreprune.compress import allocate
from coreprune.compress.choose import (
    CoresetChooser,
    GroupScores,
)
from coreprune.compress.cost import (
    CostModel,
)
from coreprune.compress.coupled import group_label
from coreprune.compress.options import Options
from coreprune.scoring.base import UnitScorer
from coreprune.scoring.gates import UnitGates, group_gate_pairs, reduce_group_scores
from coreprune.surgery.groups import (
    ChannelGroup,
)


def plan_counts(
    opts: Options,
    work: nn.Module,
    items: list[ChannelGroup],
    units: list[int],
    floors: list[int],
    chooser: CoresetChooser | None,
    scores: dict[int, GroupScores],
    args: tuple[torch.Tensor, ...] | None,
    round_to: list[int],
    progress: bool,
    refine: bool,
) -> tuple[list[int] | None, list[torch.Tensor] | None, str]:
    """Kept counts per group (None in eps mode), kept unit sets (baselines), and the budget."""
    if opts.target is None:
        return None, None, f"eps = {opts.eps:g} per layer"
    cost = CostModel.build_groups(work, items, opts.metric, args)
    allocate.check_reachable(cost, floors, opts.target, opts.floor)
    unit_sets = None
    if opts.pruner is not None:
        example = args[0] if args is not None else opts.calibration
        unit_sets = baseline_units(
            opts,
            opts.pruner,
            work,
            items,
            units,
            floors,
            cost,
            example,
            round_to,
            progress,
            refine,
        )
        keeps = [int(u.numel()) for u in unit_sets]
        label = f"{opts.pruner.name} unit scores"
    elif opts.allocation == "uniform":
        keeps = allocate.uniform(cost, units, floors, opts.target, round_to)
        label = "same kept fraction per layer"
        if refine:
            keeps = allocate.refine_up(cost, units, keeps, opts.target, round_to)
            label += ", then raised one group at a time while the target holds"
    else:
        assert chooser is not None
        bar = tqdm(items, desc="score (budget)", disable=not progress, unit="layer")
        curves = [
            chooser.curve(work, g.pair) if g.pair is not None else scores[i].curve()
            for i, g in enumerate(bar)
        ]
        keeps, level = allocate.global_by_curves(cost, curves, floors, opts.target, round_to)
        label = f"common eps {level:.4g} (certified), scored on the dense model"
        if len(scores):
            label += "; coupled groups on their summed sensitivities (not certified)"
    planned = cost.removed(keeps)
    budget = (
        f"target {100 * opts.target:g}% of {opts.metric} removed, {opts.allocation} allocation "
        f"({label}, floor {opts.floor:g}"
        + (f", round_to {max(round_to)}" if max(round_to) > 1 else "")
        + f"); planned {100 * planned:.2f}%"
    )
    return keeps, unit_sets, budget


def baseline_units(
    opts: Options, pruner: UnitScorer, work: nn.Module, items: list[ChannelGroup],
    units: list[int], floors: list[int], cost: CostModel, example: torch.Tensor | None,
    round_to: list[int], progress: bool, refine: bool,
) -> list[torch.Tensor]:  # fmt: skip
    """Kept units of a baseline, scored on the dense model; with `rounds` > 1 re-scored on
    the exponential schedule 1 - (1 - target)^(k / rounds), pruned units staying pruned.
    A coupled group's score is the sum of its producers' unit scores (`group_gate_pairs`)."""
    assert opts.target is not None
    alive = [torch.ones(n, dtype=torch.bool) for n in units]
    gate_pairs, owners = group_gate_pairs(items)
    bar = tqdm(range(1, pruner.rounds + 1), desc=f"score ({pruner.name})", disable=not progress)
    for k in bar:
        fraction = 1 - (1 - opts.target) ** (k / pruner.rounds)
        gates = UnitGates(work, gate_pairs, masks=[alive[o].float() for o in owners])
        raw = pruner.unit_scores(work, gates, example)
        labels = [p.producer for p in gate_pairs]
        ranked_scores(pruner, labels, raw, [alive[o] for o in owners])
        summed = reduce_group_scores(raw, owners, len(items))
        ranked = ranked_scores(pruner, [group_label(g) for g in items], summed, alive)
        if opts.allocation == "uniform":
            keeps = allocate.uniform(cost, units, floors, fraction, round_to)
            if refine:
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
    pruner: UnitScorer,
    labels: list[str],
    scores: Sequence[torch.Tensor],
    alive: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """Checked scores as float64, with already pruned units at -inf (they stay pruned)."""
    if len(scores) != len(labels):
        raise ValueError(f"{pruner!r} returned {len(scores)} score vectors for {len(labels)} pairs")
    out = []
    for label, score, mask in zip(labels, scores, alive, strict=True):
        score = score.detach().double().cpu()
        if score.shape != mask.shape or not torch.isfinite(score).all():
            raise ValueError(
                f"{pruner!r} must return {mask.numel()} finite scores for {label!r}, "
                f"got shape {tuple(score.shape)}"
            )
        out.append(torch.where(mask, score, torch.full_like(score, -torch.inf)))
    return out
