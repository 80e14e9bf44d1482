"""Planning: how many units each pair and group keeps, before any surgery: the cost model, the
floors and the allocation. A chooser that plans (`Chooser.plan`, the scorers) picks the kept
units here too; the others are asked item by item later, in the network as cut so far."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from coreprune.compress import allocate
from coreprune.compress.choosers import Budget, Choice, ChoiceContext
from coreprune.compress.cost import CostModel
from coreprune.compress.options import Options
from coreprune.surgery.groups import ChannelGroup


def plan_counts(
    opts: Options,
    work: nn.Module,
    items: list[ChannelGroup],
    units: list[int],
    floors: list[int],
    context: ChoiceContext,
    args: tuple[torch.Tensor, ...] | None,
    round_to: list[int],
    refine: bool,
) -> tuple[list[int] | None, list[Choice] | None, str]:
    """Kept counts per group (None in eps mode), the planned choices (a planning chooser's,
    else None), and the budget's description."""
    if opts.target is None:
        return None, None, f"eps = {opts.eps:g} per layer"
    chooser = opts.chooser
    cost = CostModel.build_groups(work, items, opts.metric, args)
    allocate.check_reachable(cost, floors, opts.target, opts.floor)
    budget = Budget(opts.target, opts.allocation, cost, units, floors, round_to, refine)
    plan = chooser.plan(work, items, budget, context)
    planned = None
    if plan is not None:
        if len(plan.choices) != len(items):
            raise ValueError(
                f"{chooser!r}.plan returned {len(plan.choices)} choices for {len(items)} items"
            )
        planned = plan.choices
        keeps = [int(c.keep.numel()) for c in planned]
        label = plan.label
    elif opts.allocation == "uniform":
        keeps = allocate.uniform(cost, units, floors, opts.target, round_to)
        label = "same kept fraction per layer"
        if refine:
            keeps = allocate.refine_up(cost, units, keeps, opts.target, round_to)
            label += ", then raised one group at a time while the target holds"
    else:
        bar = tqdm(items, desc="score (budget)", disable=not context.progress, unit="layer")
        curves = [chooser.error_curve(work, group, context) for group in bar]
        keeps, level = allocate.global_by_curves(cost, curves, floors, opts.target, round_to)
        label = chooser.global_label(level, any(g.pair is None for g in items))
    planned_cut = cost.removed(keeps)
    budget_text = (
        f"target {100 * opts.target:g}% of {opts.metric} removed, {opts.allocation} allocation "
        f"({label}, floor {opts.floor:g}"
        + (f", round_to {max(round_to)}" if max(round_to) > 1 else "")
        + f"); planned {100 * planned_cut:.2f}%"
    )
    return keeps, planned, budget_text
