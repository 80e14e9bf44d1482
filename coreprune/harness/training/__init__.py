"""Training utilities: ``fit`` (SGD + Nesterov, cosine/step schedule, CUDA AMP when
available, checkpoint/resume, DDP under torchrun), ``evaluate``, ``set_seed`` and per-model
``RECIPES``."""

from .checkpoint import load_checkpoint, save_checkpoint
from .history import TrainHistory
from .metrics import evaluate
from .recipes import RECIPES, Recipe, recipe
from .schedules import SCHEDULES, lr_factor
from .seeding import epoch_seed, set_seed
from .trainer import EpochCallback, fit

__all__ = [
    "RECIPES",
    "SCHEDULES",
    "EpochCallback",
    "Recipe",
    "TrainHistory",
    "epoch_seed",
    "evaluate",
    "fit",
    "load_checkpoint",
    "lr_factor",
    "recipe",
    "save_checkpoint",
    "set_seed",
]
