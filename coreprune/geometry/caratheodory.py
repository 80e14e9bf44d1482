"""Carathéodory's theorem: replace a weighted point set by at most r+1 of its points.

The coreset construction expresses points of the (shrunk) Löwner ellipsoid as convex
combinations of input points; Carathéodory guarantees that r+1 points suffice, where r is the
dimension of the points' affine hull. This module finds such a combination fast and exactly.

Why it is fast: the classic reduction drops one point per null-space step, n - r - 1 steps in
all. The "booster" of Maalouf, Jubran & Feldman (NeurIPS 2019) instead splits the points into
k = 2(d+1) chunks, reduces the k chunk means (a small problem) and keeps only the points of the
surviving chunks, rescaled; every round at least halves the point count, so the work is
O(n d) plus O(log n) small reductions. A small reduction takes one pivoted QR for a basis of
the affine dependencies and then drops points by Gaussian elimination on that basis.

Why it is exact: the work is done in float64 on points centred at their weighted mean and
scaled to unit radius. The weights on the final support are polished (one least-squares
refinement step, or non-negative least squares) and the answer is verified on the caller's
points. If it fails, the reduction is redone with the strictest rank threshold; if that fails
too, a RuntimeError is raised: an inexact answer is never returned.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import qr, solve_triangular
from scipy.optimize import nnls
from torch import Tensor

from coreprune.geometry._validate import check_points, check_positive, check_weights

__all__ = ["caratheodory", "caratheodory_error"]

_EPS = float(np.finfo(np.float64).eps)
# Rank threshold, relative, as a fraction of the caller's tol: directions this thin are treated
# as flat, which costs at most about this much accuracy, well inside tol.
_RANK_FRACTION_OF_TOL = 1e-2


# --------------------------------------------------------------------------- validation
def _check_inputs(points: object, weights: object, tol: object) -> tuple[Tensor, Tensor, float]:
    """Shared geometry checks, plus what they leave to us: same device, finite total."""
    pts = check_points(points).detach()
    w = check_weights(weights, pts.shape[0]).detach()
    if w.device != pts.device:
        raise ValueError(
            f"weights are on {w.device} but points are on {pts.device}; "
            "move both to the same device"
        )
    if not math.isfinite(float(w.sum())):
        raise ValueError("the sum of weights overflows float64; rescale the weights")
    return pts, w, check_positive(tol, "tol")


# --------------------------------------------------------------------------- core (numpy)
def _affine_null_space(y: np.ndarray, rtol: float) -> np.ndarray:
    """Basis (m, q) of the affine dependencies {v : y^T v = 0, sum(v) = 0} of the m points.

    A column-pivoted QR of A = [y^T; 1] picks well-conditioned basis points and reveals the
    rank: |R_kk| <= max(rtol, max(shape) * eps) * |R_00| counts as zero. With
    A P = Q [R11 R12], the columns of P [-R11^{-1} R12; I] span A's null space (each writes one
    non-basis point as an affine combination of basis points). Q is never formed, which is
    about twice as cheap as an orthonormal basis and several times cheaper than a full SVD.
    """
    m, d = y.shape
    a = np.empty((d + 1, m))
    a[:d] = y.T
    a[d] = 1.0
    r, perm = qr(a, pivoting=True, mode="r", check_finite=False)
    diag = np.abs(np.diag(r))
    thresh = max(rtol, max(a.shape) * _EPS) * diag[0]
    rank = int(np.count_nonzero(diag > thresh))
    null = np.zeros((m, m - rank))
    null[perm[:rank]] = -solve_triangular(r[:rank, :rank], r[:rank, rank:], check_finite=False)
    null[perm[rank:], np.arange(m - rank)] = 1.0
    return null


def _reduce(y: np.ndarray, lam: np.ndarray, rtol: float) -> np.ndarray:
    """Classic Carathéodory reduction: new lam >= 0 with at most rank+1 nonzeros.

    Each null vector v moves weight along a direction that keeps the mean and total fixed, by
    the largest step keeping lam >= 0, which zeroes one point (the pivot). Later null vectors
    are first made zero at all earlier pivots, so no step revives a dropped point. That
    elimination is left-looking (a triangular solve and a matrix-vector product per step), not
    rank-1 updates of all remaining vectors, which moves far less memory.
    """
    lam = lam.copy()
    null = _affine_null_space(y, rtol)
    m, q = null.shape
    used = np.empty((m, q))  # the null vectors actually applied, zero at earlier pivots
    tri = np.zeros((q, q))  # tri[k, l] = used[pivot_k, l]: lower triangular
    pivots = np.empty(q, dtype=np.int64)
    for j in range(q):
        v = null[:, j].copy()
        if j:
            prev = pivots[:j]
            coef = solve_triangular(tri[:j, :j], v[prev], lower=True, check_finite=False)
            v -= used[:, :j] @ coef
            v[prev] = 0.0
        v /= np.linalg.norm(v)
        pos = v > 0.0
        if not pos.any():
            v = -v
            pos = v > 0.0
        ratios = np.full(m, np.inf)
        ratios[pos] = lam[pos] / v[pos]
        i = int(np.argmin(ratios))
        lam -= ratios[i] * v
        lam[i] = 0.0
        # Ties in the ratio test leave a few-ulp negative weight; it is a zero in exact
        # arithmetic, and a zero weight is dropped by a later step (with step 0) or at the end.
        np.maximum(lam, 0.0, out=lam)
        used[:, j] = v
        pivots[j] = i
        tri[j, : j + 1] = used[i, : j + 1]
    return lam


def _boosted_reduce(
    y: np.ndarray, lam: np.ndarray, chunks: int, rtol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Booster: reduce chunk means, keep surviving chunks, repeat; return (support, weights)."""
    idx = np.arange(y.shape[0])
    lam = lam.copy()
    while idx.size > chunks:
        ys, ls = y[idx], lam[idx]
        bounds = np.linspace(0, idx.size, chunks + 1).round().astype(np.int64)
        sizes = np.diff(bounds)
        cw = np.add.reduceat(ls, bounds[:-1])
        cmean = np.add.reduceat(ls[:, None] * ys, bounds[:-1], axis=0) / cw[:, None]
        new_cw = _reduce(cmean, cw, rtol)
        lam[idx] = ls * np.repeat(new_cw / cw, sizes)
        idx = idx[np.repeat(new_cw > 0.0, sizes)]
    sub = _reduce(y[idx], lam[idx], rtol)
    keep = sub > 0.0
    return idx[keep], sub[keep]


def _residual(y: np.ndarray, lam: np.ndarray, aim: np.ndarray) -> float:
    """Residual of sum(lam * y) = aim, sum(lam) = 1."""
    return math.hypot(float(np.linalg.norm(lam @ y - aim)), float(lam.sum()) - 1.0)


def _polish(y: np.ndarray, lam: np.ndarray, aim: np.ndarray) -> np.ndarray:
    """Re-solve the weights on a fixed support: refinement step, else NNLS; keep the best."""
    a = np.vstack([y.T, np.ones((1, y.shape[0]))])
    b = np.append(aim, 1.0)
    best, best_res = lam, _residual(y, lam, aim)
    refined = lam + np.linalg.lstsq(a, b - a @ lam, rcond=None)[0]
    if bool((refined >= 0.0).all()) and _residual(y, refined, aim) < best_res:
        best, best_res = refined, _residual(y, refined, aim)
    if best_res > 100 * _EPS:
        fitted = nnls(a, b)[0]
        if _residual(y, fitted, aim) < best_res:
            best = fitted
    return best


def _pow2_scaled(a: np.ndarray, like: float) -> np.ndarray:
    """a * 2^-k with 2^k the binary order of ``like``: exact, and keeps every sum finite."""
    return np.ldexp(a, -math.frexp(like)[1])


def _relative_errors(
    x: np.ndarray, w: np.ndarray, idx: np.ndarray, nw: np.ndarray
) -> tuple[float, float]:
    """(mean, total) relative errors, computed on exactly power-of-two-rescaled copies.

    The rescaling changes no ratio but keeps norms and sums of points near 1e300 or weights
    near 1e308 finite, so the check can never pass by overflowing to inf.
    """
    xs = _pow2_scaled(x, float(np.abs(x).max()))
    scale = max(float(w.max()), float(nw.max()) if nw.size else 0.0)
    ws, nws = _pow2_scaled(w, scale), _pow2_scaled(nw, scale)
    total = float(ws.sum())
    radius = float(np.linalg.norm(xs[w > 0.0], axis=1).max())
    if radius == 0.0:
        mean_err = 0.0
    else:
        mean_err = float(np.linalg.norm(nws @ xs[idx] - ws @ xs)) / (total * radius)
    return mean_err, abs(float(nws.sum()) - total) / total


def _solve(x: np.ndarray, ws: np.ndarray, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """Reduce the positive-weight points x (|x| < 1) to (local indices, weights)."""
    m, d = x.shape
    total = float(ws.sum())
    if m == 1:
        return np.arange(1), ws.copy()
    lam0 = ws / total
    # Weights below ~1e-308 of the total underflow to 0 here; their share of the sum is far
    # below any tolerance, so they sit out the reduction (the verification still counts them).
    live = np.flatnonzero(lam0 > 0.0)
    lam0, xl = lam0[live], x[live]
    centred = xl - lam0 @ xl
    spread = float(np.linalg.norm(centred, axis=1).max())
    # Below this spread the points differ only by the rounding of the centring step (the same
    # floor as coreprune.geometry.affine), so they are one point.
    if spread <= 8.0 * _EPS * math.sqrt(m * d) * float(np.abs(xl).max()):
        return live[:1], np.array([total])
    y = centred / spread
    aim = lam0 @ y  # zero up to rounding; aiming at it exactly keeps the sum exact
    local, lam = _boosted_reduce(y, lam0, 2 * (d + 1), rtol)
    if local.size == m:  # already affinely independent: return the input unchanged
        return np.arange(m), ws.copy()
    lam = _polish(y[local], lam, aim)
    keep = lam > 0.0
    return live[local[keep]], total * lam[keep]


# --------------------------------------------------------------------------- public API
def caratheodory_error(
    points: Tensor, weights: Tensor, indices: Tensor, new_weights: Tensor
) -> tuple[float, float]:
    """Relative errors (mean, total) of a reduced combination, as caratheodory() defines them.

    mean error  = ||sum_j new_w_j p_{idx_j} - sum_i w_i p_i||_2 / (W * R)
    total error = |sum_j new_w_j - W| / W
    with W = sum_i w_i and R = max ||p_i||_2 over points with w_i > 0 (the error is 0 when
    R = 0). These are the scales at which float64 can represent the weighted sum at all.
    Inputs are validated like caratheodory()'s; ``indices`` must index ``points``.
    """
    pts, w, _ = _check_inputs(points, weights, 1.0)
    idx = torch.as_tensor(indices).detach().cpu().numpy()
    nw = torch.as_tensor(new_weights).detach().to(torch.float64).cpu().numpy()
    if idx.shape != nw.shape or idx.ndim != 1:
        raise ValueError(
            f"indices {idx.shape} and new_weights {nw.shape} must be 1-D of the same length"
        )
    return _relative_errors(pts.cpu().numpy(), w.cpu().numpy(), idx, nw)


def caratheodory(points: Tensor, weights: Tensor, *, tol: float = 1e-9) -> tuple[Tensor, Tensor]:
    """Pick at most r+1 of the points, reweighted, with the same weighted sum and total weight.

    Args:
        points: (n, d) real tensor; cast to float64. Not modified.
        weights: (n,) nonnegative, finite, not all zero, with a finite sum; need not sum to 1.
            Points with zero weight are dropped. Not modified.
        tol: verified bound on both relative errors of :func:`caratheodory_error`:
            ||sum_j new_w_j p_{idx_j} - sum_i w_i p_i|| <= tol * W * R and
            |sum_j new_w_j - W| <= tol * W, with W = sum(w) and R = max ||p_i|| over w_i > 0.
            So coordinates far smaller than R are matched to tol * R, not to their own scale.

    Returns:
        ``(indices, new_weights)``: sorted, distinct int64 indices into ``points`` and positive
        float64 weights, both on the points' device, at most r+1 <= d+1 of them. r is the
        numerical dimension of the affine hull of the positive-weight points at the accuracy
        asked for: directions thinner than about tol/100 relative to the points' spread count
        as flat (the rank of [P - mu; 1], P centred at its weighted mean mu and scaled to unit
        radius, by a pivoted QR with relative threshold max(tol/100, max(shape) * eps64)).
        Points whose spread is within the rounding floor of :mod:`coreprune.geometry.affine`
        count as one point. If the positive-weight points are already affinely independent
        they are returned with their original weights, unchanged. No autograd history.

    Raises:
        TypeError / ValueError: for malformed input (see the message for the fix).
        RuntimeError: if the answer cannot be verified to ``tol`` (it is never returned
            inexact), e.g. when ``tol`` is below float64 accuracy for these points.
    """
    pts, w, tol = _check_inputs(points, weights, tol)
    w_np = w.cpu().numpy()
    x_all = pts.cpu().numpy()
    support = np.flatnonzero(w_np > 0.0)
    x = _pow2_scaled(x_all[support], float(np.abs(x_all[support]).max()))  # exact, |x| < 1
    errors = (math.inf, math.inf)
    # First at the rank threshold tol allows; if that cannot be verified, at the strictest.
    for rtol in (_RANK_FRACTION_OF_TOL * tol, 0.0):
        local, new_w = _solve(x, w_np[support], rtol)
        chosen = support[local]
        errors = _relative_errors(x_all, w_np, chosen, new_w)
        if max(errors) <= tol:
            indices = torch.as_tensor(chosen, dtype=torch.int64).to(pts.device)
            return indices, torch.as_tensor(new_w, dtype=torch.float64).to(pts.device)
    raise RuntimeError(
        f"caratheodory could not verify its answer: relative mean error {errors[0]:.3g}, "
        f"relative total error {errors[1]:.3g}, tol {tol:.3g}; the points may be too "
        "ill-conditioned for float64 at this tol (try a larger tol)"
    )
