"""Minimum-volume enclosing (Löwner) ellipsoid by Frank–Wolfe with away steps.

Method (Todd & Yildirim 2007; Wolfe–Atwood with drop steps; Kumar & Yildirim 2005 start):
the MVEE is the dual of the D-optimal design problem

    max_u  log det M(u),  M(u) = sum_i u_i q_i q_i^T,  u in the simplex,

with q_i the points (centred variant: the MVEE centred at 0 of +-points) or the lifted points
[x_i; 1] (Khachiyan's lifting, for the general variant). With omega_i = q_i^T M^{-1} q_i and
m = dim q, the optimality conditions are max_i omega_i = m (and omega_i = m on the support).
Each iteration moves u toward the point of largest omega (add step) or away from the support
point of smallest omega (away step, a drop step when it hits u_k = 0), with an exact line
search; M^{-1} and all omega are updated by Sherman–Morrison in O(n m + m^2) and refactorised
exactly every few hundred steps so rounding cannot accumulate.

Stopping rule (certified): max_i omega_i <= (1 + tol) m and min over the support of
omega_i >= (1 - tol) m, both evaluated on omega recomputed exactly from a fresh Cholesky
factorisation. The returned ellipsoid is then scaled by the exact maximum Mahalanobis value of
the input points, so every input satisfies ``mahalanobis <= 1`` up to float rounding.

Certificates (stated in terms of K, the largest Mahalanobis value of the inputs under the
design's own matrix, before scaling; K <= (1+tol)(r+1) - 1 resp. (1+tol) r):
  * volume: log det A*_r - log det A_r <= r log(K / r) (weak duality plus AM-GM), so at most
    (r+1) tol (general) resp. r tol (centred);
  * John: the ellipsoid shrunk about its centre by 1/K (general) resp. 1/sqrt(K) (centred)
    lies in conv(points) resp. conv(+-points); these are 1/r resp. 1/sqrt(r) at the optimum.
    Proof (general): for a direction h let t_i = h.(x_i - c) / sqrt(h^T S h), S the
    u-weighted covariance; the t_i have u-mean 0, u-second moment 1 and |t_i| <= sqrt(K), so
    (a - t_i)(t_i + sqrt(K)) >= 0 with a = max t_i gives 1 <= a sqrt(K): the support function
    of the hull is at least that of {(x-c)^T S^-1 (x-c) <= 1/K} in every direction.
    (Centred: u-second moment 1 forces max |t_i| >= 1 for {x^T M^-1 x <= 1}.)
Both are stored on the result (``log_det_gap``, ``john_factor``).

Numerics: the solver works in whitened hull coordinates (U of the centred SVD times sqrt(n)).
The iteration is affine invariant, so in exact arithmetic this changes nothing; in floating
point it removes any dependence on the scale or anisotropy of the input. The ellipsoid is
mapped back afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import torch
from scipy.linalg import blas
from torch import Tensor

from coreprune.checks import check_int
from coreprune.geometry._validate import check_points, check_positive
from coreprune.geometry.affine import svd_coordinates
from coreprune.geometry.ellipsoid import Ellipsoid

__all__ = ["mvee"]

_HULL_RTOL = 1e-10
_BATCH = 32  # deferred rank-one updates of M^{-1} per GEMM (see _State)
_BATCH_MIN_DIM = 128  # below this m the per-step overhead outweighs the saved memory traffic
_NUMPY_LOOP = True  # on CPU, do the loop's bookkeeping on numpy views (see _State)
_NUMPY_MAX_MM = 8192  # m * m up to which M^{-1} is updated by scipy's symv/syr (see _State)
_NUMPY_MAX_NR = 1 << 16  # KY rounds on numpy up to this many coordinates (n * r)
_MIN_SPREAD, _MAX_SPREAD = 1e-140, 1e140  # so that A_r ~ 1 / spread^2 stays a normal float64


@contextlib.contextmanager
def _one_torch_thread(active: bool) -> Iterator[None]:
    """Run a CPU solve on one torch thread; the caller's setting is restored on exit.

    Why: the solver is thousands of small sequential steps (BLAS-2, microseconds each), so an
    OpenMP barrier per step costs more than it saves, and on a shared machine a descheduled
    worker stalls every step. Measured on the 2-core dev box under load: a 300 x 50 mat-vec
    4.7 ms on 2 threads vs 10 us on one; a 300 x 50 SVD 70 ms vs 2 ms; the 1024 x 512 design
    loop 24 s vs 1.5 s. The price on an idle machine is the lost parallel speed-up of the one
    SVD. Not applied on GPU. (Other Python threads using torch meanwhile also see 1 thread.)
    """
    if not active:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def kumar_yildirim_support(z: Tensor, centered: bool, *, use_lu: bool = True) -> Tensor:
    """Indices of a Kumar–Yildirim initial support for points z (n, r) of full rank r.

    General variant (KY 2005): r times, take a direction b orthogonal to the differences chosen
    so far (the residual of the point sticking out most) and add the two extreme points along
    b; the differences span R^r, so the uniform lifted design is nonsingular.
    Centred variant: r times, take b orthogonal to the points chosen so far and add the point
    of largest |b . z|. Gaussian elimination with partial pivoting on z does exactly this (the
    k-th column of the Schur complement is z . b_k for a b_k vanishing on the pivot rows, and
    the pivot is its largest entry), so one blocked LU replaces r Gram–Schmidt rounds (measured
    0.014 s vs 0.25 s at 1024 x 512, same iteration counts); the greedy-residual rounds remain
    as a fallback when a pivot is tiny (or when ``use_lu`` is False).
    """
    r = z.shape[1]
    if centered and use_lu:
        lu, piv = torch.linalg.lu_factor(z)
        diag = lu.diagonal().abs()
        if float(diag.min()) > 1e-8 * float(diag.max()):
            perm = list(range(z.shape[0]))
            for i, p in enumerate(piv.tolist()):  # LAPACK's sequential row swaps (1-based)
                perm[i], perm[p - 1] = perm[p - 1], perm[i]
            return torch.tensor(sorted(perm[:r]), dtype=torch.long, device=z.device)
    y = z if centered else z - z.mean(dim=0)
    # Small problems on CPU: the same rounds on numpy views (a few microseconds per call less
    # than torch, and r rounds of ~20 calls each); otherwise torch (one thread on CPU).
    on_numpy = y.device.type == "cpu" and _NUMPY_LOOP and y.numel() <= _NUMPY_MAX_NR
    chosen = _ky_rounds(y.numpy() if on_numpy else y, centered)
    return torch.unique(torch.tensor(chosen, dtype=torch.long, device=z.device))


def _ky_rounds(y: Tensor | np.ndarray, centered: bool) -> list[int]:
    """The greedy rounds of :func:`kumar_yildirim_support` on y (n, r), numpy or torch alike.

    Rows of ``frame`` are the orthonormal chosen directions; residual norms are downdated, not
    recomputed, so a round costs two (n, r) products and no residual matrix.
    """
    r = y.shape[1]
    frame = y[:r] * 0.0  # (r, r) zeros of y's kind, dtype and device
    norms = (y * y).sum(1)
    chosen: list[int] = []
    for k in range(r):
        i = int(norms.argmax())
        fk = frame[:k]
        if centered:
            chosen.append(i)
            new = y[i]
        else:
            b = y[i] - fk.T @ (fk @ y[i])  # need not be exactly orthogonal
            proj = y @ b
            hi, lo = int(proj.argmax()), int(proj.argmin())
            chosen.extend((hi, lo))
            new = y[hi] - y[lo]
        for _ in range(2):  # Gram–Schmidt twice is orthogonal to rounding
            new = new - fk.T @ (fk @ new)
        frame[k] = new / float((new * new).sum()) ** 0.5
        norms = norms - (y @ frame[k]) ** 2
    return chosen


def _exact(q: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """M^{-1} and omega recomputed from scratch (Cholesky of M over the support)."""
    s = u > 0
    qs = q[s]
    m_mat = qs.T @ (qs * u[s, None])
    chol = torch.linalg.cholesky(m_mat)
    w = torch.linalg.solve_triangular(chol, q.T, upper=False)
    omega = (w * w).sum(dim=0)
    return torch.cholesky_inverse(chol), omega


class _State:
    """Iterate of the design solver: weights u, M^{-1} and omega.

    The mat-vecs and the rank-one updates are torch calls. On CPU the O(n) bookkeeping
    (argmax, masked argmin, scalar reads, weight updates) runs on numpy views of the same
    memory, whose per-call overhead is several times below torch's; on GPU everything stays
    torch. M^{-1} and omega are stored up to a common lazy factor ``c`` (true = c * stored), so
    the 1 / (1 - lambda) rescaling of each step costs nothing; argmax/argmin ignore it.

    For m * m < _NUMPY_MAX_MM (CPU) M^{-1} is updated through scipy's symmetric BLAS on one
    triangle (2 us per call instead of 6; these sizes stay below OpenBLAS's threading cut-off).
    For m >= _BATCH_MIN_DIM the rank-one updates of M^{-1} are deferred: stored
    M^{-1} = S - V diag(b) V^T with up to _BATCH columns in V, folded into S by one GEMM. A step
    then reads S once instead of reading and writing it (the loop is memory-bound).
    """

    def __init__(self, q: Tensor, u: Tensor) -> None:
        self.q = q
        m = q.shape[1]
        self.np_views = q.device.type == "cpu" and _NUMPY_LOOP
        self.u_t = u
        self.u = u.numpy() if self.np_views else u
        # 0 on the support, +inf off it: omega + pen gives the masked minimum in one call.
        pen = torch.where(u > 0, 0.0, math.inf)
        self.pen = pen.numpy() if self.np_views else pen
        self.small = self.np_views and m * m < _NUMPY_MAX_MM
        self.q_np = q.numpy() if self.small else None
        self.batch = _BATCH if m >= _BATCH_MIN_DIM else 0
        self.vecs = torch.empty(m, self.batch, dtype=q.dtype, device=q.device)
        self.coef = torch.empty(self.batch, dtype=q.dtype, device=q.device)
        self.refresh()

    def refresh(self) -> None:
        """Recompute M^{-1} and omega exactly from the current weights."""
        self.minv, self.omega_t = _exact(self.q, self.u_t)
        self.omega = self.omega_t.numpy() if self.np_views else self.omega_t
        if self.small:
            # Fortran order (M^{-1} is symmetric, so its transpose view will do) so that
            # dsyr updates it in place; only its upper triangle is kept current from here on.
            mn = self.minv.numpy()
            self.minv_f = mn if mn.flags.f_contiguous else mn.T
        self.pending = 0
        self.c = 1.0
        self.fresh = True
        self.since = 0

    def rank_one(self, idx: int, beta: float, scale: float) -> None:
        """M^{-1} <- scale (M^{-1} - beta v v^T) with v = M^{-1} q_idx; omega to match."""
        c = self.c
        if self.small:
            # Small m on CPU: symmetric BLAS through scipy on the upper triangle, in place
            # (below OpenBLAS's threading threshold, about a third of torch's per-call
            # overhead); the (n, m) product stays in torch (on one thread).
            a = self.minv_f
            assert self.q_np is not None  # set whenever self.small
            v_np = blas.dsymv(1.0, a, self.q_np[idx])
            qv_np = torch.mv(self.q, torch.from_numpy(v_np)).numpy()
            blas.dsyr(-beta * c, v_np, a=a, overwrite_a=True)
            self.omega -= (beta * c) * qv_np * qv_np
            self.c = c * scale
            self.fresh = False
            self.since += 1
            return
        qi = self.q[idx]
        v = torch.mv(self.minv, qi)  # stored units: the true v is c * v
        k = self.pending
        if k:
            vk = self.vecs[:, :k]
            v.sub_(torch.mv(vk, self.coef[:k] * torch.mv(vk.T, qi)))
        qv = torch.mv(self.q, v)
        if self.batch:
            self.vecs[:, k] = v
            self.coef[k] = beta * c
            self.pending = k + 1
            if self.pending == self.batch:
                self.minv.addmm_(self.vecs * self.coef, self.vecs.T, alpha=-1.0)
                self.pending = 0
        else:
            self.minv.addr_(v, v, alpha=-beta * c)  # true -beta (cv)(cv)^T, divided by c
        qv2 = qv.numpy() if self.np_views else qv
        self.omega -= (beta * c) * qv2 * qv2
        self.c = c * scale
        self.fresh = False
        self.since += 1

    def weights(self) -> Tensor:
        return self.u_t.clone()


def d_optimal_design(q: Tensor, u0: Tensor, tol: float, max_iter: int) -> tuple[Tensor, int]:
    """Frank–Wolfe with away steps for max log det sum u_i q_i q_i^T from u0 (nonsingular).

    Returns (u, iterations). Stops only when exact omega satisfy the certified rule.
    """
    m = q.shape[1]
    st = _State(q, u0.clone())
    period = max(200, 2 * m)
    upper, lower = (1.0 + tol) * m, (1.0 - tol) * m
    u, pen = st.u, st.pen
    it = 0
    while True:
        omega, c = st.omega, st.c
        j = int(omega.argmax())
        kappa = c * float(omega[j])
        om_supp = omega + pen
        k = int(om_supp.argmin())
        w_min = c * float(om_supp[k])
        if kappa <= upper and w_min >= lower:
            if st.fresh:
                return st.weights(), it
            st.refresh()
            continue
        if it >= max_iter:
            raise RuntimeError(
                f"mvee did not reach tol={tol} within max_iter={max_iter} iterations "
                f"(max omega / m = {kappa / m:.6g}); raise max_iter or tol"
            )
        it += 1
        uk = float(u[k])
        drop = False
        if kappa - m >= m - w_min or uk >= 1.0:
            idx, lam = j, (kappa - m) / (m * (kappa - 1.0)) if kappa > 1.0 else 1.0
            if lam >= 1.0:
                # Only possible for m = 1: the optimal design is the single point j.
                u *= 0.0
                u[j] = 1.0
                pen[:] = math.inf
                pen[j] = 0.0
                st.refresh()
                continue
        else:
            idx, lam_max = k, uk / (1.0 - uk)
            lam = -lam_max
            if w_min > 1.0:
                lam = max((w_min - m) / (m * (w_min - 1.0)), -lam_max)
            drop = lam == -lam_max
        if not (math.isfinite(lam) and (lam > 0.0 if idx == j else lam < 0.0)):
            st.refresh()  # drifted values gave no usable step
            continue
        mu = lam / (1.0 - lam)
        denom = 1.0 + mu * c * float(omega[idx])
        u *= 1.0 - lam
        if drop:
            u[idx] = 0.0
            pen[idx] = math.inf
        else:
            u[idx] += lam
            pen[idx] = 0.0
        if denom <= 1e-8 or st.since >= period:
            # Near-singular downdate (Sherman–Morrison would lose digits) or periodic refresh.
            st.refresh()
            continue
        st.rank_one(idx, mu / denom, 1.0 / (1.0 - lam))


def check_spread(spread: Tensor) -> None:
    """Raise ValueError unless the rms spreads along the principal directions lie in
    [_MIN_SPREAD, _MAX_SPREAD]; outside, A_r ~ 1 / spread^2 over- or underflows (or loses
    digits as subnormals)."""
    lo, hi = float(spread.min()), float(spread.max())
    if not (lo >= _MIN_SPREAD and hi <= _MAX_SPREAD):
        raise ValueError(
            f"points spread from {lo:.3g} to {hi:.3g} (rms, along principal directions); "
            f"the ellipsoid needs {_MIN_SPREAD:g} to {_MAX_SPREAD:g} so its shape matrix is a "
            "normal float64: rescale points (e.g. divide by their max norm) and the result"
        )


def point_ellipsoid(center: Tensor, n: int) -> Ellipsoid:
    """Rank-0 ellipsoid: all points coincide (up to rounding) with ``center``."""
    d = center.shape[0]
    dev = center.device
    return Ellipsoid(
        center=center,
        shape=torch.zeros(d, d, dtype=torch.float64, device=dev),
        basis=torch.zeros(d, 0, dtype=torch.float64, device=dev),
        weights=torch.full((n,), 1.0 / n, dtype=torch.float64, device=dev),
        centered=False,
        hull_shape=torch.zeros(0, 0, dtype=torch.float64, device=dev),
        john_factor=1.0,
        log_det_gap=0.0,
    )


def mvee(
    points: Tensor, tol: float = 1e-3, *, centered: bool = False, max_iter: int = 100_000
) -> Ellipsoid:
    """Löwner ellipsoid of the rows of ``points`` (n, d); see the module doc for the method.

    ``centered=False``: the minimum-volume ellipsoid enclosing the points, in their affine hull
    (weights u on the points, center = sum u_i x_i). ``centered=True``: the minimum-volume
    ellipsoid centred at 0 enclosing +-points, in their linear span (weights on the original
    points, each +- pair merged). Every input point satisfies ``mahalanobis <= 1`` (rounding
    aside); log det is within ``log_det_gap`` <= (r+1) tol of the optimum; ``john_factor``
    shrinks the result into the convex hull. The hull has rank r by the rule in
    :mod:`coreprune.geometry.affine` (rtol 1e-10); n copies of one point give the rank-0
    ellipsoid {x}. ``tol`` in (0, 1); ``max_iter`` counts Frank–Wolfe steps.

    float64 on the input's device; the input is never modified; on CPU the solve runs on one
    torch thread (see ``_one_torch_thread``). Raises RuntimeError when ``max_iter`` steps do
    not reach ``tol`` (never an uncertified answer), ValueError for all-zero points with
    ``centered=True`` and for point sets spread beyond 1e-140 .. 1e140 (rms along a principal
    direction), where A would over- or underflow float64.
    """
    x = check_points(points)
    tol = check_positive(tol, "tol")
    if tol >= 1.0:
        raise ValueError(f"tol must be < 1 (a relative tolerance), got {tol}")
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    if not isinstance(centered, bool):
        raise TypeError(f"centered must be a bool, got {type(centered).__name__}")
    with _one_torch_thread(x.device.type == "cpu"):
        return _solve(x, tol, centered, max_iter)


def _solve(x: Tensor, tol: float, centered: bool, max_iter: int) -> Ellipsoid:
    """mvee on validated float64 input."""
    n = x.shape[0]
    center, basis, uvec, s = svd_coordinates(x, _HULL_RTOL, centre=not centered)
    r = basis.shape[1]
    if r == 0:
        if centered:
            raise ValueError("points are all zero: a centred ellipsoid needs a nonzero point")
        return point_ellipsoid(center, n)
    z = uvec * math.sqrt(n)  # whitened hull coordinates: z^T z / n = I
    q = z if centered else torch.cat([z, torch.ones(n, 1, dtype=z.dtype, device=z.device)], 1)
    supp = kumar_yildirim_support(z, centered)
    u0 = torch.zeros(n, dtype=torch.float64, device=x.device)
    u0[supp] = 1.0 / supp.numel()
    u, _ = d_optimal_design(q, u0, tol, max_iter)
    return _ellipsoid_from_design(x, z, u, center, basis, s, centered)


def _ellipsoid_from_design(
    x: Tensor,
    z: Tensor,
    u: Tensor,
    center: Tensor,
    basis: Tensor,
    s: Tensor,
    centered: bool,
) -> Ellipsoid:
    """Build the enclosing ellipsoid of design ``u``, scaled by the exact max Mahalanobis."""
    n, r = z.shape
    if centered:
        cz = torch.zeros(r, dtype=z.dtype, device=z.device)
        zc = z
    else:
        cz = u @ z
        zc = z - cz
    sup = u > 0
    cov = zc[sup].T @ (zc[sup] * u[sup, None])
    chol = torch.linalg.cholesky(cov)
    w = torch.linalg.solve_triangular(chol, zc.T, upper=False)
    # big_k >= r exactly (the u-weighted mean of the squared norms is r); a value a few ulps
    # below r is rounding, and rounding it up only shrinks the John ellipsoid (conservative).
    big_k = max(float((w * w).sum(dim=0).max()), float(r))
    # Map back from whitened coordinates: y = z * (s / sqrt(n)).
    dscale = s / math.sqrt(n)
    check_spread(dscale)
    a_z = torch.cholesky_inverse(chol) / big_k
    hull_shape = (a_z / dscale[:, None]) / dscale[None, :]  # two steps: no overflow of s_i s_j
    hull_shape = 0.5 * (hull_shape + hull_shape.T)
    cy = cz * dscale
    full_center = center + basis @ cy
    shape = basis @ hull_shape @ basis.T
    john = 1.0 / math.sqrt(big_k) if centered else 1.0 / big_k
    ell = Ellipsoid(
        center=full_center,
        shape=shape,
        basis=basis,
        weights=u,
        centered=centered,
        hull_shape=hull_shape,
        john_factor=john,
        log_det_gap=r * math.log(big_k / r),
    )
    # Exact max over the inputs, with the same arithmetic as Ellipsoid.mahalanobis, so the
    # containment holds as the caller will check it. big_k * kappa >= r in exact arithmetic
    # (the u-weighted mean of the Mahalanobis values is r), so the gap is clipped only for
    # rounding noise.
    kappa = float(ell.mahalanobis(x).max())
    out = ell.scaled(kappa)
    return dataclasses.replace(out, log_det_gap=max(0.0, r * math.log(big_k * kappa / r)))
