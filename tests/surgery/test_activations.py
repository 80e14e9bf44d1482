"""Activations: the coverage table against the math, names, modules (by behaviour) and functions."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coreprune.surgery.activations import (
    Activation,
    activation_of,
    function_activation,
    known_activation_names,
    module_activation,
    resolve_activation,
)

# A dense grid around 0 (where phi(0) != 0 and slopes above 1 show), plus large |t|.
GRID = torch.cat(
    [
        torch.linspace(-60.0, 60.0, 240_001, dtype=torch.float64),
        torch.logspace(-12, 6, 400, dtype=torch.float64),
        -torch.logspace(-12, 6, 400, dtype=torch.float64),
    ]
)

COVERED = [
    Activation("identity"),
    Activation("relu"),
    Activation("relu6"),
    Activation("leaky_relu"),
    Activation("leaky_relu", 1.0),
    Activation("leaky_relu", -0.7),
    Activation("hardtanh"),
    Activation("hardtanh", min_val=-3.0, max_val=0.0),
    Activation("hardtanh", min_val=0.0, max_val=2.0),
    Activation("elu"),
    Activation("elu", 0.3),
    Activation("elu", -1.0),
    Activation("celu"),
    Activation("celu", 3.0),
    Activation("celu", 0.2),
    Activation("tanh"),
    Activation("softsign"),
    Activation("gelu"),
    Activation("gelu", approximate="tanh"),
    Activation("quick_gelu"),
    Activation("silu"),
    Activation("mish"),
    Activation("hardswish"),
]
REFUSED = [
    Activation("selu"),
    Activation("sigmoid"),
    Activation("hardsigmoid"),
    Activation("softplus"),
    Activation("softplus", beta=5.0, threshold=10.0),
    Activation("leaky_relu", 1.5),
    Activation("leaky_relu", -1.01),
    Activation("elu", 1.2),
    Activation("elu", -2.0),
    Activation("celu", -0.5),
    Activation("hardtanh", min_val=0.5, max_val=2.0),
    Activation("hardtanh", min_val=-2.0, max_val=-0.1),
]


@pytest.mark.parametrize("act", COVERED, ids=str)
def test_covered_activations_stay_inside_the_envelope(act: Activation) -> None:
    assert act.covered and act.reason is None
    values = act(GRID)
    assert torch.isfinite(values).all()
    # Exact up to float64 rounding: torch's hardswish computes t * 6 / 6, one ulp off.
    assert bool((values.abs() <= GRID.abs() * (1 + 1e-15)).all())


@pytest.mark.parametrize("act", REFUSED, ids=str)
def test_refused_activations_leave_the_envelope_somewhere(act: Activation) -> None:
    assert not act.covered and act.reason
    values = act(GRID)
    assert bool((values.abs() > GRID.abs() * (1 + 1e-9)).any())
    with pytest.raises(ValueError, match="is not covered"):
        resolve_activation(act)


def test_every_table_entry_is_tested_on_the_grid() -> None:
    names = {a.name for a in COVERED + REFUSED}
    assert names == {n for n in known_activation_names() if activation_of(n).name == n}


def test_flags() -> None:
    homogeneous = {"relu", "leaky_relu", "identity"}
    for act in COVERED + REFUSED:
        assert act.positively_homogeneous == (act.name in homogeneous)
        assert act.piecewise_linear == act.positively_homogeneous
    t = GRID[::1000]
    for act in COVERED:  # positive homogeneity holds exactly where claimed, fails elsewhere
        same = torch.allclose(act(3.0 * t), 3.0 * act(t), rtol=1e-12, atol=1e-12)
        assert same == act.positively_homogeneous, act


def test_names_parameters_and_round_trip() -> None:
    assert resolve_activation("relu") == Activation("relu")
    assert resolve_activation("leaky_relu:0.2") == Activation("leaky_relu", slope=0.2)
    assert resolve_activation("gelu") == Activation("gelu", approximate="none")
    for alias in ("gelu_tanh", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        assert resolve_activation(alias) == Activation("gelu", approximate="tanh")
    assert activation_of("swish") == Activation("silu")
    assert activation_of("hardtanh:-2:3") == Activation("hardtanh", min_val=-2.0, max_val=3.0)
    for act in COVERED + REFUSED:
        assert activation_of(act.spec) == act
        assert pickle.loads(pickle.dumps(act)) == act and copy.deepcopy(act) == act
    assert str(Activation("selu")) == "selu"
    assert str(Activation("leaky_relu", 0.2)) == "leaky_relu(slope=0.2)"
    assert str(Activation("gelu", approximate="tanh")) == "gelu(approximate='tanh')"
    assert Activation("leaky_relu", 0.2).param == 0.2 and Activation("relu").param == 0.0
    assert len({Activation("gelu"), Activation("gelu", approximate="none")}) == 1
    with pytest.raises(AttributeError, match="immutable"):
        Activation("relu").name = "tanh"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("relu ", "not a known activation (did you mean 'relu'?"),
        ("RELU", "not a known activation (did you mean 'relu'?"),
        ("Leaky-ReLU", "not a known activation (did you mean 'leaky_relu'?"),
        ("swishy", "not a known activation; known: identity, relu"),
        ("gelu:tanh", "write 'gelu' (for the tanh GELU write 'gelu_tanh')"),
        ("leaky_relu:abc", "slope must be a number, got 'abc'; write 'leaky_relu:<slope>'"),
        ("leaky_relu:0.1:2", "takes 1 numeric parameter(s)"),
        ("gelu_tanh:1", "takes no parameters after ':'"),
        ("hardtanh:1:-1", "min_val (1.0) must be below max_val (-1.0)"),
        ("elu:nan", "alpha must be finite"),
    ],
)
def test_bad_names_say_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        activation_of(text)
    assert needle in str(info.value)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="no parameter slope"):
        Activation("relu", slope=0.1)
    with pytest.raises(ValueError, match="takes no positional parameter"):
        Activation("gelu", 0.5)
    with pytest.raises(TypeError, match="must be a number"):
        Activation("leaky_relu", slope="0.1")
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        Activation("gelu", approximate="erf")
    with pytest.raises(ValueError, match="alpha must not be 0"):
        Activation("celu", 0.0)
    with pytest.raises(TypeError, match="activation must be"):
        activation_of(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a known activation function"):
        activation_of(torch.exp)
    with pytest.raises(ValueError, match="not an activation module"):
        activation_of(nn.Linear(2, 2))


def test_resolve_keeps_its_errors() -> None:
    with pytest.raises(ValueError, match=r"selu is not covered: \|selu\(t\)\| = 1.0507"):
        resolve_activation("selu")
    with pytest.raises(ValueError, match="sigmoid"):
        resolve_activation(nn.Sigmoid())
    with pytest.raises(TypeError):
        resolve_activation(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (nn.ReLU(), Activation("relu")),
        (nn.ReLU6(), Activation("relu6")),
        (nn.LeakyReLU(0.3), Activation("leaky_relu", 0.3)),
        (nn.ELU(0.5), Activation("elu", 0.5)),
        (nn.CELU(2.0), Activation("celu", 2.0)),
        (nn.Hardtanh(-2.0, 1.0), Activation("hardtanh", min_val=-2.0, max_val=1.0)),
        (nn.GELU(), Activation("gelu")),
        (nn.GELU(approximate="tanh"), Activation("gelu", approximate="tanh")),
        (nn.Softplus(2.0, 10.0), Activation("softplus", beta=2.0, threshold=10.0)),
        (nn.Mish(), Activation("mish")),
        (nn.Identity(), Activation("identity")),
    ],
)
def test_torch_modules_are_read_with_their_parameters(
    module: nn.Module, expected: Activation
) -> None:
    assert activation_of(module) == expected
    x = torch.randn(200, dtype=torch.float64) * 5
    assert torch.allclose(expected(x), module(x), rtol=0, atol=1e-12)


# Replicas of what HF transformers' activation classes compute (transformers is not needed).
class GELUActivation(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


class NewGELUActivation(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = math.sqrt(2.0 / math.pi)
        return 0.5 * x * (1.0 + torch.tanh(c * (x + 0.044715 * torch.pow(x, 3.0))))


class FastGELUActivation(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


class PytorchGELUTanh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class QuickGELUActivation(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SiLUActivation(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class ClippedGELUActivation(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clip(F.gelu(x), -10.0, 10.0)


class ShiftedReLU(nn.ReLU):  # a torch subclass that changes what it computes
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) + 0.1


class ScaledLeakyActivation(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, 0.25)


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (GELUActivation(), Activation("gelu")),
        (NewGELUActivation(), Activation("gelu", approximate="tanh")),
        (FastGELUActivation(), Activation("gelu", approximate="tanh")),
        (PytorchGELUTanh(), Activation("gelu", approximate="tanh")),
        (QuickGELUActivation(), Activation("quick_gelu")),
        (SiLUActivation(), Activation("silu")),
        (ScaledLeakyActivation(), Activation("leaky_relu", 0.25)),
    ],
    ids=lambda v: type(v).__name__,
)
def test_hf_style_modules_are_recognised_by_what_they_compute(
    module: nn.Module, expected: Activation
) -> None:
    assert activation_of(module) == expected
    assert resolve_activation(module) == expected


def test_a_name_is_not_enough() -> None:
    class NewGELUActivationButExact(nn.Module):  # a tanh-GELU name, the exact GELU inside
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.gelu(x)

    assert activation_of(NewGELUActivationButExact()) == Activation("gelu")
    with pytest.raises(ValueError, match="computes no known activation"):
        activation_of(ClippedGELUActivation())
    with pytest.raises(ValueError, match="computes no known activation"):
        activation_of(ShiftedReLU())

    class LearnedActivation(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a * x

    with pytest.raises(ValueError, match="parameters or buffers"):
        activation_of(LearnedActivation())
    assert module_activation(nn.Dropout()) is None


def test_functions() -> None:
    assert activation_of(F.relu) == Activation("relu")
    assert activation_of(torch.tanh) == Activation("tanh")
    assert activation_of(F.gelu) == Activation("gelu")
    assert function_activation(F.gelu, (), {"approximate": "tanh"}) == Activation(
        "gelu", approximate="tanh"
    )
    assert function_activation(F.leaky_relu, (0.2, True)) == Activation("leaky_relu", 0.2)
    assert function_activation(F.hardtanh, (-2.0,), {"max_val": 3.0}) == Activation(
        "hardtanh", min_val=-2.0, max_val=3.0
    )
    assert function_activation("relu_", method=True) == Activation("relu")
    with pytest.raises(ValueError, match="unexpected argument"):
        function_activation(F.relu, (), {"slope": 2.0})
