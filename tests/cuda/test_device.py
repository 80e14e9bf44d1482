"""Device placement on CUDA: compress, rewiring, certificates, capture, the cost model,
save/load and a training step keep every tensor where the model lives.

Each test runs once per device: on the CPU in the normal suite (so the checks themselves
cannot rot), and on CUDA when a GPU is present, marked `cuda` (`pytest -m cuda` selects those;
without a GPU they skip). Model-side tensors (parameters, buffers, outputs, refitted weights)
must be on the model's device; bookkeeping tensors (kept indices, scales, sensitivities) may
also be on the CPU, where the library keeps them, but nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from coreprune import certify, compress, coreset_prune, layer_exceedance
from coreprune.compress import CostModel, capture_input, capture_output, count_macs, count_params
from coreprune.harness.models import build_model
from coreprune.harness.training import evaluate, fit, recalibrated_copy
from coreprune.serialization import load_model, save_model
from coreprune.surgery.graph import find_prunable_pairs
from coreprune.surgery.rewire import lstsq_weights, merge_weights, refit_consumer
from coreprune.surgery.units import layer_units, next_weights

HAS_CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")],
    ),
]
cuda_only = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]


# --------------------------------------------------------------------------------------------
# Helpers


def tensors_in(obj: object, depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor reachable from `obj`: a module's parameters and buffers, dataclass fields,
    mappings, sequences and plain attributes (a few levels deep), with a path for messages."""
    if depth > 4:
        return
    if isinstance(obj, torch.Tensor):
        yield "", obj
    elif isinstance(obj, nn.Module):
        for name, t in [*obj.named_parameters(), *obj.named_buffers()]:
            yield name, t
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            for path, t in tensors_in(getattr(obj, f.name), depth + 1):
                yield f"{f.name}.{path}".rstrip("."), t
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            for path, t in tensors_in(value, depth + 1):
                yield f"{key}.{path}".rstrip("."), t
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            for path, t in tensors_in(value, depth + 1):
                yield f"{i}.{path}".rstrip("."), t
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for key, value in vars(obj).items():
            for path, t in tensors_in(value, depth + 1):
                yield f"{key}.{path}".rstrip("."), t


def assert_on(device: torch.device, *objs: object) -> None:
    """Every tensor in `objs` lives on `device` (its type: cuda and cuda:0 are the same)."""
    wrong = [
        (p, str(t.device)) for o in objs for p, t in tensors_in(o) if t.device.type != device.type
    ]
    assert not wrong, f"tensors not on {device}: {wrong[:10]}"


def assert_on_or_cpu(device: torch.device, *objs: object) -> None:
    """Bookkeeping tensors: on `device` or on the CPU, nowhere else."""
    allowed = {device.type, "cpu"}
    wrong = [
        (p, str(t.device)) for o in objs for p, t in tensors_in(o) if t.device.type not in allowed
    ]
    assert not wrong, f"tensors neither on {device} nor on the CPU: {wrong[:10]}"


def tiny_vgg(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("vgg11", in_channels=1, num_classes=10, width_multiplier=1 / 32)
    return _settle(model, device)


def tiny_resnet(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1, num_classes=10, width_multiplier=0.125)
    return _settle(model, device)


def _settle(model: nn.Module, device: torch.device) -> nn.Module:
    """Non-trivial batch-norm statistics (a few training-mode batches), then eval mode."""
    model.to(device).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 1, 32, 32, device=device))
    return model.eval()


def images(n: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)).to(device)


def labels(n: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(1)).to(device)


def dense_linear_pair(device: torch.device) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    return nn.Linear(12, 24).to(device), nn.Linear(24, 5).to(device)


# --------------------------------------------------------------------------------------------
# compress


COMPRESS_VARIANTS: dict[str, dict[str, Any]] = {
    "coreset_default": {},  # calibrated: the default choice and lstsq rewiring
    "coreset_lstsq": {"compensate": "lstsq"},
    "coreset_certified": {"choice": "certified", "compensate": "lstsq"},
    "coreset_merge_data_free": {"calibration": None},
    "magnitude_lstsq": {"method": "magnitude", "compensate": "lstsq"},
    "random_none": {"method": "random", "compensate": "none"},
}


@pytest.mark.parametrize("variant", list(COMPRESS_VARIANTS))
@pytest.mark.parametrize("build", [tiny_vgg, tiny_resnet], ids=["vgg", "resnet"])
@pytest.mark.parametrize("device", DEVICES)
def test_compress_keeps_everything_on_the_device(
    device: str, build: Callable[[torch.device], nn.Module], variant: str
) -> None:
    if device == "cpu" and build is tiny_vgg and variant == "coreset_certified":
        pytest.skip("slow on a small CPU (MVEE bounds); the ResNet variant covers the CPU")
    dev = torch.device(device)
    model = build(dev)
    x = images(64, dev)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs: dict[str, Any] = {"target": 0.5, "calibration": x, "example_input": x[:1],
                              "progress": False}  # fmt: skip
    result = compress(model, **(kwargs | COMPRESS_VARIANTS[variant]))
    assert_on(dev, result.model)
    out = result.model(x)
    assert out.device.type == dev.type and out.shape == (64, 10) and torch.isfinite(out).all()
    assert_on_or_cpu(dev, result.report)
    assert count_params(result.model) < count_params(model)
    assert_on(dev, model)  # the input model is untouched, on its device
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("device", DEVICES)
def test_compress_channels_last_model(device: str) -> None:
    """`fit` leaves a CUDA model in channels-last memory format; compress takes it as it is."""
    dev = torch.device(device)
    model = tiny_resnet(dev).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = images(64, dev).contiguous(memory_format=torch.channels_last)
    result = compress(model, target=0.5, calibration=x, progress=False)
    assert_on(dev, result.model)
    assert torch.isfinite(result.model(x)).all()


@pytest.mark.parametrize("device", DEVICES)
def test_compress_calibration_on_another_device_is_a_clear_error_or_works(device: str) -> None:
    """A CPU calibration batch for a CUDA model: a ValueError naming `calibration`, or a
    model that is still wholly on the model's device (never a model split across devices)."""
    dev = torch.device(device)
    model = tiny_vgg(dev)
    try:
        result = compress(model, target=0.5, calibration=images(32, torch.device("cpu")),
                          progress=False)  # fmt: skip
    except ValueError as err:
        assert "calibration" in str(err)
        return
    assert_on(dev, result.model)


# --------------------------------------------------------------------------------------------
# One layer: coreset_prune and rewiring


@pytest.mark.parametrize("compensate", ["none", "merge", "lstsq"])
@pytest.mark.parametrize("device", DEVICES)
def test_coreset_prune_apply(device: str, compensate: str) -> None:
    dev = torch.device(device)
    layer, nxt = dense_linear_pair(dev)
    result = coreset_prune(layer, nxt, keep=12, mode="select")
    assert_on_or_cpu(dev, result.keep, result.scale, result.sensitivity)
    calibration = torch.randn(64, 12).to(dev) if compensate == "lstsq" else None
    new_layer, new_next = result.apply(compensate=compensate, calibration=calibration)
    assert isinstance(new_layer, nn.Linear) and isinstance(new_next, nn.Linear)
    assert_on(dev, new_layer, new_next)
    assert new_layer.out_features == 12 and new_next.in_features == 12
    assert new_next(torch.relu(new_layer(torch.randn(8, 12, device=dev)))).device.type == dev.type
    assert_on(dev, layer, nxt)


@pytest.mark.parametrize("device", DEVICES)
def test_merge_weights(device: str) -> None:
    dev = torch.device(device)
    layer, nxt = dense_linear_pair(dev)
    units = layer_units(layer)
    reading = next_weights(nxt, 24, device=dev)
    keep = torch.arange(0, 24, 2, device=dev)
    merged = merge_weights(units, reading, keep, "relu")
    assert merged.reading.device.type == dev.type
    assert merged.reading.shape == (reading.shape[0], 12)
    assert_on_or_cpu(dev, merged)


@pytest.mark.parametrize("device", DEVICES)
def test_lstsq_and_refit_consumer(device: str) -> None:
    dev = torch.device(device)
    x, y = torch.randn(200, 10, device=dev), torch.randn(200, 3, device=dev)
    fitted = lstsq_weights(x, y)
    assert_on(dev, fitted.weight, fitted.bias)
    consumer = nn.Conv2d(6, 4, 3, padding=1).to(dev)
    inputs = torch.randn(16, 6, 8, 8, device=dev)
    with torch.no_grad():
        target = consumer(inputs) + 0.1
    new, fit_result = refit_consumer(consumer, inputs, target)
    assert_on(dev, new, fit_result.weight, fit_result.bias)
    assert_on(dev, consumer)


# --------------------------------------------------------------------------------------------
# Certificates, capture, cost model


@pytest.mark.parametrize("holdout_device", ["same", "cpu"])
@pytest.mark.parametrize("device", DEVICES)
def test_certify_and_layer_exceedance(device: str, holdout_device: str) -> None:
    dev = torch.device(device)
    model = tiny_vgg(dev)
    x = images(64, dev)
    result = compress(model, target=0.5, calibration=x, progress=False)
    where = dev if holdout_device == "same" else torch.device("cpu")
    holdout = (images(400, where, seed=3), labels(400, where))
    cert = certify(model, result.model, holdout, confidence=0.95)
    assert cert.n == 400 and 0.0 <= cert.agreement_lower <= 1.0
    assert_on_or_cpu(dev, cert)
    report = layer_exceedance(model, result.model, result.report.rows, holdout[0], eps=0.5)
    assert len(report) > 0
    assert_on_or_cpu(dev, report)
    assert_on(dev, model, result.model)  # both models stay where they were


@pytest.mark.parametrize("device", DEVICES)
def test_capture_and_cost_model(device: str) -> None:
    dev = torch.device(device)
    model = tiny_resnet(dev)
    x = images(8, dev)
    pairs, _ = find_prunable_pairs(model)
    a = capture_input(model, pairs[0].consumer, x)
    b = capture_output(model, pairs[0].producer, x)
    assert a.device.type == dev.type and b.device.type == dev.type
    macs = count_macs(model, x[:1])
    cost = CostModel.build(model, pairs, "macs", x[:1])
    dense = [int(model.get_submodule(p.producer).weight.shape[0]) for p in pairs]  # type: ignore[index]
    assert cost.cost(dense) == macs  # the dense widths cost what count_macs measures
    assert CostModel.build(model, pairs, "params").cost(dense) == count_params(model)
    assert_on(dev, model)


# --------------------------------------------------------------------------------------------
# Save/load, training, evaluation


@pytest.mark.parametrize("device", DEVICES)
def test_save_load_of_device_tensors(device: str, tmp_path: Path) -> None:
    dev = torch.device(device)
    model = tiny_resnet(dev)
    x = images(32, dev)
    pruned = compress(model, target=0.5, calibration=x, progress=False).model
    pruned.to(memory_format=torch.channels_last)  # as after fit on CUDA
    save_model(pruned, tmp_path / "m", arch="resnet20",
               arch_kwargs={"in_channels": 1, "num_classes": 10, "width_multiplier": 0.125})  # fmt: skip
    loaded = load_model(tmp_path / "m")
    assert_on(torch.device("cpu"), loaded)  # load_model's contract: on the CPU
    loaded.to(dev).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), pruned.eval()(x), atol=1e-5, rtol=1e-5)
    assert_on(dev, pruned)


def _loader(device: torch.device, n: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = images(n, device), labels(n, device)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


@pytest.mark.parametrize("data_on", ["cpu", "device"])
@pytest.mark.parametrize("device", DEVICES)
def test_training_step_and_evaluation(device: str, data_on: str) -> None:
    """One epoch of `fit` (AMP and channels-last on CUDA), BN re-estimation, evaluation."""
    dev = torch.device(device)
    model = tiny_vgg(torch.device("cpu"))
    loader = _loader(dev if data_on == "device" else torch.device("cpu"))
    history = fit(model, loader, epochs=1, lr=0.01, device=dev, progress=False, seed=0)  # type: ignore[arg-type]
    assert history.amp == (dev.type == "cuda")
    assert len(history.train_loss) == 1 and history.train_loss[0] == history.train_loss[0]
    assert_on(dev, model)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    if dev.type == "cuda":
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    again = recalibrated_copy(model, loader, dev, batches=2)
    assert_on(dev, again)
    result = evaluate(again, loader)  # type: ignore[arg-type]
    assert 0.0 <= result["accuracy"] <= 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_gpu_script_batches_stay_on_the_device(device: str) -> None:
    """benchmarks/gpu/run.py's device-resident batches (augmented on the device)."""
    run = pytest.importorskip("benchmarks.gpu.run")
    dev = torch.device(device)
    x, y = torch.rand(40, 1, 32, 32, device=dev), labels(40, dev)
    batches = run.DeviceBatches(x, y, 16, shuffle=True, augment=True)
    got = list(batches)
    assert len(got) == len(batches) == 3
    assert all(b.device.type == dev.type and t.device.type == dev.type for b, t in got)
    assert sum(len(t) for _, t in got) == 40


@pytest.mark.parametrize("device", DEVICES)
def test_amp_autocast_compress_inputs_in_half(device: str) -> None:
    """A model trained under AMP is still float32; compress under autocast is not needed, but
    a bfloat16 calibration batch must either work or be refused clearly."""
    dev = torch.device(device)
    model = tiny_vgg(dev)
    x = images(32, dev).to(torch.bfloat16)
    try:
        result = compress(model, target=0.5, calibration=x, progress=False)
    except (ValueError, TypeError) as err:
        assert "calibration" in str(err) or "dtype" in str(err)
        return
    assert_on(dev, result.model)
