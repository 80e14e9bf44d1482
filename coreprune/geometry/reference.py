"""Reference Löwner ellipsoid through cvxpy, for testing and benchmarking ``mvee``.

Formulation, in the same whitened hull coordinates z as ``mvee`` (so both solve the same
problem and the conditioning is good): E_z = {z : ||P z + b|| <= 1} with P symmetric positive
definite,

    maximise log det P  subject to  ||P z_i + b|| <= 1 for every i   (b = 0 when centred).

Then A_z = P^2 and c_z = -P^{-1} b, mapped back to hull and full coordinates exactly as in
``mvee``. Weights are the multipliers of the n norm constraints, clipped at 0 and normalised to
sum 1 (best effort: interior-point duals are accurate to the solver tolerance, not exact); if the
solver returns no usable duals the weights are uniform. ``john_factor`` and ``log_det_gap`` are
None: no certificate is claimed for a solver-tolerance solution, and points may stick out of it
by about the solver tolerance.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import Tensor

from coreprune.geometry._validate import check_points
from coreprune.geometry.affine import svd_coordinates
from coreprune.geometry.ellipsoid import Ellipsoid
from coreprune.geometry.mvee import check_spread, point_ellipsoid

__all__ = ["mvee_reference"]

_HULL_RTOL = 1e-10


def mvee_reference(
    points: Tensor, *, centered: bool = False, solver: str | None = None
) -> Ellipsoid:
    """MVEE of the rows of ``points`` by cvxpy (``cp.log_det``); see the module doc.

    ``solver`` is passed to ``Problem.solve`` (default: cvxpy's choice; with cvxpy 1.9 that is
    SCS, first order, whose answers let points stick out by ~1e-6 in Mahalanobis terms;
    CLARABEL is more accurate but took over 15 minutes at n=300, d=50 here). Raises
    RuntimeError when the solver does not report an optimal solution.
    """
    import cvxpy as cp  # lazy: cvxpy is heavy and only needed for reference checks

    x = check_points(points)
    if not isinstance(centered, bool):
        raise TypeError(f"centered must be a bool, got {type(centered).__name__}")
    n = x.shape[0]
    center, basis, uvec, s = svd_coordinates(x, _HULL_RTOL, centre=not centered)
    r = basis.shape[1]
    dev = x.device
    if r == 0:
        if centered:
            raise ValueError("points are all zero: a centred ellipsoid needs a nonzero point")
        return dataclasses.replace(point_ellipsoid(center, n), john_factor=None, log_det_gap=None)
    dscale = s / math.sqrt(n)
    check_spread(dscale)
    z = (uvec * math.sqrt(n)).cpu().numpy()
    p_var = cp.Variable((r, r), symmetric=True)
    if centered:
        b_var = None
        expr = z @ p_var
    else:
        b_var = cp.Variable(r)
        expr = z @ p_var + np.ones((n, 1)) @ cp.reshape(b_var, (1, r), order="C")
    cons = [cp.norm(expr, 2, axis=1) <= 1]
    prob = cp.Problem(cp.Maximize(cp.log_det(p_var)), cons)
    prob.solve(solver=solver)
    if prob.status not in ("optimal", "optimal_inaccurate") or p_var.value is None:
        raise RuntimeError(f"cvxpy did not solve the MVEE problem (status {prob.status!r})")
    p_mat = 0.5 * (p_var.value + p_var.value.T)
    a_z = p_mat @ p_mat
    c_z = np.zeros(r)
    if b_var is not None:
        offset = b_var.value
        if offset is None:
            raise RuntimeError("cvxpy returned no value for the ellipsoid's offset")
        c_z = -np.linalg.solve(p_mat, np.asarray(offset, dtype=np.float64))
    duals = cons[0].dual_value
    weights = np.full(n, 1.0 / n)
    if duals is not None:
        w = np.clip(np.asarray(duals, dtype=np.float64).reshape(-1), 0.0, None)
        if w.shape == (n,) and np.isfinite(w).all() and w.sum() > 0:
            weights = w / w.sum()
    a_z_t = torch.as_tensor(a_z, dtype=torch.float64, device=dev)
    hull_shape = (a_z_t / dscale[:, None]) / dscale[None, :]
    hull_shape = 0.5 * (hull_shape + hull_shape.T)
    cy = torch.as_tensor(c_z, dtype=torch.float64, device=dev) * dscale
    return Ellipsoid(
        center=center + basis @ cy,
        shape=basis @ hull_shape @ basis.T,
        basis=basis,
        weights=torch.as_tensor(weights, dtype=torch.float64, device=dev),
        centered=centered,
        hull_shape=hull_shape,
    )
