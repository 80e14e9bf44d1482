"""Coupled channel groups inside `compress`: find them, cut them all at once (their channels are
chosen on the dense model by the run's chooser), refit each consumer, and report them (not
certified: worst-case certificates cover single pairs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from coreprune.compress.apply import GroupCut, cut_groups
from coreprune.compress.capture import capture_input
from coreprune.compress.choosers.base import ones
from coreprune.compress.options import Options
from coreprune.compress.pairs import (
    certifiable,
    check_ignored,
    no_prunable_pair,
    resolve_pairs,
)
from coreprune.compress.refit_choice import TargetOf
from coreprune.compress.report import LayerRow
from coreprune.coreset.refit import GapCertificate
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


GROUP_GAP_NOTE = (
    "gap of the channel choice, on the dense model's consumer inputs where it was made (Theorem "
    "G summed over consumers), before each consumer is refitted on its inputs as cut"
)


def group_row(
    opts: Options, group: ChannelGroup, keep: torch.Tensor, how: str,
    gap: GapCertificate | None = None,
) -> LayerRow:  # fmt: skip
    """A coupled group's report row; `how` is the chooser's note on how it chose, `gap` the
    optimality gap of a choice made for the consumers' refit (shown with least squares)."""
    removed = keep.numel() < group.width
    compensate = opts.compensate if opts.compensate == "lstsq" and removed else "none"
    notes = [COUPLED_NOTE.format(joins=group.describe)]
    if opts.compensate == "merge" and removed:
        notes.append("merge applies to single pairs only: the consumers are left sliced")
    if how:
        notes.append(how)
    shown_gap = gap if compensate == "lstsq" else None
    if shown_gap is not None:
        notes.append(GROUP_GAP_NOTE)
    rewiring = "least squares per consumer on its dense output" if compensate == "lstsq" else ""
    norms = [n for n in group.producer_norms if n is not None]
    return LayerRow(
        producer=" + ".join(group.producers), consumer=" + ".join(c.name for c in group.consumers),
        norm=" + ".join(norms) or None, units_before=group.width, units_after=int(keep.numel()),
        params_before=0, params_after=0, macs_before=None, macs_after=None, eps=None,
        delta=None, vacuous=None, query=None, sensitivity=None, note="; ".join(notes),
        keep=keep, scale=ones(keep.numel()), certificate=None, compensate=compensate,
        eps_rewired=None, rewiring=rewiring, modules=group.modules, gap=shown_gap,
    )  # fmt: skip


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
