"""Exact one-sided Clopper-Pearson bounds for a binomial proportion, and what they need of n.

Every held-out certificate in `coreprune.certify` reduces to counting how many of n i.i.d.
held-out examples have some property (the pruned model agrees with the dense one, is right,
exceeds a layer error...) and bounding the probability p of that property. Clopper-Pearson is
the exact bound: for every p and n, P(lower(K) > p) <= delta where K ~ Binomial(n, p), with no
normal approximation and no assumption beyond independence.

The bounds are quantiles of Beta distributions (scipy.stats.beta), each computed in the form
that keeps delta's relative precision (the delta-quantile with `ppf`, the (1 - delta)-quantile
with `isf`, never `ppf(1 - delta)`), and then *verified*: the binomial tail at the returned
value must be at most delta, and the value is moved outward until it is (docs/theory.md,
"Held-out certificates", rounding). For n <= `EXACT_N` the tail is checked in exact rational
arithmetic; above, with scipy's regularised incomplete beta against delta * (1 - `FLOAT_MARGIN`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from functools import lru_cache

from scipy.special import betainc, betaincc
from scipy.stats import beta

__all__ = [
    "EXACT_N",
    "FLOAT_MARGIN",
    "binomial_tail_exact",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "min_holdout_size",
]

EXACT_N = 400  # at or below, every bound is checked against the exact binomial tail
# Above EXACT_N the tail comes from scipy's incomplete beta; it must be at most
# delta * (1 - FLOAT_MARGIN), a margin far above that function's documented relative error
# (~1e-13), so a rounding of the tail cannot carry a bound over delta.
FLOAT_MARGIN = 1e-9
_MAX_STEPS = 2_000  # outward steps (doubling) before giving up on a bound


def _check_counts(successes: int, n: int, delta: float) -> None:
    for name, value in (("successes", successes), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1 (a bound needs at least one example), got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)):
        raise TypeError(f"delta must be a float, got {type(delta).__name__}")
    if not 0 < delta < 1:
        raise ValueError(f"delta (the failure probability) must lie in (0, 1), got {delta}")


def binomial_tail_exact(lo: int, hi: int, n: int, p: float) -> Fraction:
    """P(lo <= Binomial(n, p) <= hi) exactly, for the float p read as the rational it is.

    p = a / 2^e exactly, so the sum of C(n, i) a^i (2^e - a)^(n-i) over i is an integer and the
    result is that integer over 2^(e n): no rounding anywhere.
    """
    total, denominator = _tail_integers(lo, hi, n, p)
    return Fraction(total, denominator)


def _tail_integers(lo: int, hi: int, n: int, p: float) -> tuple[int, int]:
    """(T, D) with P(lo <= Binomial(n, p) <= hi) = T / D, both integers (D = 2^(e n)).

    Horner's rule in a and b = 2^e - a, so each step multiplies a big integer by a small one
    (linear time) instead of forming a^i b^(n-i) from scratch.
    """
    frac = Fraction(p)
    a, scale = frac.numerator, frac.denominator  # scale is a power of two
    b = scale - a
    lo, hi = max(lo, 0), min(hi, n)
    if lo > hi:
        return 0, 1
    acc, b_power, coef = 0, 1, math.comb(n, hi)
    for i in range(hi, lo - 1, -1):  # acc = sum_{l=i..hi} C(n, l) a^(l-i) b^(hi-l)
        acc = acc * a + coef * b_power
        b_power *= b
        if i > lo:
            coef = coef * i // (n - i + 1)  # C(n, i-1) from C(n, i)
    return acc * a**lo * b ** (n - hi), scale**n


def _exact_at_most(lo: int, hi: int, n: int, delta: float) -> Callable[[float], bool]:
    """Is P(lo <= Binomial(n, p) <= hi) <= delta at p, in exact integer arithmetic?"""
    bound = Fraction(delta)

    def ok(p: float) -> bool:
        total, denominator = _tail_integers(lo, hi, n, p)
        return total * bound.denominator <= bound.numerator * denominator

    return ok


def _lower_tail_ok(successes: int, n: int, delta: float) -> Callable[[float], bool]:
    """Is P(Binomial(n, p) >= successes) <= delta at p?"""
    if n <= EXACT_N:
        return _exact_at_most(successes, n, n, delta)
    limit = delta * (1.0 - FLOAT_MARGIN)
    return lambda p: float(betainc(successes, n - successes + 1, p)) <= limit


def _upper_tail_ok(successes: int, n: int, delta: float) -> Callable[[float], bool]:
    """Is P(Binomial(n, p) <= successes) <= delta at p?"""
    if n <= EXACT_N:
        return _exact_at_most(0, successes, n, delta)
    limit = delta * (1.0 - FLOAT_MARGIN)
    return lambda p: float(betaincc(successes + 1, n - successes, p)) <= limit


def _move_until(ok: Callable[[float], bool], p: float, toward: float) -> float:
    """The first of p, then p moved toward `toward` by 1, 2, 4, ... ulps, at which `ok` holds.

    `toward` (0 for a lower bound, 1 for an upper one) is itself always valid, so the walk ends.
    """
    step = math.ulp(p) if p != 0 else math.ulp(0.0)
    for _ in range(_MAX_STEPS):
        if ok(p):
            return p
        p = max(p - step, toward) if toward < p else min(p + step, toward)
        step *= 2.0
    return toward


def clopper_pearson_lower(successes: int, n: int, delta: float) -> float:
    """The one-sided lower (1 - delta) confidence bound on p from `successes` out of `n`.

    It is the p at which P(Binomial(n, p) >= successes) = delta, i.e. the delta-quantile of
    Beta(successes, n - successes + 1); 0 when successes = 0 and delta ** (1 / n) (as
    exp(log(delta) / n)) when successes = n. The returned float is verified to have the tail at
    most delta (moved down by ulps when rounding put it above).
    """
    _check_counts(successes, n, delta)
    return _lower(successes, n, float(delta))


@lru_cache(maxsize=8192)
def _lower(successes: int, n: int, delta: float) -> float:
    """`clopper_pearson_lower` after its checks; cached, since resampling repeats counts."""
    if successes == 0:
        return 0.0
    if successes == n:
        p = math.exp(math.log(delta) / n)
    else:
        p = float(beta.ppf(delta, successes, n - successes + 1))
    if not 0.0 <= p <= 1.0:  # a solver failure: start from the other end instead
        p = successes / n
    return _move_until(_lower_tail_ok(successes, n, delta), p, 0.0)


def clopper_pearson_upper(successes: int, n: int, delta: float) -> float:
    """The one-sided upper (1 - delta) confidence bound on p from `successes` out of `n`.

    The (1 - delta)-quantile of Beta(successes + 1, n - successes), computed as `beta.isf(delta)`
    (`ppf(1 - delta)` would round delta to the spacing of floats near 1); 1 when
    successes = n, and 1 - delta ** (1 / n) (as -expm1(log(delta) / n), without cancellation)
    when successes = 0. Verified like the lower bound, moved up when rounding put it below.
    """
    _check_counts(successes, n, delta)
    return _upper(successes, n, float(delta))


@lru_cache(maxsize=8192)
def _upper(successes: int, n: int, delta: float) -> float:
    """`clopper_pearson_upper` after its checks; cached like `_lower`."""
    if successes == n:
        return 1.0
    if successes == 0:
        p = -math.expm1(math.log(delta) / n)
    else:
        p = float(beta.isf(delta, successes + 1, n - successes))
    if not 0.0 <= p <= 1.0:
        p = successes / n
    return _move_until(_upper_tail_ok(successes, n, delta), p, 1.0)


def min_holdout_size(delta: float, informative: float = 0.5) -> int:
    """The smallest n at which a perfect score (n out of n) certifies p > `informative`.

    The lower bound at a perfect score is delta ** (1 / n), which exceeds `informative` iff
    n > log(delta) / log(informative). Below that size no outcome of the held-out set can
    certify anything better than a coin flip, so asking for a certificate is an error. The
    answer is checked against `clopper_pearson_lower` itself, so the two never disagree.
    """
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    if (
        isinstance(informative, bool)
        or not isinstance(informative, (int, float))
        or not 0 < informative < 1
    ):
        raise ValueError(f"informative must lie in (0, 1), got {informative}")
    n = max(1, math.floor(math.log(delta) / math.log(informative)) + 1)
    while clopper_pearson_lower(n, n, delta) <= informative:
        n += 1
    while n > 1 and clopper_pearson_lower(n - 1, n - 1, delta) > informative:
        n -= 1
    return n
