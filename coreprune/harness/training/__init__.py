"""Training utilities: ``fit`` (SGD + Nesterov, cosine/step schedule, CUDA AMP when
available, checkpoint/resume, DDP under torchrun), ``evaluate``, ``set_seed`` and per-model
``RECIPES``; ``fit``'s ``step_hook`` lets a method that prunes while it trains (DPF) change
what each step computes; ``model_kwargs`` sizes a zoo model for a dataset and ``recalibrated_copy``
re-estimates batch-norm statistics after pruning."""

from .batchnorm import recalibrated_copy
from .checkpoint import load_checkpoint, save_checkpoint
from .history import TrainHistory
from .metrics import evaluate
from .model_args import build_for_dataset, default_image_size, model_kwargs
from .recipes import RECIPES, Recipe, recipe
from .schedules import SCHEDULES, lr_factor
from .seeding import epoch_seed, set_seed
from .trainer import EpochCallback, Loss, StepHook, fit

__all__ = [
    "RECIPES",
    "SCHEDULES",
    "EpochCallback",
    "Loss",
    "Recipe",
    "StepHook",
    "TrainHistory",
    "build_for_dataset",
    "default_image_size",
    "epoch_seed",
    "evaluate",
    "fit",
    "load_checkpoint",
    "lr_factor",
    "model_kwargs",
    "recalibrated_copy",
    "recipe",
    "save_checkpoint",
    "set_seed",
]
