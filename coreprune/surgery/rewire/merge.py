"""Data-free rewiring: fold each removed unit into the kept unit that best reproduces it.

When phi is positively homogeneous (phi(lambda t) = lambda phi(t) for lambda > 0) and a kept
unit m points the same way as the removed unit r, p_r ~ lambda p_m, then
phi(p_r . x~) ~ lambda phi(p_m . x~), so adding lambda U[:, r] to U[:, m] gives back most of
what dropping r took, with no data (docs/theory.md, "Merging").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from coreprune.surgery.activations import Activation, resolve_activation
from coreprune.surgery.rewire.reading import _check_keep, expand_reading

# Merge only when the best kept match has cosine above this. 0 means "any positive match":
# merging r into m at cosine c leaves a residual p_r - lambda p_m of norm ||p_r|| sqrt(1 - c^2),
# never more than dropping r (residual ||p_r||). Measured on LeNet-300-100 (docs/theory.md,
# "Rewiring the next layer"), 0 was the best or near-best threshold at 50/80/90% removal, while
# thresholds 0.1-0.5 were sometimes worse than not merging at all.
DEFAULT_MIN_COSINE = 0.0


def positively_homogeneous(activation: Activation) -> bool:
    """phi(lambda t) = lambda phi(t) for every lambda > 0 and t (ReLU, leaky ReLU, identity);
    the activation table (`surgery.activations`) records which are."""
    if not isinstance(activation, Activation):
        raise TypeError(f"activation must be an Activation, got {type(activation).__name__}")
    return activation.positively_homogeneous


@dataclass(frozen=True)
class MergeResult:
    """The consumer's new reading of the kept units, and what happened to each removed unit.

    `reading` is k x |keep| (columns in the order of `keep`). For each removed unit (in the
    order of `removed`): `match` is the kept unit (an index into the layer's n units) it was
    merged into, or -1 when it was dropped; `scale` the lambda added (0 when dropped); `cosine`
    its best cosine with a kept unit (what the threshold was compared with).
    """

    reading: torch.Tensor
    keep: torch.Tensor
    removed: torch.Tensor
    match: torch.Tensor
    scale: torch.Tensor
    cosine: torch.Tensor
    merged: bool
    note: str

    @property
    def full_reading(self) -> torch.Tensor:
        """U' as k x n, zero in the removed units' columns (the input of `rewired_eps`)."""
        n = self.keep.numel() + self.removed.numel()
        return expand_reading(self.reading, self.keep, n)


def merge_weights(
    units: torch.Tensor,
    reading: torch.Tensor,
    keep: torch.Tensor,
    activation: str | nn.Module | Activation,
    *,
    min_cosine: float = DEFAULT_MIN_COSINE,
) -> MergeResult:
    """Fold each removed unit into the kept unit that best reproduces it up to a positive scale.

    `units` (n x d) are the producer's unit vectors (`layer_units`: bias last, batch norm
    folded), `reading` (k x n) how the consumer reads them (`next_weights`), `keep` the kept
    unit indices. Removed unit r goes to the kept m maximising cos(p_r, p_m), with
    lambda = <p_r, p_m> / ||p_m||^2 (the minimiser of ||p_r - lambda p_m||), when that cosine
    exceeds `min_cosine` (and is positive). Non-homogeneous activations (tanh, GELU, ...) get
    no merge: the reading is only restricted to the kept columns, and `merged` is False.
    """
    act = resolve_activation(activation)
    p, u, keep = _check_merge_inputs(units, reading, keep)
    if not isinstance(min_cosine, (int, float)) or not -1.0 <= float(min_cosine) < 1.0:
        raise ValueError(f"min_cosine must be a number in [-1, 1), got {min_cosine!r}")
    n = p.shape[0]
    mask = torch.ones(n, dtype=torch.bool, device=p.device)
    mask[keep.to(p.device)] = False
    removed = torch.nonzero(mask).flatten()
    keep_p = keep.to(p.device)
    new_u = u.index_select(1, keep_p.to(u.device)).clone()
    nr = removed.numel()
    match = torch.full((nr,), -1, dtype=torch.long)
    scale = torch.zeros(nr, dtype=torch.float64)
    norms = p.norm(dim=1)
    pr, pk = p.index_select(0, removed), p.index_select(0, keep_p)
    nr_norm, nk_norm = norms.index_select(0, removed), norms.index_select(0, keep_p)
    dots = pr @ pk.T
    denom = nr_norm[:, None] * nk_norm[None, :]
    cos = torch.where(denom > 0, dots / denom.clamp_min(1e-300), torch.zeros_like(dots))
    best_cos, best = cos.max(dim=1)
    best_cos = best_cos.cpu()
    if not positively_homogeneous(act):
        note = (
            f"no merge: {act} is not positively homogeneous (phi(lambda t) != lambda phi(t)), "
            f"so {nr} removed unit(s) were dropped"
        )
        return MergeResult(
            _cast(new_u, reading),
            keep.clone(),
            removed.cpu(),
            match,
            scale,
            best_cos,
            False,
            note,
        )
    chosen = (best_cos > max(float(min_cosine), 0.0)).tolist() if nr else []
    best_list = best.cpu().tolist()
    for i, take in enumerate(chosen):
        if not take:
            continue
        m = best_list[i]
        lam = float(dots[i, m]) / float(nk_norm[m]) ** 2
        new_u[:, m] += lam * u[:, int(removed[i])]
        match[i] = int(keep[m])
        scale[i] = lam
    merged = int(sum(chosen))
    note = (
        f"merged {merged} of {nr} removed unit(s) into kept units "
        f"(cosine > {max(float(min_cosine), 0.0):g}); {nr - merged} dropped"
    )
    return MergeResult(
        _cast(new_u, reading), keep.clone(), removed.cpu(), match, scale, best_cos, True, note
    )


def _check_merge_inputs(
    units: torch.Tensor, reading: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    for name, t in (("units", units), ("reading", reading), ("keep", keep)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if units.ndim != 2 or units.shape[0] == 0:
        raise ValueError(f"units must be n x d with n >= 1, got shape {tuple(units.shape)}")
    n = units.shape[0]
    if reading.ndim != 2 or reading.shape[1] != n:
        raise ValueError(
            f"reading must be k x n with n = {n} (the number of units), got {tuple(reading.shape)}"
        )
    keep = _check_keep(keep, n)
    for name, t in (("units", units), ("reading", reading)):
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise ValueError(f"{name} must be a finite floating-point tensor")
    return units.detach().to(torch.float64), reading.detach().to(torch.float64), keep


def _cast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(dtype=like.dtype, device=like.device)
