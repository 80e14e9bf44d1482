"""The exact bound (Theorem 1): the linear program whose value is 1/s_ij, one per unit.

The solver's answer is not trusted as such: it is certified through its dual, with the residual
and its rounding charged, so the bound holds even where the solver is inexact; where it fails
the trivial bound 1 stands.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linprog

from coreprune.coreset.sensitivity.rounding import (
    _EPS,
    _equilibrate,
    _refuse,
    _sigma_range,
    charged,
    range_charge,
)


def exact_bound(v: torch.Tensor, *, slack: float = 0.0) -> torch.Tensor:
    """s_i = 1 / max{mu : mu v_i = sum_l beta_l v_l, |beta_l| <= 1}, one LP per unit (Theorem 1).

    The solver's answer is certified: beta is clipped into the box and the leftover residual r
    (plus a bound on its own rounding) costs a factor (1 + ||r|| / sigma), sigma a certified
    lower bound on sigma_min(v); `slack` is charged through Lemma 6.1.
    """
    bound, _ = _exact(v, slack, 0.0)
    return bound


def _exact(v: torch.Tensor, slack: float, _tol: float) -> tuple[torch.Tensor, float]:
    n, dim = v.shape
    out = torch.ones(n, dtype=v.dtype)
    if n <= dim:
        return out.to(v.device), 0.0
    if slack == 0:  # a direct call: equilibrate here (exact; _one_next has done it already)
        v, _ = _equilibrate(v, torch.zeros_like(v))
    sigma, low, hi = _sigma_range(v)
    if not low > 0:
        raise _refuse(v, sigma, hi, 0.0)
    delta = range_charge(v, slack)
    vt = v.T.cpu().numpy()
    norms = np.linalg.norm(vt, axis=0)
    for i in range(n):
        a_eq = np.hstack([vt, -vt[:, i : i + 1]])
        cost = np.zeros(n + 1)
        cost[-1] = -1.0
        bounds = [(-1.0, 1.0)] * n + [(0.0, None)]
        res = linprog(cost, A_eq=a_eq, b_eq=np.zeros(dim), bounds=bounds, method="highs")
        if res.status != 0 or res.x is None:
            continue  # keep the trivial bound 1
        beta = np.clip(res.x[:n], -1.0, 1.0)
        mu = float(res.x[-1])
        if not mu > 0:
            continue
        residual = float(np.linalg.norm(vt @ beta - mu * vt[:, i]))
        residual += (n + 2) * _EPS * (float(np.abs(beta) @ norms) + mu * float(norms[i]))
        out[i] = min(1.0, (1.0 + residual / low) / mu * (1.0 + 1e-12))
    return charged(out.to(v.device), n, delta), delta
