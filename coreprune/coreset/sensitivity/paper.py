"""The paper bound (Theorem 2): L-infinity coresets from the Löwner ellipsoid and Carathéodory.

The L-infinity coresets of Tukan et al., peeled round by round: a unit taken in round r gets
1 / (1 + sum of 1/alpha over the earlier rounds). Each round's constant alpha is not assumed
from the theory but verified on the points it covers, with every rounding error charged. A
Löwner ellipsoid and Carathéodory reductions per round per next unit make it the slow one, so
``auto`` runs it only on layers within ``PAPER_BUDGET``.
"""

from __future__ import annotations

import math

import torch

from coreprune.coreset.sensitivity.rounding import _EPS, _sigma_range, charged, range_charge
from coreprune.geometry import caratheodory, mvee


def paper_bound(v: torch.Tensor, *, tol: float = 1e-3, slack: float = 0.0) -> torch.Tensor:
    """The peeled L-infinity coresets of Theorem 2: a unit taken in round r gets 1/(1 + sum 1/alpha)."""
    bound, _ = _paper(v, slack, tol)
    return bound


def _paper(v: torch.Tensor, slack: float, tol: float) -> tuple[torch.Tensor, float]:
    n = v.shape[0]
    s = torch.ones(n, dtype=v.dtype, device=v.device)
    if n <= v.shape[1]:
        return s, 0.0
    delta = range_charge(v, slack)
    remaining = torch.arange(n, device=v.device)
    inv_alpha_sum = 0.0
    while remaining.numel() > 0:
        taken, alpha = _linf_coreset(v[remaining], tol)
        # Rounded down by a few ulps so the division below cannot round the bound down.
        s[remaining[taken]] = 1.0 / ((1.0 + inv_alpha_sum) * (1.0 - 1e-12))
        if alpha is None:
            break
        inv_alpha_sum += 1.0 / alpha
        keep = torch.ones(remaining.numel(), dtype=torch.bool, device=v.device)
        keep[taken] = False
        remaining = remaining[keep]
    return charged(s, n, delta), delta


def _linf_coreset(points: torch.Tensor, tol: float) -> tuple[torch.Tensor, float | None]:
    """Indices S and alpha with max_l |p_l . y| <= alpha * max_{l in S} |p_l . y| for every y.

    alpha is None when S is every point (no bound is needed for the rest): when there are no more
    points than dimensions, when their smallest singular value is within rounding of zero, or
    when a solver fails. alpha is not assumed from the theory: it is verified on the points
    (Lemma 2.1 as stated in theory §2), with every rounding error charged.
    """
    m, dim = points.shape
    everything = torch.arange(m, device=points.device)
    if m <= dim:
        return everything, None
    _, low, _ = _sigma_range(points)
    if not low > 0:
        return everything, None
    try:
        weights = mvee(points, tol=tol, centered=True).weights.to(points)
    except (RuntimeError, ValueError):
        return everything, None
    moment = (points * weights[:, None]).T @ points
    lam, axes = torch.linalg.eigh(moment)
    if not float(lam[0]) > 0:
        return everything, None
    taken = torch.zeros(m, dtype=torch.bool, device=points.device)
    ends, totals, errs = [], [], []
    for k in range(dim):
        # Axis end point e_k = sqrt(lam_k) w_k = sum_l c_l p_l with sum |c_l| <= 1 (theory §2).
        c = weights * (points @ axes[:, k]) / math.sqrt(float(lam[k]))
        support = torch.nonzero(c != 0).flatten()
        if support.numel() == 0:
            return everything, None
        signed = points[support] * torch.sign(c[support])[:, None]
        try:
            idx, lamb = caratheodory(signed, c[support].abs())
        except RuntimeError:
            return everything, None
        lamb = lamb.to(points)
        taken[support[idx]] = True
        # e_k as used below is *this* combination, whatever Carathéodory's accuracy.
        ends.append(lamb @ signed[idx])
        size = idx.numel() + 2
        totals.append(float(lamb.sum()) * (1.0 + size * _EPS))
        errs.append(size * _EPS * float(lamb @ signed[idx].norm(dim=1)))
    alpha_bar = _coefficient_bound(torch.stack(ends), points)
    if alpha_bar is None:
        return everything, None
    # |e^_k . y| <= Lambda_k max_S |p . y| + err_k ||y||, ||y|| <= sqrt(m) max_l |p_l . y| / low.
    theta = alpha_bar * max(errs) * math.sqrt(m) / low
    if not theta < 0.5:
        return everything, None
    alpha = alpha_bar * max(totals) / (1.0 - theta) * (1.0 + 1e-12)
    return torch.nonzero(taken).flatten(), alpha


def _coefficient_bound(ends: torch.Tensor, points: torch.Tensor) -> float | None:
    """A certified a with max_l |p_l . y| <= a max_k |e_k . y| for all y, or None.

    p_l = E^T c_l - r_l: |p_l . y| <= ||c_l||_1 max_k |e_k . y| + ||r_l|| ||y||, and
    ||y|| <= ||E y|| / sigma_min(E) <= sqrt(D) max_k |e_k . y| / sigma_min(E).
    """
    dim = ends.shape[0]
    _, low, _ = _sigma_range(ends)
    if not low > 0:
        return None
    coef = torch.linalg.solve(ends.T, points.T)  # (dim x m): column l is c_l
    resid = (ends.T @ coef - points.T).norm(dim=0)
    resid = resid + (dim + 2) * _EPS * (
        (ends.T.abs() @ coef.abs()).norm(dim=0) + points.norm(dim=1)
    )
    per_point = coef.abs().sum(dim=0) * (1.0 + 4 * (dim + 2) * _EPS)
    per_point = per_point + resid * math.sqrt(dim) / low
    value = float(per_point.max())
    return value if math.isfinite(value) else None
