"""Data-informed sensitivities: how much of the next layer's input each unit carries, on data.

The data-free sensitivity s_jl = sup_x |U_jl| |p_l . x~| / e_j(x) asks about every input; the
empirical one (the PFP / SiPP family: Baykal et al., ICLR 2019; Liebenwein et al., ICLR 2020)
asks only about calibration inputs, and uses the unit's actual output a_l(x) = phi(p_l . x~):

    s_jl = max over calibration rows x of |U_jl a_l(x)| / sum_m |U_jm a_m(x)|     (0/0 := 0).

It certifies nothing outside the calibration rows; it ranks units by what they do on data.

Convolutions: every spatial position of the producer's output map is one row (the per-position
version). With U in `next_weights` layout (one row per (output channel, kernel offset), or per
(output, position) after a flatten), each row of U reads one position of the map at a time, so
this matches the library's per-row envelope. Taking the max over all positions, not only those
a given row reads (borders, stride, one position per flatten row), can only raise s_jl.
"""

from __future__ import annotations

import torch

from coreprune.torch_utils import CHUNK_ELEMENTS


def activation_rows(activations: torch.Tensor) -> torch.Tensor:
    """(N x n) as given; (N, n, H, W) as one row per (image, position): (N*H*W) x n."""
    if not isinstance(activations, torch.Tensor):
        raise TypeError(f"activations must be a torch.Tensor, got {type(activations).__name__}")
    if activations.ndim == 2:
        return activations
    if activations.ndim == 4:
        return activations.permute(0, 2, 3, 1).reshape(-1, activations.shape[1])
    raise ValueError(
        f"activations must be N x n (linear) or N x n x H x W (conv), got {tuple(activations.shape)}"
    )


def empirical_sensitivities(activations: torch.Tensor, reading: torch.Tensor) -> torch.Tensor:
    """s (k x n, float64): s_jl = max_x |U_jl a_l(x)| / sum_m |U_jm a_m(x)| over calibration rows.

    `activations` are the producer's post-activation outputs on calibration inputs (N x n, or
    N x n x H x W for a conv producer, see `activation_rows`); `reading` is U (k x n) from
    `next_weights`. Every entry lies in [0, 1]; a unit whose output is 0 on every row, or that
    row j does not read, gets 0.
    """
    rows = activation_rows(activations)
    if not isinstance(reading, torch.Tensor):
        raise TypeError(f"reading must be a torch.Tensor, got {type(reading).__name__}")
    if reading.ndim != 2 or rows.shape[0] == 0 or reading.shape[1] != rows.shape[1]:
        raise ValueError(
            f"reading must be k x n and activations have n = {rows.shape[1]} units and at "
            f"least one row; got reading {tuple(reading.shape)}, {rows.shape[0]} rows"
        )
    for name, t in (("activations", rows), ("reading", reading)):
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise ValueError(f"{name} must be a finite floating-point tensor")
    a = rows.detach().to(torch.float64).abs()
    u = reading.detach().to(dtype=torch.float64, device=a.device).abs()
    k, n = u.shape
    denom = a @ u.T  # rows x k: sum_m |U_jm a_m(x)|
    inv = torch.where(denom > 0, 1.0 / denom.clamp_min(1e-300), torch.zeros_like(denom))
    best = torch.zeros(k, n, dtype=torch.float64, device=a.device)
    step = max(1, CHUNK_ELEMENTS // max(k * n, 1))
    for lo in range(0, a.shape[0], step):
        hi = min(lo + step, a.shape[0])
        # max over rows of a_l(x) / denom_j(x), then times |U_jl| (exact: |U_jl| >= 0 is fixed)
        ratio = inv[lo:hi, :, None] * a[lo:hi, None, :]
        best = torch.maximum(best, ratio.amax(dim=0))
    # Each term is at most its row's sum, so s <= 1; the clamp only removes rounding (1 + 1e-16).
    return (u * best).clamp_max(1.0)


def empirical_unit_scores(activations: torch.Tensor, reading: torch.Tensor) -> torch.Tensor:
    """One score per unit (n,): max over next units j of `empirical_sensitivities`."""
    return empirical_sensitivities(activations, reading).max(dim=0).values


def activation_rms(activations: torch.Tensor) -> torch.Tensor:
    """Root-mean-square output of each unit over the calibration rows (n,), float64."""
    rows = activation_rows(activations)
    if rows.shape[0] == 0 or not rows.is_floating_point() or not torch.isfinite(rows).all():
        raise ValueError("activations must be finite floating-point values with at least one row")
    return rows.detach().to(torch.float64).pow(2).mean(dim=0).sqrt()


def mean_square_sensitivities(activations: torch.Tensor, reading: torch.Tensor) -> torch.Tensor:
    """s (k x n): unit l's share of next unit j's input in root-mean-square terms,
    |U_jl| rms(a_l) / sum_m |U_jm| rms(a_m) (0/0 := 0).

    The mean-square member of the empirical family: where `empirical_sensitivities` takes the
    worst calibration row (dominated by rare outliers, and rows x k x n work), this averages over
    the rows first (rows x n work). It ranks units by what they carry on typical data.
    """
    rms = activation_rms(activations)
    _check_reading(reading, rms.numel())
    share = reading.detach().to(dtype=torch.float64, device=rms.device).abs() * rms[None, :]
    total = share.sum(dim=1, keepdim=True)
    return torch.where(total > 0, share / total.clamp_min(1e-300), torch.zeros_like(share))


def mean_square_unit_scores(activations: torch.Tensor, reading: torch.Tensor) -> torch.Tensor:
    """One score per unit (n,): rms(a_l) ||U_:l||_2, the root-mean-square size of what unit l
    sends into the next layer (its contribution to the next layer's input energy)."""
    rms = activation_rms(activations)
    _check_reading(reading, rms.numel())
    norms = torch.linalg.vector_norm(reading.detach().to(torch.float64), dim=0).to(rms.device)
    return rms * norms


def _check_reading(reading: object, n: int) -> None:
    if not isinstance(reading, torch.Tensor) or reading.ndim != 2 or reading.shape[1] != n:
        raise ValueError(f"reading must be k x {n} (next units x units)")
