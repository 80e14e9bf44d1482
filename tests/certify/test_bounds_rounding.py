"""Clopper-Pearson bounds against exact rational binomial tails: never on the unsafe side.

The reference is the binomial tail at the returned float, read as the exact rational it is,
summed with fractions.Fraction (no floating point at all), compared with delta as a rational.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from coreprune.certify import clopper_pearson_lower, clopper_pearson_upper


def _tail(lo: int, hi: int, n: int, p: float) -> Fraction:
    """P(lo <= Binomial(n, p) <= hi), exactly: the textbook sum, over integers a / 2^e = p."""
    a, scale = Fraction(p).as_integer_ratio()
    b = scale - a
    total = sum(math.comb(n, i) * a**i * b ** (n - i) for i in range(lo, hi + 1))
    return _Ratio(total, scale**n)


class _Ratio:
    """num / den compared with a Fraction by cross-multiplying (no gcd of huge integers)."""

    def __init__(self, num: int, den: int) -> None:
        self.num, self.den = num, den

    def __gt__(self, other: Fraction) -> bool:
        return self.num * other.denominator > other.numerator * self.den

    def __le__(self, other: Fraction) -> bool:
        return not self > other

    def __ge__(self, other: Fraction) -> bool:
        return self.num * other.denominator >= other.numerator * self.den


@pytest.mark.parametrize("delta", [0.05, 1e-3, 1e-8])
def test_every_bound_up_to_n_60_keeps_the_exact_tail_at_most_delta(delta: float) -> None:
    over = []
    for n in range(1, 61):
        for k in range(n + 1):
            low, high = clopper_pearson_lower(k, n, delta), clopper_pearson_upper(k, n, delta)
            if k > 0 and _tail(k, n, n, low) > Fraction(delta):
                over.append(("lower", k, n, low))
            if k < n and _tail(0, k, n, high) > Fraction(delta):
                over.append(("upper", k, n, high))
    assert over == []


@pytest.mark.parametrize(("k", "n"), [(1, 20), (17, 40), (59, 60), (0, 60)])
def test_bounds_are_tight_to_the_last_few_ulps(k: int, n: int) -> None:
    """Safe, but not bought with slack: one step outward from the exact quantile at most."""
    delta = 1e-3
    low, high = clopper_pearson_lower(max(k, 1), n, delta), clopper_pearson_upper(k, n, delta)
    inward_low = math.nextafter(low, 1.0) + 4 * math.ulp(low)
    inward_high = math.nextafter(high, 0.0) - 4 * math.ulp(high)
    assert _tail(max(k, 1), n, n, inward_low) > Fraction(delta)
    assert _tail(0, k, n, inward_high) > Fraction(delta)


def test_upper_bound_at_tiny_delta_keeps_delta_relative_precision() -> None:
    """ppf(1 - delta) rounds delta to the float spacing near 1 (2e-10 relative at 1e-8);
    the upper bound must still have P(K <= k) <= delta exactly, on the float path (n > 400)."""
    for k, n in ((3, 500), (40, 600), (1, 450)):
        high = clopper_pearson_upper(k, n, 1e-8)
        assert _tail(0, k, n, high) <= Fraction(1e-8)
        assert _tail(0, k, n, high) >= Fraction(1e-8) * (1 - Fraction(1, 10**6))


def test_perfect_and_empty_scores_use_the_cancellation_free_forms() -> None:
    n, delta = 10_000, 0.05
    assert clopper_pearson_upper(0, n, delta) == pytest.approx(
        -math.expm1(math.log(delta) / n), rel=1e-9
    )
    low = clopper_pearson_lower(300, 300, delta)
    assert _tail(300, 300, 300, low) <= Fraction(delta)
