"""Tests for coreprune.geometry.caratheodory: exactness, support size, contract, errors."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coreprune.geometry.caratheodory import caratheodory, caratheodory_error

TOL = 1e-9


def _affine_rank(points: torch.Tensor, weights: torch.Tensor) -> int:
    """Dimension of the affine hull of the positive-weight points (clear-cut data only)."""
    p = points.double()[weights > 0]
    centred = p - p.mean(dim=0)
    s = torch.linalg.svdvals(centred)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0
    return int((s > 1e-9 * s[0]).sum())


def _check(points: torch.Tensor, weights: torch.Tensor, tol: float = TOL) -> tuple:
    """Run caratheodory and assert the whole contract, computed independently here."""
    p_before, w_before = points.clone(), weights.clone()
    idx, nw = caratheodory(points, weights, tol=tol)
    assert torch.equal(points, p_before) and torch.equal(weights, w_before), "input mutated"
    assert idx.dtype == torch.int64 and nw.dtype == torch.float64
    assert idx.device == points.device and nw.device == points.device
    assert idx.shape == nw.shape and idx.dim() == 1 and idx.numel() >= 1
    assert bool((idx[1:] > idx[:-1]).all()), "indices must be sorted and distinct"
    assert int(idx.min()) >= 0 and int(idx.max()) < points.shape[0]
    assert bool((nw > 0).all()), "returned weights must be positive"
    assert bool((weights[idx] > 0).all()), "a zero-weight point was returned"
    r = _affine_rank(points, weights)
    assert idx.numel() <= r + 1 <= points.shape[1] + 1
    p, w = points.double(), weights.double()
    total = w.sum()
    radius = torch.linalg.vector_norm(p[w > 0], dim=1).max()
    if radius > 0:
        err = torch.linalg.vector_norm((nw @ p[idx] - w @ p) / (total * radius))
        assert err <= tol, f"relative mean error {float(err):.3g}"
    assert abs(nw.sum() - total) <= tol * total
    return idx, nw


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("n", "d"), [(2, 1), (50, 3), (500, 16), (4000, 64), (300, 100)])
def test_random_points_exact_with_at_most_d_plus_1(n: int, d: int) -> None:
    g = _gen(n + d)
    points = torch.randn(n, d, generator=g, dtype=torch.float64)
    weights = torch.rand(n, generator=g, dtype=torch.float64)
    idx, _ = _check(points, weights)
    if n > d + 1:
        assert idx.numel() == d + 1  # generic data needs all d+1


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_low_rank_points_support_at_most_rank_plus_1(scale: float) -> None:
    g = _gen(1)
    basis = torch.randn(3, 20, generator=g, dtype=torch.float64)
    offset = torch.randn(20, generator=g, dtype=torch.float64)
    points = scale * (torch.randn(600, 3, generator=g, dtype=torch.float64) @ basis + offset)
    weights = torch.rand(600, generator=g, dtype=torch.float64)
    idx, _ = _check(points, weights)
    assert idx.numel() <= 4


def test_near_flat_points_use_the_rank_at_the_asked_accuracy() -> None:
    """Rank-3 data plus 1e-13 noise: flat at tol=1e-9 (4 points), not flat at tol=1e-16."""
    g = _gen(17)
    flat = torch.randn(1500, 3, generator=g, dtype=torch.float64)
    flat = flat @ torch.randn(3, 12, generator=g, dtype=torch.float64)
    points = flat + 1e-13 * torch.randn(1500, 12, generator=g, dtype=torch.float64)
    weights = torch.rand(1500, generator=g, dtype=torch.float64)
    idx, _ = caratheodory(points, weights)
    assert idx.numel() <= 4
    assert max(caratheodory_error(points, weights, idx, _)) <= TOL
    idx_strict, nw_strict = caratheodory(points, weights, tol=1e-14)
    assert idx_strict.numel() > 4
    assert max(caratheodory_error(points, weights, idx_strict, nw_strict)) <= 1e-14


def test_falls_back_to_strict_rank_when_the_loose_answer_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rank threshold far too loose makes the first pass inexact; the retry must fix it."""
    # the package re-exports the function under the module's name, so fetch the module itself
    mod = importlib.import_module("coreprune.geometry.caratheodory")
    monkeypatch.setattr(mod, "_RANK_FRACTION_OF_TOL", 1e7)  # threshold 1e-2: wrong on purpose
    g = _gen(18)
    points = torch.randn(400, 6, generator=g, dtype=torch.float64)
    points[:, 5] *= 1e-3  # a thin but real direction the loose threshold calls flat
    _check(points, torch.rand(400, generator=g, dtype=torch.float64))


def test_collinear_points_need_two() -> None:
    g = _gen(2)
    t = torch.randn(200, 1, generator=g, dtype=torch.float64)
    direction = torch.randn(1, 5, generator=g, dtype=torch.float64)
    points = 3.0 + t @ direction
    idx, _ = _check(points, torch.rand(200, generator=g, dtype=torch.float64))
    assert idx.numel() <= 2


def test_duplicated_points() -> None:
    g = _gen(3)
    distinct = torch.randn(5, 10, generator=g, dtype=torch.float64)
    points = distinct[torch.randint(0, 5, (400,), generator=g)]
    idx, _ = _check(points, torch.rand(400, generator=g, dtype=torch.float64))
    assert idx.numel() <= 5


def test_identical_points_give_one_point_with_total_weight() -> None:
    points = torch.full((30, 4), 2.5, dtype=torch.float64)
    weights = torch.linspace(0.0, 1.0, 30, dtype=torch.float64)
    idx, nw = _check(points, weights)
    assert idx.numel() == 1
    assert torch.allclose(nw.sum(), weights.sum(), rtol=1e-15, atol=0.0)


def test_all_zero_points() -> None:
    idx, _ = _check(torch.zeros(20, 3), torch.rand(20, generator=_gen(15), dtype=torch.float64))
    assert idx.numel() == 1


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_scaled_points_and_weights(scale: float) -> None:
    g = _gen(4)
    points = scale * torch.randn(1000, 8, generator=g, dtype=torch.float64)
    weights = (1.0 / scale) * torch.rand(1000, generator=g, dtype=torch.float64)
    _check(points, weights)


def test_far_offset_cloud() -> None:
    g = _gen(5)
    points = 1e6 + torch.randn(800, 6, generator=g, dtype=torch.float64)
    _check(points, torch.rand(800, generator=g, dtype=torch.float64))


def test_weights_need_not_sum_to_one_and_zero_weights_are_dropped() -> None:
    g = _gen(6)
    points = torch.randn(300, 4, generator=g, dtype=torch.float64)
    weights = 1e3 * torch.rand(300, generator=g, dtype=torch.float64)
    weights[::3] = 0.0
    idx, _ = _check(points, weights)
    assert bool((idx % 3 != 0).all())


def test_weights_spanning_400_orders_of_magnitude() -> None:
    """Weights far below the total underflow once normalised; the sum must still match."""
    g = _gen(14)
    points = torch.randn(2000, 6, generator=g, dtype=torch.float64)
    weights = 10.0 ** (400.0 * torch.rand(2000, generator=g, dtype=torch.float64) - 200.0)
    _check(points, weights)


def test_huge_points_and_weights_do_not_overflow_the_check() -> None:
    g = _gen(16)
    points = 1e300 * torch.randn(300, 4, generator=g, dtype=torch.float64)
    weights = 1e305 * torch.rand(300, generator=g, dtype=torch.float64)
    idx, nw = caratheodory(points, weights)
    assert max(caratheodory_error(points, weights, idx, nw)) <= TOL
    # independent check with an exact power-of-two rescaling (Σ w p itself overflows)
    p, w, nws = points * 2.0**-1000, weights * 2.0**-1020, nw * 2.0**-1020
    radius = torch.linalg.vector_norm(p, dim=1).max()
    assert torch.linalg.vector_norm(nws @ p[idx] - w @ p) <= TOL * w.sum() * radius
    assert idx.numel() <= 5


def test_few_independent_points_are_returned_unchanged() -> None:
    g = _gen(7)
    points = torch.randn(6, 8, generator=g, dtype=torch.float64)
    weights = torch.rand(6, generator=g, dtype=torch.float64)
    weights[2] = 0.0
    idx, nw = _check(points, weights)
    assert idx.tolist() == [0, 1, 3, 4, 5]
    assert torch.equal(nw, weights[idx])


def test_few_but_dependent_points_are_still_reduced() -> None:
    """n <= d+1 with a duplicate: the r+1 bound wins over returning the input unchanged."""
    g = _gen(8)
    base = torch.randn(3, 8, generator=g, dtype=torch.float64)
    points = torch.cat([base, base[:1]])
    idx, _ = _check(points, torch.rand(4, generator=g, dtype=torch.float64))
    assert idx.numel() <= 3


def test_single_point_and_single_positive_weight() -> None:
    idx, nw = _check(torch.tensor([[1.0, -2.0]]), torch.tensor([0.3], dtype=torch.float64))
    assert idx.tolist() == [0] and nw.tolist() == [0.3]
    points = torch.randn(10, 3, generator=_gen(9), dtype=torch.float64)
    weights = torch.zeros(10, dtype=torch.float64)
    weights[7] = 2.0
    idx, nw = _check(points, weights)
    assert idx.tolist() == [7] and nw.tolist() == [2.0]


def test_float32_grad_points_and_integer_weights_are_accepted() -> None:
    g = _gen(10)
    points = torch.randn(100, 3, generator=g).requires_grad_(True)
    weights = torch.randint(0, 5, (100,), generator=g)
    weights[0] = 1
    _check(points.detach(), weights)
    idx, nw = caratheodory(points, weights)
    assert not nw.requires_grad and idx.numel() <= 4


def test_unverifiable_tolerance_raises_instead_of_returning() -> None:
    g = _gen(11)
    points = torch.randn(200, 5, generator=g, dtype=torch.float64)
    weights = torch.rand(200, generator=g, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="could not verify"):
        caratheodory(points, weights, tol=1e-30)


def test_error_helper_reports_a_wrong_answer() -> None:
    g = _gen(12)
    points = torch.randn(50, 3, generator=g, dtype=torch.float64)
    weights = torch.rand(50, generator=g, dtype=torch.float64)
    idx, nw = caratheodory(points, weights)
    assert max(caratheodory_error(points, weights, idx, nw)) <= TOL
    mean_err, total_err = caratheodory_error(points, weights, idx, 1.01 * nw)
    assert mean_err > 1e-4 and total_err == pytest.approx(0.01)


_P = torch.randn(5, 2, dtype=torch.float64)
_W = torch.ones(5, dtype=torch.float64)


@pytest.mark.parametrize(
    ("points", "weights", "kwargs", "error", "match"),
    [
        (_P.numpy(), _W, {}, TypeError, "points must be a torch.Tensor"),
        (_P, _W.numpy(), {}, TypeError, "weights must be a torch.Tensor"),
        (_P.to(torch.complex128), _W, {}, TypeError, "points must be a real"),
        (_P, _W.bool(), {}, TypeError, "weights must be a real"),
        (torch.empty(0, 2), torch.empty(0), {}, ValueError, "non-empty"),
        (_P[:, 0], _W, {}, ValueError, "shape \\(n, d\\)"),
        (_P, _W[:4], {}, ValueError, "weights must have length 5"),
        (_P, torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0]), {}, ValueError, "nonnegative"),
        (_P, torch.tensor([1.0, float("nan"), 1, 1, 1]), {}, ValueError, "NaN or Inf"),
        (_P, torch.tensor([1.0, float("inf"), 1, 1, 1]), {}, ValueError, "NaN or Inf"),
        (_P, torch.zeros(5), {}, ValueError, "positive sum"),
        (_P, torch.full((5,), 1e308, dtype=torch.float64), {}, ValueError, "overflows"),
        (_P * float("inf"), _W, {}, ValueError, "points contains NaN or Inf"),
        (_P, _W, {"tol": 0.0}, ValueError, r"tol must lie in \(0, inf\)"),
        (_P, _W, {"tol": float("nan")}, ValueError, "tol must be a number, got NaN"),
        (_P, _W, {"tol": "1e-9"}, TypeError, "tol must be a real number"),
    ],
)
def test_bad_input_raises(
    points: object, weights: object, kwargs: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        caratheodory(points, weights, **kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_result_stays_on_device() -> None:
    g = _gen(13)
    points = torch.randn(500, 10, generator=g, dtype=torch.float64).cuda()
    weights = torch.rand(500, generator=g, dtype=torch.float64).cuda()
    _check(points, weights)


@st.composite
def _point_sets(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """Random, low-rank, duplicated and scaled sets, with some zero weights."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(1, 80))
    d = draw(st.integers(1, 7))
    rank = draw(st.integers(0, d))
    scale = draw(st.sampled_from([1e-6, 1.0, 1e6]))
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d)) + rng.standard_normal(d)
    if draw(st.booleans()):  # many duplicates
        base = base[rng.integers(0, max(1, n // 4), n)]
    weights = rng.random(n) * draw(st.sampled_from([1e-3, 1.0, 1e4]))
    weights[rng.random(n) < draw(st.sampled_from([0.0, 0.3]))] = 0.0
    weights[rng.integers(0, n)] += 1.0
    return torch.from_numpy(scale * base), torch.from_numpy(weights)


@settings(max_examples=150, deadline=None)
@given(_point_sets())
def test_property_exact_small_support(case: tuple[torch.Tensor, torch.Tensor]) -> None:
    _check(*case)
