"""The trainer: ``fit`` (SGD + Nesterov, cosine/step schedule, CUDA AMP when available,
checkpoint/resume, DDP under torchrun), ``evaluate``, ``set_seed`` and ``recalibrated_copy``
(batch-norm statistics re-estimated after pruning). ``fit``'s ``step_hook`` lets a method that
prunes while it trains (DPF) change what each step computes.

It knows no model, data set or pruning method, so it sits below `coreprune.methods` (which
train with it) and the harness (which adds the zoo's recipes and sizes,
`coreprune.harness.training`, and re-exports all of this).
"""

from .batchnorm import recalibrated_copy
from .checkpoint import load_checkpoint, save_checkpoint
from .history import TrainHistory
from .metrics import evaluate
from .schedules import SCHEDULES, Schedule, lr_factor
from .seeding import epoch_seed, set_seed
from .settings import TrainSettings
from .trainer import EpochCallback, Loss, StepHook, fit

__all__ = [
    "SCHEDULES",
    "EpochCallback",
    "Loss",
    "Schedule",
    "StepHook",
    "TrainHistory",
    "TrainSettings",
    "epoch_seed",
    "evaluate",
    "fit",
    "load_checkpoint",
    "lr_factor",
    "recalibrated_copy",
    "save_checkpoint",
    "set_seed",
]
