"""The query space Q: the set of layer inputs x that a certificate covers (DESIGN §1).

Q is all of R^d_in (data-free, the default) or an affine subspace {a + B z}. Either way the
lifted query x~ = [x; 1] equals L [z; 1] for a lifting matrix L, so every computation runs on
the projected unit vectors P L, in the coordinates y = [z; 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuerySpace:
    """Inputs x = offset + basis @ z for z in R^r; `basis is None` means all of R^dim."""

    dim: int
    basis: torch.Tensor | None = None
    offset: torch.Tensor | None = None

    @staticmethod
    def full(dim: int) -> QuerySpace:
        """All of R^dim: the data-free setting of the paper."""
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        return QuerySpace(dim)

    @staticmethod
    def subspace(basis: torch.Tensor, offset: torch.Tensor | None = None) -> QuerySpace:
        """The affine subspace offset + span(basis); basis is (dim, r) with independent columns."""
        if not isinstance(basis, torch.Tensor):
            raise TypeError(f"basis must be a torch.Tensor (dim x r), got {type(basis).__name__}")
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
            if not isinstance(offset, torch.Tensor):
                raise TypeError(f"offset must be a torch.Tensor, got {type(offset).__name__}")
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
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a torch.Tensor (n x dim), got {type(inputs).__name__}")
        if inputs.ndim != 2 or inputs.shape[0] < 1:
            raise ValueError(
                f"inputs must be 2-D (n x dim) and non-empty, got shape {tuple(inputs.shape)}"
            )
        if not torch.isfinite(inputs).all():
            raise ValueError("inputs contain NaN or Inf")
        if not isinstance(rank, int) or not 1 <= rank <= inputs.shape[1]:
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
