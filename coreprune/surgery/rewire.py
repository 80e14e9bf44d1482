"""Rewire the next layer after units are removed, so it compensates for what they carried.

Slicing alone drops a removed unit's contribution U_jr phi(p_r . x~) from every next unit j. Two
rewirings give some of it back (docs/theory.md, "Rewiring the next layer"):

- `merge_weights`, data-free: when phi is positively homogeneous (phi(lambda t) = lambda phi(t)
  for lambda > 0) and a kept unit m points the same way as the removed unit r, p_r ~ lambda p_m,
  then phi(p_r . x~) ~ lambda phi(p_m . x~), so lambda U[:, r] is added to U[:, m].
- `refit_consumer`, with calibration data: the sliced consumer's weights (and bias) are refitted
  by ridge least squares (`lstsq_weights`) so that, on the kept units' outputs in the partly
  compressed network, it reproduces the dense consumer's outputs.

`rewired_eps` turns any rewired reading U' into a certificate relative to the envelope
(Theorem R1 in docs/theory.md). All arithmetic runs in float64; inputs are only read.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from coreprune.surgery.activations import Activation, resolve_activation
from coreprune.surgery.patches import pad_for
from coreprune.surgery.registry import is_conv1d, layer_kind
from coreprune.surgery.units import Producer

POSITIVELY_HOMOGENEOUS = ("relu", "leaky_relu", "identity")
# Merge only when the best kept match has cosine above this. 0 means "any positive match":
# merging r into m at cosine c leaves a residual p_r - lambda p_m of norm ||p_r|| sqrt(1 - c^2),
# never more than dropping r (residual ||p_r||). Measured on LeNet-300-100 (docs/theory.md,
# "Rewiring the next layer"), 0 was the best or near-best threshold at 50/80/90% removal, while
# thresholds 0.1-0.5 were sometimes worse than not merging at all.
DEFAULT_MIN_COSINE = 0.0
DEFAULT_RIDGE = 1e-4  # relative to the mean eigenvalue of the (centred) Gram matrix
DEFAULT_MAX_ROWS = 16_384  # least-squares rows kept for a conv refit (memory: rows x f x 8 bytes)
ROW_SEED = 0  # fixed seed of the deterministic row subsample
_CHUNK_ELEMENTS = 1 << 22  # float64 elements materialised at once when forming X^T X
_MAX_RIDGE_RAISES = 8


def positively_homogeneous(activation: Activation) -> bool:
    """phi(lambda t) = lambda phi(t) for every lambda > 0 and t (ReLU, leaky ReLU, identity)."""
    if not isinstance(activation, Activation):
        raise TypeError(f"activation must be an Activation, got {type(activation).__name__}")
    return activation.name in POSITIVELY_HOMOGENEOUS


# --------------------------------------------------------------------------------------------
# Data-free: neuron merging


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


def _check_keep(keep: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(keep, torch.Tensor):
        raise TypeError(f"keep must be a torch.Tensor of indices, got {type(keep).__name__}")
    if keep.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"keep must hold integer indices, got dtype {keep.dtype}")
    if keep.ndim != 1 or keep.numel() == 0:
        raise ValueError(f"keep must be a non-empty 1-D tensor, got shape {tuple(keep.shape)}")
    keep = keep.detach().to(device="cpu", dtype=torch.long)
    if int(keep.min()) < 0 or int(keep.max()) >= n:
        raise ValueError(f"keep holds indices outside [0, {n})")
    if torch.unique(keep).numel() != keep.numel():
        raise ValueError("keep holds repeated indices; each kept unit must appear once")
    return keep


def expand_reading(reading: torch.Tensor, keep: torch.Tensor, n_units: int) -> torch.Tensor:
    """Scatter a k x |keep| reading back to k x n, with zeros in the removed units' columns."""
    if not isinstance(reading, torch.Tensor) or reading.ndim != 2:
        raise TypeError("reading must be a 2-D torch.Tensor (k x |keep|)")
    keep = _check_keep(keep, n_units)
    if reading.shape[1] != keep.numel():
        raise ValueError(
            f"reading has {reading.shape[1]} columns but keep has {keep.numel()} indices"
        )
    full = reading.new_zeros(reading.shape[0], n_units)
    full[:, keep.to(reading.device)] = reading
    return full


def consumer_from_reading(next_layer: Producer, reading: torch.Tensor) -> Producer:
    """A copy of the dense consumer `next_layer` whose weight reads the kept units through
    `reading` (k x |keep|, in `next_weights` layout); its bias is copied unchanged.

    This inverts `next_weights`: for a Conv2d the rows are (output channel, kernel offset); for
    a Linear after a flatten, (output, position within each unit's block).
    """
    conv1d = not isinstance(next_layer, (nn.Linear, nn.Conv2d)) and is_conv1d(next_layer)
    if not isinstance(next_layer, (nn.Linear, nn.Conv2d)) and not conv1d:
        raise TypeError(
            f"next_layer must be nn.Linear, nn.Conv2d or HF-style Conv1D, got {type(next_layer)}"
        )
    if not isinstance(reading, torch.Tensor) or reading.ndim != 2 or reading.shape[1] == 0:
        raise ValueError("reading must be a 2-D tensor with at least one column")
    if conv1d:
        return _conv1d_from_reading(next_layer, reading)
    w = next_layer.weight
    kept = reading.shape[1]
    r = reading.detach().to(torch.float64)
    if isinstance(next_layer, nn.Conv2d):
        if next_layer.groups != 1:
            raise ValueError("grouped convolutions are not supported")
        kh, kw = next_layer.kernel_size
        if r.shape[0] != next_layer.out_channels * kh * kw:
            raise ValueError(
                f"reading has {r.shape[0]} rows; a Conv2d with {next_layer.out_channels} outputs "
                f"and a {kh}x{kw} kernel needs {next_layer.out_channels * kh * kw}"
            )
        new_w = r.reshape(next_layer.out_channels, kh, kw, kept).permute(0, 3, 1, 2)
    else:
        out = next_layer.out_features
        if r.shape[0] % out != 0:
            raise ValueError(f"reading has {r.shape[0]} rows, not a multiple of {out} outputs")
        block = r.shape[0] // out
        new_w = r.reshape(out, block, kept).permute(0, 2, 1).reshape(out, kept * block)
    new = _module_like(next_layer, new_w.shape[1] if isinstance(next_layer, nn.Linear) else kept)
    with torch.no_grad():
        new.weight.copy_(new_w.to(dtype=w.dtype, device=w.device))
        if next_layer.bias is not None and new.bias is not None:
            new.bias.copy_(next_layer.bias)
    return new


def _conv1d_from_reading(next_layer: nn.Module, reading: torch.Tensor) -> Producer:
    """`consumer_from_reading` for an HF Conv1D: the registry's inverse of its reading, in the
    module's own (inputs, outputs) layout, on a copy that keeps its class, hooks and flags."""
    kind = layer_kind(next_layer)
    assert kind is not None
    out = kind.out_units(next_layer)
    if reading.shape[0] % out != 0:
        raise ValueError(f"reading has {reading.shape[0]} rows, not a multiple of {out} outputs")
    weight = kind.weight_from_reading(next_layer, reading.detach().to(torch.float64))
    new = copy.deepcopy(next_layer)
    old = next_layer.weight
    assert isinstance(old, torch.Tensor)
    new.weight = nn.Parameter(
        weight.to(dtype=old.dtype, device=old.device), requires_grad=old.requires_grad
    )
    if hasattr(new, "nx"):
        setattr(new, "nx", int(weight.shape[0]))  # noqa: B010 - HF keeps the input width
    return new  # type: ignore[return-value]


def _module_like(layer: Producer, width: int) -> Producer:
    """A fresh copy of `layer` with `width` inputs (features or channels); flags preserved."""
    new = copy.deepcopy(layer)
    w = layer.weight
    if isinstance(layer, nn.Conv2d):
        shape = (layer.out_channels, width, *layer.kernel_size)
        new.in_channels = width
    else:
        shape = (layer.out_features, width)
        new.in_features = width
    new.weight = nn.Parameter(
        torch.empty(shape, dtype=w.dtype, device=w.device), requires_grad=w.requires_grad
    )
    return new


def _cast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------------------------
# With data: ridge least squares


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
    step = max(1, _CHUNK_ELEMENTS // max(f, 1))
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


def refit_rows(
    consumer: nn.Module,
    inputs: torch.Tensor,
    dense_outputs: torch.Tensor,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The least-squares rows of a consumer: features (R x f) and targets (R x k).

    The same rows `refit_consumer` fits (im2col patches for a Conv2d, every leading index for a
    Linear or Conv1D; subsampled by the same fixed seed), so a selector that reads them chooses
    on exactly what the refit will see. The consumer may be unsliced (all units' columns).
    """
    conv1d = not isinstance(consumer, (nn.Linear, nn.Conv2d)) and is_conv1d(consumer)
    if isinstance(consumer, nn.Conv2d):
        return _conv_rows(consumer, inputs.detach(), dense_outputs.detach(), max_rows)
    if not isinstance(consumer, nn.Linear) and not conv1d:
        raise TypeError(
            f"consumer must be nn.Linear, nn.Conv2d or HF-style Conv1D, got {type(consumer).__name__}"
        )
    weight = consumer.weight
    assert isinstance(weight, torch.Tensor)
    width, outs = (
        (weight.shape[0], weight.shape[1]) if conv1d else (weight.shape[1], weight.shape[0])
    )
    return _linear_rows(width, outs, inputs.detach(), dense_outputs.detach(), max_rows)


def with_fitted_weights(
    consumer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None
) -> Producer:
    """A copy of the (sliced) consumer carrying a fit's weight (f x k, the `refit_rows` column
    order) and bias; the inverse of how `refit_rows` lays out the features."""
    conv1d = not isinstance(consumer, (nn.Linear, nn.Conv2d)) and is_conv1d(consumer)
    new = copy.deepcopy(consumer)
    w = consumer.weight
    assert isinstance(w, torch.Tensor)
    fitted = weight if conv1d else weight.T  # Conv1D stores (inputs, outputs)
    if fitted.numel() != w.numel():
        raise ValueError(
            f"a fit of shape {tuple(weight.shape)} does not fit weight {tuple(w.shape)}"
        )
    new_weight, new_bias = new.weight, getattr(new, "bias", None)
    assert isinstance(new_weight, torch.Tensor)
    with torch.no_grad():
        new_weight.copy_(fitted.reshape(w.shape).to(dtype=w.dtype, device=w.device))
        if bias is not None and isinstance(new_bias, torch.Tensor):
            new_bias.copy_(bias.to(dtype=new_bias.dtype, device=new_bias.device))
    return new  # type: ignore[return-value]


def _subsample(total: int, max_rows: int) -> torch.Tensor | None:
    if total <= max_rows:
        return None
    gen = torch.Generator().manual_seed(ROW_SEED)
    return torch.randperm(total, generator=gen)[:max_rows].sort().values


def _linear_rows(
    width: int, outs: int, x: torch.Tensor, y: torch.Tensor, max_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every leading index is a row: (batch, tokens, features) -> (batch * tokens, features)."""
    if x.ndim < 2 or x.shape[-1] != width:
        raise ValueError(
            f"pruned_inputs must be N x {width} or N x ... x {width} (the sliced consumer's "
            f"inputs, flattened after a flatten), got {tuple(x.shape)}"
        )
    if y.shape != (*x.shape[:-1], outs):
        raise ValueError(
            f"dense_outputs must be {(*x.shape[:-1], outs)} (the dense consumer's outputs on "
            f"the same batch), got {tuple(y.shape)}"
        )
    x, y = x.reshape(-1, width), y.reshape(-1, outs)
    pick = _subsample(x.shape[0], max_rows)
    if pick is not None:
        pick = pick.to(x.device)
        x, y = x.index_select(0, pick), y.index_select(0, pick)
    return x, y


def _conv_rows(
    conv: nn.Conv2d, x: torch.Tensor, y: torch.Tensor, max_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if conv.groups != 1:
        raise ValueError(f"consumer: grouped convolutions (groups={conv.groups}) not supported")
    if x.ndim != 4 or x.shape[1] != conv.in_channels:
        raise ValueError(
            f"pruned_inputs must be N x {conv.in_channels} x H x W, got {tuple(x.shape)}"
        )
    if y.ndim != 4 or y.shape[0] != x.shape[0] or y.shape[1] != conv.out_channels:
        raise ValueError(
            f"dense_outputs must be {x.shape[0]} x {conv.out_channels} x H_out x W_out, "
            f"got {tuple(y.shape)}"
        )
    with torch.no_grad():
        probe = conv(x[:1])
    if probe.shape[2:] != y.shape[2:]:
        raise ValueError(
            f"dense_outputs' spatial size {tuple(y.shape[2:])} differs from the consumer's "
            f"output size {tuple(probe.shape[2:])} on pruned_inputs"
        )
    n_img = x.shape[0]
    positions = y.shape[2] * y.shape[3]
    f = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    pick = _subsample(n_img * positions, max_rows)
    targets = y.flatten(2).transpose(1, 2).reshape(-1, conv.out_channels)
    if pick is not None:
        feats = _picked_patches(pad_for(x, conv), conv, pick.to(x.device), (y.shape[2], y.shape[3]))
        return feats, targets.index_select(0, pick.to(targets.device))
    per_chunk = max(1, _CHUNK_ELEMENTS // max(positions * f, 1))
    parts: list[torch.Tensor] = []
    for lo in range(0, n_img, per_chunk):
        hi = min(lo + per_chunk, n_img)
        patches = F.unfold(
            pad_for(x[lo:hi], conv), conv.kernel_size, dilation=conv.dilation, stride=conv.stride
        )
        parts.append(patches.transpose(1, 2).reshape(-1, f))
    return torch.cat(parts), targets


def _picked_patches(
    padded: torch.Tensor, conv: nn.Conv2d, pick: torch.Tensor, out_size: tuple[int, int]
) -> torch.Tensor:
    """The im2col rows of the picked (image, output position) indices only, gathered directly
    from the padded input: unfolding every position and keeping a subsample costs
    (all positions / picked) times more. Columns run (channel, kernel row, kernel column), as
    `F.unfold` lays them out."""
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    dev = padded.device
    channels = torch.arange(padded.shape[1], device=dev)
    ki, kj = torch.arange(kh, device=dev) * dh, torch.arange(kw, device=dev) * dw
    f = padded.shape[1] * kh * kw
    positions = out_size[0] * out_size[1]
    parts: list[torch.Tensor] = []
    step = max(1, _CHUNK_ELEMENTS // max(f, 1))
    for lo in range(0, pick.numel(), step):
        chunk = pick[lo : lo + step]
        img, flat = chunk // positions, chunk % positions
        oh, ow = flat // out_size[1], flat % out_size[1]
        rows = (oh * sh)[:, None] + ki[None, :]
        cols = (ow * sw)[:, None] + kj[None, :]
        patch = padded[
            img[:, None, None, None],
            channels[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
        parts.append(patch.reshape(chunk.numel(), f))
    return torch.cat(parts)


# --------------------------------------------------------------------------------------------
# The certificate of a rewired consumer


# What a consumer's computation is besides its weights: Theorem R1 compares two readings of one
# and the same map from the units' outputs, so every one of these must agree.
GEOMETRY = (
    "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode", "output_padding",
    "transposed", "out_channels", "out_features", "nf",
)  # fmt: skip


def check_same_geometry(
    dense: nn.Module, rewired: nn.Module, *, names: tuple[str, str] = ("dense", "rewired")
) -> None:
    """Refuse a rewired consumer that computes differently from the dense one except in weights.

    Theorem R1 bounds |z_j - z^_j| through U - U', which presumes both consumers apply their
    weights the same way: the same class, kernel, stride, padding (and mode), dilation, groups
    and layout. A consumer with the merged weights but, say, another padding reads other
    inputs, and the bound says nothing about it. `names` are the arguments' names, for the
    message. Raises TypeError (other class) or ValueError naming each attribute that differs.
    """
    first, second = names
    for name, module in ((first, dense), (second, rewired)):
        if not isinstance(module, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(module).__name__}")
    if type(dense) is not type(rewired):
        raise TypeError(
            f"{second} is a {type(rewired).__name__} but {first} is a {type(dense).__name__}; "
            "the rewired certificate (Theorem R1) compares two weightings of one consumer"
        )
    differ = [
        f"{attr} {getattr(rewired, attr, None)!r} vs {getattr(dense, attr)!r}"
        for attr in GEOMETRY
        if hasattr(dense, attr) and getattr(dense, attr) != getattr(rewired, attr, None)
    ]
    shapes = [getattr(m, "weight", None) for m in (dense, rewired)]
    a, b = (tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in shapes)
    if a is not None and b is not None and (len(a) != len(b) or a[2:] != b[2:]):
        differ.append(f"weight layout {b} vs {a}")
    if differ:
        raise ValueError(
            f"{second} differs from {first} in its geometry, not only its weights: "
            + "; ".join(differ)
            + f" ({second} vs {first}). Theorem R1 assumes the same stride, padding, dilation, "
            "groups, kernel and layout; rewire by changing the weights only"
        )


def rewired_eps(
    reading: torch.Tensor,
    new_reading_full: torch.Tensor,
    per_next_sensitivity: torch.Tensor,
    *,
    dense: nn.Module | None = None,
    rewired: nn.Module | None = None,
) -> float:
    """max_j sum_l |U_jl - U'_jl| / |U_jl| * s_jl (Theorem R1): the relative error certified.

    `reading` U and `new_reading_full` U' are k x n (U' zero in removed columns, e.g.
    `MergeResult.full_reading` or `expand_reading(next_weights(refit, |keep|), keep, n)`);
    `per_next_sensitivity` is `Sensitivities.per_next` (k x n). Returns inf when U' reads a
    unit that U does not (U_jl = 0 != U'_jl): the envelope says nothing about such a unit.
    A change of the consumer's bias is not covered; see `bias_change`. Give the consumers
    themselves as `dense` and `rewired` (both or neither) to have their geometry checked first
    (`check_same_geometry`): R1 holds only when they differ in weights alone.
    """
    if (dense is None) != (rewired is None):
        raise ValueError(
            "give both dense= and rewired= (the consumers, for the geometry check) or neither"
        )
    if dense is not None and rewired is not None:
        check_same_geometry(dense, rewired)
    for name, t in (
        ("reading", reading),
        ("new_reading_full", new_reading_full),
        ("per_next_sensitivity", per_next_sensitivity),
    ):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 2 or not t.is_floating_point() or not torch.isfinite(t).all():
            raise ValueError(f"{name} must be a finite 2-D floating-point tensor")
    if new_reading_full.shape != reading.shape or per_next_sensitivity.shape != reading.shape:
        raise ValueError(
            f"reading, new_reading_full and per_next_sensitivity must all be k x n; got "
            f"{tuple(reading.shape)}, {tuple(new_reading_full.shape)}, "
            f"{tuple(per_next_sensitivity.shape)} (scatter a k x |keep| reading with "
            f"expand_reading)"
        )
    if (per_next_sensitivity < 0).any():
        raise ValueError("per_next_sensitivity must be >= 0")
    u = reading.detach().to(torch.float64)
    dev = u.device
    v = new_reading_full.detach().to(dtype=torch.float64, device=dev)
    s = per_next_sensitivity.detach().to(dtype=torch.float64, device=dev)
    diff = (u - v).abs()
    zero = u == 0
    if (zero & (diff > 0)).any():
        return math.inf
    ratio = torch.where(zero, torch.zeros_like(diff), diff / u.abs().clamp_min(1e-300))
    return float((ratio * s).sum(dim=1).max())


def bias_change(dense: Producer, rewired: Producer) -> torch.Tensor:
    """|b - b'| per output (float64): an absolute error the relative certificate does not cover."""
    for name, m in (("dense", dense), ("rewired", rewired)):
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"{name} must be nn.Linear or nn.Conv2d, got {type(m).__name__}")
    out = dense.weight.shape[0]
    if rewired.weight.shape[0] != out:
        raise ValueError(f"dense has {out} outputs, rewired {rewired.weight.shape[0]}")

    def vec(m: Producer) -> torch.Tensor:
        if m.bias is None:
            return torch.zeros(out, dtype=torch.float64)
        return m.bias.detach().to(device="cpu", dtype=torch.float64)

    return (vec(dense) - vec(rewired)).abs()
