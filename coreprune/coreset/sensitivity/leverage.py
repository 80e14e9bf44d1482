"""The leverage bound (Theorem 3): cheap, batched, valid for every layer.

sum_l |v_l . y| >= ||V y||_2, so s_i <= sqrt(tau_i) with tau_i the L2 leverage score of v_i,
read off one QR factorisation of the weighted units.
"""

from __future__ import annotations

import math

import torch

from coreprune.coreset.sensitivity.rounding import (
    _EPS,
    _refuse,
    _sigma_range,
    charged,
    range_charge,
)


def leverage_bound(v: torch.Tensor, *, slack: float = 0.0) -> torch.Tensor:
    """s_i <= sqrt(tau_i), tau_i the leverage of row i of v (Theorem 3), with rounding charged.

    The QR's backward error (measured) and `slack` (a bound on ||V - v||_F for the exact V) are
    charged through Lemma 6.1, and the computed Q's departure from orthonormality by a factor.
    """
    bound, _ = _leverage(v, slack, 0.0)
    return bound


def _leverage(v: torch.Tensor, slack: float, _tol: float) -> tuple[torch.Tensor, float]:
    m, dim = v.shape
    if m <= dim:
        return torch.ones(m, dtype=v.dtype, device=v.device), 0.0
    q, r = torch.linalg.qr(v)
    qr_residual = float((q @ r - v).norm()) + (dim + 2) * _EPS * float(q.norm() * r.norm())
    gram = q.T @ q - torch.eye(dim, dtype=v.dtype, device=v.device)
    omega = float(gram.norm()) + (m + 2) * _EPS * float(q.norm()) ** 2  # + rounding of Q^T Q
    if omega >= 0.5:
        raise _refuse(v, *_sigma_range(v)[::2], qr_residual)
    delta = range_charge(v, slack + qr_residual)
    tau = (q * q).sum(dim=1)
    s_hat = torch.sqrt(tau) / math.sqrt(1.0 - omega) * (1.0 + 4 * (dim + 2) * _EPS)
    return charged(s_hat, m, delta), delta
