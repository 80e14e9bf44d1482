"""The optimisation settings of one ``fit`` call, checked once, and the learning rate they
give at each step; a checkpoint records them so a resume can refuse different ones."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .schedules import Schedule, check_schedule, check_warmup, lr_factor
from .seeding import check_seed


def check_number(value: object, name: str, low: float, *, low_open: bool = False) -> float:
    """A finite real >= ``low`` (> ``low`` if ``low_open``) as a float, else Type/ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number < low or (low_open and number == low):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return number


@dataclass(frozen=True)
class TrainSettings:
    """SGD and schedule settings; constructing one validates every field."""

    epochs: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: Schedule
    milestones: Sequence[float]
    gamma: float
    warmup_epochs: int
    warmup_factor: float
    seed: int | None

    def __post_init__(self) -> None:
        epochs = self.epochs
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
        object.__setattr__(self, "lr", check_number(self.lr, "lr", 0.0, low_open=True))
        momentum = check_number(self.momentum, "momentum", 0.0)
        if momentum >= 1.0:
            raise ValueError(f"momentum must be < 1, got {momentum}")
        object.__setattr__(self, "momentum", momentum)
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"nesterov must be a bool, got {type(self.nesterov).__name__}")
        if self.nesterov and momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0; set nesterov=False")
        decay = check_number(self.weight_decay, "weight_decay", 0.0)
        object.__setattr__(self, "weight_decay", decay)
        marks = check_schedule(self.schedule, self.milestones, self.gamma)
        object.__setattr__(self, "milestones", marks)
        check_warmup(self.warmup_epochs, self.warmup_factor, epochs)
        if self.seed is not None:
            check_seed(self.seed)

    def rate(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate at optimiser step ``step`` (0-based)."""
        return self.lr * lr_factor(
            self.schedule,
            step,
            self.epochs * steps_per_epoch,
            epoch=step // steps_per_epoch,
            epochs=self.epochs,
            milestones=self.milestones,
            gamma=self.gamma,
            warmup_epochs=self.warmup_epochs,
            warmup_factor=self.warmup_factor,
        )

    def config(self, steps_per_epoch: int, world_size: int) -> dict[str, Any]:
        """Everything a resumed run must share with the run that wrote the checkpoint."""
        return {
            "epochs": self.epochs,
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
            "schedule": self.schedule,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
            "warmup_epochs": self.warmup_epochs,
            "warmup_factor": self.warmup_factor,
            "seed": self.seed,
            "steps_per_epoch": steps_per_epoch,
            "world_size": world_size,
        }
