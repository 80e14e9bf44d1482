"""Theorem 4's sample bound (docs/theory.md) on cases small enough to work by hand:

eps = t sqrt(32 (ln(4k / delta) + ln Pi(2m)) / m),
Pi(N) <= 2 sum_{i<D} C(n-1, i) * sum_{i<=D+1} C(N, i).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from coreprune.coreset.sampling import log_growth, sample_eps, sample_size

# n = 2 units, D = 1 query dimension, k = 1 next unit, delta = 1/2, t = 1:
# ln(4k / delta) = ln 8; one hyperplane through the origin of R^1 leaves 2 regions
# (2 C(1, 0) = 2), and sum_{i<=2} C(2m, i) = 1 + 2m + m(2m - 1).
SMALL: dict[str, Any] = {"delta": 0.5, "total": 1.0, "n_units": 2, "dim": 1, "n_next": 1}


@pytest.mark.parametrize(
    ("draws", "pi"),
    [(1, 2 * (1 + 2 + 1)), (2, 2 * (1 + 4 + 6)), (3, 2 * (1 + 6 + 15))],
)
def test_growth_bound_by_hand_in_one_dimension(draws: int, pi: int) -> None:
    assert log_growth(draws, 2, 1) == pytest.approx(math.log(pi), rel=1e-12)


def test_growth_bound_by_hand_in_two_dimensions() -> None:
    # 3 lines through the origin of R^2 cut it into 6 sectors: 2 (C(2, 0) + C(2, 1)) = 6;
    # with m = 2: sum_{i<=3} C(4, i) = 1 + 4 + 6 + 4 = 15
    assert log_growth(2, 3, 2) == pytest.approx(math.log(6 * 15), rel=1e-12)


@pytest.mark.parametrize(
    ("draws", "pi"),
    [(1, 8), (2, 22), (3, 44)],
)
def test_sample_eps_by_hand(draws: int, pi: int) -> None:
    want = math.sqrt(32.0 * (math.log(8.0) + math.log(pi)) / draws)
    assert sample_eps(draws, **SMALL) == pytest.approx(want, rel=1e-12)


def test_sample_eps_written_out_numbers_and_scaling() -> None:
    # m = 1: sqrt(32 ln 64) = 11.5362...; m = 2: sqrt(16 ln 176) = 9.0955...
    assert sample_eps(1, **SMALL) == pytest.approx(11.53622, abs=1e-5)
    assert sample_eps(2, **SMALL) == pytest.approx(9.09548, abs=1e-5)
    # linear in t; more next units and a smaller delta cost ln(4k / delta) more
    assert sample_eps(2, **{**SMALL, "total": 3.0}) == pytest.approx(3 * sample_eps(2, **SMALL))
    wider = sample_eps(2, **{**SMALL, "n_next": 4, "delta": 0.125})
    assert wider == pytest.approx(math.sqrt(16.0 * (math.log(128.0) + math.log(22.0))))
    assert sample_eps(0, **SMALL) == math.inf


def test_sample_size_by_hand() -> None:
    # eps(1) = 11.54 and eps(2) = 9.10, so 1 draw meets 12, 2 draws are needed for 10
    assert sample_size(12.0, **SMALL) == 1
    assert sample_size(10.0, **SMALL) == 2
    assert sample_size(sample_eps(3, **SMALL), **SMALL) == 3  # the bound itself is met


@pytest.mark.parametrize(
    "setting",
    [
        {"eps": 0.5, "delta": 0.1, "total": 1.0, "n_units": 50, "dim": 4, "n_next": 10},
        {"eps": 2.0, "delta": 0.01, "total": 1.7, "n_units": 8, "dim": 3, "n_next": 3},
    ],
)
def test_sample_size_is_the_least_sufficient_count(setting: dict[str, Any]) -> None:
    eps = setting["eps"]
    rest = {k: v for k, v in setting.items() if k != "eps"}
    m = sample_size(eps, **rest)
    assert m > 1
    assert sample_eps(m, **rest) <= eps
    assert sample_eps(m - 1, **rest) > eps
    # not only m - 1: every smaller count falls short
    assert all(sample_eps(j, **rest) > eps for j in range(1, m))


def test_sample_size_refuses_an_unreachable_eps() -> None:
    with pytest.raises(ValueError, match="more than 2\\^62 draws"):
        sample_size(1e-30, **SMALL)
