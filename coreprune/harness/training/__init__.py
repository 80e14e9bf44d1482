"""Training utilities: ``fit`` (SGD + Nesterov, cosine/step schedule, CUDA AMP when
available, checkpoint/resume, DDP under torchrun), ``evaluate``, ``set_seed`` and per-model
``RECIPES``; ``fit``'s ``step_hook`` lets a method that prunes while it trains (DPF) change
what each step computes; ``model_kwargs`` sizes a zoo model for a dataset and ``recalibrated_copy``
re-estimates batch-norm statistics after pruning.

The trainer itself knows no model or data set and lives below the pruning methods, in
`coreprune.training`; it is re-exported here. What is the harness's own: the zoo's per-model
``RECIPES`` and ``model_kwargs`` (sizes for a data set)."""

from coreprune.training import (
    SCHEDULES,
    EpochCallback,
    Loss,
    StepHook,
    TrainHistory,
    epoch_seed,
    evaluate,
    fit,
    load_checkpoint,
    lr_factor,
    recalibrated_copy,
    save_checkpoint,
    set_seed,
)

from .model_args import build_for_dataset, default_image_size, model_kwargs
from .recipes import RECIPES, Recipe, recipe

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
