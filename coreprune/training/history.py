"""Per-epoch records of a training run, in a form that saves as JSON and in checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainHistory:
    """Per-epoch records of one ``fit`` call (validation lists stay empty without a
    validation loader). Accuracies are fractions in [0, 1]; ``lr`` is the rate of the last
    step of each epoch; ``train_loss``/``train_accuracy`` average over the epoch's steps
    while the weights were changing (over all ranks under DDP). ``stopped_early`` is set when
    ``on_epoch_end`` asked to stop; ``world_size`` is the number of DDP processes (1 without)."""

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    device: str = "cpu"
    amp: bool = False
    stopped_early: bool = False
    world_size: int = 1

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    @property
    def best_val_accuracy(self) -> float | None:
        return max(self.val_accuracy) if self.val_accuracy else None

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready form for saving with results."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainHistory:
        """Inverse of ``to_dict``; unknown keys raise ValueError (a different format)."""
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TrainHistory fields {unknown}; valid: {sorted(names)}")
        lists = {k: list(v) for k, v in data.items() if isinstance(v, (list, tuple))}
        return cls(**{**data, **lists})
