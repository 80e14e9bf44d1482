"""Activations as objects that know whether the envelope certificate covers them.

Every certificate rests on |phi(t)| <= |t| for all real t (docs/theory.md §1), so phi(0) = 0. The uniform
bound of the `sample` mode further needs phi positively homogeneous and piecewise linear with a
single break at 0 (ReLU, leaky ReLU, identity); see docs/theory.md, Theorem 4.

One table (`_SPECS`) says, per activation: its parameters and their defaults, how to evaluate it,
whether it is covered (and if not, why), and which torch modules and functions compute it.
`activation_of` turns a name, module, function or `Activation` into an `Activation` (covered or
not); `resolve_activation` does the same and refuses an uncovered one.

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

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Activation",
    "activation_of",
    "function_activation",
    "is_activation_function",
    "is_activation_method",
    "known_activation_names",
    "looks_like_activation",
    "module_activation",
    "resolve_activation",
]

Param = float | str
Params = Mapping[str, Param]
_QUICK_GELU_SCALE = 1.702
_SELU_SCALE = 1.0507009873554805


# --------------------------------------------------------------------------------------------
# The table: one entry per activation


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


# --------------------------------------------------------------------------------------------
# The object


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


# --------------------------------------------------------------------------------------------
# From names


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


# --------------------------------------------------------------------------------------------
# From modules


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


# --------------------------------------------------------------------------------------------
# From functions (and tensor methods, by name)


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


# --------------------------------------------------------------------------------------------
# Entry points


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
