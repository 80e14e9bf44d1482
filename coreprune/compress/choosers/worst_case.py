"""The coreset's worst-case sensitivities of one pair in the network as compressed so far: the
numbers behind every certificate `compress` prints, and the certified error curve that the
global allocation levels.

All-zero units output exactly 0, so they are set aside before any bound is computed (they cost
nothing to remove); sensitivities are then given over all n units, zero for those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from coreprune.compress.capture import input_rows
from coreprune.coreset.certificate import Certificate
from coreprune.coreset.prune import coreset_prune
from coreprune.coreset.query import QuerySpace
from coreprune.coreset.sensitivity import RANK_RTOL, Provenance, Sensitivities
from coreprune.surgery.graph import PrunablePair
from coreprune.surgery.registry import layer_kind
from coreprune.surgery.slicing import slice_consumer, slice_norm, slice_producer
from coreprune.surgery.units import layer_units, next_weights

__all__ = [
    "WorstCase",
    "fast_sensitivities",
    "modules_of",
    "nonzero_units",
    "out_units",
    "restrict",
    "select_certificate",
]


def modules_of(model: nn.Module, pair: PrunablePair) -> tuple[Any, Any, Any]:
    """(producer, norm or None, consumer) of `pair` in `model`."""
    norm = None if pair.norm is None else model.get_submodule(pair.norm)
    return model.get_submodule(pair.producer), norm, model.get_submodule(pair.consumer)


def out_units(producer: nn.Module) -> int:
    """The producer's unit count through its registry entry (a Conv1D's weight is (in, out))."""
    kind = layer_kind(producer)
    assert kind is not None
    return kind.out_units(producer)


def nonzero_units(producer: nn.Module, norm: nn.Module | None) -> torch.Tensor:
    """Indices of units whose folded weights and bias are not all zero (zero ones output 0)."""
    units = layer_units(producer, norm)  # type: ignore[arg-type]
    return torch.nonzero(units.abs().sum(dim=1) > 0).flatten().cpu()


def restrict(
    producer: Any, norm: Any, consumer: Any, nonzero: torch.Tensor
) -> tuple[Any, Any, Any]:
    """The pair without its all-zero units (the same modules when there are none)."""
    n = out_units(producer)
    if nonzero.numel() == n:
        return producer, norm, consumer
    idx = nonzero.to(producer.weight.device)
    return (
        slice_producer(producer, idx),
        None if norm is None else slice_norm(norm, idx),
        slice_consumer(consumer, n, idx, None),
    )


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
    if sv[0] == 0 or int((sv > RANK_RTOL * sv[0]).sum()) != n:
        return None
    reading = next_weights(consumer, n, device=units.device)
    per_next = (reading != 0).to(torch.float64)
    provenance = Provenance.of(units, reading, query)
    return Sensitivities(per_next, {"independent": per_next}, n, provenance)


def select_certificate(
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
class PairSensitivities:
    """A pair's worst-case sensitivities over its non-zero units, those units' indices, the
    query space, and the pair restricted to them (producer, norm, consumer)."""

    sens: Sensitivities
    nonzero: torch.Tensor
    query: QuerySpace | None
    sub: tuple[Any, Any, Any]

    def per_next_all(self, n: int) -> torch.Tensor:
        """The sensitivities over all n units (k x n), 0 for all-zero ones."""
        per_next = torch.zeros(self.sens.per_next.shape[0], n, dtype=torch.float64)
        per_next[:, self.nonzero] = self.sens.per_next.cpu()
        return per_next

    def certificate(self, keep: torch.Tensor) -> Certificate:
        """The select certificate of keeping `keep` (indices into all n units, non-zero ones)."""
        local = torch.searchsorted(self.nonzero, keep.cpu())
        return select_certificate(self.sens, local, self.query, self.sub[0], self.sub[1])


@dataclass(frozen=True)
class WorstCase:
    """How the worst-case bounds are computed: the bound (`sensitivity`) and the calibration
    query space's rank (data-free without calibration); `rank_given` False means the default
    rank, which is lowered on inputs too narrow for it."""

    sensitivity: str
    rank: int
    rank_given: bool

    def query(
        self, model: nn.Module, pair: PrunablePair, calibration: torch.Tensor | None
    ) -> QuerySpace | None:
        """Data-free (None) or the calibration subspace of the producer's current inputs."""
        if calibration is None:
            return None
        rows = input_rows(model, pair.producer, calibration)
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

    def of(
        self,
        model: nn.Module,
        pair: PrunablePair,
        calibration: torch.Tensor | None,
        cache: dict[Any, Any],
    ) -> PairSensitivities:
        """The pair's sensitivities in `model` as it is; data-free ones are kept in `cache`
        while the pair's modules are the same objects (untouched since)."""
        producer, norm, consumer = modules_of(model, pair)
        nonzero = nonzero_units(producer, norm)
        sub = restrict(producer, norm, consumer, nonzero)
        query = self.query(model, pair, calibration)
        key = ("worst_case", pair.producer)
        hit = cache.get(key)
        if hit is not None and all(
            a is b for a, b in zip(hit[0], (producer, norm, consumer), strict=True)
        ):
            return PairSensitivities(hit[1], nonzero, query, sub)
        sens = fast_sensitivities(*sub, query)
        if sens is None:
            result = coreset_prune(
                sub[0], sub[2], mode="select", keep=nonzero.numel(), query=query,
                activation=pair.activation, norm=sub[1], sensitivity=self.sensitivity,
            )  # fmt: skip
            sens = result.sensitivities
        if query is None:
            cache[key] = ((producer, norm, consumer), sens)
        return PairSensitivities(sens, nonzero, query, sub)

    def curve(
        self,
        model: nn.Module,
        pair: PrunablePair,
        calibration: torch.Tensor | None,
        cache: dict[Any, Any],
    ) -> torch.Tensor:
        """Certified eps after removing the m least sensitive non-zero units, m = 0..n'."""
        producer, norm, _ = modules_of(model, pair)
        if nonzero_units(producer, norm).numel() == 0:
            return torch.zeros(1, dtype=torch.float64)
        sens = self.of(model, pair, calibration, cache).sens
        order = torch.argsort(sens.per_unit, stable=True)
        cumulative = sens.per_next[:, order].cumsum(dim=1).max(dim=0).values
        return torch.cat([torch.zeros(1, dtype=torch.float64), cumulative.cpu()])
