"""Every sensitivity bound against the exact value, on tiny layers including badly conditioned ones.

The oracle below computes the exact sensitivity in rational arithmetic: independent of any LP.

s_i = max over z in range(V) of |z_i| / ||z||_1 (the ratio depends on y only through z = V y).
The maximum of this quasi-convex ratio over the polyhedral cone pieces of range(V) is attained on
an extreme ray, where r - 1 coordinates other than i vanish (r = rank V). Every float64 entry is
an exact dyadic rational, so enumerating those rays with `fractions.Fraction` gives the exact
value, with no tolerance at all.
"""

from __future__ import annotations

from fractions import Fraction
from itertools import combinations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coreprune.coreset.sensitivity import ILL_CONDITIONED, METHODS, compute_sensitivities

Matrix = list[list[Fraction]]


def _rref_pivots(rows: Matrix) -> tuple[Matrix, list[int]]:
    """Reduced row echelon form and pivot columns, exactly."""
    a = [row[:] for row in rows]
    pivots: list[int] = []
    r = 0
    cols = len(a[0]) if a else 0
    for c in range(cols):
        p = next((i for i in range(r, len(a)) if a[i][c] != 0), None)
        if p is None:
            continue
        a[r], a[p] = a[p], a[r]
        inv = 1 / a[r][c]
        a[r] = [x * inv for x in a[r]]
        for i in range(len(a)):
            if i != r and a[i][c] != 0:
                f = a[i][c]
                a[i] = [x - f * y for x, y in zip(a[i], a[r], strict=True)]
        pivots.append(c)
        r += 1
        if r == len(a):
            break
    return a, pivots


def _null_vector(rows: Matrix, cols: int) -> list[Fraction] | None:
    """A nonzero vector of a one-dimensional null space, else None."""
    if not rows:
        return [Fraction(1)] if cols == 1 else None
    a, pivots = _rref_pivots(rows)
    free = [c for c in range(cols) if c not in pivots]
    if len(free) != 1:
        return None
    f = free[0]
    y = [Fraction(0)] * cols
    y[f] = Fraction(1)
    for row, p in zip(a, pivots, strict=False):
        y[p] = -row[f]
    return y


def exact_sensitivity(v: torch.Tensor) -> list[Fraction]:
    """The exact s_i of the rows of v (m x D, any rank), as fractions."""
    m = v.shape[0]
    rows = [[Fraction(float(x)) for x in row] for row in v.tolist()]
    # A basis of range(V): the pivot columns of V.
    _, pivots = _rref_pivots(rows)
    basis = [[row[c] for c in pivots] for row in rows]
    r = len(pivots)
    out = [Fraction(0)] * m
    if r == 0:
        return out
    for i in range(m):
        if all(x == 0 for x in basis[i]):
            continue
        others = [k for k in range(m) if k != i]
        best = Fraction(0)
        for subset in combinations(others, r - 1):
            y = _null_vector([basis[k] for k in subset], r)
            if y is None:
                continue
            z = [sum((b * c for b, c in zip(row, y, strict=True)), Fraction(0)) for row in basis]
            total = sum(abs(x) for x in z)
            if total != 0:
                best = max(best, abs(z[i]) / total)
        out[i] = best
    return out


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, dtype=torch.float64, generator=gen))
    return q


def _layer(
    n: int, d: int, k: int, log_cond: float, log_scale: float, seed: int, float32: bool
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Units U diag(s) W^T (n x (d+1)) with singular values spread over 10^log_cond, and U."""
    gen = torch.Generator().manual_seed(seed)
    dim = d + 1
    r = min(n, dim)
    sv = torch.logspace(0.0, -log_cond, r, dtype=torch.float64) * 10.0**log_scale
    units = _orthonormal(n, r, gen) @ torch.diag(sv) @ _orthonormal(dim, r, gen).T
    reading = torch.randn(k, n, dtype=torch.float64, generator=gen)
    reading[torch.rand(k, n, generator=gen) < 0.2] = 0.0  # some units are not read
    if float32:  # the weights of a float32 layer, read exactly in float64
        units, reading = units.float().double(), reading.float().double()
    return units, reading, 10.0**log_cond


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 6),
    d=st.integers(1, 5),
    k=st.integers(1, 3),
    log_cond=st.floats(0.0, 12.0),
    log_scale=st.floats(-6.0, 6.0),
    seed=st.integers(0, 2**31 - 1),
    float32=st.booleans(),
)
def test_no_bound_is_ever_below_the_exact_sensitivity(
    n: int, d: int, k: int, log_cond: float, log_scale: float, seed: int, float32: bool
) -> None:
    """Compared exactly, as fractions: the only tolerance is the rounding charge each bound adds
    to itself (docs/theory.md §6), so there is none in the comparison. A refusal is allowed only
    for a badly conditioned layer."""
    units, reading, cond = _layer(n, d, k, log_cond, log_scale, seed, float32)
    truth = [exact_sensitivity(reading[j].abs()[:, None] * units) for j in range(k)]
    for method in METHODS:
        try:
            per_next = compute_sensitivities(units, reading, method).per_next
        except ValueError as err:
            assert ILL_CONDITIONED in str(err)
            assert cond > 1e6, f"{method} refused a layer of condition number {cond:.3g}"
            continue
        assert per_next.shape == (k, n)
        for j in range(k):
            for i in range(n):
                assert Fraction(float(per_next[j, i])) >= truth[j][i], (method, j, i)
                assert float(per_next[j, i]) <= 1.0


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(4, 6),
    d=st.integers(1, 2),
    log_scale=st.floats(-6.0, 6.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_the_exact_bound_is_the_exact_value_on_well_conditioned_layers(
    n: int, d: int, log_scale: float, seed: int
) -> None:
    """The LP bound is the supremum up to its rounding charge, at any overall scale."""
    units, reading, _ = _layer(n, d, 1, 1.0, log_scale, seed, False)
    truth = exact_sensitivity(reading[0].abs()[:, None] * units)
    exact = compute_sensitivities(units, reading, "exact").per_next[0]
    for i in range(n):
        assert float(exact[i]) == pytest.approx(float(truth[i]), abs=1e-6)
