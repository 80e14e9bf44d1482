"""Argument checks shared by the whole library: one validator per kind of argument.

Public functions call these before doing any work, so bad input fails fast with the same
wording everywhere: a ``TypeError`` when the argument has the wrong type, a ``ValueError`` when
it has the right type but an unusable value. Every message names the argument and says how to
fix it. Nothing is clamped or coerced beyond the lossless conversions documented per function
(an ``int`` is accepted where a ``float`` is asked for; a ``bool`` is never taken for a number).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "check_bool",
    "check_choice",
    "check_float",
    "check_fraction",
    "check_generator",
    "check_int",
    "check_module",
    "check_probability",
    "check_tensor",
]


def _type_name(value: object) -> str:
    return type(value).__name__


def check_int(
    value: object, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Return ``value`` as an ``int`` if it is one, within ``[minimum, maximum]`` when given.

    ``bool`` is refused (``True`` is an ``int`` to Python but never a meaningful count), and
    so are floats, even integral ones, so that ``3.0`` epochs or ``1e3`` samples are spotted.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {_type_name(value)} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{left}{lo}, {hi}{right}"


def check_float(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
) -> float:
    """Return ``value`` as a ``float`` if it is a real number in the given interval.

    ``int`` and ``float`` (and their subclasses, such as ``numpy.float64``) are accepted; ``bool``,
    strings, tensors and other numpy scalars (``numpy.int64``, ``numpy.float32``) are refused
    with a TypeError: convert those explicitly with ``float(x)`` or ``x.item()``. NaN is always refused;
    infinities are refused when ``finite`` is true. ``low``/``high`` bound the value, closed
    unless ``low_open``/``high_open`` make the bound strict.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a real number (a Python float or int), got {_type_name(value)} "
            f"{value!r}"
        )
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{name} must be a number, got NaN")
    if finite and math.isinf(number):
        raise ValueError(f"{name} must be finite, got {number}")
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        interval = _interval(low, high, low_open, high_open)
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return number


def check_fraction(
    value: object, name: str, *, low_open: bool = True, high_open: bool = True
) -> float:
    """A real number between 0 and 1; both ends excluded unless the flags say otherwise.

    Use for shares of something (sparsity, keep ratio, eps as a relative error): the defaults
    give the open interval ``(0, 1)``; pass ``low_open=False`` to allow 0, ``high_open=False``
    to allow 1.
    """
    return check_float(value, name, low=0.0, high=1.0, low_open=low_open, high_open=high_open)


def check_probability(value: object, name: str) -> float:
    """A failure probability such as ``delta``: a real number in the open interval ``(0, 1)``.

    Both ends are excluded because a bound that holds with probability 1 - 0 or 1 - 1 is either
    unattainable or vacuous. The message says so and calls the value a probability, since a
    bare interval does not tell a caller who passed 0 or 1 what the number stands for.
    """
    number = check_float(value, name)
    if not 0.0 < number < 1.0:
        raise ValueError(
            f"{name} must be a probability in (0, 1), got {value!r}: at 0 the bound is "
            f"unattainable, at 1 it is vacuous (e.g. pass 0.05 for a 95% guarantee)"
        )
    return number


def check_choice(value: object, choices: Sequence[str], name: str) -> str:
    """Return ``value`` if it is one of the string ``choices`` (exact, case-sensitive match)."""
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be a str, one of {tuple(choices)}, got {_type_name(value)} {value!r}"
        )
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` if it is a ``bool``; 0/1, strings and tensors are refused."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {_type_name(value)} {value!r}")
    return value


def check_module(value: object, name: str) -> nn.Module:
    """Return ``value`` if it is a ``torch.nn.Module``."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {_type_name(value)}")
    return value


def check_generator(value: object, name: str) -> torch.Generator | None:
    """Return ``value`` if it is a ``torch.Generator`` or ``None`` (use the global RNG).

    An integer seed is refused on purpose: the caller builds ``torch.Generator().manual_seed``
    and so decides the generator's device.
    """
    if value is None or isinstance(value, torch.Generator):
        return value
    raise TypeError(
        f"{name} must be a torch.Generator or None, got {_type_name(value)}; "
        f"for a seed pass torch.Generator().manual_seed(seed)"
    )


def check_tensor(
    value: object,
    name: str,
    *,
    ndim: int | None = None,
    min_rows: int | None = None,
    finite: bool = True,
    floating: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return ``value`` unchanged if it is a real tensor meeting every given requirement.

    ``ndim``: exact number of dimensions. ``min_rows``: least size of dimension 0 (needs at
    least one dimension). ``finite``: no NaN or infinity. ``floating``: a floating dtype
    (otherwise integer tensors are accepted too; bool is accepted only when ``floating`` is
    false). ``device``: the tensor must already be there; nothing is moved. Complex tensors are
    always refused, since every computation here is over the reals. The tensor is returned as
    given (same object): no copy, no detach, no conversion.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {_type_name(value)}; "
            f"convert it with torch.as_tensor(...)"
        )
    if value.is_complex():
        raise TypeError(
            f"{name} must be a real tensor, got complex dtype {value.dtype}; "
            f"pass its real part (x.real) or magnitude (x.abs()) explicitly"
        )
    if floating and not value.is_floating_point():
        raise TypeError(
            f"{name} must have a floating dtype, got {value.dtype}; convert it with .float()"
        )
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(value.shape)}")
    if min_rows is not None:
        if value.dim() == 0:
            raise ValueError(f"{name} must have at least one dimension, got a 0-d tensor")
        if value.shape[0] < min_rows:
            raise ValueError(
                f"{name} must have at least {min_rows} row(s), got shape {tuple(value.shape)}"
            )
    if device is not None:
        wanted = torch.device(device)
        if not _same_device(value.device, wanted):
            raise ValueError(f"{name} is on {value.device} but must be on {wanted}; move it")
    if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or infinity; remove or replace those entries")
    return value


def _same_device(actual: torch.device, wanted: torch.device) -> bool:
    """``cuda`` without an index matches any CUDA device; otherwise the devices must be equal."""
    if actual.type != wanted.type:
        return False
    return wanted.index is None or actual.index == wanted.index
