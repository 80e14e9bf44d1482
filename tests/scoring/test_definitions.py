"""Each baseline is checked against its paper's definition, not only for shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coreprune.harness.models import build_model
from coreprune.scoring import (
    SNIP,
    Magnitude,
    MaskResult,
    Random,
    SynFlow,
    UnitGates,
    prune_weights,
)
from coreprune.surgery.graph import find_prunable_pairs


def _mlp(bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8, bias=bias), nn.ReLU(), nn.Linear(8, 5, bias=bias), nn.ReLU(),
        nn.Linear(5, 3, bias=bias),
    )  # fmt: skip


def _batch(n: int = 12, d: int = 6, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, d, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def _bias_free_convnet() -> nn.Sequential:
    """Conv -> BN -> ReLU twice, then a linear head; no biases, BN without shift or mean."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU(),
        nn.Flatten(), nn.Linear(5 * 6 * 6, 3, bias=False),
    )  # fmt: skip
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.running_var.uniform_(0.5, 2.0)  # eval-mode BN: a positive per-channel scale
    return net


def _gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model = model.eval()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ---- SNIP


def test_snip_gate_derivative_is_g_times_w_normalised() -> None:
    model, (x, y) = _mlp(), _batch()
    names = ["0", "2", "4"]
    scores = SNIP((x, y), batch_size=12).weight_scores(_mlp(), names, None)
    grads = _gradients(model, x, y)
    expected = {
        n: (grads[f"{n}.weight"] * model.get_submodule(n).weight).detach().abs() for n in names
    }
    total = sum(float(e.sum()) for e in expected.values())
    for n in names:
        torch.testing.assert_close(scores[n], (expected[n] / total).double(), rtol=1e-5, atol=1e-9)
    assert math.isclose(sum(float(s.sum()) for s in scores.values()), 1.0, rel_tol=1e-9)


def test_snip_unit_forms_match_hand_computed_sums() -> None:
    model, (x, y) = _mlp(), _batch()
    pairs, _ = find_prunable_pairs(model)
    grads = _gradients(model, x, y)
    gate_expected, sum_expected = [], []
    for pair in pairs:
        w, b = model.get_submodule(pair.producer).weight, model.get_submodule(pair.producer).bias
        gw, gb = grads[f"{pair.producer}.weight"], grads[f"{pair.producer}.bias"]
        gate_expected.append(((w * gw).sum(1) + b * gb).abs().double().detach())  # |dL/dc_i|
        sum_expected.append(((w * gw).abs().sum(1) + (b * gb).abs()).double().detach())
    for form, expected in (("gate", gate_expected), ("sum", sum_expected)):
        work = _mlp()
        scores = SNIP((x, y), unit_form=form, batch_size=12).unit_scores(
            work, UnitGates(work, pairs), None
        )
        total = sum(float(e.sum()) for e in expected)
        for got, want in zip(scores, expected, strict=True):
            torch.testing.assert_close(got, want.detach() / total, rtol=1e-5, atol=1e-9)


def test_snip_takes_exactly_batch_size_examples_across_batches() -> None:
    x, y = _batch(12)
    loader = [(x[:5], y[:5]), (x[5:10], y[5:10]), (x[10:], y[10:])]
    snip = SNIP(loader, batch_size=7)
    assert torch.equal(snip.inputs, x[:7]) and torch.equal(snip.labels, y[:7])
    with pytest.raises(ValueError, match="only 12 examples"):
        SNIP(loader, batch_size=20)
    with pytest.raises(ValueError, match="no examples"):
        SNIP([], batch_size=4)
    with pytest.raises(ValueError, match="needs labelled data"):
        SNIP()


# ---- SynFlow


def test_synflow_conservation_on_a_bias_free_network_with_eval_batch_norm() -> None:
    net = _bias_free_convnet()
    synflow = SynFlow(input_shape=(2, 6, 6))
    names = ["0", "3", "7"]
    scores = synflow.weight_scores(net, names, None)
    r = float(synflow.flow(synflow.linearised(net), None).detach())
    for name in names:  # every layer carries the whole flow R
        assert math.isclose(float(scores[name].sum()), r, rel_tol=1e-10)
    pairs, _ = find_prunable_pairs(net)
    units = synflow.unit_scores(net, UnitGates(net, pairs), None)
    for pair, unit in zip(pairs, units, strict=True):
        incoming = scores[pair.producer].flatten(1).sum(1)
        outgoing = scores[pair.consumer].transpose(0, 1).reshape(unit.numel(), -1).sum(1)
        torch.testing.assert_close(unit, incoming, rtol=1e-10, atol=0.0)  # gate score = in-flow
        torch.testing.assert_close(unit, outgoing, rtol=1e-10, atol=0.0)  # = out-flow


def test_synflow_restores_nothing_in_the_caller_and_scores_zero_for_masked_weights() -> None:
    net = _bias_free_convnet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = prune_weights(net, SynFlow(rounds=5, input_shape=(2, 6, 6)), 0.6)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert result.achieved == round(0.6 * result_total(result)) / result_total(result)


def result_total(result: MaskResult) -> int:
    return sum(m.numel() for m in result.masks.values())


def test_synflow_float64_is_finite_on_a_deep_resnet_where_float32_overflows() -> None:
    model = build_model("resnet110")
    names = ["conv1", "fc"]
    with pytest.raises(FloatingPointError, match="overflowed"):
        SynFlow(dtype=torch.float32, input_shape=(3, 32, 32)).weight_scores(model, names, None)
    scores = SynFlow(input_shape=(3, 32, 32)).weight_scores(model, names, None)
    assert all(torch.isfinite(s).all() and s.sum() > 0 for s in scores.values())


def test_synflow_needs_an_input_shape() -> None:
    with pytest.raises(ValueError, match="input shape"):
        SynFlow().weight_scores(_mlp(), ["0"], None)
    with pytest.raises(ValueError, match="rounds"):
        SynFlow(rounds=0)


# ---- magnitude and random


def test_magnitude_keeps_exactly_the_k_largest() -> None:
    model = _mlp()
    for scope in ("layer", "global"):
        result = prune_weights(model, "magnitude", 0.4, scope=scope)
        weights = {n: model.get_submodule(n).weight.detach().abs() for n in result.masks}
        if scope == "layer":
            for n, mask in result.masks.items():
                assert int((~mask).sum()) == round(0.4 * mask.numel())
                assert weights[n][mask].min() >= weights[n][~mask].max()
        else:
            kept = torch.cat([weights[n][m] for n, m in result.masks.items()])
            dropped = torch.cat([weights[n][~m] for n, m in result.masks.items()])
            assert dropped.numel() == round(0.4 * (kept.numel() + dropped.numel()))
            assert kept.min() >= dropped.max()


def test_ties_break_deterministically_to_the_lower_index() -> None:
    model = nn.Sequential(nn.Linear(4, 5))
    with torch.no_grad():
        model[0].weight.fill_(0.5)
    a = prune_weights(model, "magnitude", 0.5).masks["0"]
    b = prune_weights(model, "magnitude", 0.5).masks["0"]
    assert torch.equal(a, b)
    # the layer's protected best weight is the first of the tied maxima; then the lowest
    # indices go first
    flat = a.flatten()
    assert flat[0] and not flat[1:11].any() and flat[11:].all()


def test_magnitude_scores_worked_by_hand() -> None:
    """|w| per weight; per unit the L1 (p=1) or L2 (p=2) norm of the unit's filter alone
    (Li et al.): the bias, however large, is not part of it."""
    net = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1))
    with torch.no_grad():
        net[0].weight.copy_(
            torch.tensor([[[[1.0, -2.0], [0.0, 3.0]]], [[[-1.0, 1.0], [1.0, -1.0]]]])
        )
        net[0].bias.fill_(100.0)
    pairs, _ = find_prunable_pairs(net)
    assert [(p.producer, p.consumer) for p in pairs] == [("0", "3")]
    weight = Magnitude().weight_scores(net, ["0"], None)["0"]
    want_weight = torch.tensor([[[[1.0, 2.0], [0.0, 3.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    torch.testing.assert_close(weight, want_weight, rtol=0, atol=0)
    (l1,) = Magnitude(1).unit_scores(net, UnitGates(net, pairs), None)
    (l2,) = Magnitude(2).unit_scores(net, UnitGates(net, pairs), None)
    # filter 0: |1| + |-2| + |0| + |3| = 6, sqrt(1 + 4 + 0 + 9) = sqrt(14); filter 1: 4 and 2
    torch.testing.assert_close(l1, torch.tensor([6.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(l2, torch.tensor([math.sqrt(14.0), 2.0], dtype=torch.float64))


@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.9, 0.999])
@pytest.mark.parametrize("method", ["magnitude", "random", "synflow"])
def test_masks_reach_the_exact_sparsity(method: str, sparsity: float) -> None:
    model = build_model("lenet5")
    x = torch.randn(2, 1, 28, 28)
    result = prune_weights(model, method, sparsity, example_input=x)
    total = result_total(result)
    assert result.achieved == round(sparsity * total) / total
    assert not result.collapsed and all(m.any() for m in result.masks.values())
    per_layer = prune_weights(model, method, sparsity, scope="layer", example_input=x)
    for mask in per_layer.masks.values():
        assert int((~mask).sum()) == min(round(sparsity * mask.numel()), mask.numel() - 1)


def test_masks_follow_torch_prune_conventions_and_match_a_weight_multiply() -> None:
    model, (x, _) = _mlp(), _batch()
    result = prune_weights(model, Random(3), 0.5)
    masked = result.model
    assert hasattr(masked[0], "weight_orig") and hasattr(masked[0], "weight_mask")
    reference = _mlp()
    with torch.no_grad():
        for n, mask in result.masks.items():
            reference.get_submodule(n).weight.mul_(mask)
    torch.testing.assert_close(masked(x), reference(x))
    torch.nn.utils.prune.remove(masked[0], "weight")
    assert int((masked[0].weight == 0).sum()) >= int((~result.masks["0"]).sum())


def test_layer_collapse_is_prevented_unless_asked_and_then_reported() -> None:
    model = _mlp()
    with torch.no_grad():
        model[2].weight.mul_(1e-6)  # the middle layer would go first under global magnitude
    safe = prune_weights(model, "magnitude", 0.9)
    assert not safe.collapsed and bool(safe.masks["2"].any())
    broken = prune_weights(model, "magnitude", 0.9, allow_collapse=True)
    assert broken.collapsed == ("2",)
    assert "LAYER COLLAPSE" in str(broken)


def test_random_is_seeded() -> None:
    model = _mlp()
    a = prune_weights(model, Random(1), 0.5).masks
    b = prune_weights(model, Random(1), 0.5).masks
    c = prune_weights(model, Random(2), 0.5).masks
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_bad_input_is_refused() -> None:
    model = _mlp()
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"sparsity must lie in \[0, 1\)"):
            prune_weights(model, "magnitude", bad)
    with pytest.raises(ValueError, match="sparsity must be a number, got NaN"):
        prune_weights(model, "magnitude", float("nan"))
    with pytest.raises(TypeError, match="sparsity must be a real number"):
        prune_weights(model, "magnitude", "0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs labelled data"):
        prune_weights(model, "snip", 0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        prune_weights(model, "grasp-ish", 0.5)
    with pytest.raises(ValueError, match=r"no nn\.Linear or nn\.Conv2d"):
        prune_weights(nn.Sequential(nn.ReLU()), "magnitude", 0.5)
    with pytest.raises(ValueError, match="scope"):
        prune_weights(model, "magnitude", 0.5, scope="net")
    with pytest.raises(ValueError, match="layers"):
        prune_weights(model, "magnitude", 0.5, layers=["nope"])
    with pytest.raises(ValueError, match="p must be 1"):
        Magnitude(3)
    with pytest.raises(TypeError, match=r"input_shape\[1\] must be an int"):
        SynFlow(input_shape=(3, 2.5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"input_shape\[0\] must be >= 1"):
        SynFlow(input_shape=(0, 4))
    with pytest.raises(TypeError, match=r"seed \(or a torch\.Generator\) must be an int"):
        Random(True)
