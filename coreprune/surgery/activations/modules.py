"""The activation an `nn.Module` computes.

A torch activation class is read from its attributes. Other libraries' activation modules (HF's
GELUActivation, NewGELUActivation, QuickGELUActivation, ...) and subclasses of torch's are named
by what they compute, not by their class name: evaluated on a grid of t and matched to the one
activation they reproduce, so a module whose name promises GELU but computes something else is
never certified as GELU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from coreprune.surgery.activations.activation import Activation
from coreprune.surgery.activations.table import _SPECS

_MODULES: dict[type[nn.Module], Callable[[Any], Activation]] = {
    nn.Identity: lambda m: Activation("identity"),
    nn.ReLU: lambda m: Activation("relu"),
    nn.LeakyReLU: lambda m: Activation("leaky_relu", slope=m.negative_slope),
    nn.ReLU6: lambda m: Activation("relu6"),
    nn.Hardtanh: lambda m: Activation("hardtanh", min_val=m.min_val, max_val=m.max_val),
    nn.ELU: lambda m: Activation("elu", alpha=m.alpha),
    nn.CELU: lambda m: Activation("celu", alpha=m.alpha),
    nn.SELU: lambda m: Activation("selu"),
    nn.Tanh: lambda m: Activation("tanh"),
    nn.Softsign: lambda m: Activation("softsign"),
    nn.GELU: lambda m: Activation("gelu", approximate=m.approximate),
    nn.SiLU: lambda m: Activation("silu"),
    nn.Mish: lambda m: Activation("mish"),
    nn.Hardswish: lambda m: Activation("hardswish"),
    nn.Sigmoid: lambda m: Activation("sigmoid"),
    nn.Hardsigmoid: lambda m: Activation("hardsigmoid"),
    nn.Softplus: lambda m: Activation("softplus", beta=m.beta, threshold=m.threshold),
}
# Class-name fragments of activation modules from other libraries (HF's GELUActivation,
# NewGELUActivation, PytorchGELUTanh, FastGELUActivation, QuickGELUActivation, ...). A name only
# lets `module_activation` evaluate the module; what it computes decides which phi it is.
_ACTIVATION_NAME_HINTS = (
    "gelu", "silu", "swish", "relu", "tanh", "sigmoid", "mish", "softplus", "activation",
)  # fmt: skip
# Behaviour candidates for an unknown module, besides the fitted families below.
_PLAIN_CANDIDATES = (
    Activation("identity"), Activation("relu"), Activation("relu6"), Activation("tanh"),
    Activation("softsign"), Activation("gelu"), Activation("gelu", approximate="tanh"),
    Activation("quick_gelu"), Activation("silu"), Activation("mish"), Activation("hardswish"),
    Activation("selu"), Activation("sigmoid"), Activation("hardsigmoid"), Activation("softplus"),
)  # fmt: skip
_GRID = torch.cat(
    [
        torch.linspace(-12.0, 12.0, 4801, dtype=torch.float64),
        torch.tensor(
            [-1e3, -100.0, -40.0, -25.0, -1.0, 1e-6, 1.0, 25.0, 40.0, 100.0, 1e3],
            dtype=torch.float64,
        ),
    ]
)


def module_activation(module: nn.Module, name: str = "activation") -> Activation | None:
    """The activation an nn.Module computes, or None when it does not look like one.

    A torch activation class (exactly that class) is read from its attributes. Any other module
    whose class name looks like an activation (a subclass of a torch one, HF's GELUActivation,
    ...) is evaluated on a grid of t and matched to the activation it computes; a ValueError
    says so when it matches none.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"{name} must be an nn.Module, got {type(module).__name__}")
    reader = _MODULES.get(type(module))
    if reader is not None:
        return reader(module)
    if not looks_like_activation(module):
        return None
    return _by_behaviour(module, name)


def looks_like_activation(module: nn.Module) -> bool:
    """A torch activation module, or a module whose class name looks like an activation's (HF's
    GELUActivation, NewGELUActivation, ...). Only a hint: `module_activation` then checks what a
    module that is not exactly a torch activation class computes."""
    cls = type(module).__name__.lower()
    return (
        isinstance(module, tuple(_MODULES))
        or any(hint in cls for hint in _ACTIVATION_NAME_HINTS)
        or cls.endswith("elu")
    )


def _by_behaviour(module: nn.Module, name: str) -> Activation:
    """Evaluate a stateless module elementwise on `_GRID` and name the activation it computes."""
    label = f"{name} ({type(module).__name__})"
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        raise ValueError(
            f"{label} has parameters or buffers, so it is not a fixed activation; "
            "use a torch activation module or a known one"
        )
    with torch.no_grad():
        try:
            values = module(_GRID.clone())
            as_matrix = module(_GRID.clone().reshape(2, -1, 1))
        except Exception as err:  # any failure means the same: it is not an elementwise phi
            raise ValueError(
                f"{label} could not be evaluated on a float64 tensor ({type(err).__name__}: "
                f"{err}), so what it computes is unknown"
            ) from err
    if not (
        isinstance(values, torch.Tensor)
        and isinstance(as_matrix, torch.Tensor)
        and values.shape == _GRID.shape
        and values.dtype == torch.float64
        and torch.equal(as_matrix.reshape(-1), values)
    ):
        raise ValueError(f"{label} is not an elementwise map of float64 tensors")
    best: tuple[float, Activation | None] = (math.inf, None)
    for candidate in (*_PLAIN_CANDIDATES, *_fitted_candidates(values)):
        error = _deviation(candidate(_GRID), values)
        if error < best[0]:
            best = (error, candidate)
    error, match = best
    if match is None or error > 1e-9:
        closest = "" if match is None else f"; closest is {match} (max deviation {error:.3g})"
        raise ValueError(
            f"{label} computes no known activation on t in [-1000, 1000]{closest}. Known: "
            + ", ".join(_SPECS)
        )
    return match


def _fitted_candidates(values: torch.Tensor) -> Iterator[Activation]:
    """leaky_relu, elu, celu and hardtanh with their parameters read off the values."""

    def at(t: float) -> float:
        return float(values[int(torch.argmin((_GRID - t).abs()))])

    for build in (
        lambda: Activation("leaky_relu", slope=-at(-1.0)),
        lambda: Activation("elu", alpha=at(-1.0) / math.expm1(-1.0)),
        lambda: Activation("celu", alpha=-at(-1000.0)),
        lambda: Activation("hardtanh", min_val=at(-1000.0), max_val=at(1000.0)),
    ):
        try:
            yield build()
        except (TypeError, ValueError):
            continue


def _deviation(expected: torch.Tensor, got: torch.Tensor) -> float:
    if not torch.isfinite(got).all():
        return math.inf
    return float(((expected - got).abs() / (1.0 + expected.abs())).max())
