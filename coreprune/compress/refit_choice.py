"""The refit choice inside `compress`: choose each pair's or group's kept units for what the
least-squares refit of its consumer(s) will lose (`coreprune.coreset.refit`), in the network as
compressed so far, and hand the refitted weights on so the consumer is not fitted twice.

The statistics are built from exactly the rows `refit_consumer` would fit (`refit_rows`): the
consumer's inputs in the current network against the dense consumer's output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from coreprune.compress.capture import capture_input
from coreprune.coreset.refit import RefitProblem, Selection, greedy_selection
from coreprune.surgery.graph import PrunablePair
from coreprune.surgery.groups import ChannelGroup, is_grouped
from coreprune.surgery.registry import layer_kind
from coreprune.surgery.rewire import refit_rows

__all__ = ["TargetOf", "group_selection", "pair_selection"]

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


def _problem(
    model: nn.Module,
    name: str,
    calibration: torch.Tensor,
    target: torch.Tensor,
    owner: torch.Tensor,
    ridge: float,
) -> RefitProblem:
    consumer = model.get_submodule(name)
    inputs = capture_input(model, name, calibration)
    x, y = refit_rows(consumer, inputs, target)
    bias = getattr(consumer, "bias", None) is not None
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
    problem = _problem(
        model, pair.consumer, calibration, target_of(model, pair.consumer), owner, ridge
    )
    return greedy_selection([problem], n, count, alive=alive)


def group_selection(
    model: nn.Module,
    group: ChannelGroup,
    count: int,
    calibration: torch.Tensor,
    target_of: TargetOf,
    ridge: float,
) -> Selection | None:
    """Greedy structured OBS for a coupled group: the summed refit error of every consumer
    (each with its own inputs and dense output) decides which channels stay. None when no
    consumer can be refitted (grouped convs are sliced on both sides, not refitted)."""
    problems: list[RefitProblem] = []
    for consumer in group.consumers:
        module = model.get_submodule(consumer.name)
        if is_grouped(module):
            continue
        owner = _feature_owner(module, consumer.total, consumer.offset, group.width)
        target = target_of(model, consumer.name)
        problems.append(_problem(model, consumer.name, calibration, target, owner, ridge))
    if not problems:
        return None
    return greedy_selection(problems, group.width, count)
