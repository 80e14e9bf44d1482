"""`compute_sensitivities`: the chosen bounds for every next unit, with their provenance.

Checks the inputs, runs each bound once per distinct row of |U| (identical next units share
one computation), on one thread (thousands of tiny factorisations run faster that way), and
takes the entry-wise minimum of the bounds, all of them valid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from coreprune.coreset.query import QuerySpace, _real_tensor
from coreprune.coreset.sensitivity.exact import _exact
from coreprune.coreset.sensitivity.leverage import _leverage
from coreprune.coreset.sensitivity.paper import _paper
from coreprune.coreset.sensitivity.result import _COMPUTED, Provenance, Sensitivities
from coreprune.coreset.sensitivity.rounding import _EPS, _equilibrate

METHODS = ("auto", "paper", "leverage", "exact", "all")
PAPER_BUDGET = 5_000  # units x distinct next units above which "auto" skips the paper bound


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


def _check_matrix(value: object, name: str, shape_hint: str) -> torch.Tensor:
    """A finite, real, 2-D tensor, detached, as float64."""
    value = _real_tensor(value, name, shape_hint)
    if value.ndim != 2:
        raise ValueError(f"{name} must be 2-D ({shape_hint}), got shape {tuple(value.shape)}")
    out = value.detach().to(torch.float64)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} contains NaN or Inf; fix the weights first")
    return out


def compute_sensitivities(
    units: torch.Tensor,
    reading: torch.Tensor,
    method: str = "auto",
    *,
    tol: float = 1e-3,
    progress: bool = False,
    query: QuerySpace | None = None,
    error: torch.Tensor | None = None,
) -> Sensitivities:
    """Bounds for units (n x D, already in query coordinates) read through U = `reading` (k x n).

    `query` is the query space the units were lifted into (None: all of R^(D-1), data-free); it
    is recorded in the result's provenance. `error` (n x D, optional) bounds, entry by entry, how
    far `units` may be from the exact unit vectors (e.g. the rounding of a lifting product); it
    is charged into the bounds (theory §6). Raises ValueError for a layer too ill-conditioned to
    certify.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"sensitivity must be one of {METHODS}, got {method!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    units = _check_matrix(units, "units", "n units x D coordinates")
    n, dim = units.shape
    if n == 0 or dim == 0:
        raise ValueError(f"units must have at least one unit and one coordinate, got {(n, dim)}")
    reading = _check_matrix(reading, "reading", f"next units x {n}")
    if reading.shape[1] != n or reading.shape[0] == 0:
        raise ValueError(
            f"reading must have shape (k, {n}) with k >= 1 (one column per unit), "
            f"got {tuple(reading.shape)}"
        )
    reading = reading.to(units.device)
    if query is not None:
        if not isinstance(query, QuerySpace):
            raise TypeError(f"query must be a QuerySpace, got {type(query).__name__}")
        if query.rank + 1 != dim:
            raise ValueError(
                f"units have {dim} coordinates but the query space has rank {query.rank} "
                f"(expected {query.rank + 1} = rank + 1); lift the units with query.lifting()"
            )
    if error is None:
        error = torch.zeros_like(units)
    else:
        error = _check_matrix(error, "error", f"{n} x {dim}, like units").to(units.device)
        if error.shape != units.shape or bool((error < 0).any()):
            raise ValueError(f"error must be nonnegative with shape {(n, dim)}")
    provenance = Provenance.of(units, reading, query)
    weights = reading.abs()
    work = n * torch.unique(weights, dim=0).shape[0]
    auto = ("paper", "leverage") if work <= PAPER_BUDGET else ("leverage",)
    wanted = {"auto": auto, "all": ("paper", "leverage", "exact")}.get(method, (method,))
    bounds = {}
    charge = 0.0
    with _one_thread():
        for name in wanted:
            bounds[name], used = _per_next(
                weights, units, error, name, tol, desc=f"sensitivity ({name})", progress=progress
            )
            charge = max(charge, used)
    per_next = torch.stack(list(bounds.values())).min(dim=0).values
    live_cols = int(((units != 0) | (error != 0)).any(dim=0).sum())
    return Sensitivities(per_next, bounds, min(n, live_cols), provenance, charge, _mark=_COMPUTED)


def _per_next(
    weights: torch.Tensor,
    units: torch.Tensor,
    error: torch.Tensor,
    name: str,
    tol: float,
    *,
    desc: str,
    progress: bool,
) -> tuple[torch.Tensor, float]:
    """Apply a one-next-unit bound to every row of U; identical rows are computed once."""
    unique, inverse = torch.unique(weights, dim=0, return_inverse=True)
    rows: Iterable[torch.Tensor] = unique
    if progress and len(unique) > 1:
        rows = tqdm(unique, desc=desc, leave=False)
    results = [_one_next(w, units, error, name, tol) for w in rows]
    out = torch.stack([s for s, _ in results])
    return out[inverse], max(c for _, c in results)


def _one_next(
    w: torch.Tensor, units: torch.Tensor, error: torch.Tensor, name: str, tol: float
) -> tuple[torch.Tensor, float]:
    """s_i. for one next unit, and the rounding charge used.

    Zero for units it does not read and for units that are exactly zero on Q (zero coordinates
    and zero error bound); 1 for every read unit when there are no more of them than coordinates
    (the truth when they are independent, an upper bound otherwise); the bound for the rest.
    """
    s = torch.zeros_like(w)
    live = (units != 0).any(dim=1) | (error != 0).any(dim=1)
    active = torch.nonzero((w > 0) & live).flatten()
    if active.numel() == 0:
        return s, 0.0
    scale = w[active, None]
    v = scale * units[active]
    err = scale * error[active]
    cols = (v != 0).any(dim=0) | (err != 0).any(dim=0)  # exactly-zero columns carry no query
    v, err = _equilibrate(v[:, cols], err[:, cols])
    if v.shape[0] <= v.shape[1]:
        s[active] = 1.0
        return s, 0.0
    # |v - v_exact| <= err + one rounding of the product by w, entry by entry.
    slack = float(torch.sqrt(((err + _EPS * v.abs()) ** 2).sum()))
    bound, charge = _BOUNDS[name](v, slack, tol)
    s[active] = bound
    return s, charge


_BOUNDS: dict[str, Callable[[torch.Tensor, float, float], tuple[torch.Tensor, float]]] = {
    "paper": lambda v, slack, tol: _paper(v, slack, tol),
    "leverage": _leverage,
    "exact": _exact,
}
