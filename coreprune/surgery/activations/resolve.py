"""The entry points: any spelling of an activation to an `Activation`, covered or refused.

`activation_of` accepts an `Activation`, an `nn.Module`, a torch function or a name, covered
or not (see `.covered`); `resolve_activation` refuses an uncovered phi, for callers about to
certify with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from coreprune.surgery.activations.activation import Activation, _from_string
from coreprune.surgery.activations.functions import function_activation, is_activation_function
from coreprune.surgery.activations.modules import _MODULES, module_activation
from coreprune.surgery.activations.table import _SPECS


def activation_of(
    activation: Activation | nn.Module | Callable[..., Any] | str, name: str = "activation"
) -> Activation:
    """An `Activation` from an Activation, an nn.Module, a torch function or a name.

    Covered or not: check `.covered` (or use `resolve_activation`, which refuses). Names are
    exact (see `known_activation_names`); 'leaky_relu:0.2' style parameters follow a colon.
    """
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        return _from_string(activation, name)
    if isinstance(activation, nn.Module):
        act = module_activation(activation, name)
        if act is None:
            raise ValueError(
                f"{name}={type(activation).__name__} is not an activation module; known: "
                + ", ".join(f"nn.{t.__name__}" for t in _MODULES)
            )
        return act
    if is_activation_function(activation):
        return function_activation(activation)
    if callable(activation):
        raise ValueError(
            f"{name}={activation!r} is not a known activation function; pass a name such as "
            "'relu', an nn.Module, or one of F.relu, torch.tanh, F.gelu, ..."
        )
    raise TypeError(
        f"{name} must be a name such as 'relu', an nn.Module, a torch function or an "
        f"Activation, got {type(activation).__name__}"
    )


def resolve_activation(
    activation: Activation | nn.Module | Callable[..., Any] | str, name: str = "activation"
) -> Activation:
    """`activation_of`, refusing (ValueError) any phi with |phi(t)| > |t| for some t."""
    act = activation_of(activation, name)
    if not act.covered:
        raise ValueError(
            f"{name}={act} is not covered: {act.reason}. Certificates need |phi(t)| <= |t| for "
            "all t; covered: " + ", ".join(_covered_names())
        )
    return act


def _covered_names() -> list[str]:
    return [n for n, spec in _SPECS.items() if spec.not_covered(dict(spec.defaults)) is None]
