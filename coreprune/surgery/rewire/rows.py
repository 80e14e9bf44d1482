"""The rows of a consumer's least-squares refit, and the weight layout that inverts them.

A Linear or Conv1D applies to its last axis, so every leading index (batch, tokens, ...) is one
row of the fit; a Conv2d refit is a least-squares problem on im2col patches, one row per
(image, output position). Rows are subsampled by a fixed seed, so a selector that reads
`refit_rows` chooses on exactly the rows `refit_consumer` fits; a subsampled conv gathers only
the picked patches rather than unfolding every position. `with_fitted_weights` writes a fit in
this column order back into a copy of the consumer.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from coreprune.surgery.patches import pad_for
from coreprune.surgery.registry import is_conv1d
from coreprune.surgery.units import Producer
from coreprune.torch_utils import CHUNK_ELEMENTS

DEFAULT_MAX_ROWS = 16_384  # least-squares rows kept for a conv refit (memory: rows x f x 8 bytes)
ROW_SEED = 0  # fixed seed of the deterministic row subsample


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
    per_chunk = max(1, CHUNK_ELEMENTS // max(positions * f, 1))
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
    step = max(1, CHUNK_ELEMENTS // max(f, 1))
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
