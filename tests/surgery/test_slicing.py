"""Slicing keeps exactly the chosen units, with the values written out by hand, and builds new
modules like the old ones (class, dtype, device, train flag, requires_grad) without touching
the inputs."""

from __future__ import annotations

from typing import TypeVar

import pytest
import torch
from torch import nn

from coreprune.surgery.slicing import slice_consumer, slice_norm, slice_producer

M = TypeVar("M", bound=nn.Module)


def _set(module: M, **values: list[float] | float) -> M:
    with torch.no_grad():
        for name, value in values.items():
            tensor = getattr(module, name)
            tensor.copy_(torch.as_tensor(value, dtype=tensor.dtype).reshape(tensor.shape))
    return module


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


KEEP = torch.tensor([0, 2])


# ---- producers


def test_slice_producer_linear_values() -> None:
    layer = _set(nn.Linear(3, 4), weight=list(range(12)), bias=[10, 11, 12, 13])
    before, keep = _state(layer), KEEP.clone()
    new = slice_producer(layer, keep)
    assert type(new) is nn.Linear and new is not layer
    assert new.out_features == 2 and new.in_features == 3
    torch.testing.assert_close(new.weight, torch.tensor([[0.0, 1, 2], [6, 7, 8]]), rtol=0, atol=0)
    torch.testing.assert_close(new.bias, torch.tensor([10.0, 12]), rtol=0, atol=0)
    _assert_unchanged(layer, before)
    assert torch.equal(keep, KEEP)


def test_slice_producer_conv_values() -> None:
    layer = _set(nn.Conv2d(2, 3, 1), weight=[1, -1, 2, -2, 3, -3], bias=[4, 5, 6])
    before = _state(layer)
    new = slice_producer(layer, torch.tensor([1, 2]))
    assert type(new) is nn.Conv2d and new.out_channels == 2 and new.in_channels == 2
    want = torch.tensor([[2.0, -2], [3, -3]]).reshape(2, 2, 1, 1)
    torch.testing.assert_close(new.weight, want, rtol=0, atol=0)
    torch.testing.assert_close(new.bias, torch.tensor([5.0, 6]), rtol=0, atol=0)
    x = torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(new(x), layer(x)[:, 1:], rtol=0, atol=0)
    _assert_unchanged(layer, before)


# ---- batch norm


def test_slice_norm_copies_parameters_statistics_and_settings() -> None:
    norm = nn.BatchNorm1d(3, eps=1e-3, momentum=0.2)
    _set(norm, weight=[1, 2, 3], bias=[4, 5, 6], running_mean=[7, 8, 9], running_var=[10, 11, 12])
    _set(norm, num_batches_tracked=5)
    before = _state(norm)
    new = slice_norm(norm, KEEP)
    assert type(new) is nn.BatchNorm1d and new.num_features == 2
    assert new.eps == 1e-3 and new.momentum == 0.2 and new.affine and new.track_running_stats
    for name, want in (
        ("weight", [1.0, 3]),
        ("bias", [4.0, 6]),
        ("running_mean", [7.0, 9]),
        ("running_var", [10.0, 12]),
    ):
        torch.testing.assert_close(getattr(new, name), torch.tensor(want), rtol=0, atol=0)
    assert new.num_batches_tracked is not None and int(new.num_batches_tracked) == 5
    assert isinstance(new.weight, nn.Parameter) and "running_mean" in dict(new.named_buffers())
    _assert_unchanged(norm, before)


def test_slice_norm_without_affine() -> None:
    norm = _set(nn.BatchNorm2d(3, affine=False), running_mean=[1, 2, 3], running_var=[4, 5, 6])
    new = slice_norm(norm, torch.tensor([1]))
    assert new.num_features == 1 and new.weight is None and new.bias is None
    torch.testing.assert_close(new.running_mean, torch.tensor([2.0]), rtol=0, atol=0)
    torch.testing.assert_close(new.running_var, torch.tensor([5.0]), rtol=0, atol=0)


# ---- consumers, with per-unit scales


def test_slice_consumer_linear_scales_the_kept_columns() -> None:
    layer = _set(nn.Linear(3, 2), weight=[1, 2, 3, 4, 5, 6], bias=[7, 8])
    before, scale = _state(layer), torch.tensor([10.0, 0.5], dtype=torch.float64)
    new = slice_consumer(layer, 3, KEEP, scale)
    assert new.in_features == 2 and new.out_features == 2
    torch.testing.assert_close(new.weight, torch.tensor([[10.0, 1.5], [40, 3]]), rtol=0, atol=0)
    torch.testing.assert_close(new.bias, torch.tensor([7.0, 8]), rtol=0, atol=0)
    _assert_unchanged(layer, before)
    assert torch.equal(scale, torch.tensor([10.0, 0.5], dtype=torch.float64))
    unscaled = slice_consumer(layer, 3, KEEP)
    torch.testing.assert_close(unscaled.weight, torch.tensor([[1.0, 3], [4, 6]]), rtol=0, atol=0)


def test_slice_consumer_conv_scales_the_kept_input_channels() -> None:
    layer = _set(nn.Conv2d(3, 1, 1), weight=[1, 2, 3], bias=[0.5])
    new = slice_consumer(layer, 3, torch.tensor([1, 2]), torch.tensor([2.0, 3.0]))
    assert type(new) is nn.Conv2d and new.in_channels == 2 and new.out_channels == 1
    torch.testing.assert_close(
        new.weight, torch.tensor([4.0, 9.0]).reshape(1, 2, 1, 1), rtol=0, atol=0
    )
    torch.testing.assert_close(new.bias, torch.tensor([0.5]), rtol=0, atol=0)


def test_slice_consumer_after_flatten_keeps_and_scales_whole_blocks() -> None:
    # 3 channels x 2 positions: channel c owns columns 2c and 2c + 1
    layer = _set(nn.Linear(6, 1), weight=[1, 2, 3, 4, 5, 6], bias=[0])
    new = slice_consumer(layer, 3, KEEP, torch.tensor([2.0, -1.0]))
    assert new.in_features == 4
    torch.testing.assert_close(new.weight, torch.tensor([[2.0, 4, -5, -6]]), rtol=0, atol=0)


def test_sliced_block_computes_the_dense_block_with_units_removed_and_scaled() -> None:
    """Conv -> BN -> ReLU -> Flatten -> Linear: the sliced block equals the dense one whose
    dropped channels are zeroed and kept ones scaled (where the consumer reads them)."""
    torch.manual_seed(0)
    conv, norm, head = nn.Conv2d(2, 3, 2), nn.BatchNorm2d(3), nn.Linear(3 * 4, 2)
    _set(norm, running_mean=[0.1, -0.2, 0.3], running_var=[1.5, 0.5, 2.0])
    norm.eval()  # running statistics, as in the sliced block
    scale = torch.tensor([2.0, 0.5])
    sliced = nn.Sequential(
        slice_producer(conv, KEEP), slice_norm(norm, KEEP), nn.ReLU(), nn.Flatten(),
        slice_consumer(head, 3, KEEP, scale),
    ).eval()  # fmt: skip
    x = torch.randn(5, 2, 3, 3)
    factor = torch.tensor([2.0, 0.0, 0.5]).view(1, 3, 1, 1)
    want = head(torch.relu(norm(conv(x))).mul(factor).flatten(1))
    torch.testing.assert_close(sliced(x), want, rtol=1e-5, atol=1e-6)


# ---- what is carried over


@pytest.mark.parametrize("training", [True, False])
def test_new_modules_keep_dtype_train_flag_and_requires_grad(training: bool) -> None:
    conv = nn.Conv2d(2, 3, 2).double().train(training)
    norm = nn.BatchNorm2d(3).double().train(training)
    head = nn.Conv2d(3, 1, 1).double().train(training)
    conv.weight.requires_grad_(False)
    head.weight.requires_grad_(False)
    made = (
        slice_producer(conv, KEEP),
        slice_norm(norm, KEEP),
        slice_consumer(head, 3, KEEP, torch.tensor([1.0, 2.0])),
    )
    for old, new in zip((conv, norm, head), made, strict=True):
        assert new.training is training
        for (name, p_old), (_, p_new) in zip(
            old.named_parameters(), new.named_parameters(), strict=True
        ):
            assert p_new.dtype == torch.float64, name
            assert p_new.requires_grad == p_old.requires_grad, name
            assert isinstance(p_new, nn.Parameter)
            assert p_new.data_ptr() != p_old.data_ptr(), f"{name} shares memory with the input"


def test_new_modules_stay_on_the_input_device() -> None:
    conv, norm, head = nn.Conv2d(2, 3, 2), nn.BatchNorm2d(3), nn.Linear(12, 2)
    conv, norm, head = conv.to("meta"), norm.to("meta"), head.to("meta")
    made = (slice_producer(conv, KEEP), slice_norm(norm, KEEP), slice_consumer(head, 3, KEEP))
    for new in made:
        assert {t.device.type for t in (*new.parameters(), *new.buffers())} == {"meta"}


def test_the_input_modules_are_not_mutated_and_share_nothing() -> None:
    conv, norm, head = nn.Conv2d(2, 3, 2), nn.BatchNorm2d(3), nn.Linear(12, 2)
    states = [_state(m) for m in (conv, norm, head)]
    made = (slice_producer(conv, KEEP), slice_norm(norm, KEEP), slice_consumer(head, 3, KEEP))
    with torch.no_grad():
        for new in made:
            for tensor in (*new.parameters(), *new.buffers()):
                tensor.add_(1)  # writing into the slices must not reach the inputs
    for module, state in zip((conv, norm, head), states, strict=True):
        _assert_unchanged(module, state)
