"""`Activation`, the object every layer of the library passes around, and its string form.

An `Activation` is a name from the table with its parameters checked and its defaults filled
in, so two spellings of one phi compare equal; it is immutable and hashable, so it can key a
dict. `Activation.spec` writes the string form ('leaky_relu:0.2', 'gelu_tanh') that
`_from_string` reads back, which is how a name with parameters is given as one string.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

from coreprune.surgery.activations.table import (
    _ALIASES,
    _SPECS,
    Param,
    known_activation_names,
)


class Activation:
    """An activation phi with its parameters; immutable, hashable, comparable.

    `Activation("leaky_relu", 0.2)` (the one positional parameter is the first one: the slope or
    alpha), `Activation("gelu", approximate="tanh")`, `Activation("hardtanh", min_val=-2.0,
    max_val=2.0)`. Parameters left out take torch's defaults.
    """

    __slots__ = ("_name", "_params")
    _name: str
    _params: Mapping[str, Param]

    def __init__(self, name: str, param: float | None = None, /, **params: Param) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str such as 'relu', got {type(name).__name__}")
        spec = _SPECS.get(name)
        if spec is None:
            raise ValueError(_unknown_name(name, "name"))
        defaults = dict(spec.defaults)
        if param is not None:
            if not spec.defaults or not isinstance(spec.defaults[0][1], float):
                raise ValueError(f"{name} takes no positional parameter, got {param!r}")
            first = spec.defaults[0][0]
            if first in params:
                raise TypeError(f"{name}: {first} given both positionally and by keyword")
            params = {first: param, **params}
        values: dict[str, Param] = {}
        for key, default in defaults.items():
            value = params.get(key, default)
            values[key] = _check_param(name, key, value, default)
        extra = sorted(set(params) - set(defaults))
        if extra:
            allowed = ", ".join(defaults) or "none"
            raise ValueError(f"{name} has no parameter {', '.join(extra)} (parameters: {allowed})")
        problem = spec.check(values)
        if problem is not None:
            raise ValueError(f"{name}: {problem}")
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_params", MappingProxyType(values))

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("Activation is immutable; build a new one")

    @property
    def name(self) -> str:
        """The canonical name ('gelu' for both the exact and the tanh GELU)."""
        return self._name

    @property
    def params(self) -> Mapping[str, Param]:
        """Every parameter with its value (defaults included), read-only."""
        return self._params

    @property
    def param(self) -> float:
        """The first numeric parameter (leaky_relu slope, elu/celu alpha), else 0.0."""
        for value in self._params.values():
            if isinstance(value, float):
                return value
        return 0.0

    @property
    def reason(self) -> str | None:
        """Why |phi(t)| <= |t| fails for some t, or None when it holds for every t."""
        return _SPECS[self._name].not_covered(self._params)

    @property
    def covered(self) -> bool:
        """True when |phi(t)| <= |t| for all t: the envelope certificate applies."""
        return self.reason is None

    @property
    def positively_homogeneous(self) -> bool:
        """phi(c t) = c phi(t) for every c > 0 and t (relu, leaky_relu, identity)."""
        return _SPECS[self._name].homogeneous

    @property
    def piecewise_linear(self) -> bool:
        """Piecewise linear with a single break at 0 (Theorem 4 applies): the positively
        homogeneous ones. relu6 and hardtanh are piecewise linear too, but break away from 0."""
        return self.positively_homogeneous

    @property
    def spec(self) -> str:
        """The string form `activation_of` reads back: 'relu', 'leaky_relu:0.2',
        'gelu_tanh', 'hardtanh:-2.0:2.0', 'softplus:1.0:20.0'."""
        if self._name == "gelu":
            return "gelu" if self._params["approximate"] == "none" else "gelu_tanh"
        numbers = [repr(float(v)) for v in self._params.values()]
        return ":".join([self._name, *numbers])

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return _SPECS[self._name].evaluate(t, self._params)

    def __str__(self) -> str:
        spec = _SPECS[self._name]
        changed = [(k, v) for k, v in self._params.items() if v != dict(spec.defaults)[k]]
        if not changed and self._name not in ("leaky_relu", "elu", "celu"):
            return self._name
        shown = changed or list(self._params.items())
        inner = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in shown)
        return f"{self._name}({inner})"

    def __repr__(self) -> str:
        inner = "".join(f", {k}={v!r}" for k, v in self._params.items())
        return f"Activation({self._name!r}{inner})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Activation):
            return NotImplemented
        return self._name == other._name and dict(self._params) == dict(other._params)

    def __hash__(self) -> int:
        return hash((self._name, tuple(self._params.items())))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._name, dict(self._params)))


def _rebuild(name: str, params: dict[str, Param]) -> Activation:
    return Activation(name, **params)


def _check_param(name: str, key: str, value: object, default: Param) -> Param:
    if isinstance(default, str):
        if not isinstance(value, str):
            raise TypeError(f"{name}.{key} must be a str, got {type(value).__name__}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}.{key} must be a number, got {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}.{key} must be finite, got {value!r}")
    return float(value)


def _unknown_name(text: str, name: str) -> str:
    hint = ""
    close = [k for k in known_activation_names() if k == text.strip().lower().replace("-", "_")]
    if close:
        hint = f" (did you mean {close[0]!r}? names are exact: no case or whitespace folding)"
    return f"{name}={text!r} is not a known activation{hint}; known: " + ", ".join(
        known_activation_names()
    )


def _from_string(text: str, name: str) -> Activation:
    """'relu', 'gelu_tanh', or a name with numeric parameters after colons: 'leaky_relu:0.2',
    'elu:0.5', 'hardtanh:-2:2', 'softplus:1:20' (the order of `Activation.params`)."""
    key, *args = text.split(":")
    if key in _ALIASES:
        if args:
            raise ValueError(f"{name}={text!r}: {key} takes no parameters after ':'")
        canonical, params = _ALIASES[key]
        return Activation(canonical, **params)
    spec = _SPECS.get(key)
    if spec is None:
        raise ValueError(_unknown_name(text, name))
    numeric = [k for k, v in spec.defaults if isinstance(v, float)]
    syntax = f"{key}:" + ":".join(f"<{k}>" for k in numeric) if numeric else key
    if len(args) > len(numeric):
        extra = " (for the tanh GELU write 'gelu_tanh')" if key == "gelu" else ""
        raise ValueError(
            f"{name}={text!r}: {key} takes {len(numeric)} numeric parameter(s) after ':'; "
            f"write {syntax!r}{extra}"
        )
    values: dict[str, Param] = {}
    for k, arg in zip(numeric, args, strict=False):
        try:
            values[k] = float(arg)
        except ValueError:
            raise ValueError(
                f"{name}={text!r}: {k} must be a number, got {arg!r}; write {syntax!r}"
            ) from None
    try:
        return Activation(key, **values)
    except ValueError as err:
        raise ValueError(f"{name}={text!r}: {err}") from None
