"""The refit choice inside `compress`: choose each pair's or group's kept units for what the
least-squares refit of its consumer(s) will lose (`coreprune.coreset.refit`), in the network as
compressed so far, and hand the refitted weights on so the consumer is not fitted twice.

The statistics are built from exactly the rows `refit_consumer` would fit (`refit_rows`): the
consumer's inputs in the current network against the dense consumer's output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from coreprune.compress.capture import LayerRecords, capture_input
from coreprune.coreset.refit import RefitProblem, Selection, greedy_selection
from coreprune.surgery.graph import PrunablePair
from coreprune.surgery.groups import ChannelGroup, is_grouped
from coreprune.surgery.registry import layer_kind
from coreprune.surgery.rewire import refit_rows

__all__ = ["SELECTION_ROWS", "TargetOf", "group_selection", "pair_selection", "selection_rows"]

SELECTION_ROWS = 4096  # least-squares rows the choice reads at least (all when fewer)
SELECTION_ROWS_PER_FEATURE = 4  # ... and at least this many per feature column
SELECTION_SEED = 1  # fixed seed of the choice's row subsample

# (network as compressed so far, consumer name) -> the dense consumer's output on calibration
TargetOf = Callable[[nn.Module, str], torch.Tensor]


def _feature_owner(consumer: nn.Module, total: int, offset: int, width: int) -> torch.Tensor:
    """The unit (0..width-1) that owns each of the consumer's least-squares feature columns, or
    -1 for columns outside [offset, offset + width) of its `total` input units.

    A conv's im2col columns run channel-major (c * kh * kw + offset), a flatten's inputs
    unit-major (c * positions + p), so each input unit owns one contiguous block."""
    kind = layer_kind(consumer)
    assert kind is not None
    features = kind.in_units(consumer)
    if isinstance(consumer, nn.Conv2d):
        features *= consumer.kernel_size[0] * consumer.kernel_size[1]
    block = features // total
    unit = torch.arange(total).repeat_interleave(block) - offset
    return torch.where((unit >= 0) & (unit < width), unit, torch.full_like(unit, -1))


def selection_rows(rows: int, features: int) -> torch.Tensor | None:
    """The rows the choice is made on: all of them, or a fixed subsample of
    max(SELECTION_ROWS, SELECTION_ROWS_PER_FEATURE * features) when there are more. The choice
    works on all f columns (N f^2 for the Gram matrix) where the refit of the kept set works on
    f_S of them, so a subsample keeps the choice's cost near the refit's; the kept set is then
    refitted on every row."""
    limit = max(SELECTION_ROWS, SELECTION_ROWS_PER_FEATURE * features)
    if rows <= limit:
        return None
    gen = torch.Generator().manual_seed(SELECTION_SEED)
    return torch.randperm(rows, generator=gen)[:limit].sort().values


def _rows(
    model: nn.Module, name: str, inputs: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    consumer = model.get_submodule(name)
    x, y = refit_rows(consumer, inputs, target)
    return x, y, getattr(consumer, "bias", None) is not None


def _problem(
    x: torch.Tensor, y: torch.Tensor, owner: torch.Tensor, ridge: float, bias: bool
) -> RefitProblem:
    """The choice's statistics, on `selection_rows` of the refit's rows."""
    pick = selection_rows(x.shape[0], x.shape[1])
    if pick is not None:
        pick = pick.to(x.device)
        x, y = x.index_select(0, pick), y.index_select(0, pick)
    return RefitProblem.from_rows(x, y, owner.to(x.device), ridge=ridge, bias=bias)


def pair_selection(
    model: nn.Module,
    pair: PrunablePair,
    count: int,
    calibration: torch.Tensor,
    target_of: TargetOf,
    ridge: float,
    alive: torch.Tensor,
) -> Selection:
    """Greedy structured OBS for one pair: keep `count` of the producer's units (only `alive`
    ones), chosen and refitted against the dense consumer's output."""
    producer = model.get_submodule(pair.producer)
    kind = layer_kind(producer)
    assert kind is not None
    n = kind.out_units(producer)
    consumer = model.get_submodule(pair.consumer)
    owner = _feature_owner(consumer, n, 0, n)
    inputs = capture_input(model, pair.consumer, calibration)
    x, y, bias = _rows(model, pair.consumer, inputs, target_of(model, pair.consumer))
    sel = greedy_selection([_problem(x, y, owner, ridge, bias)], n, count, alive=alive)
    if sel.fit_rows == x.shape[0]:
        return sel
    cols = sel.columns[0].to(x.device)  # the kept columns refitted on every row
    full = RefitProblem.from_rows(
        x.index_select(1, cols), y, owner[cols.cpu()], ridge=ridge, bias=bias
    )
    weight, b = full.fit(torch.arange(cols.numel(), device=x.device))
    return replace(sel, weights=(weight,), biases=(b,), fit_rows=x.shape[0])


def group_selection(
    model: nn.Module,
    group: ChannelGroup,
    count: int,
    inputs: LayerRecords,
    target_of: TargetOf,
    ridge: float,
) -> Selection | None:
    """Greedy structured OBS for a coupled group: the summed refit error of every consumer
    (each with its own inputs, `inputs`, and dense output) decides which channels stay. None
    when no consumer can be refitted (grouped convs are sliced on both sides, not refitted)."""
    problems: list[RefitProblem] = []
    for consumer in group.consumers:
        module = model.get_submodule(consumer.name)
        if is_grouped(module):
            continue
        owner = _feature_owner(module, consumer.total, consumer.offset, group.width)
        target = target_of(model, consumer.name)
        x, y, bias = _rows(model, consumer.name, inputs.input(consumer.name), target)
        problems.append(_problem(x, y, owner, ridge, bias))
    if not problems:
        return None
    return greedy_selection(problems, group.width, count)
