"""Tests for the Löwner ellipsoid solver (mvee), its cvxpy reference and the Ellipsoid type."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from coreprune.geometry.ellipsoid import Ellipsoid
from coreprune.geometry.mvee import mvee
from coreprune.geometry.reference import mvee_reference

# The package re-exports the function ``mvee``, which shadows the submodule attribute.
mvee_mod = importlib.import_module("coreprune.geometry.mvee")

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _point_set(seed: int, n: int, d: int, rank: int, log_scale: float, dup: int) -> torch.Tensor:
    """n points in R^d on a random affine subspace of dimension ``rank``, scaled by
    10**log_scale, shifted away from the origin, each repeated ``dup`` times."""
    g = _gen(seed)
    coeff = torch.randn(n, rank, dtype=F64, generator=g)
    frame = torch.randn(rank, d, dtype=F64, generator=g)
    shift = 3.0 * torch.randn(1, d, dtype=F64, generator=g)
    x = (coeff @ frame + shift) * 10.0**log_scale
    return x.repeat(dup, 1)


def _in_hull_lp(vertices: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target, whether it is a convex combination of the vertex rows (HiGHS LP)."""
    n = vertices.shape[0]
    a_eq = np.vstack([vertices.T, np.ones((1, n))])
    out = []
    for t in targets:
        res = linprog(
            np.zeros(n),
            A_eq=a_eq,
            b_eq=np.append(t, 1.0),
            bounds=(0, None),
            method="highs",
        )
        out.append(res.status == 0)
    return np.array(out)


def _boundary(ell: Ellipsoid, k: int, seed: int) -> torch.Tensor:
    """k points on the boundary of ``ell`` (plus its axis end points), in full coordinates."""
    r = ell.rank
    cov = torch.linalg.inv(ell.hull_shape)  # E = {c + B y : y^T A_r y <= 1} = {c + B L w}
    chol = torch.linalg.cholesky(0.5 * (cov + cov.T))
    w = torch.randn(k, r, dtype=F64, generator=_gen(seed))
    w = torch.cat([w, torch.eye(r, dtype=F64), -torch.eye(r, dtype=F64)])
    w = w / torch.linalg.vector_norm(w, dim=1, keepdim=True)
    return ell.center + (w @ chol.T) @ ell.basis.T


def _exact_omega(q: np.ndarray, u: np.ndarray) -> np.ndarray:
    m_mat = (q * u[:, None]).T @ q
    return np.einsum("ij,ij->i", q @ np.linalg.inv(m_mat), q)


# --------------------------------------------------------------------------------------------
# Every input point is inside every returned ellipsoid.


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 30),
    d=st.integers(1, 6),
    rank_frac=st.floats(0.0, 1.0),
    log_scale=st.sampled_from([-12.0, -3.0, 0.0, 0.5, 4.0, 12.0]),
    dup=st.integers(1, 3),
    centered=st.booleans(),
    tol=st.sampled_from([1e-1, 1e-3, 1e-6]),
)
def test_every_point_inside(
    seed: int,
    n: int,
    d: int,
    rank_frac: float,
    log_scale: float,
    dup: int,
    centered: bool,
    tol: float,
) -> None:
    rank = max(1, round(rank_frac * d))
    x = _point_set(seed, n, d, rank, log_scale, dup)
    ell = mvee(x, tol, centered=centered)
    pts = torch.cat([x, -x]) if centered else x
    assert float(ell.mahalanobis(pts).max()) <= 1.0 + 1e-9
    assert bool(ell.contains(pts).all())
    # Weights: one per input point, a probability vector.
    assert ell.weights.shape == (x.shape[0],)
    assert float(ell.weights.min()) >= 0.0
    assert abs(float(ell.weights.sum()) - 1.0) < 1e-9
    # generic points on a shifted rank-dimensional affine subspace
    assert ell.rank == (min(rank + 1, n, d) if centered else min(rank, n - 1))
    if not centered:
        # The centre is the weighted mean of the points (projected onto the hull).
        mean = ell.weights @ x
        scale = float(x.abs().max())
        assert float((ell.center - mean).abs().max()) <= 1e-9 * scale
    else:
        assert float(ell.center.abs().max()) == 0.0


def test_certified_stopping_rule_holds_on_exact_recomputation() -> None:
    """The returned weights satisfy max omega <= (1+tol) m and min_support omega >= (1-tol) m
    when omega is recomputed here independently (no drifting updates)."""
    g = _gen(3)
    skewed = torch.randn(200, 12, dtype=F64, generator=g) ** 3
    gauss = torch.randn(400, 8, dtype=F64, generator=g)  # ~1000 steps: periodic refreshes
    for x, centered, tol in [
        (skewed, False, 1e-3),
        (skewed, True, 1e-3),
        (gauss, False, 1e-6),
        (gauss, True, 1e-6),
    ]:
        ell = mvee(x, tol, centered=centered)
        y = ((x - (0 if centered else x.mean(0))) @ ell.basis).numpy()
        q = y if centered else np.hstack([y, np.ones((len(y), 1))])
        u = ell.weights.numpy()
        om = _exact_omega(q, u)
        m = q.shape[1]
        assert om.max() <= (1 + tol) * m * (1 + 1e-9)
        assert om[u > 0].min() >= (1 - tol) * m * (1 - 1e-9)
        # and the stated certificates follow from the weights
        big_k = om.max() - (0 if centered else 1)
        r = ell.rank
        assert ell.log_det_gap == pytest.approx(r * math.log(big_k / r), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("batch", [0, 3])
def test_deferred_updates_are_certified(monkeypatch: pytest.MonkeyPatch, batch: int) -> None:
    """Deferred (batched) rank-one updates of M^{-1}, forced on at small m with tiny batches
    so many flushes and refreshes happen, still give certified, matching answers."""
    x = torch.randn(300, 6, dtype=F64, generator=_gen(12))
    plain = mvee(x, 1e-6)
    monkeypatch.setattr(mvee_mod, "_NUMPY_MAX_MM", 0)  # skip the small-m scipy path
    monkeypatch.setattr(mvee_mod, "_BATCH_MIN_DIM", 1)
    monkeypatch.setattr(mvee_mod, "_BATCH", batch)  # 0: plain torch rank-one updates
    ell = mvee(x, 1e-6)
    assert bool(ell.contains(x).all())
    y = ((x - x.mean(0)) @ ell.basis).numpy()
    q = np.hstack([y, np.ones((len(y), 1))])
    u = ell.weights.numpy()
    om = _exact_omega(q, u)
    assert om.max() <= (1 + 1e-6) * 7 * (1 + 1e-9)
    assert om[u > 0].min() >= (1 - 1e-6) * 7 * (1 - 1e-9)
    assert abs(ell.log_det() - plain.log_det()) <= ell.log_det_gap + plain.log_det_gap + 1e-9


@pytest.mark.parametrize(("centered", "use_lu"), [(False, True), (True, True), (True, False)])
def test_kumar_yildirim_support_is_nonsingular(centered: bool, use_lu: bool) -> None:
    z = torch.randn(80, 7, dtype=F64, generator=_gen(21)) ** 3
    supp = mvee_mod.kumar_yildirim_support(z, centered, use_lu=use_lu)
    assert len(set(supp.tolist())) == supp.numel()
    assert (7 if centered else 8) <= supp.numel() <= (7 if centered else 14)
    q = z if centered else torch.cat([z, torch.ones(80, 1, dtype=F64)], dim=1)
    assert int(torch.linalg.matrix_rank(q[supp])) == q.shape[1]


def test_torch_loop_matches_numpy_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The device-generic torch path (used on GPU) is certified too and agrees in log det."""
    x = torch.randn(120, 8, dtype=F64, generator=_gen(5))
    for centered in (False, True):
        a = mvee(x, 1e-4, centered=centered)
        monkeypatch.setattr(mvee_mod, "_NUMPY_LOOP", False)
        b = mvee(x, 1e-4, centered=centered)
        monkeypatch.setattr(mvee_mod, "_NUMPY_LOOP", True)
        pts = torch.cat([x, -x]) if centered else x
        assert bool(b.contains(pts).all())
        assert abs(a.log_det() - b.log_det()) <= max(a.log_det_gap, b.log_det_gap) + 1e-9


# --------------------------------------------------------------------------------------------
# Agreement with cvxpy and with closed forms.


@pytest.mark.parametrize(
    ("seed", "n", "d", "centered", "skew"),
    [
        (0, 40, 6, False, False),
        (1, 40, 6, True, False),
        (2, 25, 4, False, True),
        (3, 25, 4, True, True),
        (4, 7, 6, False, False),  # n <= r + 1: a simplex
        (5, 12, 3, True, False),
    ],
)
def test_log_det_matches_cvxpy(seed: int, n: int, d: int, centered: bool, skew: bool) -> None:
    """ld_ref - ld_ours lies in [-slack, log_det_gap + slack] (the certificate), and the mean
    semi-axis agrees within 1%: |ld_ours - ld_ref| <= 2 r log(1.01). Comparing volumes per
    dimension, not |log det|, keeps the criterion meaningful when log det is near 0."""
    x = torch.randn(n, d, dtype=F64, generator=_gen(seed))
    if skew:
        x = torch.exp(x) * torch.tensor([1.0, 10.0, 0.1, 3.0], dtype=F64)[:d]
    ours = mvee(x, 1e-3, centered=centered)
    ref = mvee_reference(x, centered=centered)
    r = ours.rank
    assert ref.rank == r
    diff = ref.log_det() - ours.log_det()
    # cvxpy's answer is accurate to its solver tolerance: points may stick out of it by a
    # factor kappa_ref, which is worth up to r log(kappa_ref) of log det.
    pts = torch.cat([x, -x]) if centered else x
    kappa_ref = float(ref.mahalanobis(pts).max())
    slack = 1e-6 * r + r * math.log(max(kappa_ref, 1.0))
    assert -slack <= diff <= ours.log_det_gap + slack
    assert abs(diff) <= 2 * r * math.log(1.01)
    assert ours.log_det_gap <= (r + 1) * 1e-3 * (1 + 1e-9)
    # the reference weights are a probability vector too
    assert abs(float(ref.weights.sum()) - 1.0) < 1e-9


def test_square_and_cross_polytope_closed_forms() -> None:
    square = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=F64)
    ell = mvee(square + 5.0, 1e-8)  # circle of radius sqrt(2) about (5, 5)
    assert torch.allclose(ell.center, torch.full((2,), 5.0, dtype=F64), atol=1e-9)
    assert torch.allclose(ell.shape, 0.5 * torch.eye(2, dtype=F64), atol=1e-7)
    assert torch.allclose(ell.weights, torch.full((4,), 0.25, dtype=F64), atol=1e-7)
    cross = torch.eye(5, dtype=F64)  # +-e_i: the unit ball
    ball = mvee(cross, 1e-8, centered=True)
    assert torch.allclose(ball.shape, torch.eye(5, dtype=F64), atol=1e-7)
    assert ball.log_det() == pytest.approx(0.0, abs=1e-6)


def test_collinear_points_give_the_segment() -> None:
    t = torch.tensor([0.0, 0.3, 1.0, 2.5, 4.0], dtype=F64)
    direction = torch.tensor([1.0, -2.0, 2.0], dtype=F64) / 3.0
    x = torch.tensor([1.0, 1.0, 1.0], dtype=F64) + t[:, None] * direction
    ell = mvee(x, 1e-9)
    assert ell.rank == 1
    assert torch.allclose(ell.center, x[0] + 2.0 * direction, atol=1e-9)
    # semi-axis 2: A_r = 1/4
    assert float(ell.hull_shape[0, 0]) == pytest.approx(0.25, rel=1e-7)
    assert bool(ell.contains(x).all())
    assert not bool(ell.contains(x[0] - 0.01 * direction))
    assert not bool(ell.contains(x[2] + 1e-3 * torch.tensor([2.0, 2.0, 1.0], dtype=F64) / 3))


def test_simplex_weights_are_uniform() -> None:
    x = torch.randn(5, 4, dtype=F64, generator=_gen(11))  # 5 affinely independent points
    ell = mvee(x, 1e-7)
    assert ell.rank == 4
    assert torch.allclose(ell.weights, torch.full((5,), 0.2, dtype=F64), atol=1e-6)
    assert torch.allclose(ell.center, x.mean(0), atol=1e-9)


def test_scaling_is_equivariant() -> None:
    x = torch.randn(60, 5, dtype=F64, generator=_gen(2))
    base = mvee(x, 1e-4)
    for s in (1e-100, 1e100):
        ell = mvee(x * s, 1e-4)
        expected = base.log_det() - 2 * 5 * math.log(s)
        assert abs(ell.log_det() - expected) <= base.log_det_gap + ell.log_det_gap + 1e-6
        assert bool(ell.contains(x * s).all())


# --------------------------------------------------------------------------------------------
# John's inner ellipsoid lies in the convex hull (LP membership of boundary points).


@pytest.mark.parametrize("seed", [0, 1])
def test_john_inner_ellipsoid_centered(seed: int) -> None:
    x = torch.randn(30, 4, dtype=F64, generator=_gen(seed)) ** 3
    ell = mvee(x, 1e-3, centered=True)
    verts = torch.cat([x, -x]).numpy()
    # {x : x^T M^-1 x <= 1}, M = sum u_i x_i x_i^T, inside conv(+-x), for any weights u.
    m_mat = (x * ell.weights[:, None]).T @ x
    m_r = ell.basis.T @ m_mat @ ell.basis
    john = Ellipsoid(
        center=torch.zeros(4, dtype=F64),
        shape=ell.basis @ torch.linalg.inv(m_r) @ ell.basis.T,
        basis=ell.basis,
        weights=ell.weights,
        centered=True,
        hull_shape=torch.linalg.inv(m_r),
    )
    assert _in_hull_lp(verts, _boundary(john, 30, seed).numpy() * (1 - 1e-7)).all()
    # the certified shrink factor of the returned ellipsoid, close to 1/sqrt(r)
    r = ell.rank
    assert 1 / math.sqrt(r * (1 + 1e-3)) * (1 - 1e-9) <= ell.john_factor <= 1 / math.sqrt(r)
    inner = ell.scaled(ell.john_factor**2)  # shrink by john_factor
    assert _in_hull_lp(verts, _boundary(inner, 30, seed).numpy() * (1 - 1e-7)).all()
    # teeth: the unshrunk ellipsoid sticks out of the hull
    assert not _in_hull_lp(verts, _boundary(ell, 30, seed).numpy()).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_john_inner_ellipsoid_general(seed: int) -> None:
    x = torch.exp(torch.randn(30, 3, dtype=F64, generator=_gen(seed)))
    tol = 1e-3
    ell = mvee(x, tol)
    r = ell.rank
    # 1/K with K <= (1 + tol)(r + 1) - 1: John's 1/r up to the tolerance
    assert 1 / (r + tol * (r + 1)) * (1 - 1e-9) <= ell.john_factor <= 1 / r
    inner = ell.scaled(ell.john_factor**2)  # shrink by john_factor
    verts = x.numpy()
    targets = ell.center.numpy() + (_boundary(inner, 40, seed) - ell.center).numpy() * (1 - 1e-7)
    assert _in_hull_lp(verts, targets).all()
    assert not _in_hull_lp(verts, _boundary(ell, 40, seed).numpy()).all()


# --------------------------------------------------------------------------------------------
# Degenerate input.


def test_unrepresentable_scales_are_refused() -> None:
    x = torch.randn(20, 3, dtype=F64, generator=_gen(13))
    for s in (1e160, 1e-160):
        with pytest.raises(ValueError, match="rescale points"):
            mvee(x * s)
        with pytest.raises(ValueError, match="rescale points"):
            mvee_reference(x * s)
    assert bool(mvee(x * 1e130).contains(x * 1e130).all())


def test_single_point_and_identical_points() -> None:
    p = torch.tensor([[1.0, -2.0, 3.0]], dtype=F64)
    for x in (p, p.repeat(6, 1), p.repeat(4, 1) * 1e9):
        ell = mvee(x)
        assert ell.rank == 0
        assert ell.log_det() == 0.0
        assert bool(ell.contains(x).all())
        assert not bool(ell.contains(x[0] + 1e-3 * float(x.abs().max())))
        assert float(ell.mahalanobis(x).max()) == 0.0
    seg = mvee(p, centered=True)  # the segment [-p, p]
    assert seg.rank == 1
    assert bool(seg.contains(torch.cat([p, -p, 0.5 * p])).all())
    assert not bool(seg.contains(1.01 * p[0]))


def test_duplicates_and_zero_rows() -> None:
    x = torch.randn(8, 3, dtype=F64, generator=_gen(9))
    a = mvee(x, 1e-6, centered=True)
    b = mvee(torch.cat([x, x, torch.zeros(3, 3, dtype=F64)]), 1e-6, centered=True)
    assert abs(a.log_det() - b.log_det()) <= a.log_det_gap + b.log_det_gap + 1e-9
    assert float(b.weights[16:].abs().max()) == 0.0  # the zero rows carry no weight


def test_n_less_than_d() -> None:
    x = torch.randn(6, 40, dtype=F64, generator=_gen(4))
    for centered, r in ((False, 5), (True, 6)):
        ell = mvee(x, centered=centered)
        assert ell.rank == r
        assert ell.basis.shape == (40, r)
        assert bool(ell.contains(x).all())
        off = x[0] + 1e-3 * torch.linalg.vector_norm(x[0]) * _orth_to(ell.basis, 40)
        assert not bool(ell.contains(off))


def _orth_to(basis: torch.Tensor, d: int) -> torch.Tensor:
    v = torch.randn(d, dtype=F64, generator=_gen(0))
    v = v - basis @ (basis.T @ v)
    return v / torch.linalg.vector_norm(v)


def test_centered_all_zero_is_an_error() -> None:
    with pytest.raises(ValueError, match="points"):
        mvee(torch.zeros(4, 3, dtype=F64), centered=True)
    with pytest.raises(ValueError, match="points"):
        mvee_reference(torch.zeros(4, 3, dtype=F64), centered=True)


# --------------------------------------------------------------------------------------------
# Bad input, dtype, device, no mutation.


def test_bad_input() -> None:
    good = torch.randn(5, 2, dtype=F64)
    with pytest.raises(TypeError, match="points"):
        mvee([[0.0, 1.0], [1.0, 0.0]])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="points"):
        mvee(good.numpy())  # type: ignore[arg-type]
    for bad in (torch.zeros(0, 3), torch.zeros(3, 0), torch.zeros(4), torch.zeros(2, 2, 2)):
        with pytest.raises(ValueError, match="points"):
            mvee(bad)
    for value in (math.nan, math.inf):
        x = good.clone()
        x[1, 1] = value
        with pytest.raises(ValueError, match="NaN or Inf"):
            mvee(x)
    for tol in (0.0, -1e-3, math.nan, math.inf, 1.0):
        with pytest.raises(ValueError, match="tol"):
            mvee(good, tol)
    with pytest.raises(TypeError, match="tol"):
        mvee(good, "0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_iter"):
        mvee(good, max_iter=0)
    with pytest.raises(TypeError, match="centered"):
        mvee(good, centered=1)  # type: ignore[arg-type]


def test_max_iter_exhausted_raises() -> None:
    x = torch.randn(200, 10, dtype=F64, generator=_gen(1))
    with pytest.raises(RuntimeError, match=r"tol=1e-06.*max_iter=3"):
        mvee(x, 1e-6, max_iter=3)


def test_dtype_device_and_no_mutation() -> None:
    x32 = torch.randn(20, 3, generator=_gen(8))
    before = x32.clone()
    ell = mvee(x32, centered=True)
    assert torch.equal(x32, before)
    for t in (ell.center, ell.shape, ell.basis, ell.weights, ell.hull_shape):
        assert t.dtype == F64
        assert t.device == x32.device
    assert bool(ell.contains(x32).all())  # float32 queries are upcast
    x64 = x32.double()
    before64 = x64.clone()
    mvee(x64)
    assert torch.equal(x64, before64)
    # tensors that track gradients, and non-contiguous views, are accepted
    xg = x64.clone().requires_grad_(True)
    assert bool(mvee(xg).contains(x64).all())
    assert mvee(x64.T.contiguous().T, centered=True).rank == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stays_on_device() -> None:
    x = torch.randn(100, 6, device="cuda")
    for centered in (False, True):
        ell = mvee(x, centered=centered)
        assert ell.center.device.type == "cuda"
        assert ell.center.dtype == F64
        pts = torch.cat([x, -x]) if centered else x
        assert bool(ell.contains(pts).all())


# --------------------------------------------------------------------------------------------
# The Ellipsoid type.


def test_ellipsoid_contains_shapes_and_off_hull() -> None:
    x = torch.randn(20, 2, dtype=F64, generator=_gen(6))
    flat = torch.cat([x, torch.full((20, 1), 7.0, dtype=F64)], dim=1)  # a plane z = 7
    ell = mvee(flat)
    assert ell.rank == 2 and ell.dim == 3
    assert ell.contains(ell.center).shape == ()
    assert bool(ell.contains(ell.center))
    lifted = ell.center + torch.tensor([0.0, 0.0, 1e-4], dtype=F64)
    assert float(ell.mahalanobis(lifted)) == 0.0  # off-hull part is ignored by the form
    assert not bool(ell.contains(lifted))  # but the point is not in E
    with pytest.raises(ValueError, match="x must have shape"):
        ell.contains(torch.zeros(4, dtype=F64))
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        ell.contains([0.0, 0.0, 7.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rtol"):
        ell.contains(ell.center, rtol=-1.0)
