"""Clopper-Pearson bounds: hand-worked values, the exact tail identity, and coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from coreprune.certify import clopper_pearson_lower, clopper_pearson_upper, min_holdout_size


def test_perfect_score_closed_form() -> None:
    # P(Bin(10, p) >= 10) = p^10 = 0.05  <=>  p = 0.05^(1/10) ~ 0.74113
    assert clopper_pearson_lower(10, 10, 0.05) == pytest.approx(0.05 ** (1 / 10), rel=1e-12)
    assert clopper_pearson_lower(10, 10, 0.05) == pytest.approx(0.741134449, abs=1e-9)
    # P(Bin(10, p) <= 0) = (1 - p)^10 = 0.05
    assert clopper_pearson_upper(0, 10, 0.05) == pytest.approx(1 - 0.05 ** (1 / 10), rel=1e-12)


def test_trivial_ends() -> None:
    assert clopper_pearson_lower(0, 7, 0.1) == 0.0
    assert clopper_pearson_upper(7, 7, 0.1) == 1.0


def test_one_failure_hand_worked() -> None:
    # k = n - 1 = 9: the lower bound L solves P(Bin(10, L) >= 9) = L^10 + 10 L^9 (1 - L) = 0.05
    low = clopper_pearson_lower(9, 10, 0.05)
    assert low**10 + 10 * low**9 * (1 - low) == pytest.approx(0.05, abs=1e-10)
    assert low == pytest.approx(0.6058, abs=1e-4)


@pytest.mark.parametrize(("k", "n", "delta"), [(3, 20, 0.05), (50, 60, 0.01), (480, 500, 0.2)])
def test_bounds_solve_the_binomial_tail(k: int, n: int, delta: float) -> None:
    low, high = clopper_pearson_lower(k, n, delta), clopper_pearson_upper(k, n, delta)
    assert low < k / n < high
    assert binom.sf(k - 1, n, low) == pytest.approx(delta, rel=1e-7)  # P(K >= k | low)
    assert binom.cdf(k, n, high) == pytest.approx(delta, rel=1e-7)  # P(K <= k | high)


def test_coverage_on_bernoulli_draws() -> None:
    """Over many simulated holdouts the lower bound exceeds the true p at most delta often."""
    rng = np.random.default_rng(0)
    delta, n, trials = 0.1, 200, 2000
    for p in (0.5, 0.9, 0.97):
        counts = rng.binomial(n, p, size=trials)
        fails = sum(clopper_pearson_lower(int(k), n, delta) > p for k in counts)
        fails_up = sum(clopper_pearson_upper(int(k), n, delta) < p for k in counts)
        # delta plus three binomial standard deviations of the failure count
        slack = 3 * math.sqrt(trials * delta * (1 - delta))
        assert fails <= trials * delta + slack
        assert fails_up <= trials * delta + slack


def test_min_holdout_size() -> None:
    for delta in (0.05, 0.01, 0.5 / 3):
        n = min_holdout_size(delta)
        assert delta ** (1 / n) > 0.5 >= delta ** (1 / (n - 1))
        assert clopper_pearson_lower(n, n, delta) > 0.5
    assert min_holdout_size(0.05) == 5  # 0.05^(1/5) = 0.549, 0.05^(1/4) = 0.473


@pytest.mark.parametrize(
    ("args", "kind", "fragment"),
    [
        ((3, 0, 0.05), ValueError, "n must be >= 1"),
        ((5, 4, 0.05), ValueError, "successes must lie in"),
        ((1, 4, 1.0), ValueError, "delta"),
        ((1.0, 4, 0.1), TypeError, "successes must be an int"),
    ],
)
def test_bad_counts(args: tuple[object, ...], kind: type[Exception], fragment: str) -> None:
    with pytest.raises(kind, match=fragment):
        clopper_pearson_lower(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "delta"), [(5, 0.05), (20, 0.2), (60, 0.05)])
def test_exact_coverage_over_a_grid_of_p(n: int, delta: float) -> None:
    """P_p(lower > p) summed exactly over the binomial pmf: never above delta, and close to it
    just below each bound (the bound is exact, not merely conservative)."""
    lows = np.array([clopper_pearson_lower(k, n, delta) for k in range(n + 1)])
    highs = np.array([clopper_pearson_upper(k, n, delta) for k in range(n + 1)])
    grid = np.concatenate([np.linspace(0, 1, 401), lows[1:] - 1e-9, highs[:-1] + 1e-9])
    grid = grid[(grid >= 0) & (grid <= 1)]
    pmf = binom.pmf(np.arange(n + 1)[None, :], n, grid[:, None])
    fail_low = (pmf * (lows[None, :] > grid[:, None])).sum(1)
    fail_high = (pmf * (highs[None, :] < grid[:, None])).sum(1)
    assert fail_low.max() <= delta + 1e-9 and fail_high.max() <= delta + 1e-9
    assert fail_low.max() >= delta - 1e-6 and fail_high.max() >= delta - 1e-6
