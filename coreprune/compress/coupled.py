"""Coupled channel groups inside `compress`: find them, score their channels on the dense model,
cut them all at once, refit each consumer, and report them (not certified: worst-case
certificates cover single pairs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from coreprune.compress import allocate
from coreprune.compress.apply import GroupCut, cut_groups
from coreprune.compress.capture import LayerRecords, capture_input
from coreprune.compress.choose import (
    GroupScores,
    group_scores,
    ones,
)
from coreprune.compress.options import Options
from coreprune.compress.pairs import (
    certifiable,
    check_ignored,
    no_prunable_pair,
    resolve_pairs,
)
from coreprune.compress.refit_choice import TargetOf, group_selection
from coreprune.compress.report import LayerRow
from coreprune.surgery.graph import BlockedLayer, PrunablePair
from coreprune.surgery.groups import (
    ChannelGroup,
    find_channel_groups,
    forward_order,
    group_from_pair,
    is_grouped,
)
from coreprune.surgery.rewire import (
    refit_consumer,
)
from coreprune.torch_utils import replace_submodule

COUPLED_NOTE = (
    "not certified: coupled group ({joins}); worst-case certificates cover single pairs; "
    "held-out certificates (coreprune.certify) apply"
)


def resolve_groups(
    work: nn.Module,
    pairs: Sequence[PrunablePair] | None,
    ignored: Sequence[str],
    groups: bool,
    budgeted: bool,
) -> tuple[list[ChannelGroup], list[BlockedLayer]]:
    """The groups to prune in forward order (single pairs as simple groups), and the layers
    that cannot be pruned with why."""
    if pairs is not None or not groups:
        pair_list, blocked = resolve_pairs(work, pairs, ignored)
        return [group_from_pair(work, p) for p in pair_list], blocked
    check_ignored(work, ignored)
    found, blocked = find_channel_groups(work)
    usable: list[ChannelGroup] = []
    for group in found:
        writers = (*group.producers, *group.gates)
        touched = set(group.modules) & set(ignored)
        if touched:
            blocked += [BlockedLayer(w, f"ignored_layers names {sorted(touched)}") for w in writers]
            continue
        if group.pair is None and not budgeted:
            reason = (
                f"coupled channel group ({group.describe}): eps= sizes certified single pairs "
                "only; pass target= to prune it"
            )
            blocked += [BlockedLayer(w, reason) for w in writers]
            continue
        if group.pair is not None and not certifiable(group.pair, blocked):
            continue
        usable.append(group)
    if not usable:
        raise no_prunable_pair(blocked)
    return usable, blocked


def coupled_scores(
    opts: Options, work: nn.Module, items: list[ChannelGroup], progress: bool
) -> dict[int, GroupScores]:
    """The coreset's channel scores of every coupled group, on the dense model."""
    if opts.pruner is not None or opts.target is None:
        return {}
    if opts.choice == "refit" and opts.allocation == "uniform":
        return {}  # chosen with their kept counts (`choose_group`); no scores needed
    coupled = [i for i, g in enumerate(items) if g.pair is None]
    bar = tqdm(coupled, desc="score (groups)", disable=not progress, unit="group")
    rms = opts.choice in ("empirical_rms", "refit")
    return {i: group_scores(work, items[i], opts.calibration, mean_square=rms) for i in bar}


def choose_group(
    opts: Options,
    work: nn.Module,
    group: ChannelGroup,
    count: int,
    scores: GroupScores | None,
    target_of: TargetOf | None,
    inputs: LayerRecords | None = None,
) -> tuple[torch.Tensor, str]:
    """A coupled group's kept channels and how they were chosen, on the dense model.

    The refit choice runs greedy structured OBS on the summed refit error of the group's
    consumers (whole blocks are needed for grouped convs, so those fall back to the group's
    root-mean-square scores, and say so); other choices keep the top-scored channels.
    `inputs` records the consumers' inputs in `work` as it is, or in the dense model it still
    equals (all groups are chosen before any is cut, so one forward pass serves them all)."""
    if opts.choice == "refit" and opts.calibration is not None and group.blocks == 1:
        assert target_of is not None
        if inputs is None:
            names = [c.name for c in group.consumers]
            inputs = LayerRecords(work, opts.calibration, inputs=names)
        sel = group_selection(work, group, count, inputs, target_of, opts.ridge)
        if sel is not None:
            return sel.keep, "the summed least-squares refit error of its consumers (greedy OBS)"
    if scores is None:
        scores = group_scores(work, group, opts.calibration, mean_square=True)
    mask = allocate.keep_top_blocks(scores.per_unit, count, group.blocks)
    return torch.nonzero(mask).flatten(), scores.how


def cut_coupled(
    work: nn.Module, items: list[ChannelGroup], cut_list: list[tuple[int, torch.Tensor]]
) -> None:
    todo = [(items[i], GroupCut(k)) for i, k in cut_list if k.numel() < items[i].width]
    if todo:
        cut_groups(work, [g for g, _ in todo], [c for _, c in todo])


def coupled_refits(
    opts: Options,
    work: nn.Module,
    items: list[ChannelGroup],
    cut_list: list[tuple[int, torch.Tensor]],
) -> list[str]:
    """Consumers of cut coupled groups, each refitted once (least squares only; a grouped conv
    consumer is left sliced)."""
    if opts.compensate != "lstsq":
        return []
    names: dict[str, None] = {}
    for index, keep in cut_list:
        if keep.numel() < items[index].width:
            for consumer in items[index].consumers:
                if not is_grouped(work.get_submodule(consumer.name)):  # lstsq: groups=1 only
                    names[consumer.name] = None
    return list(names)


def refit_one(opts: Options, work: nn.Module, name: str, target_of: TargetOf) -> None:
    """Least squares on the consumer's own dense output (its kept outputs), inputs as cut."""
    assert opts.calibration is not None
    inputs = capture_input(work, name, opts.calibration)
    target = target_of(work, name)
    refit, _ = refit_consumer(work.get_submodule(name), inputs, target, ridge=opts.ridge)
    replace_submodule(work, name, refit)


def group_row(opts: Options, group: ChannelGroup, keep: torch.Tensor, how: str | None) -> LayerRow:
    removed = keep.numel() < group.width
    compensate = opts.compensate if opts.compensate == "lstsq" and removed else "none"
    notes = [COUPLED_NOTE.format(joins=group.describe)]
    if opts.compensate == "merge" and removed:
        notes.append("merge applies to single pairs only: the consumers are left sliced")
    if how is not None:
        notes.append(f"channels chosen by {how}")
    elif opts.pruner is not None:
        notes.append(f"channels ranked by the sum of {opts.pruner.name} unit scores of producers")
    rewiring = "least squares per consumer on its dense output" if compensate == "lstsq" else ""
    norms = [n for n in group.producer_norms if n is not None]
    return LayerRow(
        producer=" + ".join(group.producers), consumer=" + ".join(c.name for c in group.consumers),
        norm=" + ".join(norms) or None, units_before=group.width, units_after=int(keep.numel()),
        params_before=0, params_after=0, macs_before=None, macs_after=None, eps=None,
        delta=None, vacuous=None, query=None, sensitivity=None, note="; ".join(notes),
        keep=keep, scale=ones(keep.numel()), certificate=None, compensate=compensate,
        eps_rewired=None, rewiring=rewiring, modules=group.modules,
    )  # fmt: skip


def group_label(group: ChannelGroup) -> str:
    if group.pair is not None:
        return f"{group.pair.producer}' -> '{group.pair.consumer}"
    return " + ".join(group.producers)


def group_steps(
    work: nn.Module, items: list[ChannelGroup], refits: list[str]
) -> list[tuple[str, int]]:
    """Simple pairs and coupled-consumer refits, ordered by the module each one refits (in
    forward order, so every refit sees its final inputs); pairs in their given order when
    nothing is coupled."""
    pairs = [i for i, g in enumerate(items) if g.pair is not None]
    if not refits:
        return [("pair", i) for i in pairs]
    position = {name: i for i, name in enumerate(forward_order(work))}
    events: list[tuple[int, str, int]] = []
    for i in pairs:
        pair = items[i].pair
        assert pair is not None
        events.append((position.get(pair.consumer, len(position)), "pair", i))
    for j, name in enumerate(refits):
        events.append((position.get(name, len(position)), "refit", j))
    events.sort(key=lambda e: (e[0], e[1] == "pair"))
    return [(kind, index) for _, kind, index in events]
