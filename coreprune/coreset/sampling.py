"""Sensitivity sampling with a uniform guarantee whose constants are all written out.

Theorem 4 of docs/theory.md: draw m units i.i.d. with q_i = s_i / t and weight each draw by
t / (m s_i). For a positively homogeneous, piecewise-linear activation, with probability at least
1 - delta, for every query y in a D-dimensional space and every one of the k next units,

    |z_j(y) - z^_j(y)| <= eps * e_j(y)   with   eps = t * sqrt(32 (ln(4k/delta) + ln Pi(2m)) / m),

where Pi(N) <= 2 sum_{i<D} C(n-1, i) * sum_{i<=D+1} C(N, i) bounds the growth function of the
ranges (Cover's region count times Sauer-Shelah for affine half-spaces).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _log_binomial_sum(n: int, upto: int) -> float:
    """ln sum_{i=0}^{upto} C(n, i), stably."""
    upto = min(upto, n)
    if upto < 0:
        return -math.inf
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(upto + 1)
    ]
    top = max(terms)
    return top + math.log(sum(math.exp(x - top) for x in terms))


def log_growth(draws: int, n_units: int, dim: int) -> float:
    """ln of the bound on Pi(2m): regions of n central hyperplanes in R^D times Sauer-Shelah."""
    regions = math.log(2.0) + _log_binomial_sum(max(n_units - 1, 0), dim - 1)
    return regions + _log_binomial_sum(2 * draws, dim + 1)


def sample_eps(
    draws: int, delta: float, total: float, n_units: int, dim: int, n_next: int
) -> float:
    """The eps that Theorem 4 certifies for m = `draws` i.i.d. draws."""
    if draws < 1:
        return math.inf
    log_terms = math.log(4.0 * n_next / delta) + log_growth(draws, n_units, dim)
    return total * math.sqrt(32.0 * log_terms / draws)


def sample_size(eps: float, delta: float, total: float, n_units: int, dim: int, n_next: int) -> int:
    """The least m for which `sample_eps` is at most eps (found by doubling, then bisection)."""
    hi = 1
    while sample_eps(hi, delta, total, n_units, dim, n_next) > eps:
        hi *= 2
        if hi > 2**62:
            raise ValueError(f"eps={eps} needs more than 2^62 draws; ask for a larger eps")
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sample_eps(mid, delta, total, n_units, dim, n_next) > eps:
            lo = mid
        else:
            hi = mid
    return hi


def anytime_delta(delta: float, draws: int) -> float:
    """delta / (m (m+1)): summed over all m >= 1 it is delta, so a stopping time may pick m."""
    return delta / (draws * (draws + 1.0))


def draw_counts(probs: torch.Tensor, draws: int, generator: torch.Generator | None) -> torch.Tensor:
    """Counts of m i.i.d. categorical draws (a multinomial vector), reproducible from `generator`."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    p = probs.detach().cpu().numpy().astype(np.float64)
    counts = np.random.default_rng(seed).multinomial(draws, p / p.sum())
    return torch.as_tensor(counts, dtype=torch.int64)


def draw_until_distinct(
    probs: torch.Tensor, distinct: int, generator: torch.Generator | None, max_draws: int = 10**8
) -> tuple[torch.Tensor, int]:
    """Draw i.i.d. until `distinct` different units have appeared; return counts and m."""
    support = int((probs > 0).sum())
    if distinct > support:
        raise ValueError(
            f"keep={distinct} but only {support} units have positive sensitivity; the others are "
            f"inert on the query space and are never drawn: use mode='select' or keep <= {support}"
        )
    counts = torch.zeros(probs.numel(), dtype=torch.int64)
    seen = 0
    drawn = 0
    chunk = max(64, 4 * distinct)
    while drawn < max_draws:
        batch = torch.multinomial(
            probs.cpu().double(), chunk, replacement=True, generator=generator
        )
        for pos, unit in enumerate(batch.tolist()):
            if counts[unit] == 0:
                seen += 1
            counts[unit] += 1
            if seen == distinct:
                return counts, drawn + pos + 1
        drawn += chunk
        chunk = min(chunk * 2, 1 << 20)
    raise RuntimeError(
        f"{max_draws} draws did not reach {distinct} distinct units (some sensitivities are tiny); "
        "use mode='select' for this keep"
    )
