"""`coreset_prune`: the result object, physical removal, determinism, and bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from coreprune import QuerySpace, coreset_prune
from coreprune.coreset.verify import relative_errors


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("mode", ["select", "sample"])
def test_apply_builds_smaller_modules_that_compute_z_hat(pair, mode: str) -> None:
    layer, nxt = pair
    before = (copy.deepcopy(layer), copy.deepcopy(nxt))
    result = coreset_prune(
        layer,
        nxt,
        mode=mode,
        keep=70,
        generator=torch.Generator().manual_seed(0),
    )
    new_layer, new_next = result.apply()
    assert _same_state(layer, before[0]) and _same_state(nxt, before[1]), "inputs were mutated"
    assert new_layer.out_features == 70 and new_next.in_features == 70
    assert (
        torch.equal(result.keep, torch.sort(result.keep).values)
        and result.keep.dtype == torch.int64
    )
    x = torch.randn(64, 2, dtype=torch.float64)
    with torch.no_grad():
        dense = copy.deepcopy(nxt).double()(torch.relu(copy.deepcopy(layer).double()(x)))
        pruned = new_next.double()(torch.relu(new_layer.double()(x)))
    lifted = torch.cat([x, torch.ones(64, 1, dtype=torch.float64)], 1)
    pre = lifted @ result.units.T
    expected = (torch.relu(pre) * result.weights) @ result.reading.T + nxt.bias.double()
    assert torch.allclose(pruned, expected.detach(), rtol=1e-6, atol=1e-6)  # float32 weights
    # and the measured relative error is the one verify computes
    env = pre.abs() @ result.reading.abs().T
    err = ((dense - pruned).abs() / env).max()
    assert math.isclose(float(err), float(relative_errors(result, x).max()), rel_tol=1e-8)


def test_select_keep_is_exact_and_reports_the_eps_achieved(pair) -> None:
    layer, nxt = pair
    result = coreset_prune(layer, nxt, mode="select", keep=100)
    assert result.keep.numel() == 100 and torch.all(result.scale == 1)
    removed = torch.ones(150, dtype=torch.bool)
    removed[result.keep] = False
    per_next = result.sensitivities.per_next
    assert math.isclose(
        result.certificate.eps, float(per_next[:, removed].sum(dim=1).max()), rel_tol=1e-12
    )
    # the lowest-sensitivity units are the ones removed
    assert result.sensitivity[removed].max() <= result.sensitivity[result.keep].min()


def test_eps_at_least_one_is_flagged_vacuous(pair) -> None:
    layer, nxt = pair
    result = coreset_prune(layer, nxt, mode="select", keep=5)
    assert result.certificate.vacuous == (result.certificate.eps >= 1)
    assert result.certificate.vacuous
    assert "VACUOUS" in str(result.certificate)


def test_data_free_wide_layer_is_vacuous_and_removes_nothing() -> None:
    """The stated limit: 30 units on 50 inputs are linearly independent, every s = 1."""
    layer, nxt = nn.Linear(50, 30), nn.Linear(30, 10)
    result = coreset_prune(layer, nxt, eps=0.5, mode="select")
    assert torch.all(result.sensitivity == 1) and result.keep.numel() == 30


def test_seeded_sampling_is_deterministic(pair) -> None:
    layer, nxt = pair
    a = coreset_prune(
        layer, nxt, keep=60, generator=torch.Generator().manual_seed(3), mode="sample"
    )
    b = coreset_prune(
        layer, nxt, keep=60, generator=torch.Generator().manual_seed(3), mode="sample"
    )
    assert torch.equal(a.keep, b.keep) and torch.equal(a.scale, b.scale)


def test_without_next_layer_reads_through_ones(pair) -> None:
    layer, _ = pair
    result = coreset_prune(layer, eps=0.3, mode="select")
    new_layer, new_next = result.apply()
    assert new_next is None and new_layer.out_features == result.keep.numel()
    assert result.reading.shape == (1, 150)


def test_conv_to_flatten_to_linear_reads_blocks() -> None:
    conv, fc = nn.Conv2d(1, 6, 3), nn.Linear(6 * 4 * 4, 5)
    result = coreset_prune(conv, fc, mode="select", keep=4)
    assert result.reading.shape == (5 * 16, 6)
    new_conv, new_fc = result.apply()
    assert new_conv.out_channels == 4 and new_fc.in_features == 4 * 16
    x = torch.randn(3, 1, 6, 6)
    assert new_fc(torch.relu(new_conv(x)).flatten(1)).shape == (3, 5)


def test_batchnorm_is_sliced_with_the_layer() -> None:
    conv, bn, nxt = nn.Conv2d(2, 8, 1), nn.BatchNorm2d(8).eval(), nn.Conv2d(8, 3, 1)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    result = coreset_prune(conv, nxt, mode="select", keep=5, norm=bn)
    new_bn = result.apply_norm()
    assert new_bn.num_features == 5
    assert torch.equal(new_bn.running_mean, bn.running_mean[result.keep])


BAD = [
    (dict(eps=0.0), ValueError, r"eps must lie in \(0, inf\)"),
    (dict(eps=-1.0), ValueError, "eps must lie in"),
    (dict(eps=float("nan")), ValueError, "eps must be"),
    (dict(eps=float("inf")), ValueError, "eps must be"),
    (dict(eps="0.1"), TypeError, "eps must be a real number"),
    (dict(eps=None), ValueError, "exactly one of eps"),
    (dict(eps=0.1, keep=3), ValueError, "exactly one of eps"),
    (dict(eps=None, keep=0), ValueError, "keep must be >= 1"),
    (dict(eps=None, keep=151), ValueError, r"keep must be <= 150 \(the layer has 150 units\)"),
    (dict(eps=None, keep=2.5), TypeError, "keep must be an int"),
    (dict(eps=0.1, delta=0.0), ValueError, "delta must be"),
    (dict(eps=0.1, delta=1.0), ValueError, "delta must be"),
    (dict(eps=0.1, mode="greedy"), ValueError, "mode must be one of"),
    (dict(eps=0.1, activation="sigmoid"), ValueError, "not covered"),
    (dict(eps=0.1, activation=nn.Softplus()), ValueError, "not covered"),
    (dict(eps=0.1, activation="leaky_relu:2"), ValueError, "slope"),
    (dict(eps=0.1, query=torch.eye(2)), TypeError, "query must be a coreprune.QuerySpace"),
    (dict(eps=0.1, query=QuerySpace.full(5)), ValueError, r"query lives in R\^5"),
    (dict(eps=0.1, sensitivity="magic"), ValueError, "sensitivity must be one of"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD)
def test_bad_requests_are_refused_by_name(pair, kwargs: dict, error: type, match: str) -> None:
    layer, nxt = pair
    eps = kwargs.pop("eps")
    with pytest.raises(error, match=match):
        coreset_prune(layer, nxt, eps=eps, **kwargs)


def test_bad_modules_are_refused() -> None:
    with pytest.raises(TypeError, match=r"layer must be nn\.Linear, nn\.Conv2d or HF-style Conv1D"):
        coreset_prune(nn.Conv1d(2, 3, 1), eps=0.1, mode="sample")
    with pytest.raises(ValueError, match="grouped"):
        coreset_prune(nn.Conv2d(4, 4, 3, groups=2), eps=0.1, mode="sample")
    with pytest.raises(ValueError, match="reads 7 inputs"):
        coreset_prune(nn.Linear(3, 5), nn.Linear(7, 2), eps=0.1, mode="sample")
    with pytest.raises(TypeError, match="next_layer must be"):
        coreset_prune(nn.Linear(3, 5), nn.ReLU(), eps=0.1, mode="sample")
    nan_layer = nn.Linear(3, 5)
    with torch.no_grad():
        nan_layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        coreset_prune(nan_layer, eps=0.1, mode="sample")
    zero_unit = nn.Linear(3, 5)
    with torch.no_grad():
        zero_unit.weight[2].zero_()
        zero_unit.bias[2] = 0.0
    with pytest.raises(ValueError, match="all-zero units"):
        coreset_prune(zero_unit, eps=0.1, mode="sample")


def test_sample_with_eps_refuses_activations_outside_theorem_4(pair) -> None:
    layer, nxt = pair
    with pytest.raises(ValueError, match="piecewise-linear"):
        coreset_prune(layer, nxt, eps=0.3, mode="sample", activation="tanh")
    # keep= still works, with the deterministic bound only
    result = coreset_prune(layer, nxt, mode="sample", keep=120, activation="tanh")
    assert result.certificate.delta == 0 and "deterministic" in result.certificate.note
