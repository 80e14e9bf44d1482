"""Every sensitivity bound is a true upper bound, and the exact LP is the supremum."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coreprune.coreset.sensitivity import (
    compute_sensitivities,
    exact_bound,
    leverage_bound,
    paper_bound,
    span_coordinates,
)


def _ratios(v: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """|v_i . y| / sum_l |v_l . y| for many y: the quantity whose sup is s_i."""
    dots = (ys @ v.T).abs()
    return dots / dots.sum(dim=1, keepdim=True)


def _circle(m: int) -> torch.Tensor:
    angle = torch.linspace(0, math.pi, m, dtype=torch.float64)
    return torch.stack([angle.cos(), angle.sin()], dim=1)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(3, 40), seed=st.integers(0, 10_000))
def test_exact_is_the_supremum_in_the_plane(n: int, seed: int) -> None:
    """In 2-D the sup is attained on a fine circle grid: exact >= grid max, and close to it."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n, 2, dtype=torch.float64, generator=gen) * torch.rand(
        n, 1, dtype=torch.float64, generator=gen
    )
    grid = _ratios(v, _circle(20_001)).max(dim=0).values
    exact = exact_bound(v)
    assert torch.all(grid <= exact + 1e-9)
    # The sup is attained where v_l . y = 0 for some l: include those directions exactly.
    normals = torch.stack([-v[:, 1], v[:, 0]], dim=1)
    attained = _ratios(v, normals).max(dim=0).values
    assert torch.allclose(torch.maximum(grid, attained), exact, atol=1e-6)


@settings(max_examples=12, deadline=None)
@given(n=st.integers(8, 60), dim=st.integers(2, 5), seed=st.integers(0, 10_000))
def test_every_bound_dominates_the_exact_value(n: int, dim: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    v = span_coordinates(torch.randn(n, dim, dtype=torch.float64, generator=gen))
    exact = exact_bound(v)
    for bound in (leverage_bound(v), paper_bound(v)):
        assert torch.all(bound >= exact - 1e-9)
        assert torch.all((bound > 0) & (bound <= 1))


@settings(max_examples=10, deadline=None)
@given(n=st.integers(10, 80), dim=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_bounds_hold_against_random_and_targeted_queries(n: int, dim: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    v = span_coordinates(torch.randn(n, dim, dtype=torch.float64, generator=gen) ** 3)
    # Targeted queries: for each unit the y orthogonal to as many others as possible.
    targeted = torch.linalg.pinv(v).T  # rows: y_i with v_i . y_i = 1 least-squares
    ys = torch.cat([torch.randn(4000, v.shape[1], dtype=torch.float64, generator=gen), targeted])
    seen = _ratios(v, ys).max(dim=0).values
    for bound in (leverage_bound(v), paper_bound(v), exact_bound(v)):
        assert torch.all(seen <= bound + 1e-9)


def test_linearly_independent_units_all_have_sensitivity_one() -> None:
    """The stated limit (theory §7): n <= D gives s = 1 for every unit, whatever the method."""
    gen = torch.Generator().manual_seed(0)
    units = torch.randn(20, 30, dtype=torch.float64, generator=gen)
    reading = torch.randn(3, 20, dtype=torch.float64, generator=gen)
    sens = compute_sensitivities(units, reading, "all")
    assert torch.all(sens.per_unit == 1.0)


def test_units_the_next_layer_ignores_have_zero_sensitivity() -> None:
    gen = torch.Generator().manual_seed(1)
    units = torch.randn(30, 3, dtype=torch.float64, generator=gen)
    reading = torch.randn(2, 30, dtype=torch.float64, generator=gen)
    reading[:, 5] = 0.0
    sens = compute_sensitivities(units, reading, "auto")
    assert sens.per_unit[5] == 0.0
    assert torch.all(sens.per_unit[torch.arange(30) != 5] > 0)


def test_exact_is_much_tighter_than_the_paper_bound_here() -> None:
    """Measured looseness, asserted only loosely: the exact total is below the others'."""
    gen = torch.Generator().manual_seed(2)
    v = span_coordinates(torch.randn(300, 3, dtype=torch.float64, generator=gen))
    exact, lev, paper = exact_bound(v).sum(), leverage_bound(v).sum(), paper_bound(v).sum()
    assert exact < lev and exact < paper


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="sensitivity must be one of"):
        compute_sensitivities(
            torch.ones(3, 2, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64), "fast"
        )
