"""find_prunable_pairs / validate_pairs: which layer pairs a whole-model pass may prune."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coreprune.surgery.activations import Activation
from coreprune.surgery.graph import (
    BlockedLayer,
    FxTraceError,
    PrunablePair,
    find_prunable_pairs,
    validate_pairs,
)


def _layers(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def _check_cover(model: nn.Module, pairs: list[PrunablePair], blocked: list[BlockedLayer]) -> None:
    """Every Linear/Conv2d is either a producer or blocked, never both, each once."""
    producers = [p.producer for p in pairs]
    names = [b.name for b in blocked]
    assert len(set(producers)) == len(producers)
    assert len(set(names)) == len(names)
    assert set(producers).isdisjoint(names)
    assert set(producers) | set(names) == _layers(model)
    assert all(b.reason for b in blocked)


def _reason(blocked: list[BlockedLayer], name: str) -> str:
    return next(b.reason for b in blocked if b.name == name)


# ----------------------------------------------------------------------------- small models


class FunctionalMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 12)
        self.fc3 = nn.Linear(12, 10)
        self.fc4 = nn.Linear(10, 3)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.relu(self.fc1(x), inplace=True))
        x = F.leaky_relu(self.fc2(x), 0.2)
        x = self.fc3(x).relu_()
        return self.fc4(torch.tanh(x))


class ConvNet(nn.Module):
    """conv-BN-ReLU-maxpool -> conv-ReLU -> view flatten -> Linear -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 4 * 4, 10)
        self.fc2 = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.conv2(x))
        x = x.view(x.size(0), -1)
        return self.fc2(self.fc1(x))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        y = self.b(F.relu(self.a(x)))
        return self.head(x + y)


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1))


def test_functional_mlp_pairs_and_activations() -> None:
    model = FunctionalMLP()
    pairs, blocked = find_prunable_pairs(model)
    _check_cover(model, pairs, blocked)
    assert [(p.producer, p.consumer, p.activation) for p in pairs] == [
        ("fc1", "fc2", Activation("relu")),
        ("fc2", "fc3", Activation("leaky_relu", slope=0.2)),
    ]
    assert pairs[0].between == ("relu", "drop")
    assert all(p.norm is None and not p.flatten and p.pooling == () for p in pairs)
    # fc3 -> relu_ -> tanh: two activations in a row are not one phi
    assert "two activations" in _reason(blocked, "fc3")
    assert "final layer" in _reason(blocked, "fc4")


def test_conv_bn_pool_view_flatten() -> None:
    model = ConvNet()
    pairs, blocked = find_prunable_pairs(model)
    _check_cover(model, pairs, blocked)
    first, second, third = pairs
    assert (first.producer, first.consumer, first.norm) == ("conv1", "conv2", "bn1")
    assert (
        first.pooling == ("max",) and not first.flatten and first.activation == Activation("relu")
    )
    assert first.between[0] == "bn1"
    assert (second.producer, second.consumer, second.flatten) == ("conv2", "fc1", True)
    assert second.pooling == () and "view" in second.between
    assert (third.producer, third.consumer, third.activation) == (
        "fc1",
        "fc2",
        Activation("identity"),
    )
    assert validate_pairs(model, pairs) == pairs


@pytest.mark.parametrize(
    "flatten",
    [
        lambda x: torch.flatten(x, 1),
        lambda x: x.flatten(1),
        lambda x: x.reshape(x.shape[0], -1),
        lambda x: x.view(-1, 4),
        lambda x: x.mean((2, 3)),
        lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1),
        lambda x: nn.functional.dropout(x.contiguous(), 0.1).view(x.size()[0], -1),
    ],
)
def test_flatten_spellings(flatten: Callable[[torch.Tensor], torch.Tensor]) -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(flatten(F.adaptive_max_pool2d(self.conv(x), 1)))

    pairs, _ = find_prunable_pairs(Head())
    assert len(pairs) == 1 and pairs[0].flatten
    assert pairs[0].pooling[0] == "adaptive_max"


def test_residual_add_and_concat_are_blocked() -> None:
    model = Residual()
    pairs, blocked = find_prunable_pairs(model)
    _check_cover(model, pairs, blocked)
    assert [(p.producer, p.consumer) for p in pairs] == [("a", "b")]
    assert "residual add" in _reason(blocked, "b")
    assert "2 users" in _reason(blocked, "stem")
    assert "final layer" in _reason(blocked, "head")

    concat = Concat()
    pairs, blocked = find_prunable_pairs(concat)
    assert pairs == []
    assert "concatenation" in _reason(blocked, "a") and "concatenation" in _reason(blocked, "b")


def test_shared_module_and_tied_weights_are_blocked() -> None:
    class Chain(nn.Module):
        def __init__(self, reuse: bool) -> None:
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
            self.reuse = reuse
            if not reuse:
                self.fc3.weight = self.fc2.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.fc2(F.relu(self.fc1(x))))
            return self.fc3(F.relu(self.fc2(h)) if self.reuse else h)

    model = Chain(reuse=True)
    pairs, blocked = find_prunable_pairs(model)
    _check_cover(model, pairs, blocked)
    assert pairs == []
    assert "its consumer ('fc2') is called 2 times" in _reason(blocked, "fc1")
    assert "called 2 times" in _reason(blocked, "fc2")

    model = Chain(reuse=False)
    pairs, blocked = find_prunable_pairs(model)
    _check_cover(model, pairs, blocked)
    assert pairs == []
    assert "shares a parameter with 'fc3'" in _reason(blocked, "fc1")
    assert "tied" in _reason(blocked, "fc2")


def test_grouped_convolutions_are_blocked_with_groups() -> None:
    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.g = nn.Conv2d(4, 4, 3, groups=2)
            self.a = nn.Conv2d(4, 8, 3)
            self.dw = nn.Conv2d(8, 8, 3, groups=8)
            self.pw = nn.Conv2d(8, 4, 1)
            self.out = nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.a(F.relu(self.g(x)))
            return self.out(F.relu(self.pw(F.relu(self.dw(F.relu(x))))))

    pairs, blocked = find_prunable_pairs(Grouped())
    assert [(p.producer, p.consumer) for p in pairs] == [("pw", "out")]
    assert "'g'" in _reason(blocked, "g") and "grouped" in _reason(blocked, "g")
    assert "groups=2" in _reason(blocked, "g")
    assert "consumer ('dw')" in _reason(blocked, "a") and "groups=8" in _reason(blocked, "a")
    assert "depthwise" in _reason(blocked, "dw") and "groups=8" in _reason(blocked, "dw")


@pytest.mark.parametrize(
    ("op", "needle"),
    [
        (lambda x: x * 2.0, "mul"),
        (lambda x: torch.softmax(x, dim=1), "softmax"),
        (lambda x: x.transpose(0, 1).transpose(0, 1), "transpose"),
        (lambda x: x[:, :3], "getitem"),
    ],
)
def test_unsupported_op_is_named(op: Callable[[torch.Tensor], torch.Tensor], needle: str) -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(op(self.fc1(x))[:, :4])

    pairs, blocked = find_prunable_pairs(Odd())
    assert pairs == []
    assert needle in _reason(blocked, "fc1")


def test_norm_rules() -> None:
    class NormAfterAct(nn.Module):
        def __init__(self, track: bool = True, after: bool = True) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)
            self.bn = nn.BatchNorm1d(6, track_running_stats=track)
            self.after = after

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.after:
                return self.fc2(self.bn(F.relu(self.fc1(x))))
            return self.fc2(F.relu(self.bn(self.fc1(x))))

    _, blocked = find_prunable_pairs(NormAfterAct())
    assert "not directly after" in _reason(blocked, "fc1")
    _, blocked = find_prunable_pairs(NormAfterAct(track=False, after=False))
    assert "running statistics" in _reason(blocked, "fc1")
    pairs, _ = find_prunable_pairs(NormAfterAct(after=False))
    assert pairs[0].norm == "bn" and pairs[0].activation == Activation("relu")


def test_conv_into_linear_without_flatten_and_linear_flatten_are_blocked() -> None:
    class NoFlatten(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 1), nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x))

    _, blocked = find_prunable_pairs(NoFlatten())
    assert "without a flatten" in _reason(blocked, "conv")

    class LinearFlatten(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(20, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.fc1(x).flatten(1))

    _, blocked = find_prunable_pairs(LinearFlatten())
    assert "flatten" in _reason(blocked, "fc1")


def test_activation_modules_become_activations() -> None:
    acts = [nn.ReLU(inplace=True), nn.LeakyReLU(0.3), nn.GELU(), nn.GELU(approximate="tanh"),
            nn.Tanh(), nn.Identity(), nn.ELU(0.5), nn.Hardtanh(-2.0, 3.0), nn.Mish()]  # fmt: skip
    model = nn.Sequential(*[m for a in acts for m in (nn.Linear(4, 4), a)], nn.Linear(4, 1))
    pairs, blocked = find_prunable_pairs(model)
    assert [p.activation.spec for p in pairs if isinstance(p.activation, Activation)] == [
        "relu", "leaky_relu:0.3", "gelu", "gelu_tanh", "tanh", "identity", "elu:0.5",
        "hardtanh:-2.0:3.0", "mish",
    ]  # fmt: skip
    assert len(pairs) == len(acts) and [b.name for b in blocked] == [str(2 * len(acts))]


@pytest.mark.parametrize(
    ("act", "needle"),
    [
        (nn.Sigmoid(), "sigmoid(0) = 0.5"),
        (nn.SELU(), "|selu(t)| = 1.0507 |t| > |t| for t > 0"),
        (nn.Softplus(), "softplus(0)"),
        (nn.LeakyReLU(-1.5), "need |slope| <= 1"),
        (nn.ELU(2.0), "need |alpha| <= 1"),
        (nn.Hardtanh(0.5, 2.0), "hardtanh(0) = 0.5"),
        (nn.Hardsigmoid(), "hardsigmoid(0) = 0.5"),
    ],
)
def test_uncovered_activation_blocks_the_pair_with_the_reason(act: nn.Module, needle: str) -> None:
    model = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 2))
    pairs, blocked = find_prunable_pairs(model)
    assert pairs == []
    reason = _reason(blocked, "0")
    assert "activation not certifiable" in reason and "is not covered" in reason
    assert needle in reason


def test_functional_activation_parameters_are_read() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 6)
            self.fc4, self.fc5 = nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.gelu(self.fc1(x), approximate="tanh")
            x = F.hardtanh(self.fc2(x), -0.5, 0.5)
            x = F.elu(self.fc3(x), alpha=2.0)
            return self.fc5(F.leaky_relu(self.fc4(x), x.mean()))  # type: ignore[arg-type]

    pairs, blocked = find_prunable_pairs(Functional())
    assert [(p.producer, p.activation) for p in pairs] == [
        ("fc1", Activation("gelu", approximate="tanh")),
        ("fc2", Activation("hardtanh", min_val=-0.5, max_val=0.5)),
    ]
    assert "need |alpha| <= 1" in _reason(blocked, "fc3")
    assert "not a constant" in _reason(blocked, "fc4")


def test_hf_style_activation_module_is_read_by_behaviour() -> None:
    class NewGELUActivation(nn.Module):  # what HF's class of that name computes
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            c = math.sqrt(2.0 / math.pi)
            return 0.5 * x * (1.0 + torch.tanh(c * (x + 0.044715 * torch.pow(x, 3.0))))

    class GELUActivation(nn.Module):  # the name says GELU, the forward is the tanh one
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.gelu(x, approximate="tanh")

    class SquaredReLUActivation(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x) ** 2

    model = nn.Sequential(
        nn.Linear(4, 6), NewGELUActivation(), nn.Linear(6, 6), GELUActivation(),
        nn.Linear(6, 6), SquaredReLUActivation(), nn.Linear(6, 2),
    )  # fmt: skip
    pairs, blocked = find_prunable_pairs(model)
    assert [(p.producer, p.activation) for p in pairs] == [
        ("0", Activation("gelu", approximate="tanh")),
        ("2", Activation("gelu", approximate="tanh")),
    ]
    assert "computes no known activation" in _reason(blocked, "4")


def test_simple_pair_and_string_activations_are_converted() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(approximate="tanh"), nn.Linear(6, 2))
    pair = PrunablePair.simple("0", "2", "gelu_tanh")
    assert pair.activation == Activation("gelu", approximate="tanh") and pair.between == ()
    found, _ = find_prunable_pairs(model)
    assert validate_pairs(model, [pair])[0].activation == found[0].activation
    legacy = PrunablePair("0", "2", None, "leaky_relu:0.2", False, (), ())
    assert validate_pairs(model, [legacy])[0].activation == Activation("leaky_relu", 0.2)
    with pytest.raises(ValueError, match="is not covered"):
        validate_pairs(model, [PrunablePair("0", "2", None, "selu", False, (), ())])
    with pytest.raises(ValueError, match="not a known activation"):
        validate_pairs(model, [PrunablePair("0", "2", None, "relu ", False, (), ())])
    with pytest.raises(ValueError, match="not a known activation"):
        PrunablePair.simple("0", "2", "RELU")
    with pytest.raises(TypeError, match="activation"):
        validate_pairs(model, [PrunablePair("0", "2", None, nn.ReLU(), False, (), ())])  # type: ignore[arg-type]


def test_model_is_not_mutated() -> None:
    model = ConvNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    children = dict(model.named_modules())
    attrs = set(vars(model))
    find_prunable_pairs(model)
    assert model.training and set(vars(model)) == attrs
    assert dict(model.named_modules()) == children
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_untraceable_model_raises_with_hint() -> None:
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc1(x)
            if h.sum() > 0:  # data-dependent control flow
                h = F.relu(h)
            return self.fc2(h)

    model = Dynamic()
    with pytest.raises(TypeError, match=r"(?s)fx.*pairs") as info:
        find_prunable_pairs(model)
    assert isinstance(info.value, FxTraceError) and info.value.__cause__ is not None
    pair = PrunablePair("fc1", "fc2", None, "relu", False, (), ())
    assert validate_pairs(model, [pair]) == [
        dataclasses.replace(pair, activation=Activation("relu"))
    ]


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="model"):
        find_prunable_pairs("resnet20")  # type: ignore[arg-type]


def test_validate_pairs_rejects_bad_pairs() -> None:
    model = ConvNet()
    good, _ = find_prunable_pairs(model)
    conv_pair, flat_pair, _ = good
    bad_cases = [
        (dataclasses.replace(conv_pair, producer="nope"), ValueError, "not a module"),
        (
            dataclasses.replace(conv_pair, producer="bn1"),
            TypeError,
            "nn.Linear, nn.Conv2d or Conv1D",
        ),
        (dataclasses.replace(conv_pair, consumer="fc2"), ValueError, "without a flatten"),
        (dataclasses.replace(conv_pair, norm="conv2"), TypeError, "BatchNorm2d"),
        (dataclasses.replace(flat_pair, flatten=False), ValueError, "without a flatten"),
        (dataclasses.replace(conv_pair, pooling=("median",)), ValueError, "pooling"),
        (dataclasses.replace(conv_pair, consumer="conv1"), ValueError, "same module"),
        (PrunablePair("fc1", "conv2", None, "relu", False, (), ()), ValueError, "Linear producer"),
        (PrunablePair("conv1", "fc2", None, "relu", True, (), ()), ValueError, "multiple"),
    ]
    for pair, error, needle in bad_cases:
        with pytest.raises(error, match=needle):
            validate_pairs(model, [pair])
    with pytest.raises(ValueError, match="more than one pair"):
        validate_pairs(model, [conv_pair, conv_pair])
    with pytest.raises(TypeError, match="PrunablePair"):
        validate_pairs(model, [("conv1", "conv2")])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="wrap it in a list"):
        validate_pairs(model, conv_pair)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- registry models


def _build(name: str, **kwargs: object) -> nn.Module:
    models = pytest.importorskip("coreprune.harness.models")
    return models.build_model(name, **kwargs)


def test_resnet20_pairs_are_the_first_conv_of_each_block() -> None:
    model = _build("resnet20")
    pairs, blocked = find_prunable_pairs(model)
    _check_cover(model, pairs, blocked)
    expected = [(f"layer{s}.{b}.conv1", f"layer{s}.{b}.conv2") for s in (1, 2, 3) for b in range(3)]
    assert [(p.producer, p.consumer) for p in pairs] == expected
    assert all(p.norm == p.producer.replace("conv1", "bn1") for p in pairs)
    assert all(p.activation == Activation("relu") and not p.flatten for p in pairs)
    assert "residual add" in _reason(blocked, "layer1.0.conv2")
    assert "residual add" in _reason(blocked, "layer2.0.downsample.0")
    assert validate_pairs(model, pairs) == pairs


def test_resnet50_pairs_are_the_two_inner_convs_of_each_bottleneck() -> None:
    model = _build("resnet50")
    pairs, blocked = find_prunable_pairs(model)
    _check_cover(model, pairs, blocked)
    assert len(pairs) == 32
    blocks = [n[: -len(".conv1")] for n, _ in model.named_modules() if n.endswith(".conv1")]
    assert len(blocks) == 16
    expected = [(f"{b}.conv{i}", f"{b}.conv{i + 1}") for b in blocks for i in (1, 2)]
    assert [(p.producer, p.consumer) for p in pairs] == expected


def test_vgg16_chain() -> None:
    model = _build("vgg16", hidden=(32, 16))
    pairs, blocked = find_prunable_pairs(model)
    _check_cover(model, pairs, blocked)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 13 and len(linears) == 3
    chain = convs + linears
    assert [(p.producer, p.consumer) for p in pairs] == list(itertools.pairwise(chain))
    bridge = pairs[12]
    assert bridge.flatten and "adaptive_avg" in bridge.pooling and bridge.norm is not None
    assert [b.name for b in blocked] == [linears[-1]]


def test_lenets() -> None:
    model = _build("lenet300100")
    pairs, blocked = find_prunable_pairs(model)
    _check_cover(model, pairs, blocked)
    assert len(pairs) == 2
    model = _build("lenet5")
    pairs, blocked = find_prunable_pairs(model)
    _check_cover(model, pairs, blocked)
    assert len(pairs) == 4 and pairs[1].flatten and pairs[1].pooling == ("max",)
