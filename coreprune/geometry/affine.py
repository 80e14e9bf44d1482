"""Affine hulls and linear spans of point sets, by a centred SVD.

Degenerate point sets are normal input for the geometry code (units of a layer often lie in a
low-dimensional subspace), so every solver first moves to coordinates of the hull and solves in
r = dim(hull) dimensions.

Rank rule (documented contract). Let X be the (n, d) points, Y = X - mean(X) for the affine hull
(Y = X for the linear span), and s_1 >= s_2 >= ... the singular values of Y. The rank is

    r = #{ k : s_k > max(rtol * s_1, floor) },

where ``floor`` is the rounding noise of the centring step,
``floor = 8 * eps64 * sqrt(n * d) * max_ij |X_ij|`` for the affine hull and 0 for the linear
span (no subtraction, so no noise is created). Without the floor, n copies of one point far from
the origin would get a spurious rank-1 hull from the last bits of the mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from coreprune.geometry._validate import check_points, check_positive

__all__ = ["AffineHull", "affine_hull", "from_hull", "linear_span", "to_hull"]

_EPS64 = float(torch.finfo(torch.float64).eps)


@dataclass(frozen=True)
class AffineHull:
    """The affine hull {center + basis @ y : y in R^r} of a point set.

    ``center`` (d,) is the mean of the points, ``basis`` (d, r) has orthonormal columns (the
    leading right singular vectors of the centred points), ``singular_values`` (r,) are the
    kept singular values, largest first.
    """

    center: Tensor
    basis: Tensor
    singular_values: Tensor

    @property
    def rank(self) -> int:
        """Dimension r of the hull."""
        return int(self.basis.shape[1])

    def project(self, x: Tensor) -> Tensor:
        """Hull coordinates (m, r) (or (r,)) of points x (m, d) (or (d,))."""
        return to_hull(x, self.center, self.basis)

    def lift(self, y: Tensor) -> Tensor:
        """Full coordinates of hull coordinates y (m, r) (or (r,))."""
        return from_hull(y, self.center, self.basis)


def to_hull(x: Tensor, center: Tensor, basis: Tensor) -> Tensor:
    """Coordinates (x - center) @ basis; the component off the hull is dropped."""
    return (x.to(torch.float64) - center) @ basis


def from_hull(y: Tensor, center: Tensor, basis: Tensor) -> Tensor:
    """Full coordinates center + y @ basis.T (the inverse of :func:`to_hull` on the hull)."""
    return center + y.to(torch.float64) @ basis.T


def _check_rtol(rtol: object) -> float:
    value = check_positive(rtol, "rtol")
    if value >= 1.0:
        raise ValueError(f"rtol must be < 1 (a relative singular-value threshold), got {rtol}")
    return value


def _rank(s: Tensor, rtol: float, floor: float) -> int:
    """Number of singular values above the documented threshold."""
    if s.numel() == 0:
        return 0
    thresh = max(rtol * float(s[0]), floor)
    return int((s > thresh).sum())


def svd_coordinates(
    points: Tensor, rtol: float = 1e-10, *, centre: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Centre (optionally), SVD and truncate: returns (center, basis, U_r, s_r).

    The hull coordinates of the points are ``U_r * s_r`` (n, r); solvers use the whitened
    coordinates ``U_r * sqrt(n)`` (identity second moment), which makes affine-invariant
    problems such as the MVEE well conditioned whatever the scale or anisotropy of the input.
    ``points`` must already be validated float64.
    """
    n, d = points.shape
    if centre:
        center = points.mean(dim=0)
        y = points - center
        floor = 8.0 * _EPS64 * math.sqrt(n * d) * float(points.abs().max())
    else:
        center = torch.zeros(d, dtype=torch.float64, device=points.device)
        y = points
        floor = 0.0
    u, s, vh = torch.linalg.svd(y, full_matrices=False)
    r = _rank(s, rtol, floor)
    return center, vh[:r].T.contiguous(), u[:, :r].contiguous(), s[:r].contiguous()


def affine_hull(points: Tensor, rtol: float = 1e-10) -> AffineHull:
    """Affine hull of the rows of ``points`` (n, d): mean, then SVD (see module doc for rank)."""
    x = check_points(points)
    rtol = _check_rtol(rtol)
    center, basis, _, s = svd_coordinates(x, rtol, centre=True)
    return AffineHull(center=center, basis=basis, singular_values=s)


def linear_span(points: Tensor, rtol: float = 1e-10) -> Tensor:
    """Orthonormal basis (d, r) of the linear span of the rows of ``points`` (no centring)."""
    x = check_points(points)
    rtol = _check_rtol(rtol)
    _, basis, _, _ = svd_coordinates(x, rtol, centre=False)
    return basis
