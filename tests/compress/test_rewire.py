"""Rewiring the next layer: merge (data-free), ridge refit (with data), and their certificate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coreprune import coreset_prune
from coreprune.surgery.activations import Activation
from coreprune.surgery.rewire import (
    bias_change,
    consumer_from_reading,
    expand_reading,
    lstsq_weights,
    merge_weights,
    positively_homogeneous,
    refit_consumer,
    rewired_eps,
)
from coreprune.surgery.slicing import slice_consumer, slice_producer
from coreprune.surgery.units import layer_units, next_weights
from tests.coreset.conftest import make_pair

TOL = 1e-9


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


# --------------------------------------------------------------------------------------------
# merge_weights


def test_homogeneity_predicate() -> None:
    assert positively_homogeneous(Activation("relu"))
    assert positively_homogeneous(Activation("leaky_relu", 0.1))
    assert positively_homogeneous(Activation("identity"))
    assert not positively_homogeneous(Activation("tanh"))
    assert not positively_homogeneous(Activation("gelu"))
    with pytest.raises(TypeError, match="Activation"):
        positively_homogeneous("relu")  # type: ignore[arg-type]


def _layer_with_copies(d_in: int, n: int, k: int, seed: int) -> tuple[nn.Linear, nn.Linear]:
    """Units n-2 and n-1 are positive multiples (2.5x, 0.4x) of units 0 and 1."""
    gen = _gen(seed)
    layer, nxt = nn.Linear(d_in, n), nn.Linear(n, k)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n, d_in, generator=gen))
        layer.bias.copy_(torch.randn(n, generator=gen))
        for src, dst, lam in ((0, n - 2, 2.5), (1, n - 1, 0.4)):
            layer.weight[dst] = lam * layer.weight[src]
            layer.bias[dst] = lam * layer.bias[src]
        nxt.weight.copy_(torch.randn(k, n, generator=gen))
    return layer, nxt


@pytest.mark.parametrize("act", ["relu", "leaky_relu:0.2", "identity"])
def test_merge_is_exact_for_scaled_copies(act: str) -> None:
    layer, nxt = _layer_with_copies(5, 8, 3, seed=0)
    n = 8
    keep = torch.arange(n - 2)
    res = merge_weights(layer_units(layer), next_weights(nxt, n), keep, act)
    assert res.merged
    assert res.match.tolist() == [0, 1]
    assert res.scale.tolist() == pytest.approx([2.5, 0.4])
    assert res.cosine.tolist() == pytest.approx([1.0, 1.0])
    phi = {"relu": F.relu, "identity": lambda t: t}.get(act, lambda t: F.leaky_relu(t, 0.2))
    x = torch.randn(64, 5, generator=_gen(1))
    dense = nxt(phi(layer(x)))
    new = consumer_from_reading(nxt, res.reading)
    pruned = new(phi(slice_producer(layer, keep)(x)))
    assert _rel(pruned, dense) < 1e-6
    plain = slice_consumer(nxt, n, keep, torch.ones(n - 2))(phi(slice_producer(layer, keep)(x)))
    assert _rel(plain, dense) > 1e-2  # the test can fail: dropping the copies loses something


def test_merge_refuses_non_homogeneous_activation_and_says_so() -> None:
    layer, nxt = _layer_with_copies(5, 8, 3, seed=0)
    u = next_weights(nxt, 8)
    keep = torch.arange(6)
    res = merge_weights(layer_units(layer), u, keep, "tanh")
    assert not res.merged and "not positively homogeneous" in res.note
    assert torch.equal(res.reading, u[:, :6])
    assert (res.match == -1).all() and (res.scale == 0).all()


def test_merge_threshold_and_opposite_units() -> None:
    units = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], dtype=torch.float64
    )
    u = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    keep = torch.tensor([0, 1])
    res = merge_weights(units, u, keep, "relu")
    # unit 2 points against every kept unit: dropped; unit 3 best matches unit 1 (cos 0.8)
    assert res.match.tolist() == [-1, 1]
    assert res.scale[1] == pytest.approx(0.8)
    assert res.reading.tolist() == [[1.0, 2.0 + 0.8 * 4.0]]
    strict = merge_weights(units, u, keep, "relu", min_cosine=0.9)
    assert strict.match.tolist() == [-1, -1]
    assert strict.reading.tolist() == [[1.0, 2.0]]
    full = res.full_reading
    assert full.shape == (1, 4) and full[0, 2] == 0 and full[0, 3] == 0


def test_merge_does_not_mutate_and_validates() -> None:
    units = torch.randn(6, 4, generator=_gen(0))
    u = torch.randn(3, 6, generator=_gen(1))
    keep = torch.tensor([0, 2, 4])
    before = (units.clone(), u.clone(), keep.clone())
    merge_weights(units, u, keep, "relu")
    assert torch.equal(units, before[0]) and torch.equal(u, before[1])
    assert torch.equal(keep, before[2])
    with pytest.raises(ValueError, match="k x n"):
        merge_weights(units, u[:, :5], keep, "relu")
    with pytest.raises(ValueError, match="repeated"):
        merge_weights(units, u, torch.tensor([0, 0]), "relu")
    with pytest.raises(ValueError, match="outside"):
        merge_weights(units, u, torch.tensor([0, 6]), "relu")
    with pytest.raises(TypeError, match="integer"):
        merge_weights(units, u, torch.tensor([0.0]), "relu")
    with pytest.raises(ValueError, match="min_cosine"):
        merge_weights(units, u, keep, "relu", min_cosine=1.5)
    with pytest.raises(ValueError, match="not covered"):
        merge_weights(units, u, keep, "sigmoid")


def test_merge_exact_through_conv_and_flatten_consumers() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 6, 3, padding=1)
    with torch.no_grad():
        conv.weight[5] = 1.7 * conv.weight[0]
        conv.bias[5] = 1.7 * conv.bias[0]
    keep = torch.arange(5)
    x = torch.randn(4, 2, 7, 7)
    nxt_conv = nn.Conv2d(6, 3, 3, stride=2)
    nxt_lin = nn.Linear(6 * 49, 5)
    sliced = slice_producer(conv, keep)
    for nxt, head in ((nxt_conv, lambda t: t), (nxt_lin, lambda t: t.flatten(1))):
        res = merge_weights(layer_units(conv), next_weights(nxt, 6), keep, "relu")
        assert res.match.tolist() == [0]
        new = consumer_from_reading(nxt, res.reading)
        dense = nxt(head(F.relu(conv(x))))
        assert _rel(new(head(F.relu(sliced(x)))), dense) < 1e-6


@pytest.mark.parametrize(
    "layer",
    [nn.Linear(6, 4), nn.Conv2d(6, 4, (3, 2), padding=1, bias=False), nn.Linear(6 * 5, 3)],
)
def test_consumer_from_reading_inverts_next_weights(layer: nn.Module) -> None:
    new = consumer_from_reading(layer, next_weights(layer, 6))
    assert type(new) is type(layer) and new is not layer
    assert torch.equal(new.weight, layer.weight)
    assert (new.bias is None) == (layer.bias is None)


# --------------------------------------------------------------------------------------------
# lstsq_weights


def test_lstsq_recovers_exact_weights_and_bias() -> None:
    gen = _gen(0)
    x = torch.randn(200, 7, generator=gen)
    w = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(3, generator=gen, dtype=torch.float64)
    y = x.double() @ w + b
    fit = lstsq_weights(x, y, ridge=0.0)
    assert torch.allclose(fit.weight, w, atol=1e-10) and fit.bias is not None
    assert torch.allclose(fit.bias, b, atol=1e-10)
    assert fit.rank == 7 and math.isfinite(fit.condition) and fit.residual < 1e-10
    nobias = lstsq_weights(x, x.double() @ w, ridge=0.0, bias=False)
    assert nobias.bias is None and torch.allclose(nobias.weight, w, atol=1e-10)


def test_lstsq_matches_a_reference_ridge_solution() -> None:
    gen = _gen(1)
    x = torch.randn(50, 6, generator=gen, dtype=torch.float64) * torch.tensor([1, 2, 3, 4, 5, 6.0])
    y = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    ridge = 0.05
    fit = lstsq_weights(x, y, ridge=ridge)
    xc, yc = x - x.mean(0), y - y.mean(0)
    lam = ridge * float((xc * xc).sum()) / 6
    ref = torch.linalg.solve(xc.T @ xc + lam * torch.eye(6, dtype=torch.float64), xc.T @ yc)
    assert torch.allclose(fit.weight, ref, atol=1e-10)
    assert fit.ridge_used == pytest.approx(lam) and not fit.raised


def test_lstsq_reports_rank_deficiency_instead_of_nan() -> None:
    gen = _gen(2)
    base = torch.randn(40, 3, generator=gen)
    x = torch.cat([base, base[:, :1] * 2.0], dim=1)  # a duplicated direction: rank 3 of 4
    y = torch.randn(40, 2, generator=gen)
    with pytest.warns(RuntimeWarning, match="singular"):
        fit = lstsq_weights(x, y, ridge=0.0)
    assert fit.rank == 3 and fit.condition == math.inf and fit.raised and fit.ridge_used > 0
    assert torch.isfinite(fit.weight).all()
    ok = lstsq_weights(x, y, ridge=1e-3)
    assert ok.rank == 3 and not ok.raised and torch.isfinite(ok.weight).all()


def test_lstsq_constant_features() -> None:
    fit = lstsq_weights(torch.ones(5, 2), torch.arange(10.0).reshape(5, 2), ridge=1e-3)
    assert fit.rank == 0 and torch.equal(fit.weight, torch.zeros(2, 2, dtype=torch.float64))
    assert fit.bias is not None and fit.bias.tolist() == [4.0, 5.0]


def test_lstsq_validates() -> None:
    x, y = torch.randn(10, 4), torch.randn(10, 2)
    with pytest.raises(ValueError, match=r"at least 5 \(f \+ 1"):
        lstsq_weights(x[:4], y[:4], ridge=0.0)
    with pytest.raises(ValueError, match="at least 4"):
        lstsq_weights(x[:3], y[:3], ridge=0.0, bias=False)
    assert lstsq_weights(x[:3], y[:3], ridge=0.1).weight.shape == (4, 2)
    with pytest.raises(ValueError, match="same number of rows"):
        lstsq_weights(x, y[:9])
    with pytest.raises(ValueError, match="2-D"):
        lstsq_weights(x[:, :, None], y)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        lstsq_weights(bad, y)
    with pytest.raises(ValueError, match="ridge"):
        lstsq_weights(x, y, ridge=-1.0)
    with pytest.raises(TypeError, match="features"):
        lstsq_weights(x.numpy(), y)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bias"):
        lstsq_weights(x, y, bias=1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# refit_consumer


def _check_module(new: nn.Module, old: nn.Module) -> None:
    assert type(new) is type(old) and new is not old
    assert new.weight.shape == old.weight.shape and new.weight.dtype == old.weight.dtype
    assert (new.bias is None) == (old.bias is None)
    assert new.training == old.training
    assert new.weight.requires_grad == old.weight.requires_grad


def test_refit_linear_without_removal_reproduces_dense() -> None:
    torch.manual_seed(0)
    nxt = nn.Linear(20, 6)
    x = torch.randn(300, 20)
    new, fit = refit_consumer(nxt, x, nxt(x).detach(), ridge=0.0)
    _check_module(new, nxt)
    assert _rel(new(x), nxt(x)) < 1e-6 and fit.rank == 20


def test_refit_linear_beats_plain_slice_and_leaves_inputs() -> None:
    layer, nxt = make_pair(40, 6, 5, seed=1)
    x = torch.randn(500, 6, generator=_gen(3))
    h = F.relu(layer(x)).detach()
    dense = nxt(h).detach()
    keep = torch.arange(0, 40, 3)
    sliced = slice_consumer(nxt, 40, keep, torch.ones(keep.numel()))
    before = sliced.weight.detach().clone()
    inputs = h[:, keep]
    saved = inputs.clone()
    new, fit = refit_consumer(sliced, inputs, dense, ridge=0.0)
    _check_module(new, sliced)
    assert torch.equal(sliced.weight, before) and torch.equal(inputs, saved)
    plain = float((sliced(inputs) - dense).detach().norm())
    refit = float((new(inputs) - dense).detach().norm())
    assert refit <= plain * (1 + 1e-9) and refit < 0.9 * plain
    assert fit.residual == pytest.approx(refit / float((dense - dense.mean(0)).norm()), rel=1e-4)


def test_refit_keeps_flags_dtype_and_no_bias() -> None:
    torch.manual_seed(0)
    nxt = nn.Linear(8, 3, bias=False).double().train()
    nxt.weight.requires_grad_(False)
    x = torch.randn(50, 8, dtype=torch.float64)
    new, fit = refit_consumer(nxt, x, nxt(x).detach(), ridge=0.0)
    _check_module(new, nxt)
    assert fit.bias is None and torch.allclose(new.weight, nxt.weight, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": 1, "stride": 2},
        {"padding": 2, "dilation": 2, "padding_mode": "reflect"},
        {"padding": "same", "padding_mode": "circular", "bias": False},
        {"padding": 0, "stride": (2, 1)},
    ],
)
def test_refit_conv(kwargs: dict[str, object]) -> None:
    torch.manual_seed(0)
    producer = nn.Conv2d(3, 10, 3, padding=1)
    nxt = nn.Conv2d(10, 4, 3, **kwargs)  # type: ignore[arg-type]
    x = torch.randn(12, 3, 9, 9)
    h = F.relu(producer(x)).detach()
    dense = nxt(h).detach()
    full, _ = refit_consumer(nxt, h, dense, ridge=0.0)
    _check_module(full, nxt)
    assert _rel(full(h), dense) < 1e-6
    keep = torch.tensor([0, 2, 3, 5, 8])
    sliced = slice_consumer(nxt, 10, keep, torch.ones(5))
    new, _fit = refit_consumer(sliced, h[:, keep], dense, ridge=0.0)
    _check_module(new, sliced)
    plain = float((sliced(h[:, keep]) - dense).detach().norm())
    refit = float((new(h[:, keep]) - dense).detach().norm())
    assert refit <= plain * (1 + 1e-9) and refit < 0.95 * plain


def test_refit_conv_subsamples_rows_deterministically() -> None:
    torch.manual_seed(0)
    nxt = nn.Conv2d(4, 3, 3, padding=1)
    h = torch.randn(6, 4, 8, 8)
    dense = nxt(h).detach() + 0.1 * torch.randn(6, 3, 8, 8)
    a, fa = refit_consumer(nxt, h, dense, max_rows=100)
    b, _fb = refit_consumer(nxt, h, dense, max_rows=100)
    assert fa.rows == 100 and torch.equal(a.weight, b.weight)
    _, fc = refit_consumer(nxt, h, dense)
    assert fc.rows == 6 * 64


def test_refit_conv_bn_relu_flatten_linear() -> None:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    bn.eval()
    fc = nn.Linear(8 * 16, 5)
    x = torch.randn(400, 2, 4, 4)
    with torch.no_grad():
        dense = fc(F.relu(bn(conv(x))).flatten(1))
    keep = torch.tensor([1, 2, 4, 6, 7])
    from coreprune.surgery.slicing import slice_norm

    pconv, pbn = slice_producer(conv, keep), slice_norm(bn, keep)
    with torch.no_grad():
        inputs = F.relu(pbn(pconv(x))).flatten(1)
    sliced = slice_consumer(fc, 8, keep, torch.ones(5))
    new, _fit = refit_consumer(sliced, inputs, dense, ridge=0.0)
    _check_module(new, sliced)
    plain = float((sliced(inputs) - dense).detach().norm())
    refit = float((new(inputs) - dense).detach().norm())
    assert refit <= plain * (1 + 1e-9) and refit < 0.9 * plain
    with torch.no_grad():
        allin = F.relu(bn(conv(x))).flatten(1)
    same, _ = refit_consumer(fc, allin, dense, ridge=0.0)
    assert _rel(same(allin), dense) < 1e-6


def test_refit_validates() -> None:
    lin, conv = nn.Linear(4, 2), nn.Conv2d(4, 2, 3)
    with pytest.raises(TypeError, match="consumer"):
        refit_consumer(nn.ReLU(), torch.randn(5, 4), torch.randn(5, 2))
    with pytest.raises(ValueError, match="pruned_inputs must be N x 4"):
        refit_consumer(lin, torch.randn(5, 3), torch.randn(5, 2))
    with pytest.raises(ValueError, match="dense_outputs"):
        refit_consumer(lin, torch.randn(5, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match="spatial size"):
        refit_consumer(conv, torch.randn(2, 4, 6, 6), torch.randn(2, 2, 5, 5))
    with pytest.raises(ValueError, match="max_rows"):
        refit_consumer(lin, torch.randn(5, 4), torch.randn(5, 2), max_rows=0)
    with pytest.raises(ValueError, match="grouped"):
        refit_consumer(
            nn.Conv2d(4, 2, 1, groups=2), torch.randn(2, 4, 3, 3), torch.randn(2, 2, 3, 3)
        )


# --------------------------------------------------------------------------------------------
# rewired_eps


def test_rewired_eps_equals_selection_eps_without_rewiring() -> None:
    u = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    s = torch.tensor([[0.3, 0.2, 0.1]], dtype=torch.float64)
    keep = torch.tensor([0, 2])
    assert rewired_eps(u, expand_reading(u[:, keep], keep, 3), s) == pytest.approx(0.2)
    changed = torch.tensor([[1.5, 0.0, 0.5]], dtype=torch.float64)  # |0.5|/1 * 0.3 + 0.2
    assert rewired_eps(u, changed, s) == pytest.approx(0.35)
    zero_read = torch.tensor([[0.0, -2.0, 0.5]], dtype=torch.float64)
    assert rewired_eps(zero_read, changed, s) == math.inf
    with pytest.raises(ValueError, match="k x n"):
        rewired_eps(u, u[:, :2], s)


def test_bias_change() -> None:
    a, b = nn.Linear(3, 2), nn.Linear(5, 2)
    with torch.no_grad():
        b.bias.copy_(a.bias + torch.tensor([0.5, -1.0]))
    assert bias_change(a, b).tolist() == pytest.approx([0.5, 1.0])
    assert bias_change(nn.Linear(3, 2, bias=False), nn.Linear(3, 2, bias=False)).sum() == 0


def _worst_ratio(
    units: torch.Tensor, u: torch.Tensor, v: torch.Tensor, seed: int, steps: int = 150
) -> float:
    """max over x of max_j |sum_l (U - U')_jl relu(p_l . x~)| / e_j(x): random + gradient ascent."""
    d = units.shape[1] - 1
    gen = _gen(seed)
    starts = torch.cat(
        [torch.randn(2000, d, generator=gen, dtype=torch.float64) * s for s in (0.3, 1.0, 4.0)]
    )
    diff = u - v

    def ratio(z: torch.Tensor) -> torch.Tensor:
        pre = torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype)], 1) @ units.T
        num = (torch.relu(pre) @ diff.T).abs()
        env = (pre.abs() @ u.abs().T).clamp_min(1e-300)
        return (num / env).max(dim=1).values

    best = float(ratio(starts).max())
    z = starts[ratio(starts).topk(64).indices].clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        value = ratio(z)
        (-value.sum()).backward()
        opt.step()
        best = max(best, float(value.detach().max()))
    return max(best, float(ratio(z.detach()).max()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rewired_certificate_survives_adversarial_search(seed: int) -> None:
    layer, nxt = make_pair(60, 2, 3, seed=seed)
    result = coreset_prune(layer, nxt, mode="select", keep=40)
    units, u = result.units, result.reading
    s = result.sensitivities.per_next
    merged = merge_weights(units, u, result.keep, "relu")
    gen = _gen(10 + seed)
    noisy = expand_reading(
        u[:, result.keep] * (1 + 0.3 * torch.randn(3, 40, generator=gen, dtype=torch.float64)),
        result.keep,
        60,
    )
    for v in (merged.full_reading, noisy, expand_reading(u[:, result.keep], result.keep, 60)):
        eps = rewired_eps(u, v, s)
        assert math.isfinite(eps)
        worst = _worst_ratio(units, u, v, seed)
        assert worst <= eps * (1 + TOL)
        assert worst > 0
