"""The coreset's choice for one pair, in the network as compressed so far.

Worst-case sensitivities (data-free, or on a calibration query space) give the certificate; with
calibration data the default choice ranks units by their empirical sensitivities (what the units
actually carry on data), and the worst-case certificate of that choice is still reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from coreprune.compress.capture import capture_input, input_rows
from coreprune.compress.refit_choice import TargetOf, pair_selection
from coreprune.coreset.certificate import Certificate
from coreprune.coreset.empirical import (
    empirical_sensitivities,
    empirical_unit_scores,
    mean_square_sensitivities,
    mean_square_unit_scores,
)
from coreprune.coreset.prune import coreset_prune
from coreprune.coreset.query import QuerySpace
from coreprune.coreset.refit import Selection
from coreprune.coreset.sensitivity import _RANK_RTOL, Provenance, Sensitivities
from coreprune.surgery.graph import PrunablePair
from coreprune.surgery.groups import ChannelGroup, is_grouped
from coreprune.surgery.registry import layer_kind
from coreprune.surgery.slicing import slice_consumer, slice_norm, slice_producer
from coreprune.surgery.units import layer_units, next_weights

__all__ = ["CHOICES", "Choice", "CoresetChooser", "GroupScores", "group_scores"]

CHOICES = ("refit", "certified", "empirical", "empirical_rms")
DEFAULT_RANK = 8


@dataclass(frozen=True)
class Choice:
    """Kept units (indices into the producer's current units), their scales, the certificate
    and the worst-case sensitivities over all n units (k x n, 0 for all-zero units); with the
    refit choice, the `selection` (the consumer's refitted weights and the optimality gap)."""

    keep: torch.Tensor
    scale: torch.Tensor
    certificate: Certificate | None
    per_next: torch.Tensor | None
    note: str
    selection: Selection | None = None


def ones(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.float64)


def modules_of(model: nn.Module, pair: PrunablePair) -> tuple[Any, Any, Any]:
    """(producer, norm or None, consumer) of `pair` in `model`."""
    norm = None if pair.norm is None else model.get_submodule(pair.norm)
    return model.get_submodule(pair.producer), norm, model.get_submodule(pair.consumer)


def nonzero_units(producer: nn.Module, norm: nn.Module | None) -> torch.Tensor:
    """Indices of units whose folded weights and bias are not all zero (zero ones output 0)."""
    units = layer_units(producer, norm)  # type: ignore[arg-type]
    return torch.nonzero(units.abs().sum(dim=1) > 0).flatten().cpu()


def restrict(
    producer: Any, norm: Any, consumer: Any, nonzero: torch.Tensor
) -> tuple[Any, Any, Any]:
    """The pair without its all-zero units (the same modules when there are none)."""
    n = _out_units(producer)
    if nonzero.numel() == n:
        return producer, norm, consumer
    idx = nonzero.to(producer.weight.device)
    return (
        slice_producer(producer, idx),
        None if norm is None else slice_norm(norm, idx),
        slice_consumer(consumer, n, idx, None),
    )


def _out_units(producer: nn.Module) -> int:
    """The producer's unit count through its registry entry (a Conv1D's weight is (in, out))."""
    kind = layer_kind(producer)
    assert kind is not None
    return kind.out_units(producer)


def fast_sensitivities(
    producer: Any, norm: Any, consumer: Any, query: QuerySpace | None
) -> Sensitivities | None:
    """Exact sensitivities when the units are linearly independent on Q, else None.

    Then each unit is alone in some direction of Q, so s_ij = 1 wherever the next unit j reads it
    and 0 where it does not (docs/theory.md §1, last paragraph). The general path reaches the same
    values one next unit at a time (thousands of SVDs on a VGG layer); this needs one QR.
    """
    units = layer_units(producer, norm)
    n = units.shape[0]
    if query is not None:
        units = units @ query.lifting(units.device)
    if units.shape[1] < n:
        return None
    sv = torch.linalg.svdvals(torch.linalg.qr(units.T, mode="r")[1])
    if sv[0] == 0 or int((sv > _RANK_RTOL * sv[0]).sum()) != n:
        return None
    reading = next_weights(consumer, n, device=units.device)
    per_next = (reading != 0).to(torch.float64)
    provenance = Provenance.of(units, reading, query)
    return Sensitivities(per_next, {"independent": per_next}, n, provenance)


class CoresetChooser:
    """Chooses each pair's kept units with the coreset, in the current (partly cut) model."""

    def __init__(
        self,
        *,
        mode: str,
        eps: float | None,
        delta: float,
        sensitivity: str,
        generator: torch.Generator | None,
        calibration: torch.Tensor | None,
        rank: int,
        choice: str,
        rank_given: bool = True,
        worst_case: bool = True,
        target_of: TargetOf | None = None,
        ridge: float = 1e-4,
    ) -> None:
        self.mode, self.eps, self.delta = mode, eps, delta
        self.sensitivity, self.generator = sensitivity, generator
        self.calibration, self.rank, self.choice = calibration, rank, choice
        self.worst_case, self.target_of, self.ridge = worst_case, target_of, ridge
        self.rank_given = rank_given  # False: the default rank, lowered on narrow inputs
        self.cache: dict[str, tuple[tuple[Any, ...], Sensitivities]] = {}

    def query(self, model: nn.Module, pair: PrunablePair) -> QuerySpace | None:
        """Data-free (None) or the calibration subspace of the producer's current inputs."""
        if self.calibration is None:
            return None
        rows = input_rows(model, pair.producer, self.calibration)
        dim = rows.shape[1]
        if self.rank >= dim and not self.rank_given:
            rank = dim - 1  # the default rank, on inputs too narrow for it
            if rank < 1:
                raise ValueError(
                    f"the inputs of {pair.producer!r} have {dim} dimension(s): no calibration "
                    "query space of lower rank exists; pass worst_case=False or no calibration"
                )
            return QuerySpace.from_calibration(rows, rank)
        if self.rank >= dim:
            raise ValueError(
                f"rank={self.rank} but the inputs of {pair.producer!r} have only {dim} "
                f"dimensions (patch size); pass rank < {dim}"
            )
        return QuerySpace.from_calibration(rows, self.rank)

    def sensitivities(
        self, model: nn.Module, pair: PrunablePair
    ) -> tuple[Sensitivities, torch.Tensor, QuerySpace | None]:
        """Worst-case sensitivities of the pair's non-zero units (cached while the pair is
        untouched and data-free), those units' indices, and the query space used."""
        producer, norm, consumer = modules_of(model, pair)
        nonzero = nonzero_units(producer, norm)
        sub = restrict(producer, norm, consumer, nonzero)
        query = self.query(model, pair)
        hit = self.cache.get(pair.producer)
        if hit is not None and all(
            a is b for a, b in zip(hit[0], (producer, norm, consumer), strict=True)
        ):
            return hit[1], nonzero, query
        sens = fast_sensitivities(*sub, query)
        if sens is None:
            result = coreset_prune(
                sub[0],
                sub[2],
                mode="select",
                keep=nonzero.numel(),
                query=query,
                activation=pair.activation,
                norm=sub[1],
                sensitivity=self.sensitivity,
            )  # fmt: skip
            sens = result.sensitivities
        if query is None:
            self.cache[pair.producer] = ((producer, norm, consumer), sens)
        return sens, nonzero, query

    def curve(self, model: nn.Module, pair: PrunablePair) -> torch.Tensor:
        """Certified eps after removing the m least sensitive non-zero units, m = 0..n'."""
        producer, norm, _ = modules_of(model, pair)
        if nonzero_units(producer, norm).numel() == 0:
            return torch.zeros(1, dtype=torch.float64)
        sens, _, _ = self.sensitivities(model, pair)
        order = torch.argsort(sens.per_unit, stable=True)
        cumulative = sens.per_next[:, order].cumsum(dim=1).max(dim=0).values
        return torch.cat([torch.zeros(1, dtype=torch.float64), cumulative.cpu()])

    def choose(self, model: nn.Module, pair: PrunablePair, count: int | None) -> Choice:
        producer, norm, consumer = modules_of(model, pair)
        n = _out_units(producer)
        notes: list[str] = []
        nonzero = nonzero_units(producer, norm)
        if nonzero.numel() == 0:
            note = "every unit is all-zero (outputs 0); kept unit 0: at least one unit stays"
            return Choice(torch.zeros(1, dtype=torch.long), ones(1), None, None, note)
        if nonzero.numel() < n:
            notes.append(f"{n - nonzero.numel()} all-zero units (output exactly 0) removed first")
        if any("max" in kind for kind in pair.pooling):
            notes.append(
                "max pooling between the layers: eps covers the map before pooling only, not "
                "the pooled network (docs/theory.md §8)"
            )
        if count is not None and count > nonzero.numel():
            notes.append(f"budget allowed {count} units, only {nonzero.numel()} are non-zero")
            count = nonzero.numel()
        if self.choice == "refit" and count is not None and self.calibration is not None:
            return self._refit(model, pair, count, nonzero, notes)
        sens, nonzero, query = self.sensitivities(model, pair)
        sub_producer, sub_norm, sub_consumer = restrict(producer, norm, consumer, nonzero)
        if self.choice != "certified" and count is not None and self.calibration is not None:
            keep_sub, cert = self._empirical(
                model, pair, nonzero, sens, count, query, sub_producer, sub_consumer, sub_norm
            )
            scale = ones(keep_sub.numel())
            how = "root-mean-square" if self.choice == "empirical_rms" else "worst-row"
            notes.append(f"units chosen by {how} empirical sensitivity on calibration data")
        else:
            result = coreset_prune(
                sub_producer,
                sub_consumer,
                eps=self.eps if count is None else None,
                delta=self.delta,
                mode=self.mode,
                keep=count,
                query=query,
                generator=self.generator,
                activation=pair.activation,
                norm=sub_norm,
                sensitivity=self.sensitivity,
                sensitivities=sens,
            )  # fmt: skip
            keep_sub, scale, cert = (
                result.keep.cpu(),
                result.scale.detach().cpu(),
                result.certificate,
            )
        if keep_sub.numel() == 1 and count != 1:
            notes.append("kept 1 unit: at least one unit stays")
        per_next = torch.zeros(sens.per_next.shape[0], n, dtype=torch.float64)
        per_next[:, nonzero] = sens.per_next.cpu()
        keep = nonzero[keep_sub]
        return Choice(keep, scale, cert, per_next, "; ".join(notes))

    def _refit(
        self,
        model: nn.Module,
        pair: PrunablePair,
        count: int,
        nonzero: torch.Tensor,
        notes: list[str],
    ) -> Choice:
        """Greedy structured OBS against the refit; the worst-case certificate of the kept set
        only when asked (`worst_case`): it is vacuous at the budgets users prune to."""
        assert self.calibration is not None and self.target_of is not None
        n = _out_units(model.get_submodule(pair.producer))
        alive = torch.zeros(n, dtype=torch.bool)
        alive[nonzero] = True
        sel = pair_selection(
            model, pair, count, self.calibration, self.target_of, self.ridge, alive
        )
        notes.append("units chosen for the least-squares refit (greedy structured OBS)")
        cert, per_next = None, None
        if self.worst_case:
            sens, nz, query = self.sensitivities(model, pair)
            producer, norm, consumer = modules_of(model, pair)
            sub = restrict(producer, norm, consumer, nz)
            local = torch.searchsorted(nz, sel.keep)
            cert = _select_certificate(sens, local, query, sub[0], sub[1])
            per_next = torch.zeros(sens.per_next.shape[0], n, dtype=torch.float64)
            per_next[:, nz] = sens.per_next.cpu()
        else:
            notes.append("worst-case certificate not computed (worst_case=True computes it)")
        return Choice(sel.keep, ones(sel.keep.numel()), cert, per_next, "; ".join(notes), sel)

    def _empirical(
        self, model: nn.Module, pair: PrunablePair, nonzero: torch.Tensor, sens: Sensitivities,
        count: int, query: QuerySpace | None, producer: Any, consumer: Any, norm: Any,
    ) -> tuple[torch.Tensor, Certificate]:  # fmt: skip
        """Top `count` units by empirical sensitivity; certified by the worst-case bounds."""
        assert self.calibration is not None
        acts = capture_input(model, pair.consumer, self.calibration)
        full_producer = model.get_submodule(pair.producer)
        kind = layer_kind(full_producer)
        assert kind is not None
        n = kind.out_units(full_producer)
        if not isinstance(full_producer, nn.Conv2d) and acts.shape[-1] == n:
            acts = acts.reshape(-1, n)  # (batch, tokens, ..., n): every leading index a row
        elif acts.ndim == 2 and acts.shape[1] != n:  # flatten -> Linear: one row per position
            acts = acts.reshape(acts.shape[0], n, -1, 1)
        acts = acts.index_select(1, nonzero.to(acts.device))
        reading = next_weights(consumer, nonzero.numel(), device=acts.device)
        score = mean_square_unit_scores if self.choice == "empirical_rms" else empirical_unit_scores
        scores = score(acts, reading).cpu()
        order = torch.argsort(scores, descending=True, stable=True)
        keep_sub = torch.sort(order[:count]).values
        cert = _select_certificate(sens, keep_sub, query, producer, norm)
        return keep_sub, cert


def _select_certificate(
    sens: Sensitivities, keep: torch.Tensor, query: QuerySpace | None, producer: Any, norm: Any
) -> Certificate:
    """The select-mode certificate of keeping `keep` (indices into the sensitivities' units):
    eps = max over next units j of the summed sensitivities of the removed units."""
    n = sens.per_next.shape[1]
    removed = torch.ones(n, dtype=torch.bool)
    removed[keep.cpu()] = False
    per_next = sens.per_next.cpu()
    eps = float(per_next[:, removed].sum(dim=1).max()) if removed.any() else 0.0
    space = (
        query if query is not None else QuerySpace.full(layer_units(producer, norm).shape[1] - 1)
    )
    return Certificate(
        query=space.describe(), mode="select", sensitivity="+".join(sens.bounds),
        units=n, kept=int(keep.numel()), eps=eps, delta=0.0, total_sensitivity=sens.total,
    )  # fmt: skip


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
    root-mean-square size rms(a_l) ||U_c[:, l]|| of what it sends into each consumer. Data-free, every channel gets the envelope
    m_l = sum over producers of ||p_l|| (its folded unit vector, bias included: |p_l . x~| <=
    ||p_l|| ||x~||), the other channels of a concatenation the group's largest envelope, and the
    same ratio is taken with a_l = m_l: the worst-case share of each consumer row, summed over
    consumers. Neither is a certificate: the channels are sums over several paths.
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
