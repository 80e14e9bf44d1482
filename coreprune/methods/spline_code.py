"""The spline partition code of a network: which side of zero every batch-norm output falls
on, over a 2-D grid of inputs spanned by three examples (Balestriero, You et al., "Max-Affine
Spline Insights Into Deep Network Pruning").

Two inputs share a code row iff they lie in the same region of the network's max-affine spline
partition (as seen through its batch-norm layers); `SplineEarlyBird` in
`coreprune.methods.earlybird` compares these codes across epochs. Codes are stored bit-packed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from coreprune.checks import check_int, check_module, check_tensor
from coreprune.torch_utils import eval_mode, model_device

__all__ = [
    "PackedCode",
    "check_anchors",
    "code_distance",
    "grid_coeffs",
    "grid_inputs",
    "pack_bits",
    "partition_code",
    "sign_chunks",
    "spline_grid",
]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def spline_grid(
    anchors: torch.Tensor, grid: int | Sequence[float] | torch.Tensor = 16
) -> torch.Tensor:
    """Inputs x0 + a (x1 - x0) + b (x2 - x0) for every (a, b) in coeffs x coeffs, a-major.

    `anchors` stacks three examples (x0, x1, x2) along dim 0. `grid` is the number of
    coefficients per axis, evenly spaced in [0, 1] (the plane through the three examples), or
    the coefficients themselves. Returns a new tensor of len(coeffs)**2 inputs.
    """
    anchors = check_anchors(anchors)
    coeffs = grid_coeffs(grid).to(anchors.device, anchors.dtype)
    return grid_inputs(anchors, coeffs, 0, coeffs.numel() ** 2)


def check_anchors(anchors: object) -> torch.Tensor:
    """Three examples (x0, x1, x2) stacked along dim 0: a finite floating tensor (3, ...)."""
    anchors = check_tensor(anchors, "anchor_inputs")
    if anchors.ndim < 2 or anchors.shape[0] != 3:
        raise ValueError(
            "anchor_inputs must stack three examples (x0, x1, x2) along dim 0, shape "
            f"(3, *input_shape); got {tuple(anchors.shape)}"
        )
    return anchors


def grid_coeffs(grid: object) -> torch.Tensor:
    """The float64 coefficients per grid axis: `grid` evenly spaced in [0, 1] for an int, else
    the given ones (at least two, finite)."""
    if isinstance(grid, bool):
        raise TypeError("grid must be an int or a sequence of coefficients, got bool")
    if isinstance(grid, int):
        return torch.linspace(0.0, 1.0, check_int(grid, "grid", minimum=2), dtype=torch.float64)
    if isinstance(grid, (torch.Tensor, Sequence)) and not isinstance(grid, str):
        coeffs = torch.as_tensor(grid, dtype=torch.float64).flatten()
        if coeffs.numel() < 2 or not torch.isfinite(coeffs).all():
            raise ValueError("grid coefficients must be at least two finite numbers")
        return coeffs
    raise TypeError(f"grid must be an int or a sequence of coefficients, got {type(grid).__name__}")


def grid_inputs(anchors: torch.Tensor, coeffs: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Grid points start..stop-1 (flat index k = i * len(coeffs) + j)."""
    flat = torch.arange(start, stop, device=coeffs.device)
    a = coeffs[flat // coeffs.numel()]
    b = coeffs[flat % coeffs.numel()]
    shape = (-1,) + (1,) * (anchors.ndim - 1)
    x0, x1, x2 = anchors[0:1], anchors[1:2], anchors[2:3]
    return x0 + a.view(shape) * (x1 - x0) + b.view(shape) * (x2 - x0)


def sign_chunks(
    model: nn.Module, inputs: Callable[[int, int], torch.Tensor], count: int, batch_size: int,
    consume: Callable[[torch.Tensor], None],
) -> None:  # fmt: skip
    """Feed the signs (> 0) of all batch-norm outputs, per input chunk, to `consume`.

    Eval mode (running statistics: the code is a function of the weights alone, not of the
    batch), no autograd; every submodule's train flag is restored.
    """
    norms = [m for m in model.modules() if isinstance(m, _BATCH_NORMS)]
    if not norms:
        raise ValueError(
            f"model ({type(model).__name__}) has no batch-norm layer; the spline code reads the "
            "signs of batch-norm outputs, so use a model with batch norm or the EarlyBird detector"
        )
    signs: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        signs.append((output > 0).flatten(1))

    handles = [m.register_forward_hook(hook) for m in norms]
    try:
        with eval_mode(model, no_grad=True):
            for start in range(0, count, batch_size):
                signs.clear()
                model(inputs(start, min(start + batch_size, count)))
                consume(torch.cat(signs, dim=1))
    finally:
        for handle in handles:
            handle.remove()


def partition_code(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """The spline partition code: bool (len(inputs), bits), the sign of every batch-norm output.

    Two inputs share a row iff they lie in the same region of the network's max-affine spline
    partition (as seen through its batch-norm layers). Inputs go to the model's device.
    """
    check_module(model, "model")
    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2:
        raise TypeError("inputs must be a batched tensor (batch first)")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    device = model_device(model)
    rows: list[torch.Tensor] = []
    sign_chunks(
        model, lambda s, e: inputs[s:e].to(device), inputs.shape[0], batch_size,
        lambda bits: rows.append(bits.cpu()),
    )  # fmt: skip
    return torch.cat(rows)


_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8, 8 bits a byte (zero-padded), so stored codes take 1/8 the memory."""
    flat = bits.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = _BIT_WEIGHTS.to(flat.device)
    return (flat.view(-1, 8).to(torch.uint8) * weights).sum(dim=1, dtype=torch.uint8).cpu()


@dataclass(frozen=True)
class PackedCode:
    """A partition code stored 8 bits a byte (`pack_bits`) with its length in bits."""

    packed: torch.Tensor
    bits: int


def code_distance(a: PackedCode, b: PackedCode) -> float:
    """Normalised Hamming distance of packed codes (padding bits are zero in both)."""
    if a.bits != b.bits:
        raise ValueError(f"codes have {a.bits} and {b.bits} bits; the architecture changed")
    differ = 0
    step = 1 << 22
    for start in range(0, a.packed.numel(), step):
        xor = torch.bitwise_xor(a.packed[start : start + step], b.packed[start : start + step])
        differ += int(_POPCOUNT[xor.long()].sum())
    return differ / a.bits
