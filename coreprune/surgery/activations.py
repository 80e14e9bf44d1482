"""Which activations the envelope guarantee covers.

Every certificate rests on |phi(t)| <= |t| for all t (DESIGN §1). The uniform bound of the
`sample` mode further needs phi positively homogeneous and piecewise linear with a single break
at 0 (ReLU, leaky ReLU, identity); see docs/theory.md, Theorem 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

_ENVELOPE_OK = (
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "tanh",
    "hardtanh",
    "gelu",
    "silu",
    "identity",
)
_PIECEWISE_LINEAR = ("relu", "leaky_relu", "identity")


@dataclass(frozen=True)
class Activation:
    """A canonical activation: its name, its parameter (a slope or alpha) and the function."""

    name: str
    param: float = 0.0

    @property
    def piecewise_linear(self) -> bool:
        """True when phi is positively homogeneous with one break at 0 (Theorem 4 applies)."""
        return self.name in _PIECEWISE_LINEAR

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional
        if self.name == "relu":
            return torch.relu(t)
        if self.name == "relu6":
            return f.relu6(t)
        if self.name == "leaky_relu":
            return f.leaky_relu(t, self.param)
        if self.name == "elu":
            return f.elu(t, self.param)
        if self.name == "tanh":
            return torch.tanh(t)
        if self.name == "hardtanh":
            return f.hardtanh(t)
        if self.name == "gelu":
            return f.gelu(t)
        if self.name == "silu":
            return f.silu(t)
        return t

    def __str__(self) -> str:
        return f"{self.name}({self.param:g})" if self.name in ("leaky_relu", "elu") else self.name


def resolve_activation(
    activation: str | nn.Module | Activation, name: str = "activation"
) -> Activation:
    """Turn a name or module into an `Activation`, refusing any phi with |phi(t)| > |t| somewhere."""
    if isinstance(activation, Activation):
        act = activation
    elif isinstance(activation, nn.Module):
        act = _from_module(activation, name)
    elif isinstance(activation, str):
        key, _, arg = activation.lower().partition(":")
        key = key.replace("-", "_")
        default = 0.01 if key == "leaky_relu" else 1.0 if key == "elu" else 0.0
        act = Activation(key, float(arg) if arg else default)
    else:
        raise TypeError(
            f"{name} must be a string such as 'relu' or an nn.Module, got {type(activation).__name__}"
        )
    if act.name not in _ENVELOPE_OK:
        raise ValueError(
            f"{name}={act.name!r} is not covered: certificates need |phi(t)| <= |t| for all t "
            f"(so phi(0) = 0). Supported: {', '.join(_ENVELOPE_OK)}."
        )
    if act.name == "leaky_relu" and not (math.isfinite(act.param) and abs(act.param) <= 1.0):
        raise ValueError(
            f"{name}: leaky_relu slope {act.param} breaks |phi(t)| <= |t|; use |slope| <= 1"
        )
    if act.name == "elu" and not (math.isfinite(act.param) and 0.0 <= act.param <= 1.0):
        raise ValueError(
            f"{name}: elu alpha {act.param} breaks |phi(t)| <= |t|; use 0 <= alpha <= 1"
        )
    return act


def _from_module(module: nn.Module, name: str) -> Activation:
    table: dict[type, str] = {
        nn.ReLU: "relu",
        nn.ReLU6: "relu6",
        nn.Tanh: "tanh",
        nn.Hardtanh: "hardtanh",
        nn.GELU: "gelu",
        nn.SiLU: "silu",
        nn.Identity: "identity",
    }
    if isinstance(module, nn.LeakyReLU):
        return Activation("leaky_relu", float(module.negative_slope))
    if isinstance(module, nn.ELU):
        return Activation("elu", float(module.alpha))
    if type(module) is nn.Hardtanh and (module.min_val, module.max_val) != (-1.0, 1.0):
        raise ValueError(
            f"{name}: only Hardtanh(-1, 1) is supported, got ({module.min_val}, {module.max_val})"
        )
    for cls, key in table.items():
        if type(module) is cls:
            return Activation(key)
    raise ValueError(
        f"{name}={type(module).__name__} is not covered: certificates need |phi(t)| <= |t|. "
        f"Supported: {', '.join(_ENVELOPE_OK)}."
    )
