"""Exact one-sided Clopper-Pearson bounds for a binomial proportion, and what they need of n.

Every held-out certificate in `coreprune.certify` reduces to counting how many of n i.i.d.
held-out examples have some property (the pruned model agrees with the dense one, is right,
exceeds a layer error...) and bounding the probability p of that property. Clopper-Pearson is
the exact bound: for every p and n, P(lower(K) > p) <= delta where K ~ Binomial(n, p), with no
normal approximation and no assumption beyond independence. The bounds are quantiles of Beta
distributions (scipy.stats.beta), the standard identity between binomial tails and Beta CDFs.
"""

from __future__ import annotations

import math

from scipy.stats import beta

__all__ = ["clopper_pearson_lower", "clopper_pearson_upper", "min_holdout_size"]


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


def clopper_pearson_lower(successes: int, n: int, delta: float) -> float:
    """The one-sided lower (1 - delta) confidence bound on p from `successes` out of `n`.

    It is the p at which P(Binomial(n, p) >= successes) = delta, i.e. the delta-quantile of
    Beta(successes, n - successes + 1); 0 when successes = 0. For successes = n it is
    delta ** (1 / n) exactly.
    """
    _check_counts(successes, n, delta)
    if successes == 0:
        return 0.0
    if successes == n:
        return float(delta ** (1.0 / n))  # closed form, no quantile rounding
    return float(beta.ppf(delta, successes, n - successes + 1))


def clopper_pearson_upper(successes: int, n: int, delta: float) -> float:
    """The one-sided upper (1 - delta) confidence bound on p from `successes` out of `n`.

    The (1 - delta)-quantile of Beta(successes + 1, n - successes); 1 when successes = n, and
    1 - delta ** (1 / n) when successes = 0.
    """
    _check_counts(successes, n, delta)
    if successes == n:
        return 1.0
    if successes == 0:
        return float(1.0 - delta ** (1.0 / n))
    return float(beta.ppf(1.0 - delta, successes + 1, n - successes))


def min_holdout_size(delta: float, informative: float = 0.5) -> int:
    """The smallest n at which a perfect score (n out of n) certifies p > `informative`.

    The lower bound at a perfect score is delta ** (1 / n), which exceeds `informative` iff
    n > log(delta) / log(informative). Below that size no outcome of the held-out set can
    certify anything better than a coin flip, so asking for a certificate is an error.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    if not 0 < informative < 1:
        raise ValueError(f"informative must lie in (0, 1), got {informative}")
    n = math.floor(math.log(delta) / math.log(informative)) + 1
    while delta ** (1.0 / n) <= informative:  # guard the floor against rounding at the boundary
        n += 1
    return n
