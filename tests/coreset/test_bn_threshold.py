"""Batch norm folded into the units, up to and past the refusal threshold: refused or sound.

The certificate is proved for the float64 folded units; its fold rounding is stated, not
charged (docs/theory.md §6). So here it is checked against the modules themselves, composed in
float64 (layer, then eval-mode batch norm, then ReLU), on adversarial and random inputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from coreprune.coreset import coreset_prune
from coreprune.coreset.sensitivity import ILL_CONDITIONED
from coreprune.coreset.verify import adversarial_search
from tests.coreset.conftest import make_pair


def _with_norm(log_var: float) -> tuple[nn.Linear, nn.BatchNorm1d, nn.Linear]:
    layer, nxt = make_pair(40, 2, 3, seed=12)
    norm = nn.BatchNorm1d(40).eval()
    gen = torch.Generator().manual_seed(13)
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(40, generator=gen))
        norm.running_var.copy_(torch.rand(40, generator=gen) + 0.5)
        norm.running_var[:1] = 10.0**log_var  # one unit scaled by 10^(-log_var / 2)
        norm.weight.copy_(torch.randn(40, generator=gen))
        norm.bias.copy_(torch.randn(40, generator=gen))
    norm.eps = 0.0
    return layer, norm, nxt


def _worst_true_error(layer, norm, nxt, result, x):  # type: ignore[no-untyped-def]
    """max_j |z_j - z^_j| / e_j(x) with z from the float64 modules, not the folded units."""
    lay, bn, u = (
        copy.deepcopy(layer).double(),
        copy.deepcopy(norm).double(),
        nxt.weight.detach().double(),
    )
    with torch.no_grad():
        pre = bn(lay(x.double()))
    h = torch.relu(pre)
    mask = torch.zeros(h.shape[1], dtype=torch.float64)
    mask[result.keep] = 1.0
    diff = ((h * (1 - mask)) @ u.T).abs()
    envelope = pre.abs() @ u.abs().T
    return float((diff / envelope.clamp_min(1e-300)).max())


# Measured: certified up to running_var 1e-28 (charge 2.9e-2), refused from 1e-30 (condition
# number 1.8e13 of the weighted units).
@pytest.mark.parametrize("log_var", [0.0, -24.0, -26.0, -28.0, -29.0, -30.0])
def test_folded_batch_norm_is_refused_or_certified_soundly(log_var: float) -> None:
    layer, norm, nxt = _with_norm(log_var)
    try:
        result = coreset_prune(layer, nxt, norm=norm, eps=0.3, mode="select")
    except ValueError as err:
        assert ILL_CONDITIONED in str(err)
        return
    eps = result.certificate.eps
    assert "batch norm folded" in str(result.certificate)
    found = adversarial_search(result, restarts=8, steps=60)
    gen = torch.Generator().manual_seed(14)
    x = torch.cat([found.x.reshape(1, -1), torch.randn(2000, 2, generator=gen) * 3])
    assert _worst_true_error(layer, norm, nxt, result, x) <= eps * (1 + 1e-9) + 1e-12
