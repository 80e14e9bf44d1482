"""Recipes: one per zoo model, faithful to the cited numbers, usable as fit's arguments."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from coreprune.harness.models import MODEL_NAMES, build_model
from coreprune.harness.training import RECIPES, Recipe, fit, recipe


def test_every_zoo_model_has_a_recipe() -> None:
    assert set(RECIPES) == set(MODEL_NAMES)
    for name, entry in RECIPES.items():
        assert entry.model == name and entry.source
        assert set(entry.fit_kwargs()) <= set(inspect.signature(fit).parameters)


def test_cifar_resnet_recipe_is_he_et_al() -> None:
    r56 = recipe("resnet56")
    assert (r56.lr, r56.momentum, r56.weight_decay, r56.batch_size) == (0.1, 0.9, 1e-4, 128)
    assert r56.schedule == "step" and r56.milestones == (0.5, 0.75) and r56.gamma == 0.1
    # 64k iterations of batch 128 over the 45k training part: ceil(45000 / 128) = 352 per epoch
    assert abs(r56.epochs * 352 - 64_000) < 352
    assert recipe("resnet110").warmup_epochs == 1 and recipe("resnet110").warmup_factor == 0.1
    assert recipe("ResNet20").warmup_epochs == 0


def test_vgg_and_lenet_recipes() -> None:
    vgg = recipe("vgg16")
    assert (vgg.epochs, vgg.lr, vgg.weight_decay, vgg.schedule) == (160, 0.1, 5e-4, "step")
    assert recipe("lenet5").dataset == "fashion_mnist"
    assert recipe("resnet18").schedule == "cosine"


def test_finetune_and_overrides() -> None:
    tune = recipe("resnet56").finetune(epochs=20)
    assert tune.schedule == "constant" and tune.epochs == 20
    assert tune.lr == pytest.approx(0.1 * 0.1**2) and "Renda" in tune.source
    assert recipe("lenet5").finetune(5, lr=0.01).lr == 0.01
    quick = recipe("vgg11", epochs=2, batch_size=32)
    assert quick.epochs == 2 and quick.batch_size == 32 and RECIPES["vgg11"].epochs == 160


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: recipe("alexnet"), ValueError, "resnet56"),
        (lambda: recipe(3), TypeError, "model_name"),  # type: ignore[arg-type]
        (lambda: recipe("vgg11", colour="red"), TypeError, "colour"),
        (lambda: recipe("vgg11", epochs=0), ValueError, "epochs"),
        (lambda: recipe("vgg11", lr="fast"), TypeError, "lr"),
        (lambda: recipe("vgg11", schedule="linear"), ValueError, "schedule"),
        (lambda: recipe("lenet5").finetune(0), ValueError, "epochs"),
    ],
)
def test_bad_recipe_requests(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


def test_recipe_drives_fit() -> None:
    torch.manual_seed(0)
    plan = recipe("lenet300100", epochs=1, batch_size=8)
    model = build_model("lenet300100", in_features=4, hidden=(8,), num_classes=2)
    x = torch.randn(16, 4)
    loader = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=plan.batch_size)
    history = fit(model, loader, **plan.fit_kwargs(), progress=False)
    assert history.epochs == 1
    assert isinstance(plan, Recipe)
