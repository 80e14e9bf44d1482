"""The optimisation settings of one ``fit`` call, checked once, and the learning rate they
give at each step; a checkpoint records them so a resume can refuse different ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from coreprune.checks import check_bool, check_float, check_int

from .schedules import Schedule, check_schedule, check_warmup, lr_factor
from .seeding import SEED_MAX


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
        epochs = check_int(self.epochs, "epochs", minimum=1)
        object.__setattr__(self, "lr", check_float(self.lr, "lr", low=0.0, low_open=True))
        momentum = check_float(self.momentum, "momentum", low=0.0, high=1.0, high_open=True)
        object.__setattr__(self, "momentum", momentum)
        check_bool(self.nesterov, "nesterov")
        if self.nesterov and momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0; set nesterov=False")
        decay = check_float(self.weight_decay, "weight_decay", low=0.0)
        object.__setattr__(self, "weight_decay", decay)
        marks = check_schedule(self.schedule, self.milestones, self.gamma)
        object.__setattr__(self, "milestones", marks)
        check_warmup(self.warmup_epochs, self.warmup_factor, epochs)
        if self.seed is not None:
            check_int(self.seed, "seed", minimum=0, maximum=SEED_MAX)

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
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["milestones"] = list(self.milestones)  # as JSON and checkpoints hold it
        return {**values, "steps_per_epoch": steps_per_epoch, "world_size": world_size}
