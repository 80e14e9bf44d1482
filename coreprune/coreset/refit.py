"""Choosing units for the refit: greedy structured OBS and a proven optimality gap.

Once the consumer is refitted by least squares, what a kept set S of units is worth is how well
the kept features reproduce the consumer's dense output on calibration data:

    E(S) = min over W, b of ||X_S W + 1 b^T - Y||_F^2,

X (N x f) the consumer's input features (a Linear's inputs, a conv's im2col patches: one column
per (channel, kernel offset); a flatten's positions), Y (N x k) the dense consumer's output on the
same rows, X_S the columns owned by the kept units (plus the columns no unit of this layer owns,
which always stay). `greedy_selection` removes units one batch at a time, each time the ones whose
removal raises the ridge objective least (the structured Optimal Brain Surgeon step: for a unit
owning the column block B, the rise is tr(W_B^T [H^-1]_BB^-1 W_B)), and updates the weights and
the inverse Gram matrix exactly after each batch. It returns the refitted weights of the kept
set, so the consumer needs no second fit.

`lower_bound` is what makes the choice checkable: no set of m units, with any refit, can have an
error below the returned value (docs/theory.md, "Choosing for the refit", Theorem G). The ratio
of the achieved error to it is a proven optimality gap on the calibration rows.

Everything here is float64 tensor algebra; nothing is an nn.Module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from coreprune.torch_utils import CHUNK_ELEMENTS

__all__ = [
    "DEFAULT_STEP_FRACTION",
    "GapCertificate",
    "RefitProblem",
    "Selection",
    "greedy_selection",
    "lower_bound",
]

DEFAULT_STEP_FRACTION = 0.05  # units removed per greedy step, as a fraction of the layer's units
_NULL_RTOL = 1e-12  # Gram eigenvalues below this times the largest are numerically null
_MARGIN_ULPS = 64  # rounding margin of the lower bound, in units of f * eps * ||Y_c||^2


@dataclass(frozen=True)
class RefitProblem:
    """The least-squares statistics of one consumer on calibration rows.

    `gram` is the centred Gram matrix X_c^T X_c (f x f) and `cross` X_c^T Y_c (f x k), with
    `energy` = ||Y_c||_F^2 and the column means `mean_x`, `mean_y` (zeros without a bias, when
    nothing is centred). `owner[c]` is the unit (0..n-1) that owns feature column c, or -1 for a
    column that always stays. `ridge` is relative (times the mean diagonal of the kept columns'
    Gram matrix, as `coreprune.surgery.rewire.lstsq_weights` does).
    """

    gram: torch.Tensor
    cross: torch.Tensor
    energy: float
    mean_x: torch.Tensor
    mean_y: torch.Tensor
    owner: torch.Tensor
    rows: int
    ridge: float
    bias: bool

    @staticmethod
    def from_rows(
        features: torch.Tensor,
        target: torch.Tensor,
        owner: torch.Tensor,
        *,
        ridge: float,
        bias: bool = True,
    ) -> RefitProblem:
        """Accumulate the statistics of `features` (N x f) and `target` (N x k) in float64."""
        if features.ndim != 2 or target.ndim != 2 or features.shape[0] != target.shape[0]:
            raise ValueError(
                f"features (N x f) and target (N x k) must be 2-D with the same rows, got "
                f"{tuple(features.shape)} and {tuple(target.shape)}"
            )
        if owner.ndim != 1 or owner.numel() != features.shape[1]:
            raise ValueError(f"owner must have one entry per feature column ({features.shape[1]})")
        if not math.isfinite(ridge) or ridge < 0:
            raise ValueError(f"ridge must be finite and >= 0, got {ridge}")
        n_rows, f = features.shape
        k = target.shape[1]
        if n_rows < 2:
            raise ValueError("the refit needs at least 2 calibration rows")
        dev = features.device
        zeros_x = torch.zeros(f, dtype=torch.float64, device=dev)
        zeros_y = torch.zeros(k, dtype=torch.float64, device=dev)
        mu_x = _column_sum(features) / n_rows if bias else zeros_x
        mu_y = _column_sum(target) / n_rows if bias else zeros_y
        gram = torch.zeros(f, f, dtype=torch.float64, device=dev)
        cross = torch.zeros(f, k, dtype=torch.float64, device=dev)
        energy = 0.0
        step = max(1, CHUNK_ELEMENTS // max(f, k, 1))
        for lo in range(0, n_rows, step):
            xc = features[lo : lo + step].to(torch.float64) - mu_x
            yc = target[lo : lo + step].to(torch.float64) - mu_y
            gram += xc.T @ xc
            cross += xc.T @ yc
            energy += float((yc * yc).sum())
        gram = (gram + gram.T) / 2
        owner = owner.to(device=dev, dtype=torch.long)
        return RefitProblem(gram, cross, energy, mu_x, mu_y, owner, n_rows, float(ridge), bias)

    @property
    def features(self) -> int:
        return self.gram.shape[0]

    def columns(self, keep: torch.Tensor) -> torch.Tensor:
        """Feature columns that stay when the units `keep` stay (always-kept columns included)."""
        kept = torch.zeros(int(self.owner.max()) + 2, dtype=torch.bool, device=self.owner.device)
        kept[keep.to(self.owner.device) + 1] = True
        kept[0] = True  # owner -1
        return torch.nonzero(kept[self.owner + 1]).flatten()

    def absolute_ridge(self, columns: torch.Tensor) -> float:
        """The ridge added to the diagonal when fitting on `columns` (relative to their Gram)."""
        diag = torch.diagonal(self.gram).index_select(0, columns)
        return self.ridge * float(diag.sum()) / max(columns.numel(), 1)

    def fit(self, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ridge least-squares weights (|columns| x k) and bias of a fit on `columns`."""
        g = self.gram.index_select(0, columns).index_select(1, columns)
        c = self.cross.index_select(0, columns)
        scale = float(torch.diagonal(g).mean()) if g.numel() else 0.0
        if scale == 0.0:  # every kept column is constant on the rows
            w = torch.zeros_like(c)
        else:
            w = torch.cholesky_solve(c, _ridge_cholesky(g, self.absolute_ridge(columns)))
        b = self.mean_y - self.mean_x.index_select(0, columns) @ w if self.bias else None
        return w, b

    def error(self, columns: torch.Tensor, weight: torch.Tensor) -> float:
        """||X_c[:, columns] W - Y_c||_F^2 on the rows (the bias fitted to the means)."""
        g = self.gram.index_select(0, columns).index_select(1, columns)
        c = self.cross.index_select(0, columns)
        value = self.energy - 2.0 * float((weight * c).sum()) + float((weight * (g @ weight)).sum())
        return max(value, 0.0)


@dataclass(frozen=True)
class GapCertificate:
    """How close a kept set is to the best possible one for the refit, on the calibration rows.

    `residual` is the kept set's relative refit error sqrt(E(S) / ||Y_c||^2) summed over the
    consumers, `lower` the proven lower bound on that quantity for *any* set of the same number of
    units with any refit (Theorem G), and `ratio` = residual / lower (1 is optimal; inf when the
    bound is 0, i.e. says nothing: then `informative` is False). `rows` calibration rows.
    """

    residual: float
    lower: float
    ratio: float
    rows: int
    kept: int
    units: int

    @property
    def informative(self) -> bool:
        return math.isfinite(self.ratio)

    def describe(self) -> str:
        if not self.informative:
            return (
                f"refit residual {self.residual:.3g}; no m-unit lower bound above 0 "
                f"(rank bound >= outputs), gap not certified"
            )
        return (
            f"refit residual {self.residual:.3g} >= lower bound {self.lower:.3g} for any "
            f"{self.kept}-unit choice: within {self.ratio:.3g}x of the best on {self.rows} rows"
        )


@dataclass(frozen=True)
class Selection:
    """Kept units (sorted), the refitted weights and bias of each consumer on its kept columns
    (`columns[i]` indexes problem i's features), and the optimality-gap certificate."""

    keep: torch.Tensor
    columns: tuple[torch.Tensor, ...]
    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor | None, ...]
    gap: GapCertificate
    fit_rows: int


def greedy_selection(
    problems: Sequence[RefitProblem],
    units: int,
    keep: int,
    *,
    step_fraction: float = DEFAULT_STEP_FRACTION,
    alive: torch.Tensor | None = None,
) -> Selection:
    """Keep `keep` of `units` units by greedy backward elimination on the summed ridge objective
    of every consumer in `problems` (each reads the same units through its own columns).

    Each step removes the ceil(step_fraction * units) alive units whose individual removal
    raises the objective least, jointly and exactly (weights and inverse Gram downdated by the
    batch's block). `alive` (bool, units) marks units that may be kept (others are removed
    first, e.g. all-zero units). The kept set's weights are then refitted from the Gram
    matrices, so they equal a fresh ridge fit on the kept columns.
    """
    if not problems:
        raise ValueError("greedy_selection needs at least one RefitProblem")
    if not 1 <= keep <= units:
        raise ValueError(f"keep must be in [1, {units}], got {keep}")
    if not 0 < step_fraction <= 1:
        raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction}")
    for p in problems:
        if int(p.owner.max()) >= units:
            raise ValueError(f"a problem's owner names unit {int(p.owner.max())} >= {units}")
    mask = torch.ones(units, dtype=torch.bool) if alive is None else alive.cpu().clone()
    states = [_State.start(p) for p in problems]
    if not bool(mask.all()):
        for s in states:
            s.remove(torch.nonzero(~mask).flatten())
    if int(mask.sum()) < keep:
        raise ValueError(f"only {int(mask.sum())} units may be kept, asked to keep {keep}")
    batch = max(1, math.ceil(step_fraction * units))
    while int(mask.sum()) > keep:
        candidates = torch.nonzero(mask).flatten()
        cost = sum((s.removal_costs(candidates) for s in states), torch.zeros(candidates.numel()))
        take = min(batch, int(mask.sum()) - keep)
        order = torch.argsort(cost, stable=True)[:take]
        gone = candidates[order]
        mask[gone] = False
        for s in states:
            s.remove(gone)
    kept = torch.nonzero(mask).flatten()
    columns, weights, biases = [], [], []
    for p in problems:
        cols = p.columns(kept)
        w, b = p.fit(cols)
        columns.append(cols)
        weights.append(w)
        biases.append(b)
    gap = gap_certificate(problems, columns, weights, kept.numel(), units)
    return Selection(kept, tuple(columns), tuple(weights), tuple(biases), gap, problems[0].rows)


def gap_certificate(
    problems: Sequence[RefitProblem],
    columns: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    kept: int,
    units: int,
) -> GapCertificate:
    """The achieved relative refit error of a kept set against `lower_bound` (Theorem G)."""
    energy = sum(p.energy for p in problems)
    achieved = sum(p.error(c, w) for p, c, w in zip(problems, columns, weights, strict=True))
    bound = sum(lower_bound(p, kept) for p in problems)
    residual = math.sqrt(achieved / energy) if energy > 0 else 0.0
    lower = math.sqrt(bound / energy) if energy > 0 else 0.0
    ratio = residual / lower if lower > 0 else (1.0 if residual == 0 else math.inf)
    return GapCertificate(residual, lower, ratio, problems[0].rows, kept, units)


def lower_bound(problem: RefitProblem, kept: int) -> float:
    """A value no set of `kept` units, with any refit, can beat: min over |S| = kept and W, b of
    ||X_S W + 1 b^T - Y||^2 >= ||Y_c||^2 - (sum of the r largest eigenvalues of Y_c^T P Y_c),
    P the projection onto the span of all centred feature columns, r the most columns a
    kept-unit set can have (Theorem G); with r >= k it is the full-width residual
    ||(I - P) Y_c||^2. The eigenvalues are those of K = C^T G^+ C; directions of G below
    _NULL_RTOL times its largest eigenvalue count as null, and _MARGIN_ULPS * f * eps *
    ||Y_c||^2 is subtracted for the rounding of the float64 sums (docs/theory.md)."""
    owner = problem.owner
    always = int((owner < 0).sum())
    per_unit = torch.bincount(owner[owner >= 0].cpu())
    largest = per_unit.sort(descending=True).values[:kept]
    r = always + int(largest.sum())
    if problem.energy == 0:
        return 0.0
    evals, evecs = torch.linalg.eigh(problem.gram)
    top = float(evals[-1].clamp_min(0.0))
    if top == 0.0:
        return problem.energy
    live = evals > _NULL_RTOL * top
    proj = (evecs[:, live].T @ problem.cross) / evals[live].sqrt()[:, None]  # (rank x k)
    explained = torch.linalg.eigvalsh(proj.T @ proj).flip(0).clamp_min(0.0)
    margin = _MARGIN_ULPS * problem.features * torch.finfo(torch.float64).eps * problem.energy
    return max(problem.energy - float(explained[:r].sum()) - margin, 0.0)


class _State:
    """One consumer's greedy state: alive columns, their weights and inverse ridge Gram."""

    def __init__(
        self, problem: RefitProblem, cols: torch.Tensor, w: torch.Tensor, inv: torch.Tensor
    ):
        self.problem, self.cols, self.w, self.inv = problem, cols, w, inv

    @staticmethod
    def start(problem: RefitProblem) -> _State:
        cols = torch.arange(problem.features, device=problem.gram.device)
        inv = torch.cholesky_inverse(_ridge_cholesky(problem.gram, problem.absolute_ridge(cols)))
        w = inv @ problem.cross
        return _State(problem, cols, w, inv)

    def removal_costs(self, candidates: torch.Tensor) -> torch.Tensor:
        """Rise of this consumer's ridge objective if each candidate unit alone were removed."""
        owner = self.problem.owner.index_select(0, self.cols).cpu()
        costs = torch.zeros(candidates.numel(), dtype=torch.float64)
        if self.cols.numel() == 0:
            return costs
        index = {int(u): i for i, u in enumerate(candidates.tolist())}
        sizes = torch.bincount(owner[owner >= 0], minlength=int(candidates.max()) + 1)
        for size in sorted(set(sizes[candidates].tolist())):
            if size == 0:
                continue
            group = [u for u in candidates.tolist() if int(sizes[u]) == size]
            blocks = torch.stack([torch.nonzero(owner == u).flatten() for u in group])
            blocks = blocks.to(self.inv.device)
            sub = self.inv[blocks[:, :, None], blocks[:, None, :]]  # (g, b, b)
            wb = self.w[blocks]  # (g, b, k)
            solved = torch.linalg.solve(sub, wb)
            rise = (wb * solved).sum(dim=(1, 2)).cpu()
            for u, value in zip(group, rise.tolist(), strict=True):
                costs[index[u]] = value
        return costs

    def remove(self, gone: torch.Tensor) -> None:
        """Drop the columns of units `gone`; update weights and inverse exactly (block OBS)."""
        owner = self.problem.owner.index_select(0, self.cols).cpu()
        drop = torch.isin(owner, gone.cpu())
        if not bool(drop.any()):
            return
        b = torch.nonzero(drop).flatten().to(self.inv.device)
        stay = torch.nonzero(~drop).flatten().to(self.inv.device)
        inv_bb = self.inv.index_select(0, b).index_select(1, b)
        inv_sb = self.inv.index_select(0, stay).index_select(1, b)
        solve = torch.linalg.solve(inv_bb, torch.cat([self.w.index_select(0, b), inv_sb.T], 1))
        k = self.w.shape[1]
        self.w = self.w.index_select(0, stay) - inv_sb @ solve[:, :k]
        inv_ss = self.inv.index_select(0, stay).index_select(1, stay)
        self.inv = inv_ss - inv_sb @ solve[:, k:]
        self.inv = (self.inv + self.inv.T) / 2
        self.cols = self.cols.index_select(0, stay)


def _ridge_cholesky(gram: torch.Tensor, ridge: float) -> torch.Tensor:
    """Cholesky factor of gram + ridge * I, the ridge raised (x100, from 1e-12 of the mean
    diagonal) until it factorises, as `lstsq_weights` does for a singular Gram matrix."""
    eye = torch.eye(gram.shape[0], dtype=torch.float64, device=gram.device)
    scale = float(torch.diagonal(gram).mean()) if gram.numel() else 0.0
    lam = ridge
    for _ in range(9):
        chol, info = torch.linalg.cholesky_ex(gram + lam * eye)
        if int(info) == 0:
            return chol
        lam = max(lam * 100.0, scale * 1e-12, 1e-300)
    raise RuntimeError(f"Cholesky failed even with ridge {lam:g}; the features are not finite")


def _column_sum(x: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    step = max(1, CHUNK_ELEMENTS // max(x.shape[1], 1))
    for lo in range(0, x.shape[0], step):
        total += x[lo : lo + step].to(torch.float64).sum(dim=0)
    return total
