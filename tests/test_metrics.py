"""Params, MACs, latency and per-layer error on models small enough to count by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from coreprune.harness.evaluation import (
    LatencyStats,
    count_macs,
    count_params,
    layer_errors,
    measure_latency,
)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2))


def _convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten())


def test_linear_params_and_macs() -> None:
    layer = nn.Linear(10, 5)
    assert count_params(layer) == 10 * 5 + 5
    assert count_macs(layer, torch.randn(1, 10)) == 50
    assert count_macs(layer, torch.randn(3, 10)) == 150  # the whole batch
    model = _mlp()
    assert count_params(model) == 55 + 12
    assert count_macs(model, torch.randn(1, 10)) == 50 + 10


def test_conv_params_and_macs() -> None:
    model = _convnet()
    # 3 filters of 2x3x3 plus bias, and BN affine weight + bias
    assert count_params(model) == 3 * 2 * 9 + 3 + 2 * 3
    # output 3 x 3 x 3 = 27 values, each 2 * 3 * 3 = 18 multiply-adds; BN/ReLU not counted
    assert count_macs(model, torch.randn(1, 2, 5, 5)) == 27 * 18
    strided = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)  # 8x8 -> 4x4
    assert count_macs(strided, torch.randn(1, 4, 8, 8)) == 6 * 4 * 4 * (4 * 9)


def test_shared_parameter_counts_once() -> None:
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    assert count_params(nn.Sequential(a, b)) == 16 + 4 + 4


def test_macs_restore_mode_and_do_not_touch_batch_norm() -> None:
    model = _convnet().train()
    model[2].eval()
    stats = model[1].running_mean.clone()
    count_macs(model, torch.randn(2, 2, 5, 5))
    assert model.training and model[1].training and not model[2].training
    assert torch.equal(model[1].running_mean, stats)


def test_latency_stats() -> None:
    model = _mlp().train()
    model[1].eval()
    stats = measure_latency(model, torch.randn(4, 10), warmup=2, repeats=7)
    assert isinstance(stats, LatencyStats)
    assert stats.repeats == 7 and stats.device == "cpu"
    for value in (stats.median_ms, stats.p10_ms, stats.p90_ms):
        assert math.isfinite(value) and value > 0
    assert stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert model.training and model[0].training and not model[1].training
    single = measure_latency(model, (torch.randn(1, 10),), warmup=0, repeats=1, device="cpu")
    assert single.p10_ms == single.median_ms == single.p90_ms


def test_latency_bad_arguments() -> None:
    model = _mlp()
    x = torch.randn(1, 10)
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, x, repeats=0)
    with pytest.raises(TypeError, match="warmup"):
        measure_latency(model, x, warmup=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="repeats"):
        measure_latency(model, x, repeats=True)
    with pytest.raises(TypeError, match="example_input"):
        measure_latency(model, [1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model"):
        count_macs("model", x)  # type: ignore[arg-type]


def test_layer_errors_identical_models_are_zero() -> None:
    model = _mlp()
    x = torch.randn(8, 10)
    errors = layer_errors(model, copy.deepcopy(model), x, ["0", "1", "2"])
    assert errors == {"0": 0.0, "1": 0.0, "2": 0.0}


def test_layer_errors_match_hand_computation() -> None:
    dense = _mlp()
    compressed = copy.deepcopy(dense)
    with torch.no_grad():
        compressed[2].weight.mul_(1.1)
        compressed[2].bias.add_(0.05)
    x = torch.randn(16, 10)
    with torch.no_grad():
        a, b = dense(x).double(), compressed(x).double()
    expected = float(torch.linalg.norm(a - b) / torch.linalg.norm(a))
    errors = layer_errors(dense, compressed, x, ["2", "0"])
    assert list(errors) == ["2", "0"]
    assert errors["0"] == 0.0
    assert errors["2"] == pytest.approx(expected, rel=1e-6)
    assert errors["2"] > 0.01


def test_layer_errors_use_eval_mode_and_restore_it() -> None:
    dense = _convnet().train()
    stats = dense[1].running_mean.clone()
    x = torch.randn(4, 2, 5, 5)
    errors = layer_errors(dense, copy.deepcopy(dense), x, ["1"])
    assert errors["1"] == 0.0
    assert dense.training and torch.equal(dense[1].running_mean, stats)


def test_layer_errors_bad_input() -> None:
    model = _mlp()
    x = torch.randn(2, 10)
    narrow = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="consumer"):
        layer_errors(model, narrow, x, ["0"])
    assert layer_errors(model, narrow, x, ["2"])["2"] > 0  # the consumer keeps its shape
    with pytest.raises(ValueError, match="no module named"):
        layer_errors(model, model, x, ["fc9"])
    with pytest.raises(TypeError, match="names"):
        layer_errors(model, model, x, "0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicates"):
        layer_errors(model, model, x, ["0", "0"])


def test_registry_model_macs_if_available() -> None:
    models = pytest.importorskip("coreprune.harness.models")
    model = models.build_model("lenet300100")
    assert count_params(model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert count_macs(model, torch.randn(1, 1, 28, 28)) == 784 * 300 + 300 * 100 + 100 * 10
