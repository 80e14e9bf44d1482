"""Soundness at every scale (docs/theory.md §6): what every bound charges for rounding.

s_ij is a scale-free ratio, so no direction of the points may be dropped as "numerically zero"
(a query along it would see only that direction). Nothing is dropped except columns that are
exactly zero (`span_coordinates`); columns are rescaled only exactly, by powers of 2
(`_equilibrate`); every rounding error is charged into the bound through a certified lower
bound on the smallest singular value (`range_charge`, `charged`: Lemma 6.1), and a layer whose
smallest singular value is within rounding of zero is refused (`_refuse`) rather than certified.
"""

from __future__ import annotations

import math

import torch

# Relative singular-value threshold for *claiming independence* (s = 1, never a removal), used by
# coreprune.compress's shortcut. Claiming 1 is always sound, so this one needs no charge.
RANK_RTOL = 1e-12
_EPS = float(torch.finfo(torch.float64).eps)
# Singular values from LAPACK are within SVD_SLACK * (m + D) * eps * sigma_1 of the exact ones
# (a generous multiple of the backward-stability constant); sigma_min is only trusted above it.
SVD_SLACK = 8.0
ILL_CONDITIONED = "the layer is too ill-conditioned to certify"


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
