"""Tests for affine hulls and linear spans (coreprune.geometry.affine)."""

from __future__ import annotations

import math

import pytest
import torch

from coreprune.geometry.affine import affine_hull, from_hull, linear_span, to_hull

F64 = torch.float64


def _low_rank(seed: int, n: int, d: int, r: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coeff = torch.randn(n, r, dtype=F64, generator=g)
    frame = torch.randn(r, d, dtype=F64, generator=g)
    return coeff @ frame + shift * torch.randn(1, d, dtype=F64, generator=g)


@pytest.mark.parametrize(("n", "d", "r"), [(10, 5, 2), (30, 8, 8), (4, 12, 3), (50, 3, 1)])
def test_affine_hull_rank_basis_and_roundtrip(n: int, d: int, r: int) -> None:
    x = _low_rank(n * d + r, n, d, r, shift=5.0)
    hull = affine_hull(x)
    assert hull.rank == min(r, n - 1)
    assert torch.allclose(hull.center, x.mean(0), atol=1e-12)
    gram = hull.basis.T @ hull.basis
    assert torch.allclose(gram, torch.eye(hull.rank, dtype=F64), atol=1e-12)
    y = hull.project(x)
    assert y.shape == (n, hull.rank)
    assert torch.allclose(hull.lift(y), x, atol=1e-10)  # the points lie on their hull
    back = from_hull(to_hull(x, hull.center, hull.basis), hull.center, hull.basis)
    assert torch.allclose(back, x, atol=1e-10)
    s = hull.singular_values
    assert s.shape == (hull.rank,) and bool((s[:-1] >= s[1:]).all())


def test_linear_span_versus_affine_hull() -> None:
    x = _low_rank(1, 20, 6, 2, shift=3.0)  # a 2-flat missing the origin
    assert affine_hull(x).rank == 2
    span = linear_span(x)
    assert span.shape == (6, 3)
    assert torch.allclose(span @ (span.T @ x.T), x.T, atol=1e-10)


def test_identical_points_have_rank_zero_even_far_away() -> None:
    for scale in (1.0, 1e12, 1e-12):
        p = torch.tensor([[0.1, 0.7, -0.3]], dtype=F64) * scale
        hull = affine_hull(p.repeat(9, 1))
        assert hull.rank == 0
        assert hull.basis.shape == (3, 0)
    assert linear_span(torch.zeros(3, 2, dtype=F64)).shape == (2, 0)


def test_rank_threshold_is_relative() -> None:
    """A direction with relative spread just above rtol is kept; just below, dropped."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(40, 2, dtype=F64, generator=g)
    thin = torch.randn(40, 1, dtype=F64, generator=g)
    for ratio, kept in ((1e-6, 3), (1e-13, 2)):
        x = torch.cat([base, ratio * thin], dim=1)
        assert affine_hull(x).rank == kept
        assert affine_hull(x, rtol=1e-5).rank == 2


def test_bad_input_and_no_mutation() -> None:
    with pytest.raises(TypeError, match="points"):
        affine_hull([[1.0, 2.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="points"):
        linear_span(torch.zeros(3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        affine_hull(torch.tensor([[1.0, math.nan]]))
    for rtol in (0.0, -1.0, 1.0, math.nan):
        with pytest.raises(ValueError, match="rtol"):
            affine_hull(torch.ones(2, 2), rtol=rtol)
    x = torch.randn(5, 3)
    before = x.clone()
    hull = affine_hull(x)
    assert torch.equal(x, before)
    assert hull.center.dtype == F64 and hull.basis.dtype == F64
