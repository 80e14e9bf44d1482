"""What `compute_sensitivities` returns, and the fingerprints that bind it to its layer.

Bounds are only as good as the layer they were proved for: `Provenance` fingerprints the query
space, the units and the reading, and `Sensitivities` fingerprints its own values, so bounds
reused for another layer, or edited after they were made, are refused rather than certified
(`coreset_prune(sensitivities=...)`). Bounds built by hand are accepted only as the trivial
bound s_ij <= 1, which needs no proof.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

import torch

from coreprune.coreset.query import QuerySpace


@dataclass(frozen=True)
class Provenance:
    """What a `Sensitivities` was computed for: the query space and fingerprints of the inputs.

    ``units_digest`` is a SHA-256 of the float64 unit vectors in query coordinates (the producer's
    weights and bias with any batch norm folded in, times the lifting of the query space);
    ``reading_digest`` of the next layer's reading matrix U; ``support_digest`` of where U is
    non-zero; ``query_digest`` of the query space's basis and offset. Bounds are reusable
    exactly when all of them agree and the bounds themselves are intact.

    A provenance read from `Sensitivities.provenance` also speaks for the bounds: ``problem``
    says why they cannot be trusted (changed since they were made), and ``by_hand`` marks bounds
    not made by `compute_sensitivities`, whose ``support_digest`` is then that of the entries
    >= 1: such bounds are accepted only as the trivial bound s_ij <= 1, which needs no proof.
    """

    query: str
    query_digest: str
    units_digest: str
    reading_digest: str
    support_digest: str = ""
    by_hand: bool = False
    problem: str = ""

    @staticmethod
    def of(
        units: torch.Tensor, reading: torch.Tensor, query: QuerySpace | None = None
    ) -> Provenance:
        """The provenance of bounds for `units` (n x D, query coordinates) read through `reading`."""
        if query is None:
            query_text = f"all of R^{units.shape[1] - 1} (data-free)"
            query_key = f"full:{units.shape[1] - 1}"
        else:
            query_text, query_key = query.describe(), query_digest(query)
        return Provenance(
            query_text,
            query_key,
            tensor_digest(units),
            tensor_digest(reading),
            tensor_digest(reading != 0),
        )

    def differences(self, other: Provenance) -> list[str]:
        """Human-readable names of what differs between two provenances (empty if none)."""
        out = [self.problem] if self.problem else []
        if self.query_digest != other.query_digest:
            out.append(f"the query space ({other.query!r} vs {self.query!r})")
        if self.units_digest != other.units_digest:
            out.append("the layer's units (weights, bias, folded batch norm, in query coordinates)")
        if self.reading_digest != other.reading_digest:
            out.append("the next layer's reading weights")
        elif self.support_digest != other.support_digest and self.by_hand:
            out.append(
                "the bounds themselves: they were built by hand, not by compute_sensitivities, so "
                "they are accepted only as the trivial bound (>= 1 exactly where the next layer "
                "reads a unit)"
            )
        elif self.support_digest != other.support_digest:
            out.append("the next layer's reading weights (where they are non-zero)")
        return out


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's shape and float64 bytes (so float32 and float64 copies agree)."""
    data = t.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy()
    h = hashlib.sha256(repr(tuple(t.shape)).encode())
    h.update(data.tobytes())
    return h.hexdigest()


def query_digest(query: QuerySpace) -> str:
    """A key for the set of inputs a query space describes (its dimension, basis and offset)."""
    if query.basis is None:
        return f"full:{query.dim}"
    h = hashlib.sha256(f"subspace:{query.dim}:{query.rank}".encode())
    h.update(tensor_digest(query.basis).encode())
    h.update(b"none" if query.offset is None else tensor_digest(query.offset).encode())
    return h.hexdigest()


_COMPUTED = object()  # the mark `compute_sensitivities` puts on the bounds it proved


class Sensitivities:
    """Per next unit (k x n) and per unit (n,) bounds, which bounds produced them, and for what.

    ``charge`` is the largest additive rounding charge delta included in any entry (theory §6);
    ``provenance`` names the query space and the weights they hold for (None when built by hand
    without one, which `coreset_prune` refuses).

    The bounds are bound to that provenance: a fingerprint of every value (``per_next``,
    ``bounds``, ``dim``, ``charge``) is taken when the object is made, and ``provenance``
    reports a problem, so `coreset_prune(sensitivities=...)` refuses them, once any of them has
    changed (an in-place edit of ``per_next``, say). Bounds built by hand rather than by
    `compute_sensitivities` are accepted only when they need no proof: at least 1 exactly where
    the next layer reads a unit (s_ij <= 1 always holds) and ``dim`` at least the number of
    units (the largest dimension the sampling bound can need).
    """

    def __init__(
        self,
        per_next: torch.Tensor,
        bounds: dict[str, torch.Tensor] | None = None,
        dim: int = 0,
        provenance: Provenance | None = None,
        charge: float = 0.0,
        *,
        _mark: object = None,
    ) -> None:
        self._per_next = _check_bound_matrix(per_next, "per_next")
        self._bounds = _check_bound_dict(bounds, tuple(self._per_next.shape))
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int (the query dimension), got {type(dim).__name__}")
        if dim < 0:
            raise ValueError(f"dim must be >= 0 (the query dimension), got {dim}")
        if isinstance(charge, bool) or not isinstance(charge, (int, float)) or not charge >= 0:
            raise ValueError(f"charge must be a number >= 0, got {charge!r}")
        if provenance is not None and not isinstance(provenance, Provenance):
            raise TypeError(f"provenance must be a Provenance, got {type(provenance).__name__}")
        self._dim, self._charge, self._provenance = dim, float(charge), provenance
        self._computed = _mark is _COMPUTED
        self._fingerprint = self._values_digest()

    @property
    def per_next(self) -> torch.Tensor:
        """s^_ij, k x n. Do not edit it: an edited copy is refused for reuse."""
        return self._per_next

    @property
    def bounds(self) -> Mapping[str, torch.Tensor]:
        """The bound(s) that produced ``per_next`` (their entry-wise minimum), by name."""
        return MappingProxyType(self._bounds)

    @property
    def dim(self) -> int:
        """min(n, live query coordinates): the dimension the sampling bound uses."""
        return self._dim

    @property
    def charge(self) -> float:
        """The largest additive rounding charge included in any entry (theory §6)."""
        return self._charge

    @property
    def computed(self) -> bool:
        """True when `compute_sensitivities` made these bounds (rather than a caller)."""
        return self._computed

    @property
    def provenance(self) -> Provenance | None:
        """What the bounds hold for, with ``problem`` set when they cannot be trusted."""
        given = self._provenance
        if given is None:
            return None
        if self._values_digest() != self._fingerprint:
            return replace(
                given,
                problem="the bounds themselves (changed in place since they were computed, so "
                "they no longer match their fingerprint)",
            )
        if self._computed:
            return given
        n = self._per_next.shape[1]
        problem = "" if self._dim >= n else (
            f"the bounds' dim ({self._dim}, set by hand) below the number of units ({n}), which "
            "hand-built bounds must not undercut"
        )  # fmt: skip
        return replace(
            given, support_digest=tensor_digest(self._per_next >= 1), by_hand=True, problem=problem
        )

    @property
    def per_unit(self) -> torch.Tensor:
        """s^_i = max_j s^_ij: one sensitivity per unit, across all next units."""
        return self._per_next.max(dim=0).values

    @property
    def total(self) -> float:
        """t = sum_i s^_i."""
        return float(self.per_unit.sum())

    def _values_digest(self) -> str:
        """A fingerprint of every value a certificate reads from these bounds."""
        h = hashlib.sha256(f"{self._dim}:{self._charge!r}:{sorted(self._bounds)}".encode())
        h.update(tensor_digest(self._per_next).encode())
        for name in sorted(self._bounds):
            h.update(tensor_digest(self._bounds[name]).encode())
        return h.hexdigest()

    def __repr__(self) -> str:
        k, n = self._per_next.shape
        how = "computed" if self._computed else "built by hand"
        return (
            f"Sensitivities({k} x {n}, bounds={list(self._bounds)}, dim={self._dim}, "
            f"charge={self._charge:.2g}, {how})"
        )


def _check_bound_matrix(value: object, name: str) -> torch.Tensor:
    """A real, finite, nonnegative 2-D floating tensor (bounds on sensitivities)."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating torch.Tensor (k next units x n units), got "
            f"{type(value).__name__ if not isinstance(value, torch.Tensor) else value.dtype}"
        )
    if value.ndim != 2:
        raise ValueError(f"{name} must be 2-D (k x n), got shape {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0 (sensitivity bounds)")
    return value


def _check_bound_dict(bounds: object, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """A copy of the name -> (k x n) bound mapping (the dict itself is never kept)."""
    if bounds is None:
        return {}
    if not isinstance(bounds, Mapping):
        raise TypeError(f"bounds must be a dict of name -> tensor, got {type(bounds).__name__}")
    out = {}
    for name, value in bounds.items():
        if not isinstance(name, str):
            raise TypeError(f"bounds keys must be str, got {name!r}")
        out[name] = _check_bound_matrix(value, f"bounds[{name!r}]")
        if tuple(value.shape) != shape:
            raise ValueError(f"bounds[{name!r}] has shape {tuple(value.shape)}, per_next {shape}")
    return out
