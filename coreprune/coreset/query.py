"""The query space Q: the set of layer inputs x that a certificate covers (docs/theory.md §1).

Q is all of R^d_in (data-free, the default) or an affine subspace {a + B z}. Either way the
lifted query x~ = [x; 1] equals L [z; 1] for a lifting matrix L, so every computation runs on
the projected unit vectors P L, in the coordinates y = [z; 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _real_tensor(value: object, name: str, shape_hint: str) -> torch.Tensor:
    """Refuse non-tensors, complex/bool dtypes and meta tensors before any work.

    Used by the query space's constructors and by `compute_sensitivities` (its units, reading
    and error), so both refuse such input in the same words.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor ({shape_hint}), got {type(value).__name__}")
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must be a real tensor, got {value.dtype}; pass real values")
    if value.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (it has no values); materialise it first")
    return value


@dataclass(frozen=True)
class QuerySpace:
    """Inputs x = offset + basis @ z for z in R^r; `basis is None` means all of R^dim."""

    dim: int
    basis: torch.Tensor | None = None
    offset: torch.Tensor | None = None

    @staticmethod
    def full(dim: int) -> QuerySpace:
        """All of R^dim: the data-free setting of the paper."""
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        if dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        return QuerySpace(dim)

    @staticmethod
    def subspace(basis: torch.Tensor, offset: torch.Tensor | None = None) -> QuerySpace:
        """The affine subspace offset + span(basis); basis is (dim, r) with independent columns."""
        basis = _real_tensor(basis, "basis", "dim x r")
        if basis.ndim != 2 or basis.shape[1] < 1:
            raise ValueError(
                f"basis must be 2-D (dim x r) with r >= 1, got shape {tuple(basis.shape)}"
            )
        if not torch.isfinite(basis).all():
            raise ValueError("basis contains NaN or Inf")
        q, r = torch.linalg.qr(basis.detach().to(torch.float64))
        diag = r.diagonal().abs()
        if diag.min() <= 1e-10 * max(diag.max().item(), 1e-300):
            raise ValueError(
                "basis columns are linearly dependent; pass an independent set of directions"
            )
        if offset is not None:
            offset = _real_tensor(offset, "offset", f"({basis.shape[0]},)")
            if offset.shape != (basis.shape[0],):
                raise ValueError(
                    f"offset must have shape ({basis.shape[0]},), got {tuple(offset.shape)}"
                )
            if not torch.isfinite(offset).all():
                raise ValueError("offset contains NaN or Inf")
            offset = offset.detach().to(device=q.device, dtype=torch.float64).clone()
        return QuerySpace(basis.shape[0], q, offset)

    @staticmethod
    def from_calibration(inputs: torch.Tensor, rank: int, *, affine: bool = True) -> QuerySpace:
        """The top-`rank` principal subspace of calibration inputs (n x dim), through their mean.

        The certificate then covers exactly that subspace; real inputs that stick out of it are
        not covered (measure how far they stick out with `QuerySpace.residual`).
        """
        inputs = _real_tensor(inputs, "inputs", "n x dim")
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise TypeError(
                f"rank must be an int (the subspace dimension), got {type(rank).__name__}"
            )
        if not isinstance(affine, bool):
            raise TypeError(f"affine must be a bool, got {type(affine).__name__}")
        if inputs.ndim != 2 or inputs.shape[0] < 1:
            raise ValueError(
                f"inputs must be 2-D (n x dim) and non-empty, got shape {tuple(inputs.shape)}"
            )
        bad = ~torch.isfinite(inputs).all(dim=1)
        if bool(bad.any()):
            raise ValueError(
                f"inputs contain NaN or Inf in {int(bad.sum())} of {inputs.shape[0]} rows (e.g. row "
                f"{int(torch.nonzero(bad)[0])}); drop those rows (inputs[torch.isfinite(inputs)"
                ".all(1)]) or fix what produced them: a query space from them would cover nothing"
            )
        if not 1 <= rank <= inputs.shape[1]:
            raise ValueError(f"rank must be an int in [1, {inputs.shape[1]}], got {rank!r}")
        x = inputs.detach().to(torch.float64)
        mean = x.mean(0) if affine else torch.zeros_like(x[0])
        _, sv, vh = torch.linalg.svd(x - mean, full_matrices=False)
        keep = int((sv > 1e-10 * sv.max().clamp_min(1e-300)).sum().item())
        if keep < rank:
            raise ValueError(
                f"rank={rank} but the calibration inputs span only {keep} directions; lower rank"
            )
        return QuerySpace.subspace(vh[:rank].T, mean if affine else None)

    @property
    def rank(self) -> int:
        """dim Q."""
        return self.dim if self.basis is None else self.basis.shape[1]

    def lifting(self, device: torch.device | None = None) -> torch.Tensor:
        """L ((dim+1) x (rank+1)) with [x; 1] = L [z; 1]."""
        if self.basis is None:
            return torch.eye(self.dim + 1, dtype=torch.float64, device=device)
        lift = torch.zeros(self.dim + 1, self.rank + 1, dtype=torch.float64, device=device)
        lift[: self.dim, : self.rank] = self.basis.to(device)
        if self.offset is not None:
            lift[: self.dim, self.rank] = self.offset.to(device)
        lift[self.dim, self.rank] = 1.0
        return lift

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The nearest points of Q to the rows of x (n x dim)."""
        x = x.to(torch.float64)
        if self.basis is None:
            return x
        basis = self.basis.to(x.device)
        offset = (
            self.offset.to(x.device) if self.offset is not None else torch.zeros_like(basis[:, 0])
        )
        return offset + (x - offset) @ basis @ basis.T

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """Relative distance of each row of x from Q: ||x - proj(x)|| / ||x||."""
        x = x.to(torch.float64)
        return (x - self.project(x)).norm(dim=1) / x.norm(dim=1).clamp_min(1e-300)

    def describe(self) -> str:
        """A one-line statement of which inputs a certificate covers."""
        if self.basis is None:
            return f"all of R^{self.dim} (data-free)"
        kind = "affine" if self.offset is not None else "linear"
        return f"{kind} subspace of dimension {self.rank} in R^{self.dim}"
