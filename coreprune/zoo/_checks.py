"""Argument validation shared by the model constructors, so every model rejects bad input
with the same clear messages (the library's own validators from ``coreprune.checks``, named
for what the constructors ask)."""

from __future__ import annotations

from collections.abc import Sequence

from coreprune.checks import check_float, check_int


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is an int >= 1 (``coreprune.checks.check_int``'s rules)."""
    return check_int(value, name, minimum=1)


def check_width(width_multiplier: object) -> float:
    """Return a finite, positive width multiplier as a float, else raise."""
    return check_float(width_multiplier, "width_multiplier", low=0.0, low_open=True)


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
