"""Argument validation shared by the model constructors, so every model rejects bad input
with the same clear messages."""

from __future__ import annotations

import math
from collections.abc import Sequence


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is a positive int (bools are rejected), else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_width(width_multiplier: object) -> float:
    """Return a finite, positive width multiplier, else raise."""
    if isinstance(width_multiplier, bool) or not isinstance(width_multiplier, (int, float)):
        raise TypeError(f"width_multiplier must be a float, got {type(width_multiplier).__name__}")
    value = float(width_multiplier)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"width_multiplier must be a finite number > 0, got {width_multiplier}")
    return value


def scaled(channels: int, width_multiplier: float, name: str = "width_multiplier") -> int:
    """Scale a channel count, rounding to nearest; a result below one channel is an error
    rather than being silently raised to one."""
    result = round(channels * width_multiplier)
    if result < 1:
        raise ValueError(
            f"{name}={width_multiplier} turns {channels} channels into {result}; "
            "use a larger multiplier"
        )
    return result


def check_int_tuple(values: object, name: str, *, allow_empty: bool = False) -> tuple[int, ...]:
    """Return a tuple of positive ints (non-empty unless ``allow_empty``), else raise."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {type(values).__name__}")
    if len(values) == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return tuple(check_positive_int(v, f"{name}[{i}]") for i, v in enumerate(values))
