"""Upper bounds on each unit's sensitivity to each next unit (docs/theory.md §2, §6).

For next unit j the weighted points are v_l = |U_jl| P_l, with P the unit vectors in query
coordinates, and s_ij = sup_y |v_i . y| / sum_l |v_l . y|. Three bounds, all valid:

- ``paper``: the L-infinity coresets of Tukan et al. from the Löwner ellipsoid and Carathéodory,
  peeled round by round (Theorem 2), each round's constant verified on the points it covers;
- ``leverage``: sqrt of the L2 leverage score of v_i, since sum_l |v_l . y| >= ||V y||_2
  (Theorem 3); cheap and batched;
- ``exact``: the linear program whose value is 1/s_ij, certified through its dual (Theorem 1).

Each returns a (k x n) matrix. ``auto`` takes the entry-wise minimum of ``leverage`` and, when the
layer is small enough for it to finish in seconds (``PAPER_BUDGET`` unit-rows), ``paper``; the
result's ``bounds`` says which ran. ``all`` is the minimum of the three.

Soundness at every scale (docs/theory.md §6): s_ij is a scale-free ratio, so no direction of the
points may be dropped as "numerically zero" (a query along it would see only that direction).
Nothing is dropped except columns that are exactly zero; every rounding error is charged into
the bound through the smallest singular value, and a layer whose smallest singular value is
within rounding of zero is refused with a ValueError rather than certified.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np
import torch
from scipy.optimize import linprog
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from coreprune.coreset.query import QuerySpace
from coreprune.geometry import caratheodory, mvee

METHODS = ("auto", "paper", "leverage", "exact", "all")
PAPER_BUDGET = 5_000  # units x distinct next units above which "auto" skips the paper bound
# Relative singular-value threshold for *claiming independence* (s = 1, never a removal), used by
# coreprune.compress's shortcut. Claiming 1 is always sound, so this one needs no charge.
_RANK_RTOL = 1e-12
_EPS = float(torch.finfo(torch.float64).eps)
# Singular values from LAPACK are within SVD_SLACK * (m + D) * eps * sigma_1 of the exact ones
# (a generous multiple of the backward-stability constant); sigma_min is only trusted above it.
SVD_SLACK = 8.0
ILL_CONDITIONED = "the layer is too ill-conditioned to certify"


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


def span_coordinates(points: torch.Tensor) -> torch.Tensor:
    """The rows of `points` in an orthonormal basis of their row space, no direction dropped.

    Keeps all min(n, D) right singular directions: a rotation (an isometry) when n >= D, and the
    coordinates in the n-dimensional row space otherwise. No singular value is treated as zero,
    because s_ij is scale-free: a query along a "negligible" direction sees only that direction
    (docs/theory.md §6). Exactly zero input gives zero columns.
    """
    _, sv, vh = torch.linalg.svd(points, full_matrices=False)
    if sv.numel() == 0 or sv[0] == 0:
        return points.new_zeros(points.shape[0], 0)
    return points @ vh.T


@contextmanager
def _one_thread() -> Iterator[None]:
    """Thousands of tiny factorisations run faster on one thread than fighting over several."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


def _check_matrix(value: object, name: str, shape_hint: str) -> torch.Tensor:
    """A finite, real, 2-D tensor, detached, as float64."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor ({shape_hint}), got {type(value).__name__}")
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must be a real floating tensor, got {value.dtype}")
    if value.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (no values); materialise it first")
    if value.ndim != 2:
        raise ValueError(f"{name} must be 2-D ({shape_hint}), got shape {tuple(value.shape)}")
    out = value.detach().to(torch.float64)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} contains NaN or Inf; fix the weights first")
    return out


def compute_sensitivities(
    units: torch.Tensor,
    reading: torch.Tensor,
    method: str = "auto",
    *,
    tol: float = 1e-3,
    progress: bool = False,
    query: QuerySpace | None = None,
    error: torch.Tensor | None = None,
) -> Sensitivities:
    """Bounds for units (n x D, already in query coordinates) read through U = `reading` (k x n).

    `query` is the query space the units were lifted into (None: all of R^(D-1), data-free); it
    is recorded in the result's provenance. `error` (n x D, optional) bounds, entry by entry, how
    far `units` may be from the exact unit vectors (e.g. the rounding of a lifting product); it
    is charged into the bounds (theory §6). Raises ValueError for a layer too ill-conditioned to
    certify.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"sensitivity must be one of {METHODS}, got {method!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    units = _check_matrix(units, "units", "n units x D coordinates")
    n, dim = units.shape
    if n == 0 or dim == 0:
        raise ValueError(f"units must have at least one unit and one coordinate, got {(n, dim)}")
    reading = _check_matrix(reading, "reading", f"next units x {n}")
    if reading.shape[1] != n or reading.shape[0] == 0:
        raise ValueError(
            f"reading must have shape (k, {n}) with k >= 1 (one column per unit), "
            f"got {tuple(reading.shape)}"
        )
    reading = reading.to(units.device)
    if query is not None:
        if not isinstance(query, QuerySpace):
            raise TypeError(f"query must be a QuerySpace, got {type(query).__name__}")
        if query.rank + 1 != dim:
            raise ValueError(
                f"units have {dim} coordinates but the query space has rank {query.rank} "
                f"(expected {query.rank + 1} = rank + 1); lift the units with query.lifting()"
            )
    if error is None:
        error = torch.zeros_like(units)
    else:
        error = _check_matrix(error, "error", f"{n} x {dim}, like units").to(units.device)
        if error.shape != units.shape or bool((error < 0).any()):
            raise ValueError(f"error must be nonnegative with shape {(n, dim)}")
    provenance = Provenance.of(units, reading, query)
    weights = reading.abs()
    work = n * torch.unique(weights, dim=0).shape[0]
    auto = ("paper", "leverage") if work <= PAPER_BUDGET else ("leverage",)
    wanted = {"auto": auto, "all": ("paper", "leverage", "exact")}.get(method, (method,))
    bounds = {}
    charge = 0.0
    with _one_thread():
        for name in wanted:
            bounds[name], used = _per_next(
                weights, units, error, name, tol, desc=f"sensitivity ({name})", progress=progress
            )
            charge = max(charge, used)
    per_next = torch.stack(list(bounds.values())).min(dim=0).values
    live_cols = int(((units != 0) | (error != 0)).any(dim=0).sum())
    return Sensitivities(per_next, bounds, min(n, live_cols), provenance, charge, _mark=_COMPUTED)


def _per_next(
    weights: torch.Tensor,
    units: torch.Tensor,
    error: torch.Tensor,
    name: str,
    tol: float,
    *,
    desc: str,
    progress: bool,
) -> tuple[torch.Tensor, float]:
    """Apply a one-next-unit bound to every row of U; identical rows are computed once."""
    unique, inverse = torch.unique(weights, dim=0, return_inverse=True)
    rows: Iterable[torch.Tensor] = unique
    if progress and len(unique) > 1:
        rows = tqdm(unique, desc=desc, leave=False)
    results = [_one_next(w, units, error, name, tol) for w in rows]
    out = torch.stack([s for s, _ in results])
    return out[inverse], max(c for _, c in results)


def _one_next(
    w: torch.Tensor, units: torch.Tensor, error: torch.Tensor, name: str, tol: float
) -> tuple[torch.Tensor, float]:
    """s_i. for one next unit, and the rounding charge used.

    Zero for units it does not read and for units that are exactly zero on Q (zero coordinates
    and zero error bound); 1 for every read unit when there are no more of them than coordinates
    (the truth when they are independent, an upper bound otherwise); the bound for the rest.
    """
    s = torch.zeros_like(w)
    live = (units != 0).any(dim=1) | (error != 0).any(dim=1)
    active = torch.nonzero((w > 0) & live).flatten()
    if active.numel() == 0:
        return s, 0.0
    scale = w[active, None]
    v = scale * units[active]
    err = scale * error[active]
    cols = (v != 0).any(dim=0) | (err != 0).any(dim=0)  # exactly-zero columns carry no query
    v, err = _equilibrate(v[:, cols], err[:, cols])
    if v.shape[0] <= v.shape[1]:
        s[active] = 1.0
        return s, 0.0
    # |v - v_exact| <= err + one rounding of the product by w, entry by entry.
    slack = float(torch.sqrt(((err + _EPS * v.abs()) ** 2).sum()))
    bound, charge = _BOUNDS[name](v, slack, tol)
    s[active] = bound
    return s, charge


def _equilibrate(v: torch.Tensor, err: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each column by a power of 2 so its largest entry is in [0.5, 1).

    Exact in floating point, and range(V D) = range(V) for an invertible diagonal D, so every
    s_ij is unchanged; it only spares the solvers (whose tolerances are absolute) extreme scales.
    """
    if v.shape[1] == 0:
        return v, err
    _, exponent = torch.frexp((v.abs() + err).amax(dim=0))
    factor = torch.ldexp(torch.ones_like(v[0]), -exponent)
    scaled, scaled_err = v * factor, err * factor
    if not (torch.equal(scaled / factor, v) and torch.equal(scaled_err / factor, err)):
        return v, err  # a column spans so many binades that scaling would underflow: keep it
    return scaled, scaled_err


def _sigma_range(v: torch.Tensor) -> tuple[float, float, float]:
    """(computed sigma_min, a certified lower bound on it, sigma_max) of v."""
    sv = torch.linalg.svdvals(v)
    hi = float(sv[0])
    low = float(sv[-1]) - SVD_SLACK * (v.shape[0] + v.shape[1]) * _EPS * hi
    return float(sv[-1]), low, hi


def _refuse(v: torch.Tensor, sigma: float, hi: float, eta: float) -> ValueError:
    cond = math.inf if sigma <= 0 else hi / sigma
    return ValueError(
        f"{ILL_CONDITIONED}: condition number {cond:.3g} of the {v.shape[0]} x {v.shape[1]} "
        f"weighted units one next unit reads (in query coordinates); rounding of "
        f"{max(eta, SVD_SLACK * sum(v.shape) * _EPS * hi) / max(hi, 1e-300):.2g} relative could "
        "hide a whole direction, and a sensitivity is a scale-free ratio. Remove or merge nearly "
        "dependent units, or certify on a query space of lower rank"
    )


def range_charge(v: torch.Tensor, eta: float) -> float:
    """delta for a perturbation of norm <= eta: every z in range(V) is within delta ||z|| of
    range(V^) (theory §6, Lemma 6.1). Raises ValueError when it cannot be bounded."""
    if eta <= 0:
        return 0.0
    sigma, low, hi = _sigma_range(v)
    if not low > 2 * eta:
        raise _refuse(v, sigma, hi, eta)
    return eta / (low - eta)


def charged(s_hat: torch.Tensor, m: int, delta: float) -> torch.Tensor:
    """s <= s^ (1 + sqrt(m) delta) + delta (Lemma 6.1), capped at 1."""
    if delta == 0:
        return s_hat.clamp(max=1.0)
    return (s_hat * (1.0 + math.sqrt(m) * delta) + delta).clamp(max=1.0)


def leverage_bound(v: torch.Tensor, *, slack: float = 0.0) -> torch.Tensor:
    """s_i <= sqrt(tau_i), tau_i the leverage of row i of v (Theorem 3), with rounding charged.

    The QR's backward error (measured) and `slack` (a bound on ||V - v||_F for the exact V) are
    charged through Lemma 6.1, and the computed Q's departure from orthonormality by a factor.
    """
    bound, _ = _leverage(v, slack, 0.0)
    return bound


def _leverage(v: torch.Tensor, slack: float, _tol: float) -> tuple[torch.Tensor, float]:
    m, dim = v.shape
    if m <= dim:
        return torch.ones(m, dtype=v.dtype, device=v.device), 0.0
    q, r = torch.linalg.qr(v)
    qr_residual = float((q @ r - v).norm()) + (dim + 2) * _EPS * float(q.norm() * r.norm())
    gram = q.T @ q - torch.eye(dim, dtype=v.dtype, device=v.device)
    omega = float(gram.norm()) + (m + 2) * _EPS * float(q.norm()) ** 2  # + rounding of Q^T Q
    if omega >= 0.5:
        raise _refuse(v, *_sigma_range(v)[::2], qr_residual)
    delta = range_charge(v, slack + qr_residual)
    tau = (q * q).sum(dim=1)
    s_hat = torch.sqrt(tau) / math.sqrt(1.0 - omega) * (1.0 + 4 * (dim + 2) * _EPS)
    return charged(s_hat, m, delta), delta


def paper_bound(v: torch.Tensor, *, tol: float = 1e-3, slack: float = 0.0) -> torch.Tensor:
    """The peeled L-infinity coresets of Theorem 2: a unit taken in round r gets 1/(1 + sum 1/alpha)."""
    bound, _ = _paper(v, slack, tol)
    return bound


def _paper(v: torch.Tensor, slack: float, tol: float) -> tuple[torch.Tensor, float]:
    n = v.shape[0]
    s = torch.ones(n, dtype=v.dtype, device=v.device)
    if n <= v.shape[1]:
        return s, 0.0
    delta = range_charge(v, slack)
    remaining = torch.arange(n, device=v.device)
    inv_alpha_sum = 0.0
    while remaining.numel() > 0:
        taken, alpha = _linf_coreset(v[remaining], tol)
        # Rounded down by a few ulps so the division below cannot round the bound down.
        s[remaining[taken]] = 1.0 / ((1.0 + inv_alpha_sum) * (1.0 - 1e-12))
        if alpha is None:
            break
        inv_alpha_sum += 1.0 / alpha
        keep = torch.ones(remaining.numel(), dtype=torch.bool, device=v.device)
        keep[taken] = False
        remaining = remaining[keep]
    return charged(s, n, delta), delta


def _linf_coreset(points: torch.Tensor, tol: float) -> tuple[torch.Tensor, float | None]:
    """Indices S and alpha with max_l |p_l . y| <= alpha * max_{l in S} |p_l . y| for every y.

    alpha is None when S is every point (no bound is needed for the rest): when there are no more
    points than dimensions, when their smallest singular value is within rounding of zero, or
    when a solver fails. alpha is not assumed from the theory: it is verified on the points
    (Lemma 2.1 as stated in theory §2), with every rounding error charged.
    """
    m, dim = points.shape
    everything = torch.arange(m, device=points.device)
    if m <= dim:
        return everything, None
    _, low, _ = _sigma_range(points)
    if not low > 0:
        return everything, None
    try:
        weights = mvee(points, tol=tol, centered=True).weights.to(points)
    except (RuntimeError, ValueError):
        return everything, None
    moment = (points * weights[:, None]).T @ points
    lam, axes = torch.linalg.eigh(moment)
    if not float(lam[0]) > 0:
        return everything, None
    taken = torch.zeros(m, dtype=torch.bool, device=points.device)
    ends, totals, errs = [], [], []
    for k in range(dim):
        # Axis end point e_k = sqrt(lam_k) w_k = sum_l c_l p_l with sum |c_l| <= 1 (theory §2).
        c = weights * (points @ axes[:, k]) / math.sqrt(float(lam[k]))
        support = torch.nonzero(c != 0).flatten()
        if support.numel() == 0:
            return everything, None
        signed = points[support] * torch.sign(c[support])[:, None]
        try:
            idx, lamb = caratheodory(signed, c[support].abs())
        except RuntimeError:
            return everything, None
        lamb = lamb.to(points)
        taken[support[idx]] = True
        # e_k as used below is *this* combination, whatever Carathéodory's accuracy.
        ends.append(lamb @ signed[idx])
        size = idx.numel() + 2
        totals.append(float(lamb.sum()) * (1.0 + size * _EPS))
        errs.append(size * _EPS * float(lamb @ signed[idx].norm(dim=1)))
    alpha_bar = _coefficient_bound(torch.stack(ends), points)
    if alpha_bar is None:
        return everything, None
    # |e^_k . y| <= Lambda_k max_S |p . y| + err_k ||y||, ||y|| <= sqrt(m) max_l |p_l . y| / low.
    theta = alpha_bar * max(errs) * math.sqrt(m) / low
    if not theta < 0.5:
        return everything, None
    alpha = alpha_bar * max(totals) / (1.0 - theta) * (1.0 + 1e-12)
    return torch.nonzero(taken).flatten(), alpha


def _coefficient_bound(ends: torch.Tensor, points: torch.Tensor) -> float | None:
    """A certified a with max_l |p_l . y| <= a max_k |e_k . y| for all y, or None.

    p_l = E^T c_l - r_l: |p_l . y| <= ||c_l||_1 max_k |e_k . y| + ||r_l|| ||y||, and
    ||y|| <= ||E y|| / sigma_min(E) <= sqrt(D) max_k |e_k . y| / sigma_min(E).
    """
    dim = ends.shape[0]
    _, low, _ = _sigma_range(ends)
    if not low > 0:
        return None
    coef = torch.linalg.solve(ends.T, points.T)  # (dim x m): column l is c_l
    resid = (ends.T @ coef - points.T).norm(dim=0)
    resid = resid + (dim + 2) * _EPS * (
        (ends.T.abs() @ coef.abs()).norm(dim=0) + points.norm(dim=1)
    )
    per_point = coef.abs().sum(dim=0) * (1.0 + 4 * (dim + 2) * _EPS)
    per_point = per_point + resid * math.sqrt(dim) / low
    value = float(per_point.max())
    return value if math.isfinite(value) else None


def exact_bound(v: torch.Tensor, *, slack: float = 0.0) -> torch.Tensor:
    """s_i = 1 / max{mu : mu v_i = sum_l beta_l v_l, |beta_l| <= 1}, one LP per unit (Theorem 1).

    The solver's answer is certified: beta is clipped into the box and the leftover residual r
    (plus a bound on its own rounding) costs a factor (1 + ||r|| / sigma), sigma a certified
    lower bound on sigma_min(v); `slack` is charged through Lemma 6.1.
    """
    bound, _ = _exact(v, slack, 0.0)
    return bound


def _exact(v: torch.Tensor, slack: float, _tol: float) -> tuple[torch.Tensor, float]:
    n, dim = v.shape
    out = torch.ones(n, dtype=v.dtype)
    if n <= dim:
        return out.to(v.device), 0.0
    if slack == 0:  # a direct call: equilibrate here (exact; _one_next has done it already)
        v, _ = _equilibrate(v, torch.zeros_like(v))
    sigma, low, hi = _sigma_range(v)
    if not low > 0:
        raise _refuse(v, sigma, hi, 0.0)
    delta = range_charge(v, slack)
    vt = v.T.cpu().numpy()
    norms = np.linalg.norm(vt, axis=0)
    for i in range(n):
        a_eq = np.hstack([vt, -vt[:, i : i + 1]])
        cost = np.zeros(n + 1)
        cost[-1] = -1.0
        bounds = [(-1.0, 1.0)] * n + [(0.0, None)]
        res = linprog(cost, A_eq=a_eq, b_eq=np.zeros(dim), bounds=bounds, method="highs")
        if res.status != 0 or res.x is None:
            continue  # keep the trivial bound 1
        beta = np.clip(res.x[:n], -1.0, 1.0)
        mu = float(res.x[-1])
        if not mu > 0:
            continue
        residual = float(np.linalg.norm(vt @ beta - mu * vt[:, i]))
        residual += (n + 2) * _EPS * (float(np.abs(beta) @ norms) + mu * float(norms[i]))
        out[i] = min(1.0, (1.0 + residual / low) / mu * (1.0 + 1e-12))
    return charged(out.to(v.device), n, delta), delta


_BOUNDS: dict[str, Callable[[torch.Tensor, float, float], tuple[torch.Tensor, float]]] = {
    "paper": lambda v, slack, tol: _paper(v, slack, tol),
    "leverage": _leverage,
    "exact": _exact,
}
