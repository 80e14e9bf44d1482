"""The activation a torch function or tensor method computes, as an fx graph calls it.

A traced graph holds `F.leaky_relu(x, 0.2)` or `x.relu()`, not a module; these tables map each
such call, positional and keyword arguments included, to its `Activation`, so a function call
and the equivalent module are certified alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from coreprune.surgery.activations.activation import Activation
from coreprune.surgery.activations.table import Param

# function -> (activation, the parameter each positional argument after the input sets).
_FUNCTIONS: dict[Callable[..., Any], tuple[str, tuple[tuple[str, str | None], ...]]] = {
    torch.relu: ("relu", ()), torch.relu_: ("relu", ()),
    F.relu: ("relu", (("inplace", None),)), F.relu_: ("relu", ()),
    F.relu6: ("relu6", (("inplace", None),)),
    F.leaky_relu: ("leaky_relu", (("negative_slope", "slope"), ("inplace", None))),
    F.leaky_relu_: ("leaky_relu", (("negative_slope", "slope"),)),
    F.hardtanh: ("hardtanh", (("min_val", "min_val"), ("max_val", "max_val"), ("inplace", None))),
    F.hardtanh_: ("hardtanh", (("min_val", "min_val"), ("max_val", "max_val"))),
    F.elu: ("elu", (("alpha", "alpha"), ("inplace", None))),
    F.elu_: ("elu", (("alpha", "alpha"),)),
    F.celu: ("celu", (("alpha", "alpha"), ("inplace", None))),
    F.selu: ("selu", (("inplace", None),)),
    torch.tanh: ("tanh", ()), torch.tanh_: ("tanh", ()), F.tanh: ("tanh", ()),
    F.softsign: ("softsign", ()),
    F.gelu: ("gelu", (("approximate", "approximate"),)),
    F.silu: ("silu", (("inplace", None),)),
    F.mish: ("mish", (("inplace", None),)),
    F.hardswish: ("hardswish", (("inplace", None),)),
    torch.sigmoid: ("sigmoid", ()), torch.sigmoid_: ("sigmoid", ()), F.sigmoid: ("sigmoid", ()),
    F.hardsigmoid: ("hardsigmoid", (("inplace", None),)),
    F.softplus: ("softplus", (("beta", "beta"), ("threshold", "threshold"))),
}  # fmt: skip
_METHODS = {
    "relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh",
    "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
}  # fmt: skip


def is_activation_function(function: object) -> bool:
    """True for a torch function that computes an activation (F.relu, torch.tanh, ...)."""
    try:
        return function in _FUNCTIONS
    except TypeError:  # unhashable
        return False


def is_activation_method(method: str) -> bool:
    """True for a tensor method name that computes an activation (x.relu(), x.tanh_(), ...)."""
    return method in _METHODS


def function_activation(
    function: Callable[..., Any] | str,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    method: bool = False,
) -> Activation:
    """The activation `function(input, *args, **kwargs)` computes (`method=True`: the tensor
    method of that name, which takes no parameters)."""
    if method:
        if not isinstance(function, str) or function not in _METHODS:
            raise ValueError(f"{function!r} is not an activation method ({', '.join(_METHODS)})")
        return Activation(_METHODS[function])
    if isinstance(function, str) or not is_activation_function(function):
        raise ValueError(f"{function!r} is not a known activation function")
    key, slots = _FUNCTIONS[function]
    kwargs = dict(kwargs or {})
    if len(args) > len(slots):
        raise ValueError(f"{key}: {len(args)} arguments after the input, at most {len(slots)}")
    params: dict[str, Param] = {}
    given = {**dict(zip((s[0] for s in slots), args, strict=False)), **kwargs}
    for argname, value in given.items():
        slot = next((s for s in slots if s[0] == argname), None)
        if slot is None:
            raise ValueError(f"{key}: unexpected argument {argname!r}")
        if slot[1] is not None:
            params[slot[1]] = value
    return Activation(key, **params)
