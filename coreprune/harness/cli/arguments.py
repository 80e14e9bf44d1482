"""Argument types of the command line: each refuses a bad value with a one-line reason, never
clamps it."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch


def int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), got {text}")
    return value


def guarantee(text: str) -> dict[str, float]:
    metric, sep, level = text.partition("=")
    if not sep or not metric:
        raise argparse.ArgumentTypeError(
            f"expected METRIC=LEVEL such as agreement=0.97, got {text!r}"
        )
    return {metric.strip(): _number(level)}


COUNT = int_at_least(0)


POSITIVE_INT = int_at_least(1)


def _available_devices() -> list[str]:
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device(name: str | None) -> None:
    if name is None:
        return
    available = _available_devices()
    if name not in available:
        raise ValueError(
            f"--device {name} is not available here; available: {', '.join(available)}"
        )
