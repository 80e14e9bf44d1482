"""The table of activations: one entry per phi, with what the certificates need to know of it.

Every certificate rests on |phi(t)| <= |t| for all real t (docs/theory.md §1), so phi(0) = 0. The
uniform bound of the `sample` mode further needs phi positively homogeneous and piecewise linear
with a single break at 0 (ReLU, leaky ReLU, identity); see docs/theory.md, Theorem 4. `_SPECS`
says, per activation: its parameters and their defaults, how to evaluate it, whether it is
covered (and if not, why) and whether it is positively homogeneous; `_ALIASES` its other
spellings.

Why each covered activation satisfies |phi(t)| <= |t|:

- relu, identity: phi(t) is t or 0.
- leaky_relu(slope): phi(t) = slope * t for t < 0, so exactly when |slope| <= 1.
- relu6, hardtanh(min_val, max_val): a clamp of t to [lo, hi] moves t towards the interval and
  never past 0 when lo <= 0 <= hi; if lo > 0 (or hi < 0) then phi(0) != 0.
- elu(alpha): for t < 0, |alpha (e^t - 1)| = |alpha| (1 - e^t) <= |alpha| |t| since
  e^t >= 1 + t; near 0- it is ~ |alpha| |t|, so exactly when |alpha| <= 1.
- celu(alpha > 0): for t < 0, alpha (1 - e^(t / alpha)) <= alpha |t| / alpha = |t|, for every
  alpha > 0 (CELU has slope 1 at 0). alpha < 0 grows like e^(|t| / |alpha|).
- tanh, softsign: |tanh t| <= |t| and |t / (1 + |t|)| <= |t|.
- gelu (exact and tanh), silu, quick_gelu, hardswish, mish: phi(t) = t * g(t) with g(t) in
  [0, 1] (Phi(t); 0.5 (1 + tanh(.)); sigmoid(t); sigmoid(1.702 t); relu6(t + 3) / 6;
  tanh(softplus(t))), so |phi(t)| = |t| g(t) <= |t|.

Refused: selu (scale 1.0507 > 1 for t > 0), sigmoid and hardsigmoid (phi(0) = 1/2), softplus
(phi(0) = log(2) / beta), leaky_relu with |slope| > 1, elu with |alpha| > 1, celu with alpha < 0,
hardtanh whose range excludes 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Param = float | str
Params = Mapping[str, Param]
_QUICK_GELU_SCALE = 1.702
_SELU_SCALE = 1.0507009873554805


@dataclass(frozen=True)
class _Spec:
    """What the library knows about one activation."""

    name: str
    evaluate: Callable[[torch.Tensor, Params], torch.Tensor]
    defaults: tuple[tuple[str, Param], ...] = ()
    not_covered: Callable[[Params], str | None] = lambda _p: None
    homogeneous: bool = False
    check: Callable[[Params], str | None] = lambda _p: None


def _leaky_not_covered(p: Params) -> str | None:
    slope = float(p["slope"])
    if abs(slope) <= 1.0:
        return None
    return f"|leaky_relu(t)| = {abs(slope):g} |t| > |t| for t < 0 (need |slope| <= 1)"


def _elu_not_covered(p: Params) -> str | None:
    alpha = float(p["alpha"])
    if abs(alpha) <= 1.0:
        return None
    return f"|elu(t)| ~ {abs(alpha):g} |t| > |t| for small t < 0 (need |alpha| <= 1)"


def _celu_not_covered(p: Params) -> str | None:
    if float(p["alpha"]) > 0:
        return None
    return "celu with alpha < 0 grows like exp(|t| / |alpha|) for t < 0 (need alpha > 0)"


def _celu_check(p: Params) -> str | None:
    return "alpha must not be 0" if float(p["alpha"]) == 0 else None


def _hardtanh_not_covered(p: Params) -> str | None:
    low, high = float(p["min_val"]), float(p["max_val"])
    if low <= 0.0 <= high:
        return None
    return f"hardtanh(0) = {low if low > 0 else high:g} != 0 (need min_val <= 0 <= max_val)"


def _hardtanh_check(p: Params) -> str | None:
    if float(p["min_val"]) >= float(p["max_val"]):
        return f"min_val ({p['min_val']}) must be below max_val ({p['max_val']})"
    return None


def _gelu_check(p: Params) -> str | None:
    if p["approximate"] not in ("none", "tanh"):
        return f"approximate must be 'none' or 'tanh', got {p['approximate']!r}"
    return None


def _softplus_check(p: Params) -> str | None:
    return "beta must be positive" if not float(p["beta"]) > 0 else None


def _always(reason: str) -> Callable[[Params], str | None]:
    return lambda _p: reason


_SPEC_LIST = (
    _Spec("identity", lambda t, p: t, homogeneous=True),
    _Spec("relu", lambda t, p: torch.relu(t), homogeneous=True),
    _Spec(
        "leaky_relu",
        lambda t, p: F.leaky_relu(t, float(p["slope"])),
        (("slope", 0.01),),
        _leaky_not_covered,
        homogeneous=True,
    ),
    _Spec("relu6", lambda t, p: F.relu6(t)),
    _Spec(
        "hardtanh",
        lambda t, p: F.hardtanh(t, float(p["min_val"]), float(p["max_val"])),
        (("min_val", -1.0), ("max_val", 1.0)),
        _hardtanh_not_covered,
        check=_hardtanh_check,
    ),
    _Spec("elu", lambda t, p: F.elu(t, float(p["alpha"])), (("alpha", 1.0),), _elu_not_covered),
    _Spec(
        "celu",
        lambda t, p: F.celu(t, float(p["alpha"])),
        (("alpha", 1.0),),
        _celu_not_covered,
        check=_celu_check,
    ),
    _Spec(
        "selu",
        lambda t, p: F.selu(t),
        not_covered=_always(f"|selu(t)| = {_SELU_SCALE:.4f} |t| > |t| for t > 0"),
    ),
    _Spec("tanh", lambda t, p: torch.tanh(t)),
    _Spec("softsign", lambda t, p: F.softsign(t)),
    _Spec(
        "gelu",
        lambda t, p: F.gelu(t, approximate=str(p["approximate"])),
        (("approximate", "none"),),
        check=_gelu_check,
    ),
    _Spec("quick_gelu", lambda t, p: t * torch.sigmoid(_QUICK_GELU_SCALE * t)),
    _Spec("silu", lambda t, p: F.silu(t)),
    _Spec("mish", lambda t, p: F.mish(t)),
    _Spec("hardswish", lambda t, p: F.hardswish(t)),
    _Spec(
        "sigmoid",
        lambda t, p: torch.sigmoid(t),
        not_covered=_always("sigmoid(0) = 0.5 != 0, so |sigmoid(t)| > |t| near 0"),
    ),
    _Spec(
        "hardsigmoid",
        lambda t, p: F.hardsigmoid(t),
        not_covered=_always("hardsigmoid(0) = 0.5 != 0, so |hardsigmoid(t)| > |t| near 0"),
    ),
    _Spec(
        "softplus",
        lambda t, p: F.softplus(t, float(p["beta"]), float(p["threshold"])),
        (("beta", 1.0), ("threshold", 20.0)),
        not_covered=_always("softplus(0) = log(2) / beta > 0, so |softplus(t)| > |t| near 0"),
        check=_softplus_check,
    ),
)
_SPECS: dict[str, _Spec] = {spec.name: spec for spec in _SPEC_LIST}

# Other spellings of a name (HF's ACT2FN names included): name -> (canonical name, parameters).
_ALIASES: dict[str, tuple[str, dict[str, Param]]] = {
    "gelu_tanh": ("gelu", {"approximate": "tanh"}),
    "gelu_new": ("gelu", {"approximate": "tanh"}),
    "gelu_pytorch_tanh": ("gelu", {"approximate": "tanh"}),
    "gelu_fast": ("gelu", {"approximate": "tanh"}),
    "swish": ("silu", {}),
    "linear": ("identity", {}),
}


def known_activation_names() -> tuple[str, ...]:
    """Every name `activation_of` accepts (canonical names, then aliases)."""
    return (*_SPECS, *_ALIASES)
