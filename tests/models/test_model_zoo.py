"""Every model builds, runs forward and backward on 28 and 32 px, and traces with torch.fx."""

from __future__ import annotations

import operator
from collections.abc import Iterator

import pytest
import torch
from torch import fx, nn

from coreprune.harness.models import MODEL_NAMES, build_model

# Thin widths keep the forward/backward matrix fast; full widths are used for tracing.
_THIN = {"width_multiplier": 0.25}
_KWARGS: dict[str, dict[str, object]] = {
    "lenet300100": {},
    "lenet5": {},
    "vgg_small": {},
    "vit_small": {},
    **{name: _THIN for name in ("vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet50")},
    **{name: {} for name in ("resnet20", "resnet32", "resnet56", "resnet110")},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny batches gain nothing from threads, and on a shared 2-core machine the thread
    pool's spin-waiting makes them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(name: str, channels: int, size: int, num_classes: int = 7) -> nn.Module:
    kwargs = dict(_KWARGS[name])
    if name == "lenet300100":
        kwargs["in_features"] = channels * size * size
    else:
        kwargs["in_channels"] = channels
    if name in ("lenet5", "vgg_small", "vit_small"):
        kwargs["image_size"] = size
    return build_model(name, num_classes=num_classes, **kwargs)


def test_registry_lists_every_name() -> None:
    assert set(MODEL_NAMES) == set(_KWARGS)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_forward(name: str, size: int, channels: int) -> None:
    torch.manual_seed(0)
    model = _build(name, channels, size)
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_backward(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = _build(name, channels, size)
    model(torch.randn(2, channels, size, size)).square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads if g is not None)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_small_input_stem(name: str) -> None:
    model = build_model(name, in_channels=1, small_input=True, width_multiplier=0.25)
    assert model.maxpool is None
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def _leaf_names(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if name and not list(m.children())}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fx_trace_calls_each_module_once(name: str) -> None:
    model = build_model(name)
    graph = fx.symbolic_trace(model).graph
    called = [node.target for node in graph.nodes if node.op == "call_module"]
    assert len(called) == len(set(called)), "a module is called twice"
    assert set(called) == _leaf_names(model)
    adds = [
        n for n in graph.nodes if n.op == "call_function" and n.target in (operator.add, torch.add)
    ]
    blocks = sum(1 for m in model.modules() if hasattr(m, "downsample"))
    if name == "vit_small":  # two residual adds per block and the position embedding's
        blocks = 2 * len(model.blocks) + 1  # type: ignore[arg-type]
    assert len(adds) == blocks  # one residual add per block, none elsewhere


def test_fx_traced_output_matches_model() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    traced = fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(traced(x), model(x))


def test_distinct_module_instances() -> None:
    model = build_model("resnet56")
    ids = [id(m) for _, m in model.named_modules(remove_duplicate=False)]
    assert len(ids) == len(set(ids))


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="resnet56"):
        build_model("resnet57")


def test_unexpected_kwarg_names_the_model() -> None:
    with pytest.raises(TypeError, match="lenet300100"):
        build_model("lenet300100", in_channels=3)


@pytest.mark.parametrize(
    ("name", "kwargs", "error"),
    [
        ("resnet20", {"num_classes": 0}, ValueError),
        ("resnet20", {"width_multiplier": 0.0}, ValueError),
        ("resnet20", {"width_multiplier": float("nan")}, ValueError),
        ("resnet20", {"width_multiplier": 0.01}, ValueError),  # 16 channels -> 0
        ("vgg16", {"in_channels": 2.0}, TypeError),
        ("vgg16", {"hidden": (512, 0)}, ValueError),
        ("lenet300100", {"hidden": ()}, ValueError),
        ("lenet5", {"image_size": 8}, ValueError),
        ("resnet18", {"small_input": 1}, TypeError),
    ],
)
def test_bad_arguments(name: str, kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        build_model(name, **kwargs)


def test_cifar_resnet_depth_must_be_6n_plus_2() -> None:
    from coreprune.harness.models import CifarResNet

    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=21)


def test_init_is_kaiming() -> None:
    torch.manual_seed(0)
    model = build_model("vgg16")
    conv = model.features[-4]
    assert isinstance(conv, nn.Conv2d)
    fan_out = conv.out_channels * 9
    std = conv.weight.std().item()
    assert abs(std - (2.0 / fan_out) ** 0.5) < 0.02 * (2.0 / fan_out) ** 0.5
    bn = model.features[-3]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
