"""Small layers on which certificates are non-vacuous: many units, a low-dimensional query space."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def make_pair(
    n: int, d_in: int, k: int, seed: int, bias: bool = True
) -> tuple[nn.Linear, nn.Linear]:
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(d_in, n, bias=bias)
    nxt = nn.Linear(n, k)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n, d_in, generator=gen))
        if bias:
            layer.bias.copy_(torch.randn(n, generator=gen))
        # Heavy-tailed reading weights: a few units matter a lot, many matter little.
        nxt.weight.copy_(torch.randn(k, n, generator=gen) * torch.rand(1, n, generator=gen) ** 3)
    return layer, nxt


@pytest.fixture
def pair() -> tuple[nn.Linear, nn.Linear]:
    return make_pair(150, 2, 4, seed=0)
