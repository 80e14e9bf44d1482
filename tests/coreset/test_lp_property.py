"""The exact sensitivity in rational arithmetic, for tiny layers: an oracle independent of any LP.

s_i = max over z in range(V) of |z_i| / ||z||_1 (the ratio depends on y only through z = V y).
The maximum of this quasi-convex ratio over the polyhedral cone pieces of range(V) is attained on
an extreme ray, where r - 1 coordinates other than i vanish (r = rank V). Every float64 entry is
an exact dyadic rational, so enumerating those rays with `fractions.Fraction` gives the exact
value, with no tolerance at all.
"""

from __future__ import annotations

from fractions import Fraction
from itertools import combinations

import torch

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
