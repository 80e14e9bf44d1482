"""Units and reading weights checked against values written out by hand, and the folded batch
norm against the module's own eval-mode output."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coreprune.surgery.units import layer_units, next_weights


def _buffer(module: nn.Module, name: str) -> torch.Tensor:
    value = module.get_buffer(name)
    assert isinstance(value, torch.Tensor)
    return value


def _f64(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ---- next_weights: how the next layer reads each unit


def test_next_weights_conv2d_one_row_per_output_channel_and_kernel_offset() -> None:
    conv = nn.Conv2d(2, 2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(
            torch.tensor(
                [
                    [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]],
                    [[[9.0, 10.0], [11.0, 12.0]], [[13.0, 14.0], [15.0, 16.0]]],
                ]
            )
        )
    # rows: (out 0, offset (0,0)), (0, (0,1)), (0, (1,0)), (0, (1,1)), then out 1;
    # column i: the weight on input channel (= unit) i at that offset
    want = _f64([[1, 5], [2, 6], [3, 7], [4, 8], [9, 13], [10, 14], [11, 15], [12, 16]])
    got = next_weights(conv, 2)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_next_weights_flatten_linear_one_row_per_output_and_position() -> None:
    # 2 channels x 2 spatial positions, flattened channel-major: columns c0p0, c0p1, c1p0, c1p1
    linear = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]))
    want = _f64([[1, 3], [2, 4], [5, 7], [6, 8]])  # rows (out, position), columns channel
    got = next_weights(linear, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    # what the rows mean: output o = sum over (position p, channel i) of U[(o, p), i] x[i, p]
    x = torch.tensor([[0.5, -1.0], [2.0, 3.0]], dtype=torch.float64)  # x[channel, position]
    by_rows = (got.reshape(2, 2, 2) * x.T[None]).sum((1, 2))
    torch.testing.assert_close(by_rows, linear.double()(x.reshape(1, 4))[0])


def test_next_weights_plain_linear_is_its_weight_and_none_is_ones() -> None:
    linear = nn.Linear(3, 2, bias=True)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 4.0, -1.0]]))
    torch.testing.assert_close(
        next_weights(linear, 3), _f64([[1, -2, 0.5], [0, 4, -1]]), rtol=0, atol=0
    )
    torch.testing.assert_close(next_weights(None, 3), _f64([[1, 1, 1]]), rtol=0, atol=0)


# ---- layer_units: flattened weights, bias last, batch norm folded


def _linear_with_norm(affine: bool) -> tuple[nn.Linear, nn.BatchNorm1d]:
    linear = nn.Linear(2, 1)
    norm = nn.BatchNorm1d(1, eps=1.0, affine=affine)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0]]))
        linear.bias.fill_(3.0)
        _buffer(norm, "running_mean").fill_(1.0)
        _buffer(norm, "running_var").fill_(3.0)  # 1 / sqrt(3 + eps) = 1/2
        if affine:
            norm.weight.fill_(4.0)
            norm.bias.fill_(1.0)
    return linear, norm.eval()


def test_layer_units_by_hand_without_and_with_batch_norm() -> None:
    linear, norm = _linear_with_norm(affine=True)
    torch.testing.assert_close(layer_units(linear), _f64([[1, 2, 3]]), rtol=0, atol=0)
    # BN(y) = gamma (y - mean) / sqrt(var + eps) + beta = 4 (y - 1) / 2 + 1 = 2 y - 1,
    # so the unit (w, b) = ((1, 2), 3) becomes ((2, 4), 2 * 3 - 1)
    torch.testing.assert_close(layer_units(linear, norm), _f64([[2, 4, 5]]), rtol=0, atol=0)
    plain_linear, plain = _linear_with_norm(affine=False)
    # without affine: (y - 1) / 2 -> ((0.5, 1), 3 / 2 - 1/2)
    torch.testing.assert_close(
        layer_units(plain_linear, plain), _f64([[0.5, 1, 1]]), rtol=0, atol=0
    )


def _conv_and_norm(affine: bool, bias: bool) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(2, 3, 2, bias=bias)
    norm = nn.BatchNorm2d(3, eps=1e-3, affine=affine)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(3, generator=gen))
        _buffer(norm, "running_mean").copy_(torch.randn(3, generator=gen))
        _buffer(norm, "running_var").copy_(torch.rand(3, generator=gen) + 0.5)
        if affine:
            norm.weight.copy_(torch.randn(3, generator=gen))
            norm.bias.copy_(torch.randn(3, generator=gen))
    return conv.double(), norm.double().eval()


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_folded_conv_units_reproduce_the_eval_mode_batch_norm_output(
    affine: bool, bias: bool
) -> None:
    conv, norm = _conv_and_norm(affine, bias)
    before = copy.deepcopy(conv.state_dict()), copy.deepcopy(norm.state_dict())
    units = layer_units(conv, norm)
    assert units.shape == (3, 2 * 2 * 2 + 1) and units.dtype == torch.float64

    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    patches = F.unfold(x, kernel_size=2)  # (batch, in_channels * kh * kw, positions)
    folded = torch.einsum("ud,bdl->bul", units[:, :-1], patches) + units[None, :, -1, None]
    with torch.no_grad():
        want = norm(conv(x)).flatten(2)
    torch.testing.assert_close(folded, want, rtol=1e-12, atol=1e-12)

    for module, state in zip((conv, norm), before, strict=True):
        for key, value in module.state_dict().items():
            assert torch.equal(value, state[key]), key
    assert not norm.training
