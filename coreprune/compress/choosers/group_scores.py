"""Channel scores of a coupled group for the coreset's choice, read on the dense model: each
channel's empirical sensitivity summed over the group's consumers, or, data-free, its
worst-case envelope share. They rank channels and feed the global allocation; they are not
certificates (a channel of a coupled group reaches each consumer along several paths)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from coreprune.compress.capture import capture_input
from coreprune.coreset.empirical import (
    empirical_sensitivities,
    mean_square_sensitivities,
    mean_square_unit_scores,
)
from coreprune.surgery.groups import ChannelGroup, is_grouped
from coreprune.surgery.units import layer_units, next_weights

__all__ = ["GroupScores", "group_scores"]


@dataclass(frozen=True)
class GroupScores:
    """A coupled group's channel scores (n,), the per-row sensitivities behind them
    (rows of all consumers stacked, k x n) and how they were computed."""

    per_unit: torch.Tensor
    per_next: torch.Tensor
    how: str

    def curve(self) -> torch.Tensor:
        """Largest summed sensitivity of any consumer row after removing the m lowest-scored
        channels, m = 0..n (the global allocation's error proxy; not a certificate)."""
        order = torch.argsort(self.per_unit, stable=True)
        cumulative = self.per_next[:, order].cumsum(dim=1).max(dim=0).values
        return torch.cat([torch.zeros(1, dtype=torch.float64), cumulative])


def _reading(module: nn.Module, total: int) -> torch.Tensor:
    """`next_weights`, with a grouped conv read as the dense conv it equals (zeros off-block)."""
    if is_grouped(module):
        assert isinstance(module, nn.Conv2d)
        w = module.weight.detach().to(torch.float64)
        g, per_in, per_out = module.groups, w.shape[1], w.shape[0] // module.groups
        dense = torch.zeros(w.shape[0], total, w.shape[2], w.shape[3], dtype=torch.float64)
        for b in range(g):
            rows = slice(b * per_out, (b + 1) * per_out)
            dense[rows, b * per_in : (b + 1) * per_in] = w[rows].cpu()
        return dense.permute(0, 2, 3, 1).reshape(-1, total)
    return next_weights(module, total)  # type: ignore[arg-type]


def group_scores(
    model: nn.Module,
    group: ChannelGroup,
    calibration: torch.Tensor | None,
    *,
    mean_square: bool = False,
) -> GroupScores:
    """The coreset's score of each channel of a coupled group, read on `model` as it is.

    Each consumer c reads the channels through U_c (`next_weights`). With `calibration`, a
    channel's score is the sum over consumers of its empirical sensitivity on the consumer's
    actual inputs (`coreprune.coreset.empirical`): the worst-row one, or with `mean_square` the
    root-mean-square size rms(a_l) ||U_c[:, l]|| of what it sends into each consumer.
    Data-free, every channel gets the envelope m_l = sum over producers of ||p_l|| (its folded
    unit vector, bias included: |p_l . x~| <= ||p_l|| ||x~||), the other channels of a
    concatenation the group's largest envelope, and the same ratio is taken with a_l = m_l: the
    worst-case share of each consumer row, summed over consumers. Neither is a certificate: the
    channels are sums over several paths.
    """
    rows: list[torch.Tensor] = []
    sizes: list[torch.Tensor] = []
    envelope: torch.Tensor | None = None
    if calibration is None:
        for producer_name, norm_name in zip(group.producers, group.producer_norms, strict=True):
            producer = model.get_submodule(producer_name)
            norm = None if norm_name is None else model.get_submodule(norm_name)
            norms = torch.linalg.vector_norm(layer_units(producer, norm), dim=1).cpu()  # type: ignore[arg-type]
            envelope = norms if envelope is None else envelope + norms
        assert envelope is not None
    lo, n = 0, group.width
    for consumer in group.consumers:
        module = model.get_submodule(consumer.name)
        reading = _reading(module, consumer.total)
        if calibration is not None:
            acts = capture_input(model, consumer.name, calibration)
            if acts.ndim == 2 and consumer.block > 1:  # flatten -> Linear: one row per position
                acts = acts.reshape(acts.shape[0], consumer.total, consumer.block, 1)
        else:
            assert envelope is not None
            full = torch.full((consumer.total,), float(envelope.max()), dtype=torch.float64)
            full[consumer.offset : consumer.offset + n] = envelope
            acts = full[None, :]
        if calibration is not None and mean_square:
            sens = mean_square_sensitivities(acts, reading.to(acts.device)).cpu()
            size = mean_square_unit_scores(acts, reading.to(acts.device)).cpu()
        else:
            sens = empirical_sensitivities(acts, reading.to(acts.device)).cpu()
            size = sens.max(dim=0).values
        rows.append(sens[:, consumer.offset + lo : consumer.offset + n])
        sizes.append(size[consumer.offset + lo : consumer.offset + n])
    per_next = torch.cat(rows, dim=0)
    per_unit = torch.stack(sizes).sum(dim=0)
    how = (
        ("root-mean-square" if mean_square else "worst-row")
        + " empirical sensitivity on calibration data"
        if calibration is not None
        else ("data-free envelope share")
    )
    return GroupScores(per_unit, per_next, how + ", summed over consumers")
