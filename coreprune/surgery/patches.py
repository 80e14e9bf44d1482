"""im2col: the input patches a convolution reads, with its own padding mode applied."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv_patches", "pad_for"]


def pad_for(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`x` padded as `conv` pads it (any mode, 'same'/'valid' included), so unfold needs none."""
    if isinstance(conv.padding, str):
        pads: list[int] = []
        for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation), strict=True):
            total = d * (k - 1) if conv.padding == "same" else 0
            pads += [total // 2, total - total // 2]
    else:
        pads = [p for p in reversed(conv.padding) for _ in range(2)]
    if not any(pads):
        return x
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, pads, mode=mode)


def conv_patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """im2col rows (N*L x C*kh*kw) of `x` as `conv` reads them."""
    patches = F.unfold(
        pad_for(x, conv), conv.kernel_size, dilation=conv.dilation, stride=conv.stride
    )
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])
