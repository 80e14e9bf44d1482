"""A (possibly degenerate) ellipsoid living in an affine subspace of R^d.

Convention: with center c (d,), basis B (d, r) orthonormal and hull_shape A_r (r, r) positive
definite,

    E = { x in R^d : x - c in span(B), (x - c)^T A (x - c) <= 1 },   A = B A_r B^T (d, d).

A point off the affine subspace c + span(B) is never contained. The rank r may be 0 (E is the
single point c). Quadratic forms are evaluated in hull coordinates y = B^T (x - c) with A_r,
never with the full A: for strongly anisotropic ellipsoids the full-coordinate form loses many
digits to cancellation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

__all__ = ["Ellipsoid"]


@dataclass(frozen=True)
class Ellipsoid:
    """E = {x : x - c in span(basis), (x - c)^T shape (x - c) <= 1} (see module doc).

    Fields:
      center (d,), shape A (d, d) = basis @ hull_shape @ basis.T, basis (d, r) orthonormal,
      weights (n,) design weights on the input points (sum 1; see ``mvee``), centered (True for
      an ellipsoid centred at 0 enclosing +-points), hull_shape A_r (r, r) in hull coordinates,
      john_factor: s such that c + s (E - c) lies inside conv(points) (conv(+-points) when
      centered), proved from the weights; None when unknown (reference solver).
      log_det_gap: certified upper bound on log det A*_r - log det A_r (optimum minus this
      ellipsoid, >= 0); None when unknown.
    """

    center: Tensor
    shape: Tensor
    basis: Tensor
    weights: Tensor
    centered: bool
    hull_shape: Tensor
    john_factor: float | None = None
    log_det_gap: float | None = None

    def __post_init__(self) -> None:
        d, r = self.basis.shape
        if self.center.shape != (d,) or self.shape.shape != (d, d):
            raise ValueError(
                f"center must be ({d},) and shape ({d}, {d}) to match basis {(d, r)}; "
                f"got {tuple(self.center.shape)} and {tuple(self.shape.shape)}"
            )
        if self.hull_shape.shape != (r, r):
            raise ValueError(f"hull_shape must be ({r}, {r}), got {tuple(self.hull_shape.shape)}")

    @property
    def rank(self) -> int:
        """Dimension r of the ellipsoid (of its affine hull)."""
        return int(self.basis.shape[1])

    @property
    def dim(self) -> int:
        """Ambient dimension d."""
        return int(self.basis.shape[0])

    @cached_property
    def _scale(self) -> float:
        """Length scale max(|c|, longest semi-axis), for the on-hull tolerance."""
        radius = 0.0
        if self.rank > 0:
            lam_min = float(torch.linalg.eigvalsh(self.hull_shape)[0])
            radius = math.inf if lam_min <= 0.0 else 1.0 / math.sqrt(lam_min)
        return max(float(torch.linalg.vector_norm(self.center)), radius)

    def _as_points(self, x: Tensor) -> tuple[Tensor, bool]:
        """Validate x as (d,) or (m, d); return (m, d) float64 on our device and a squeeze flag."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        single = x.dim() == 1
        xs = x.reshape(1, -1) if single else x
        if xs.dim() != 2 or xs.shape[1] != self.dim:
            raise ValueError(
                f"x must have shape ({self.dim},) or (m, {self.dim}), got {tuple(x.shape)}"
            )
        return xs.to(dtype=torch.float64, device=self.center.device), single

    def mahalanobis(self, x: Tensor) -> Tensor:
        """(x - c)^T A (x - c) for x (d,) or (m, d); the component of x - c off span(basis) is
        ignored (use :meth:`contains` for membership)."""
        xs, single = self._as_points(x)
        y = (xs - self.center) @ self.basis
        q = ((y @ self.hull_shape) * y).sum(dim=1)
        return q[0] if single else q

    def hull_residual(self, x: Tensor) -> Tensor:
        """Euclidean distance of x (d,) or (m, d) from the affine hull c + span(basis)."""
        xs, single = self._as_points(x)
        diff = xs - self.center
        res = diff - (diff @ self.basis) @ self.basis.T
        out = torch.linalg.vector_norm(res, dim=1)
        return out[0] if single else out

    def contains(self, x: Tensor, rtol: float = 1e-9) -> Tensor:
        """Bool tensor: mahalanobis(x) <= 1 + rtol and x within rtol * scale of the hull, where
        scale = max(|c|, longest semi-axis) absorbs the rounding of the projection."""
        if not (isinstance(rtol, (int, float)) and rtol >= 0 and math.isfinite(rtol)):
            raise ValueError(f"rtol must be a finite nonnegative number, got {rtol!r}")
        inside = self.mahalanobis(x) <= 1.0 + rtol
        on_hull = self.hull_residual(x) <= rtol * self._scale
        return inside & on_hull

    def log_det(self) -> float:
        """log det A_r in hull coordinates (larger means smaller volume; 0 when r = 0).

        vol(E) = vol(unit r-ball) * exp(-log_det / 2).
        """
        if self.rank == 0:
            return 0.0
        sign, logabs = torch.linalg.slogdet(self.hull_shape)
        if float(sign) <= 0.0:
            return -math.inf
        return float(logabs)

    def scaled(self, factor: float) -> Ellipsoid:
        """The ellipsoid c + sqrt(factor) (E - c), i.e. shape divided by ``factor`` (> 0).

        The certified fields are updated: john_factor / sqrt(factor), gap + r log(factor).
        """
        if not (factor > 0.0 and math.isfinite(factor)):
            raise ValueError(f"factor must be finite and positive, got {factor!r}")
        john = None if self.john_factor is None else self.john_factor / math.sqrt(factor)
        gap = None if self.log_det_gap is None else self.log_det_gap + self.rank * math.log(factor)
        return dataclasses.replace(
            self,
            shape=self.shape / factor,
            hull_shape=self.hull_shape / factor,
            john_factor=john,
            log_det_gap=gap,
        )
