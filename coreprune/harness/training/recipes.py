"""Training recipes per model: the epochs, rate, weight decay, schedule and batch size each
model is trained with, so every method in a comparison gets the same, documented training.

Sources are in docs/training.md; ``Recipe.source`` says in a line where each one comes from
and what we changed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from coreprune.checks import check_int
from coreprune.training.schedules import Schedule
from coreprune.training.settings import TrainSettings

_HE_2016 = (
    "He et al. 2016 (CIFAR-10, sec. 4.2): lr 0.1, momentum 0.9, wd 1e-4, batch 128, lr/10 at "
    "32k and 48k of 64k iterations on a 45k/5k split = 182 epochs of 45k, steps at 1/2 and 3/4. "
    "Changed: Nesterov momentum"
)
_VGG = (
    "Schedule of Liu et al. 2017 (network slimming) / Liu et al. 2019 (rethinking pruning): "
    "160 epochs, lr 0.1, lr/10 at 1/2 and 3/4, Nesterov 0.9; wd 5e-4 as for VGG in Simonyan & "
    "Zisserman 2015. Changed: batch 128 (they use 64) and wd 5e-4 (they use 1e-4)"
)
_IMAGENET_STYLE = (
    "Not from a paper: the widely used kuangliu/pytorch-cifar setting for ResNet-18/50 on "
    "CIFAR (small_input=True): lr 0.1, momentum 0.9, wd 5e-4, batch 128, cosine "
    "(Loshchilov & Hutter 2017) over 200 epochs. Changed: Nesterov momentum"
)
_LENET = (
    "House recipe, not from a paper: cosine to zero over 40 epochs at lr 0.05, wd 5e-4, "
    "batch 128, Nesterov 0.9 (LeNets on (Fashion-)MNIST are not sensitive to these)"
)
_VGG_SMALL = (
    "House recipe, not from a paper: cosine to zero over 10 epochs at lr 0.05, wd 5e-4, "
    "batch 128, Nesterov 0.9; the shipped pretrained weights used these settings over fewer "
    "epochs (see coreprune/harness/pretrained/manifest.json)"
)


@dataclass(frozen=True)
class Recipe:
    """How one model is trained from scratch: ``fit_kwargs()`` goes to ``fit``,
    ``batch_size`` to ``make_loaders``, ``dataset`` names what it was set for."""

    model: str
    dataset: str
    epochs: int
    lr: float
    weight_decay: float
    schedule: Schedule
    batch_size: int
    source: str
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    warmup_epochs: int = 0
    warmup_factor: float = 0.1

    def __post_init__(self) -> None:
        check_int(self.batch_size, "batch_size", minimum=1)
        TrainSettings(**self.fit_kwargs(), seed=None)  # fit's own checks, before any training

    def fit_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``fit`` this recipe sets."""
        return {f.name: getattr(self, f.name) for f in fields(TrainSettings) if f.name != "seed"}

    @property
    def final_lr(self) -> float:
        """The rate training ends at: lr x gamma^(milestones) for "step", lr for "constant",
        and lr x gamma^2 for "cosine" (whose last rate is ~0, too small to fine-tune with)."""
        if self.schedule == "step":
            return self.lr * self.gamma ** len(self.milestones)
        if self.schedule == "constant":
            return self.lr
        return self.lr * self.gamma**2

    def finetune(self, epochs: int, lr: float | None = None) -> Recipe:
        """A fine-tuning recipe for the pruned model: ``epochs`` at a small constant rate,
        by default the rate training ended at (``final_lr``), the standard fine-tuning that
        Renda et al. 2020 compare against. Everything else stays as for training."""
        return dataclasses.replace(
            self,
            epochs=epochs,
            lr=self.final_lr if lr is None else lr,
            schedule="constant",
            warmup_epochs=0,
            source=f"fine-tuning at a constant small rate (Renda et al. 2020) after: {self.source}",
        )


def _cifar_resnet(name: str, warmup: int = 0) -> Recipe:
    return Recipe(
        name,
        "cifar10",
        182,
        0.1,
        1e-4,
        "step",
        128,
        _HE_2016
        + (
            "; ResNet-110 warms up at lr 0.01 (He et al.: until 80% train error, ~400 "
            "iterations; here 1 epoch = 352 iterations)"
            if warmup
            else ""
        ),
        warmup_epochs=warmup,
    )


_VIT_SMALL = (
    "this library's choice for the shipped Fashion-MNIST ViT (benchmarks/train_fixtures.py): "
    "the SGD of the other fixtures after one warm-up epoch at 0.1 x lr, since a transformer "
    "started at the full rate diverges; no augmentation"
)


RECIPES: dict[str, Recipe] = {
    "lenet300100": Recipe("lenet300100", "fashion_mnist", 40, 0.05, 5e-4, "cosine", 128, _LENET),
    "lenet5": Recipe("lenet5", "fashion_mnist", 40, 0.05, 5e-4, "cosine", 128, _LENET),
    "vgg_small": Recipe("vgg_small", "fashion_mnist", 10, 0.05, 5e-4, "cosine", 128, _VGG_SMALL),
    "vit_small": Recipe(
        "vit_small", "fashion_mnist", 8, 0.05, 5e-4, "cosine", 128, _VIT_SMALL, warmup_epochs=1
    ),
    **{
        name: Recipe(name, "cifar10", 160, 0.1, 5e-4, "step", 128, _VGG)
        for name in ("vgg11", "vgg13", "vgg16", "vgg19")
    },
    "resnet20": _cifar_resnet("resnet20"),
    "resnet32": _cifar_resnet("resnet32"),
    "resnet56": _cifar_resnet("resnet56"),
    "resnet110": _cifar_resnet("resnet110", warmup=1),
    **{
        name: Recipe(name, "cifar10", 200, 0.1, 5e-4, "cosine", 128, _IMAGENET_STYLE)
        for name in ("resnet18", "resnet50")
    },
}


def recipe(model_name: str, **overrides: Any) -> Recipe:
    """The recipe for ``model_name`` (a ``coreprune.zoo`` registry name), with any field
    replaced by ``overrides`` (e.g. ``epochs=10`` for a quick run); the result is validated."""
    if not isinstance(model_name, str):
        raise TypeError(f"model_name must be a str, got {type(model_name).__name__}")
    key = model_name.lower()
    if key not in RECIPES:
        raise ValueError(f"no recipe for {model_name!r}; recipes exist for: {', '.join(RECIPES)}")
    names = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown recipe fields {unknown}; valid: {sorted(names)}")
    return dataclasses.replace(RECIPES[key], **overrides)
