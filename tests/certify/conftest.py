"""A tiny classifier and a labelled held-out set shared by the certify tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def make_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
    )


@pytest.fixture
def mlp() -> nn.Module:
    return make_mlp()


@pytest.fixture
def holdout() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(400, 8, generator=gen)
    y = torch.randint(0, 3, (400,), generator=gen)
    return x, y
