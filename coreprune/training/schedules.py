"""Learning-rate schedules as plain functions of training progress, so the trainer can set
the rate every step and tests can check the values directly."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from coreprune.checks import check_float, check_int

Schedule = Literal["cosine", "step", "constant"]
SCHEDULES: tuple[str, ...] = ("cosine", "step", "constant")


def check_schedule(schedule: str, milestones: Sequence[float], gamma: float) -> tuple[float, ...]:
    """Validate a schedule's settings; returns the milestones as a tuple."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    marks = tuple(float(m) for m in milestones)
    if any(not 0.0 < m < 1.0 for m in marks) or list(marks) != sorted(set(marks)):
        raise ValueError(
            f"milestones must be increasing fractions of training in (0, 1), got {milestones}"
        )
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must lie in (0, 1], got {gamma}")
    return marks


def check_warmup(warmup_epochs: object, warmup_factor: object, epochs: int) -> None:
    """Validate a constant warm-up: ``warmup_epochs`` in [0, epochs), factor in (0, 1]."""
    warmup_epochs = check_int(warmup_epochs, "warmup_epochs")
    if not 0 <= warmup_epochs < epochs:
        raise ValueError(
            f"warmup_epochs must lie in [0, epochs={epochs}), got {warmup_epochs}; "
            "use 0 for no warm-up"
        )
    check_float(warmup_factor, "warmup_factor", low=0.0, high=1.0, low_open=True)


def lr_factor(
    schedule: Schedule,
    step: int,
    total_steps: int,
    *,
    epoch: int,
    epochs: int,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
    warmup_epochs: int = 0,
    warmup_factor: float = 0.1,
) -> float:
    """Multiplier on the base rate at optimiser step ``step`` (0-based) of ``total_steps``.

    - cosine: 0.5 * (1 + cos(pi * step / total_steps)), per step, from 1 towards 0.
    - step: ``gamma`` ** (number of milestones reached), per epoch; a milestone m is reached
      at epoch ``round(m * epochs)`` (0.5 and 0.75 of 160 epochs give 80 and 120).
    - constant: 1 (fine-tuning).

    During the first ``warmup_epochs`` epochs the factor is ``warmup_factor`` instead: the
    constant warm-up He et al. (2016) used for ResNet-110 (0.01 = 0.1 x 0.1 for ~400 steps).
    """
    if epoch < warmup_epochs:
        return warmup_factor
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    if schedule == "step":
        return gamma ** sum(epoch >= round(m * epochs) for m in milestones)
    if schedule == "constant":
        return 1.0
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
