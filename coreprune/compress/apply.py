"""Apply a pruning plan: cut given units of given pairs, optionally with new consumer weights.

These are the public primitives every method shares ("cut exactly these units"): `PairCut` says
what happens to one pair, `cut_pair` does it, `apply_plan` does a whole plan on a copy. Choosing
the units (scoring, allocation) and refitting consumers (rewiring) are separate steps.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from coreprune.checks import check_module, check_tensor
from coreprune.surgery.graph import PrunablePair
from coreprune.surgery.groups import ChannelGroup, is_grouped
from coreprune.surgery.registry import (
    layer_kind,
    norm_kind,
    slice_channel_tensors,
    slice_depthwise,
    slice_grouped_inputs,
)
from coreprune.surgery.slicing import slice_consumer, slice_norm, slice_producer
from coreprune.torch_utils import replace_submodule

__all__ = ["GroupCut", "PairCut", "apply_plan", "cut_group", "cut_groups", "cut_pair"]


@dataclass(frozen=True)
class PairCut:
    """What to do to one pair.

    `keep`: the producer units that stay (indices into its current units). `scale`: one
    multiplier per kept unit on its outgoing weights (None: 1). `consumer_weight` /
    `consumer_bias`: the sliced consumer's new weight (shape of the sliced weight) and bias, for
    rewiring; None keeps the sliced (and scaled) ones.
    """

    keep: torch.Tensor
    scale: torch.Tensor | None = None
    consumer_weight: torch.Tensor | None = None
    consumer_bias: torch.Tensor | None = None


@dataclass(frozen=True)
class GroupCut:
    """What to do to one channel group: `keep` are the channels that stay (indices into the
    group's `width` channels); every member is sliced, no weight is rescaled."""

    keep: torch.Tensor


def _check_keep(keep: object, n: int, what: str, unit: str) -> torch.Tensor:
    """`keep` as a 1-D CPU long tensor (order kept) of distinct indices in [0, n); `what`
    names it in errors ("PairCut.keep for 'conv1'"). The one check of kept indices, for pairs
    and groups alike: a 2-D index tensor is refused, not flattened (its meaning is unclear)."""
    if not isinstance(keep, torch.Tensor) or keep.dtype not in (torch.int64, torch.int32):
        got = keep.dtype if isinstance(keep, torch.Tensor) else type(keep).__name__
        raise TypeError(
            f"{what} must be an integer tensor of indices (torch.long), got {got}; e.g. "
            "torch.tensor([0, 3, 5])"
        )
    if keep.dim() != 1:
        raise ValueError(
            f"{what} must be 1-D, one index per kept {unit}, got shape {tuple(keep.shape)}"
        )
    keep = keep.long().cpu()
    if keep.numel() == 0:
        raise ValueError(f"{what} is empty; keep at least one {unit}")
    if keep.min() < 0 or keep.max() >= n or torch.unique(keep).numel() != keep.numel():
        raise ValueError(
            f"{what} must hold distinct indices in [0, {n}), got {keep.tolist()[:8]}"
            + ("..." if keep.numel() > 8 else "")
        )
    return keep


def _check_pair(pair: object, name: str) -> PrunablePair:
    if not isinstance(pair, PrunablePair):
        raise TypeError(
            f"{name} must be a PrunablePair (find_prunable_pairs gives them, or "
            f"PrunablePair(producer, consumer, ...) by hand), got {type(pair).__name__}"
        )
    return pair


def _check_cut(cut: object, n: int, pair: PrunablePair) -> torch.Tensor:
    """The kept indices of a checked `PairCut` (its tensors checked too, before any cut)."""
    if not isinstance(cut, PairCut):
        raise TypeError(f"cut for {pair.producer!r} must be a PairCut, got {type(cut).__name__}")
    keep = _check_keep(cut.keep, n, f"PairCut.keep for {pair.producer!r}", "unit")
    if cut.scale is not None:
        scale = check_tensor(cut.scale, f"PairCut.scale for {pair.producer!r}")
        if scale.shape != (keep.numel(),):
            raise ValueError(
                f"PairCut.scale for {pair.producer!r} must have one entry per kept unit "
                f"({keep.numel()}), got shape {tuple(scale.shape)}"
            )
    for name, value in (("weight", cut.consumer_weight), ("bias", cut.consumer_bias)):
        if value is not None:
            check_tensor(value, f"PairCut.consumer_{name} for {pair.consumer!r}")
    return torch.sort(keep).values if cut.scale is None else keep


def cut_pair(model: nn.Module, pair: PrunablePair, cut: PairCut) -> None:
    """Cut one pair of `model` IN PLACE: slice producer, norm and consumer; set new weights.

    Use `apply_plan` to work on a copy. Indices refer to the producer's current units.
    """
    check_module(model, "model")
    pair = _check_pair(pair, "pair")
    producer = model.get_submodule(pair.producer)
    consumer = model.get_submodule(pair.consumer)
    kind = layer_kind(producer)
    if kind is None:
        raise TypeError(f"{pair.producer!r} is {type(producer).__name__}, not a prunable layer")
    n = kind.out_units(producer)
    keep = _check_cut(cut, n, pair)
    new_consumer: nn.Module = slice_consumer(consumer, n, keep, cut.scale)  # type: ignore[arg-type]
    if cut.consumer_weight is not None or cut.consumer_bias is not None:
        new_consumer = _with_consumer_tensors(new_consumer, cut, pair)
    replace_submodule(model, pair.producer, slice_producer(producer, keep))  # type: ignore[arg-type]
    replace_submodule(model, pair.consumer, new_consumer)
    if pair.norm is not None:
        replace_submodule(model, pair.norm, slice_norm(model.get_submodule(pair.norm), keep))  # type: ignore[arg-type]


def _with_consumer_tensors(consumer: nn.Module, cut: PairCut, pair: PrunablePair) -> nn.Module:
    for name, value in (("weight", cut.consumer_weight), ("bias", cut.consumer_bias)):
        if value is None:
            continue
        old = getattr(consumer, name)
        if old is None:
            raise ValueError(f"PairCut.consumer_bias for {pair.consumer!r}: it has no bias")
        if value.shape != old.shape:
            raise ValueError(
                f"PairCut.consumer_{name} for {pair.consumer!r} must have the sliced shape "
                f"{tuple(old.shape)}, got {tuple(value.shape)}"
            )
        with torch.no_grad():
            old.copy_(value.to(device=old.device, dtype=old.dtype))
    return consumer


def apply_plan(
    model: nn.Module, pairs: Sequence[PrunablePair], cuts: Sequence[PairCut]
) -> nn.Module:
    """A new model with every pair cut as planned, in order; `model` is untouched.

    Train flags and `requires_grad` are those of `model`. A pair that is also the previous
    pair's consumer sees that consumer as already cut (indices refer to current units).
    """
    check_module(model, "model")
    for name, value in (("pairs", pairs), ("cuts", cuts)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise TypeError(f"{name} must be a list, got {type(value).__name__}")
    for i, pair in enumerate(pairs):
        _check_pair(pair, f"pairs[{i}]")
    if len(pairs) != len(cuts):
        raise ValueError(f"got {len(pairs)} pairs but {len(cuts)} cuts; give one cut per pair")
    work = copy.deepcopy(model)
    for pair, cut in zip(pairs, cuts, strict=True):
        cut_pair(work, pair, cut)
    return work


def _check_group_keep(cut: object, group: ChannelGroup) -> torch.Tensor:
    label = group.producers[0] if group.producers else "group"
    if not isinstance(cut, GroupCut):
        raise TypeError(f"cut for group {label!r} must be a GroupCut, got {type(cut).__name__}")
    n = group.width
    keep = _check_keep(cut.keep, n, f"GroupCut.keep for {label!r}", "channel")
    if group.blocks > 1:
        counts = torch.bincount(keep // (n // group.blocks), minlength=group.blocks)
        if not bool((counts == counts[0]).all()):
            raise ValueError(
                f"GroupCut.keep for {label!r} must keep the same number of channels in each of "
                f"its {group.blocks} blocks (a grouped conv reads or writes them), got "
                f"{counts.tolist()}"
            )
    return torch.sort(keep).values


def cut_groups(model: nn.Module, groups: Sequence[ChannelGroup], cuts: Sequence[GroupCut]) -> None:
    """Cut channel groups of `model` IN PLACE: every producer and gate on its output, every
    consumer on its input, every norm / depthwise conv / channel-wise module on both sides.

    Offsets in the groups refer to the model as `find_channel_groups` saw it, so groups that
    share a module (the readers of a concatenation) must be cut in the same call; each module
    is sliced once, with the union of the removed channels.
    """
    if len(groups) != len(cuts):
        raise ValueError(f"got {len(groups)} groups but {len(cuts)} cuts; give one cut per group")
    # (module, side) -> (total, kind, attrs, removed positions)
    sides: dict[tuple[str, str], tuple[int, str, tuple[str, ...], list[torch.Tensor]]] = {}

    def drop(name: str, side: str, offset: int, total: int, removed: torch.Tensor,
             kind: str = "", attrs: tuple[str, ...] = ()) -> None:  # fmt: skip
        entry = sides.setdefault((name, side), (total, kind, attrs, []))
        if entry[0] != total:
            raise ValueError(f"{name!r} is read with {entry[0]} and {total} channels")
        entry[3].append(removed + offset)

    for group, cut in zip(groups, cuts, strict=True):
        keep = _check_group_keep(cut, group)
        mask = torch.ones(group.width, dtype=torch.bool)
        mask[keep] = False
        removed = torch.nonzero(mask).flatten()
        for name in (*group.producers, *group.gates):
            drop(name, "out", 0, group.width, removed)
        for consumer in group.consumers:
            drop(consumer.name, "in", consumer.offset, consumer.total, removed)
        for member in group.channelwise:
            drop(member.name, "both", member.offset, member.total, removed, member.kind,
                 member.attrs)  # fmt: skip
    for (name, side), (total, kind, attrs, parts) in sides.items():
        module = model.get_submodule(name)
        mask = torch.ones(total, dtype=torch.bool)
        mask[torch.cat(parts)] = False
        kept = torch.nonzero(mask).flatten()
        replace_submodule(model, name, _slice_side(module, name, side, total, kept, kind, attrs))


def _slice_side(
    module: nn.Module, name: str, side: str, total: int, keep: torch.Tensor, kind: str,
    attrs: tuple[str, ...],
) -> nn.Module:  # fmt: skip
    layer = layer_kind(module)
    if side == "out":
        assert layer is not None
        if layer.out_units(module) != total:
            raise ValueError(f"{name!r} has {layer.out_units(module)} outputs, expected {total}")
        return layer.slice_outputs(module, keep)
    if side == "in":
        assert layer is not None
        width = layer.in_units(module)
        if width % total:
            raise ValueError(f"{name!r} reads {width} inputs, not a multiple of {total}")
        if is_grouped(module):
            assert isinstance(module, nn.Conv2d)
            return slice_grouped_inputs(module, keep)
        return layer.slice_inputs(module, total, keep, None)
    if kind == "depthwise":
        assert isinstance(module, nn.Conv2d)
        return slice_depthwise(module, keep)
    if kind == "norm":
        norm = norm_kind(module)
        assert norm is not None
        if norm.units(module) != total:
            raise ValueError(f"{name!r} has {norm.units(module)} channels, expected {total}")
        return norm.slice(module, keep)
    return slice_channel_tensors(module, keep, attrs or None)


def cut_group(model: nn.Module, group: ChannelGroup, cut: GroupCut) -> None:
    """Cut one channel group of `model` IN PLACE (see `cut_groups`)."""
    cut_groups(model, [group], [cut])
