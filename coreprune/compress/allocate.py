"""Allocation: how many units each pair keeps so that the model meets a budget.

Every allocator returns kept counts that respect each pair's floor (a minimum number of units
that stay, so no layer is ever cut to nothing useful) and checks reachability before any surgery:
a target that cannot be met even with every pair at its floor is an error naming the maximum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import torch

from coreprune.compress.cost import CostModel

__all__ = [
    "ALLOCATIONS",
    "floors_for",
    "global_by_curves",
    "global_by_scores",
    "keep_top",
    "keep_top_blocks",
    "reachable_maximum",
    "refine_up",
    "uniform",
]

ALLOCATIONS = ("uniform", "global")


def round_up(count: int, n: int, round_to: int) -> int:
    """`count` rounded up to a multiple of `round_to`, never above the layer's `n` units."""
    return min(n, math.ceil(count / round_to) * round_to)


Rounding = int | Sequence[int]


def per_group(round_to: Rounding, count: int) -> list[int]:
    """`round_to` for each of `count` pairs/groups (one value for all, or one each)."""
    if isinstance(round_to, int):
        return [round_to] * count
    steps = list(round_to)
    if len(steps) != count:
        raise ValueError(f"round_to has {len(steps)} entries for {count} groups")
    return steps


def floors_for(units: Sequence[int], floor: float, round_to: Rounding = 1) -> list[int]:
    """Minimum kept units per pair: ceil(floor * n), at least 1, rounded up to `round_to`
    (one value, or one per pair/group)."""
    steps = per_group(round_to, len(units))
    return [round_up(max(1, math.ceil(floor * n)), n, r) for n, r in zip(units, steps, strict=True)]


def reachable_maximum(cost: CostModel, floors: Sequence[int]) -> float:
    """The largest fraction of the cost that can be removed with every pair at its floor."""
    return cost.removed(floors)


def check_reachable(cost: CostModel, floors: Sequence[int], target: float, floor: float) -> None:
    """ValueError before any work when `target` cannot be met with every pair at its floor."""
    best = reachable_maximum(cost, floors)
    if best < target - 1e-12:
        raise ValueError(
            f"target={target:g} of {cost.metric} cannot be reached: with every prunable pair at "
            f"its floor (floor={floor:g} of its units, at least 1) at most {best:.4f} can be "
            "removed (the rest sits in layers that are not pruned); pass target <= "
            f"{math.floor(best * 1e4) / 1e4:g} or a lower floor"
        )


def uniform(
    cost: CostModel,
    units: Sequence[int],
    floors: Sequence[int],
    target: float,
    round_to: Rounding = 1,
) -> list[int]:
    """Largest common kept fraction f (k = max(floor, ceil(f n)), rounded up to `round_to`)
    that meets the target."""
    fractions = sorted({Fraction(k, n) for n in units for k in range(1, n + 1)})
    candidates = [Fraction(0), *fractions]
    steps = per_group(round_to, len(units))

    def keeps_at(f: Fraction) -> list[int]:
        return [
            round_up(max(lo, math.ceil(f * n)), n, r)
            for n, lo, r in zip(units, floors, steps, strict=True)
        ]

    best = last_true(candidates, lambda f: cost.removed(keeps_at(f)) >= target)
    return keeps_at(candidates[best] if best is not None else Fraction(0))


def refine_up(
    cost: CostModel,
    units: Sequence[int],
    keeps: Sequence[int],
    target: float,
    round_to: Rounding = 1,
) -> list[int]:
    """`keeps` raised one step (`round_to` units) at a time, the lowest kept fraction first,
    while the target still holds: a common fraction overshoots when widths are few and coupled
    (one residual stream step is a large share of the model), so the result lands just above
    the target instead."""
    out = list(keeps)
    steps = per_group(round_to, len(units))
    while True:
        order = sorted(range(len(out)), key=lambda i: (out[i] / units[i], i))
        for i in order:
            if out[i] >= units[i]:
                continue
            trial = list(out)
            trial[i] = round_up(out[i] + steps[i], units[i], steps[i])
            if cost.removed(trial) >= target:
                out = trial
                break
        else:
            return out


def keep_top(ranked: torch.Tensor, count: int) -> torch.Tensor:
    """Mask keeping the `count` highest-ranked units; ties drop the lower index first."""
    keep = torch.ones(ranked.numel(), dtype=torch.bool)
    keep[torch.sort(ranked, stable=True).indices[: ranked.numel() - count]] = False
    return keep


def global_by_scores(
    cost: CostModel, ranked: Sequence[torch.Tensor], floors: Sequence[int], target: float
) -> list[torch.Tensor]:
    """One ascending order of scores across layers: remove the shortest prefix that meets the
    target, never taking a layer below its floor (its top `floor` units are protected)."""
    protected = []
    for score, lo in zip(ranked, floors, strict=True):
        score = score.clone()
        score[torch.sort(score, stable=True, descending=True).indices[:lo]] = math.inf
        protected.append(score)
    flat = torch.cat(protected)
    layer = torch.cat([torch.full((s.numel(),), i) for i, s in enumerate(ranked)])
    order = torch.sort(flat, stable=True).indices[: flat.numel() - sum(floors)]
    sizes = [s.numel() for s in ranked]

    def keeps_at(r: int) -> list[int]:
        dropped = torch.bincount(layer[order[:r]], minlength=len(sizes)).tolist()
        return [n - d for n, d in zip(sizes, dropped, strict=True)]

    prefixes = list(range(order.numel() + 1))
    found = first_true(prefixes, lambda r: cost.removed(keeps_at(r)) >= target)
    r = prefixes[-1] if found is None else prefixes[found]
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:r]] = False
    return list(keep.split(sizes))


def global_by_curves(
    cost: CostModel,
    curves: Sequence[torch.Tensor],
    floors: Sequence[int],
    target: float,
    round_to: Rounding = 1,
) -> tuple[list[int], float]:
    """Smallest common level whose per-layer removals meet the target.

    `curves[i][m]` is pair i's error (a certified eps, or a measured one) after removing its m
    least important units, non-decreasing in m. Returns the kept counts and the level.
    """
    values = sorted({float(v) for c in curves for v in c.tolist()})
    steps = per_group(round_to, len(curves))

    def keeps_at(level: float) -> list[int]:
        out = []
        for curve, lo, r in zip(curves, floors, steps, strict=True):
            n = curve.numel() - 1
            removable = int((curve[1:] <= level).sum())
            out.append(round_up(max(lo, n - removable), n, r))
        return out

    found = first_true(values, lambda e: cost.removed(keeps_at(e)) >= target)
    level = values[found] if found is not None else values[-1]
    return keeps_at(level), level


def first_true(values: Sequence[Any], test: Callable[[Any], bool]) -> int | None:
    """Index of the first value passing a monotone (False...True) test, or None."""
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        if test(values[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo if lo < len(values) else None


def last_true(values: Sequence[Any], test: Callable[[Any], bool]) -> int | None:
    """Index of the last value passing a monotone (True...False) test, or None."""
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        if test(values[mid]):
            lo = mid + 1
        else:
            hi = mid
    return lo - 1 if lo > 0 else None


def keep_top_blocks(ranked: torch.Tensor, count: int, blocks: int) -> torch.Tensor:
    """Mask keeping the `count` / `blocks` highest-ranked units of each of `blocks` equal
    blocks (a grouped conv's channels); `count` must be a multiple of `blocks`."""
    if blocks == 1:
        return keep_top(ranked, count)
    if count % blocks or ranked.numel() % blocks:
        raise ValueError(f"{count} kept of {ranked.numel()} do not split into {blocks} blocks")
    parts = ranked.reshape(blocks, -1)
    return torch.cat([keep_top(part, count // blocks) for part in parts])


def round_masks(
    ranked: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], round_to: Rounding
) -> list[torch.Tensor]:
    """Each layer's kept mask grown (by its best removed units) to a multiple of `round_to`."""
    out = []
    steps = per_group(round_to, len(masks))
    for score, mask, r in zip(ranked, masks, steps, strict=True):
        n, kept = mask.numel(), int(mask.sum())
        extra = round_up(kept, n, r) - kept
        mask = mask.clone()
        if extra:
            removed = torch.nonzero(~mask).flatten()
            best = removed[torch.sort(score[removed], descending=True, stable=True).indices[:extra]]
            mask[best] = True
        out.append(mask)
    return out
