"""No certificate may be violated: adversarial search for the worst input, not random inputs only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from coreprune import QuerySpace, adversarial_search, coreset_prune, measure_error
from tests.coreset.conftest import make_pair

TOL = 1e-9


def _hunt(result, seed: int = 0, restarts: int = 48, steps: int = 150) -> float:
    gen = torch.Generator().manual_seed(seed)
    return adversarial_search(result, restarts=restarts, steps=steps, generator=gen).worst


@pytest.mark.parametrize("sensitivity", ["auto", "exact"])
@pytest.mark.parametrize("eps", [0.1, 0.3, 0.6])
def test_select_certificate_survives_adversarial_search(pair, sensitivity: str, eps: float) -> None:
    layer, nxt = pair
    result = coreset_prune(layer, nxt, eps=eps, mode="select", sensitivity=sensitivity)
    cert = result.certificate
    assert cert.eps <= eps and cert.delta == 0
    assert result.keep.numel() < 150, "the test layer must allow a non-trivial certificate"
    worst = _hunt(result)
    assert worst <= cert.eps * (1 + TOL)
    data = torch.randn(5000, 2, generator=torch.Generator().manual_seed(1)) * 4
    assert measure_error(result, data).worst <= cert.eps * (1 + TOL)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu:0.2", "tanh", "gelu", "identity"])
def test_select_holds_for_every_covered_activation(activation: str) -> None:
    layer, nxt = make_pair(120, 2, 3, seed=3)
    result = coreset_prune(layer, nxt, mode="select", keep=90, activation=activation)
    assert _hunt(result, steps=100) <= result.certificate.eps * (1 + TOL)


def test_select_on_a_restricted_query_space() -> None:
    """A 2-D affine subspace of R^12: n >> dim Q, so the certificate is non-vacuous there."""
    gen = torch.Generator().manual_seed(4)
    layer, nxt = make_pair(150, 12, 4, seed=4)
    calib = torch.randn(400, 2, generator=gen) @ torch.randn(2, 12, generator=gen) + torch.randn(
        12, generator=gen
    )
    query = QuerySpace.from_calibration(calib, rank=2)
    result = coreset_prune(layer, nxt, eps=0.3, mode="select", query=query)
    assert result.keep.numel() < 150 and not result.certificate.vacuous
    report = adversarial_search(result, restarts=48, steps=150, generator=gen)
    assert report.outside_query < 1e-9  # the hunter stays inside Q
    assert report.worst <= result.certificate.eps * (1 + TOL)
    assert measure_error(result, calib).worst <= result.certificate.eps * (1 + TOL)


def test_sampled_keep_certificates_hold_on_every_seed() -> None:
    """With keep=, a sampled draw is certified by whichever bound is smaller; when that is the
    deterministic one (delta 0) it may never be violated, on any seed. (The probabilistic bound
    with delta in force is tested in test_theorem_4_bound_alone_holds_across_seeds.)"""
    layer, nxt = make_pair(150, 2, 3, seed=5)
    for seed in range(15):
        gen = torch.Generator().manual_seed(seed)
        result = coreset_prune(layer, nxt, mode="sample", keep=100, delta=0.2, generator=gen)
        cert = result.certificate
        assert result.keep.numel() == 100
        assert cert.eps == min(cert.eps_deterministic, cert.eps_probabilistic)
        if cert.delta == 0:
            assert cert.eps == cert.eps_deterministic
            assert _hunt(result, seed=seed, restarts=24, steps=80) <= cert.eps * (1 + TOL)


def test_sample_with_eps_holds_and_reweights() -> None:
    layer, nxt = make_pair(150, 2, 3, seed=6)
    result = coreset_prune(
        layer,
        nxt,
        eps=0.5,
        mode="sample",
        generator=torch.Generator().manual_seed(0),
    )
    cert = result.certificate
    assert cert.eps_probabilistic is not None and cert.eps_probabilistic <= 0.5
    assert cert.eps <= 0.5
    assert _hunt(result) <= cert.eps * (1 + TOL)


def test_the_hunter_finds_the_exact_worst_case_of_one_removed_unit() -> None:
    """Removing a single unit i has worst error max_j s_ij exactly (ReLU is symmetric under y -> -y
    for the envelope), so the search must reach the exact LP value: evidence that it has power."""
    layer, nxt = make_pair(60, 3, 2, seed=7)
    full = coreset_prune(layer, nxt, mode="select", keep=59, sensitivity="exact")
    exact = full.certificate.eps  # = max_j s_ij of the one removed unit, certified by the LP
    worst = _hunt(full, restarts=64, steps=300)
    assert worst <= exact * (1 + TOL)
    assert worst >= 0.9 * exact


def test_a_planted_wrong_scale_is_caught() -> None:
    """Multiplying one kept unit's scale by 20 must produce an error far above the certified eps."""
    layer, nxt = make_pair(150, 2, 3, seed=8)
    result = coreset_prune(layer, nxt, eps=0.2, mode="select")
    scale = result.scale.clone()
    scale[torch.argmax(result.sensitivity[result.keep])] = 20.0
    broken = type(result)(**{**result.__dict__, "scale": scale})
    assert _hunt(broken) > result.certificate.eps * 1.5


def test_conv_and_batchnorm_select_is_sound() -> None:
    """A conv layer with BN folded, read by a next conv: queries are 1x1x2 patches (dim 2)."""
    gen = torch.Generator().manual_seed(9)
    conv = nn.Conv2d(2, 120, 1)
    bn = nn.BatchNorm2d(120).eval()
    nxt = nn.Conv2d(120, 3, 2)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(120, generator=gen))
        bn.running_var.copy_(torch.rand(120, generator=gen) + 0.5)
        bn.weight.copy_(torch.randn(120, generator=gen))
        nxt.weight.mul_(torch.rand(1, 120, 1, 1, generator=gen) ** 3)
    result = coreset_prune(conv, nxt, eps=0.3, mode="select", norm=bn)
    assert result.keep.numel() < 120
    assert _hunt(result) <= result.certificate.eps * (1 + TOL)


def test_theorem_4_bound_alone_holds_across_seeds() -> None:
    """The probabilistic eps of Theorem 4 (not the deterministic one) against adversarial search."""
    layer, nxt = make_pair(150, 2, 3, seed=10)
    delta, violations, seeds = 0.2, 0, 8
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(100 + seed)
        result = coreset_prune(layer, nxt, eps=0.9, mode="sample", delta=delta, generator=gen)
        bound = result.certificate.eps_probabilistic
        assert bound is not None and bound <= 0.9
        violations += _hunt(result, seed=seed, restarts=16, steps=60) > bound * (1 + TOL)
    assert violations / seeds <= delta
