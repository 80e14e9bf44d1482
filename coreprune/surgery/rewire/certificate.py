"""The certificate of a rewired consumer (Theorem R1 in docs/theory.md).

Whatever produced a rewired reading U' (a merge, a refit, a caller), R1 bounds its relative
error through U - U' alone, provided U' reads no unit that U does not. That presumes both
consumers compute the same map from the units' outputs, so `check_same_geometry` refuses a
consumer that differs in anything but its weights; a changed bias is an absolute error outside
the relative bound, which `bias_change` reports.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from coreprune.surgery.units import Producer

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
