"""Ridge least squares in float64, and the refit of a consumer that it solves.

`lstsq_weights` solves the normal equations, formed chunk by chunk so a large calibration set
is never copied to float64 at once, by a Cholesky factorisation; a singular Gram matrix has its
ridge raised, and reported, rather than turning into NaN. `refit_consumer` fits a sliced
consumer on the rows of `refit_rows` so that, on the kept units' outputs in the partly
compressed network, it reproduces the dense consumer's outputs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from coreprune.surgery.registry import is_conv1d
from coreprune.surgery.rewire.rows import (
    DEFAULT_MAX_ROWS,
    refit_rows,
    with_fitted_weights,
)
from coreprune.surgery.units import Producer
from coreprune.torch_utils import CHUNK_ELEMENTS

DEFAULT_RIDGE = 1e-4  # relative to the mean eigenvalue of the (centred) Gram matrix
_MAX_RIDGE_RAISES = 8


@dataclass(frozen=True)
class LstsqResult:
    """W = argmin ||X W + 1 b^T - Y||^2 + ridge_used ||W||^2 (b unpenalised), and diagnostics.

    `weight` is f x k and `bias` (k,) or None, both float64. `ridge` is the requested relative
    ridge, `ridge_used` the absolute one added to the Gram matrix's diagonal (larger than
    requested only when the factorisation failed; `raised` says so). `rank` and `condition`
    describe the (centred) Gram matrix X^T X before the ridge (`condition` is inf when it is
    singular); `solved_condition` the matrix actually factorised. `residual` is
    ||X W + b - Y||_F / ||Y - mean(Y)||_F on the fitted rows (0 when Y is constant).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    rows: int
    features: int
    ridge: float
    ridge_used: float
    raised: bool
    rank: int
    condition: float
    solved_condition: float
    residual: float
    note: str


def lstsq_weights(
    features: torch.Tensor,
    target: torch.Tensor,
    *,
    ridge: float = DEFAULT_RIDGE,
    bias: bool = True,
) -> LstsqResult:
    """Ridge least squares in float64 through the normal equations and a Cholesky factorisation.

    The ridge is relative: ridge * trace(G) / f is added to the diagonal of the Gram matrix G
    (centred when `bias`, which fits the bias unpenalised), so one value suits any feature
    scale. A singular G with ridge 0 is not turned into NaN: the ridge is raised until the
    Cholesky factorisation succeeds, and the result says by how much (with a RuntimeWarning).

    Minimum rows: with ridge 0 the fit needs N >= f + 1 rows (f without a bias) to be
    determined; with ridge > 0 any N >= 1 is well posed (N >= 2 with a bias, so the centring
    leaves something to fit).
    """
    x, y = _check_lstsq(features, target, ridge, bias)
    n_rows, f = x.shape
    k = y.shape[1]
    dev = x.device
    if bias:
        mu_x = _chunked_sum(x) / n_rows
        mu_y = y.to(torch.float64).sum(dim=0) / n_rows
    else:
        mu_x = torch.zeros(f, dtype=torch.float64, device=dev)
        mu_y = torch.zeros(k, dtype=torch.float64, device=dev)
    gram = torch.zeros(f, f, dtype=torch.float64, device=dev)
    rhs = torch.zeros(f, k, dtype=torch.float64, device=dev)
    for lo, hi in _chunks(n_rows, f):
        xc = x[lo:hi].to(torch.float64) - mu_x
        yc = y[lo:hi].to(torch.float64) - mu_y
        gram += xc.T @ xc
        rhs += xc.T @ yc
    gram = (gram + gram.T) / 2
    eig = torch.linalg.eigvalsh(gram)
    top = float(eig[-1].clamp_min(0))
    tol = top * f * torch.finfo(torch.float64).eps
    rank = int((eig > tol).sum())
    low = float(eig[0])
    condition = top / low if low > tol else math.inf
    scale = float(torch.diagonal(gram).sum()) / f
    if top == 0.0:
        w = torch.zeros(f, k, dtype=torch.float64, device=dev)
        b = mu_y.clone() if bias else None
        resid = _residual(x, y, w, b)
        note = "every feature is constant on the rows: weight 0, bias = mean target"
        return LstsqResult(
            w, b, n_rows, f, float(ridge), 0.0, False, 0, math.inf, math.inf, resid, note
        )
    lam = float(ridge) * scale
    raised = False
    eye = torch.eye(f, dtype=torch.float64, device=dev)
    for _ in range(_MAX_RIDGE_RAISES + 1):
        chol, info = torch.linalg.cholesky_ex(gram + lam * eye)
        if int(info) == 0:
            break
        lam = max(lam * 100.0, scale * 1e-12)
        raised = True
    else:  # pragma: no cover - a PSD matrix plus a ridge of 1e4 x its mean eigenvalue factorises
        raise RuntimeError(f"Cholesky failed even with ridge {lam:g}; the features are not finite")
    w = torch.cholesky_solve(rhs, chol)
    b = (mu_y - mu_x @ w) if bias else None
    solved_cond = (top + lam) / (max(low, 0.0) + lam) if lam > 0 or low > tol else math.inf
    note = f"rank {rank} of {f}"
    if raised:
        note += f"; ridge raised from {float(ridge) * scale:.3g} to {lam:.3g} to factorise"
        warnings.warn(
            f"lstsq_weights: the Gram matrix is singular (rank {rank} of {f}); the absolute "
            f"ridge was raised to {lam:.3g} so the Cholesky factorisation succeeds",
            RuntimeWarning,
            stacklevel=2,
        )
    resid = _residual(x, y, w, b)
    return LstsqResult(
        w, b, n_rows, f, float(ridge), lam, raised, rank, condition, solved_cond, resid, note
    )


def _check_lstsq(
    features: object, target: object, ridge: object, bias: object
) -> tuple[torch.Tensor, torch.Tensor]:
    for name, t in (("features", features), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    assert isinstance(features, torch.Tensor) and isinstance(target, torch.Tensor)
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)):
        raise TypeError(f"ridge must be a number, got {type(ridge).__name__}")
    if not (math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be finite and >= 0, got {ridge}")
    if features.ndim != 2 or target.ndim != 2:
        raise ValueError(
            f"features (N x f) and target (N x k) must be 2-D, got shapes "
            f"{tuple(features.shape)} and {tuple(target.shape)}"
        )
    if features.shape[0] != target.shape[0]:
        raise ValueError(
            f"features and target must have the same number of rows, got "
            f"{features.shape[0]} and {target.shape[0]}"
        )
    if features.shape[1] == 0 or target.shape[1] == 0:
        raise ValueError("features and target need at least one column each")
    if not features.is_floating_point() or not target.is_floating_point():
        raise TypeError("features and target must be floating-point tensors")
    if features.device != target.device:
        raise ValueError(f"features on {features.device} but target on {target.device}")
    n_rows, f = features.shape
    need = (f + int(bias)) if ridge == 0 else (1 + int(bias))
    if n_rows < need:
        what = "f + 1 (features + bias column)" if bias else "f (features)"
        rule = f"{what} rows with ridge 0" if ridge == 0 else f"{need} rows"
        raise ValueError(
            f"features has {n_rows} rows but the fit needs at least {need} ({rule}); pass more "
            f"calibration rows" + (" or a ridge > 0" if ridge == 0 else "")
        )
    if not torch.isfinite(features).all() or not torch.isfinite(target).all():
        raise ValueError("features and target must be finite (no NaN or Inf)")
    return features.detach(), target.detach()


def _chunks(n_rows: int, f: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(f, 1))
    return [(lo, min(lo + step, n_rows)) for lo in range(0, n_rows, step)]


def _chunked_sum(x: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for lo, hi in _chunks(x.shape[0], x.shape[1]):
        total += x[lo:hi].to(torch.float64).sum(dim=0)
    return total


def _residual(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> float:
    err = 0.0
    spread = 0.0
    mu_y = y.to(torch.float64).mean(dim=0)
    for lo, hi in _chunks(x.shape[0], x.shape[1]):
        pred = x[lo:hi].to(torch.float64) @ w
        if b is not None:
            pred = pred + b
        yy = y[lo:hi].to(torch.float64)
        err += float(((pred - yy) ** 2).sum())
        spread += float(((yy - mu_y) ** 2).sum())
    return math.sqrt(err / spread) if spread > 0 else 0.0


def refit_consumer(
    consumer: nn.Module,
    pruned_inputs: torch.Tensor,
    dense_outputs: torch.Tensor,
    *,
    ridge: float = DEFAULT_RIDGE,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> tuple[Producer, LstsqResult]:
    """Refit an already sliced consumer so its outputs match the dense consumer's.

    `consumer` is the sliced nn.Linear, HF-style Conv1D or nn.Conv2d (groups=1; any stride,
    dilation, padding and padding mode). `pruned_inputs` is its input in the partly compressed
    network (... x f for a Linear or Conv1D, already flattened after a flatten; N x C x H x W for
    a Conv2d) and `dense_outputs` the dense consumer's output on the same calibration batch
    (... x k with the same leading shape, or N x C_out x H_out x W_out). A Linear or Conv1D
    applies to the last axis, so every leading index (batch, tokens, ...) is one row of the
    fit: a transformer FFN is refitted on all its tokens. A conv refit is a least-squares
    problem on im2col patches, one row per (image, output position). Rows are subsampled
    deterministically (seed `ROW_SEED`) to at most `max_rows`. Returns a new module of the same
    type, dtype and device, with the bias refitted when the consumer has one (no bias column
    otherwise), and the fit's report.
    """
    conv1d = not isinstance(consumer, (nn.Linear, nn.Conv2d)) and is_conv1d(consumer)
    if not isinstance(consumer, (nn.Linear, nn.Conv2d)) and not conv1d:
        raise TypeError(
            "consumer must be nn.Linear, nn.Conv2d or HF-style Conv1D, got "
            f"{type(consumer).__name__}"
        )
    for name, t in (("pruned_inputs", pruned_inputs), ("dense_outputs", dense_outputs)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")
    x, y = refit_rows(consumer, pruned_inputs, dense_outputs, max_rows=max_rows)
    has_bias = getattr(consumer, "bias", None) is not None
    fit = lstsq_weights(x, y, ridge=ridge, bias=has_bias)
    new = with_fitted_weights(consumer, fit.weight, fit.bias)
    return new, fit
