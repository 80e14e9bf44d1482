"""Upper bounds on each unit's sensitivity to each next unit (DESIGN §1, docs/theory.md §2).

For next unit j the weighted points are v_l = |U_jl| P_l, with P the unit vectors in query
coordinates, and s_ij = sup_y |v_i . y| / sum_l |v_l . y|. Three bounds, all valid:

- ``paper``: the L-infinity coresets of Tukan et al. from the Löwner ellipsoid and Carathéodory,
  peeled round by round (Theorem 2);
- ``leverage``: sqrt of the L2 leverage score of v_i, since sum_l |v_l . y| >= ||V y||_2
  (Theorem 3); cheap and batched;
- ``exact``: the linear program whose value is 1/s_ij, certified through its dual (Theorem 1).

Each returns a (k x n) matrix. ``auto`` takes the entry-wise minimum of ``leverage`` and, when the
layer is small enough for it to finish in seconds (``PAPER_BUDGET`` unit-rows), ``paper``; the
result's ``bounds`` says which ran. ``all`` is the minimum of the three.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linprog
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from coreprune.geometry import caratheodory, linear_span, mvee

METHODS = ("auto", "paper", "leverage", "exact", "all")
PAPER_BUDGET = 5_000  # units x distinct next units above which "auto" skips the paper bound
_RANK_RTOL = 1e-12


@dataclass
class Sensitivities:
    """Per next unit (k x n) and per unit (n,) bounds, and which bounds produced them."""

    per_next: torch.Tensor
    bounds: dict[str, torch.Tensor] = field(default_factory=dict)
    dim: int = 0

    @property
    def per_unit(self) -> torch.Tensor:
        """s^_i = max_j s^_ij: one sensitivity per unit, across all next units."""
        return self.per_next.max(dim=0).values

    @property
    def total(self) -> float:
        """t = sum_i s^_i."""
        return float(self.per_unit.sum())


def span_coordinates(points: torch.Tensor) -> torch.Tensor:
    """The rows of `points` in an orthonormal basis of their row space (an exact isometry there).

    Directions whose singular value is below 1e-12 of the largest are numerically zero and are
    dropped; docs/theory.md §6 states this tolerance.
    """
    _, sv, vh = torch.linalg.svd(points, full_matrices=False)
    if sv.numel() == 0 or sv[0] == 0:
        return points.new_zeros(points.shape[0], 0)
    rank = int((sv > _RANK_RTOL * sv[0]).sum())
    return points @ vh[:rank].T


@contextmanager
def _one_thread() -> Iterator[None]:
    """Thousands of tiny factorisations run faster on one thread than fighting over several."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


def compute_sensitivities(
    units: torch.Tensor,
    reading: torch.Tensor,
    method: str = "auto",
    *,
    tol: float = 1e-3,
    progress: bool = False,
) -> Sensitivities:
    """Bounds for units (n x D, already in query coordinates) read through U = `reading` (k x n)."""
    if method not in METHODS:
        raise ValueError(f"sensitivity must be one of {METHODS}, got {method!r}")
    coords = span_coordinates(units)
    weights = reading.abs()
    work = units.shape[0] * torch.unique(weights, dim=0).shape[0]
    auto = ("paper", "leverage") if work <= PAPER_BUDGET else ("leverage",)
    wanted = {"auto": auto, "all": ("paper", "leverage", "exact")}.get(method, (method,))
    table: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "paper": lambda v: paper_bound(v, tol=tol),
        "leverage": leverage_bound,
        "exact": exact_bound,
    }
    bounds = {}
    with _one_thread():
        for name in wanted:
            bounds[name] = _per_next(
                weights, coords, table[name], desc=f"sensitivity ({name})", progress=progress
            )
    per_next = torch.stack(list(bounds.values())).min(dim=0).values
    return Sensitivities(per_next, bounds, coords.shape[1])


def _per_next(
    weights: torch.Tensor,
    coords: torch.Tensor,
    bound: Callable[[torch.Tensor], torch.Tensor],
    *,
    desc: str,
    progress: bool,
) -> torch.Tensor:
    """Apply a one-next-unit bound to every row of U; identical rows are computed once."""
    unique, inverse = torch.unique(weights, dim=0, return_inverse=True)
    rows: Iterable[torch.Tensor] = unique
    if progress and len(unique) > 1:
        rows = tqdm(unique, desc=desc, leave=False)
    out = torch.stack([_one_next(w, coords, bound) for w in rows])
    return out[inverse]


def _one_next(
    w: torch.Tensor, coords: torch.Tensor, bound: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """s_i. for one next unit: zero for units it does not read, the bound for the rest."""
    s = torch.zeros_like(w)
    active = torch.nonzero((w > 0) & (coords.abs().sum(dim=1) > 0)).flatten()
    if active.numel() == 0:
        return s
    v = span_coordinates(w[active, None] * coords[active])
    if v.shape[1] == active.numel():
        s[active] = 1.0  # linearly independent: every unit is alone in some direction
    else:
        s[active] = bound(v)
    return s


def leverage_bound(v: torch.Tensor) -> torch.Tensor:
    """s_i <= sqrt(tau_i), tau_i the leverage of row i of v (Theorem 3); v has full column rank."""
    q, _ = torch.linalg.qr(v)
    tau = (q * q).sum(dim=1)
    return torch.sqrt(tau).mul_(1.0 + 1e-9).clamp_(max=1.0)


def paper_bound(v: torch.Tensor, *, tol: float = 1e-3) -> torch.Tensor:
    """The peeled L-infinity coresets of Theorem 2: a unit taken in round r gets 1/(1 + sum 1/alpha)."""
    n = v.shape[0]
    s = torch.ones(n, dtype=v.dtype, device=v.device)
    remaining = torch.arange(n, device=v.device)
    inv_alpha_sum = 0.0
    while remaining.numel() > 0:
        taken, alpha = _linf_coreset(v[remaining], tol)
        s[remaining[taken]] = 1.0 / (1.0 + inv_alpha_sum)
        if alpha is None:
            break
        inv_alpha_sum += 1.0 / alpha
        keep = torch.ones(remaining.numel(), dtype=torch.bool, device=v.device)
        keep[taken] = False
        remaining = remaining[keep]
    return s


def _linf_coreset(points: torch.Tensor, tol: float) -> tuple[torch.Tensor, float | None]:
    """Indices S and alpha with max_l |p_l . y| <= alpha * max_{l in S} |p_l . y| for every y.

    alpha is None when S is every point (no bound is needed for the rest).
    """
    m = points.shape[0]
    everything = torch.arange(m, device=points.device)
    basis = linear_span(points)
    rank = basis.shape[1]
    if rank == 0:
        return everything, None
    coords = points @ basis
    off_span = (points - coords @ basis.T).norm() / points.norm()
    if m <= rank or off_span > 1e-9:
        return everything, None
    weights = mvee(coords, tol=tol, centered=True).weights.to(coords)
    moment = (coords * weights[:, None]).T @ coords
    lam, axes = torch.linalg.eigh(moment)
    if lam[0] <= 1e-12 * lam[-1]:
        return everything, None
    # rho = max_l p_l^T M^{-1} p_l, recomputed exactly: the containment every bound rests on.
    rho = float(((coords @ axes) ** 2 / lam).sum(dim=1).max())
    alpha = math.sqrt(rho * rank) * (1.0 + 1e-9)
    taken = torch.zeros(m, dtype=torch.bool, device=points.device)
    for k in range(rank):
        # Axis end point e_k = sqrt(lam_k) w_k = sum_l c_l p_l with sum |c_l| <= 1 (theory §2.2).
        c = weights * (coords @ axes[:, k]) / math.sqrt(lam[k])
        support = torch.nonzero(c != 0).flatten()
        signed = coords[support] * torch.sign(c[support])[:, None]
        idx, _ = caratheodory(signed, c[support].abs())
        taken[support[idx]] = True
    return torch.nonzero(taken).flatten(), alpha


def exact_bound(v: torch.Tensor) -> torch.Tensor:
    """s_i = 1 / max{mu : mu v_i = sum_l beta_l v_l, |beta_l| <= 1}, one LP per unit (Theorem 1).

    The solver's answer is certified: beta is clipped into the box and the leftover residual r
    costs a factor (1 + ||r|| / sigma_min(v)), so the returned value is a true upper bound.
    """
    n, dim = v.shape
    sigma_min = float(torch.linalg.svdvals(v)[-1])
    vt = v.T.cpu().numpy()
    out = torch.ones(n, dtype=v.dtype)
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
        if mu <= 0:
            continue
        residual = float(np.linalg.norm(vt @ beta - mu * vt[:, i]))
        out[i] = min(1.0, (1.0 + residual / sigma_min) / mu * (1.0 + 1e-9))
    return out.to(v.device)
