"""Input checks shared by the geometry functions.

Every public geometry function takes torch tensors and computes in float64 on the input's
device. These helpers reject bad input early with a message naming the argument and the fix,
and return detached float64 tensors (a view when the input already is float64: read-only by
convention, no geometry function writes into its input).
"""

from __future__ import annotations

import torch
from torch import Tensor

from coreprune.checks import check_float

__all__ = ["check_points", "check_positive", "check_weights"]


def _require_tensor(value: object, name: str) -> Tensor:
    """Raise TypeError unless ``value`` is a torch tensor; numpy/lists are refused on purpose
    so the caller chooses the device and dtype explicitly."""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(value).__name__}; "
            f"wrap it with torch.as_tensor(...)"
        )
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must be a real floating or integer tensor, got {value.dtype}")
    if value.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (it has no values); materialise it first")
    return value


def check_points(points: object, name: str = "points") -> Tensor:
    """Validate an (n, d) point set and return it as float64 (same device).

    Raises TypeError for non-tensors, ValueError for wrong rank, empty or non-finite input.
    The result is detached; a float64 input comes back as a view of the caller's memory (other
    dtypes as a converted copy), so callers must not write into it, and none here does.
    """
    p = _require_tensor(points, name)
    if p.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (n, d), got shape {tuple(p.shape)}; "
            f"use x.reshape(1, -1) for a single point"
        )
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(p.shape)}")
    p = p.detach().to(torch.float64)  # geometry is not differentiable; never track grads
    if not bool(torch.isfinite(p).all()):
        raise ValueError(f"{name} contains NaN or Inf; remove or replace those entries")
    return p


def check_weights(weights: object, n: int, name: str = "weights") -> Tensor:
    """Validate a length-``n`` weight vector (finite, nonnegative, positive sum); float64 out."""
    w = _require_tensor(weights, name)
    if w.dim() != 1:
        raise ValueError(f"{name} must be 1-D with shape ({n},), got shape {tuple(w.shape)}")
    if w.shape[0] != n:
        raise ValueError(f"{name} must have length {n} (one per point), got {w.shape[0]}")
    w = w.detach().to(torch.float64)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    if bool((w < 0).any()):
        raise ValueError(f"{name} must be nonnegative, got min {float(w.min())}")
    if not float(w.sum()) > 0.0:
        raise ValueError(f"{name} must have a positive sum, got {float(w.sum())}")
    return w


def check_positive(value: object, name: str) -> float:
    """A finite, strictly positive real scalar (tolerances): `coreprune.checks.check_float`'s
    rules, the one check of real-number arguments."""
    return check_float(value, name, low=0.0, low_open=True)
