"""Lubana & Dick's measures against hand-computed values, and the prune-early protocol."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coreprune import compress
from coreprune.methods.prune_early import early_schedule, loss_and_grad_norm, prune_early
from coreprune.scoring import UnitGates
from coreprune.scoring.gradflow import (
    GRADFLOW_MEASURES,
    GradFlow,
    GradNormIncrease,
    GradNormPreservation,
    LossPreservation,
    MagnitudeL2,
)
from coreprune.surgery.graph import PrunablePair, find_prunable_pairs

torch.set_num_threads(1)

# A 2-layer linear net o = W2 W1 x on one example, loss L = r^2 / 2 with r = o - y.
W1 = [[1.0, 2.0], [-1.0, 0.5]]
W2 = [0.5, -2.0]
X = [1.0, -1.0]
Y = 1.0


def _half_mse(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((outputs.squeeze(1) - labels) ** 2).mean()


def _linear_net() -> tuple[nn.Sequential, UnitGates, tuple[torch.Tensor, torch.Tensor]]:
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(W1))
        net[1].weight.copy_(torch.tensor([W2]))
    pair = PrunablePair("0", "1", None, "identity", False, (), ())
    data = (torch.tensor([X], dtype=torch.float64), torch.tensor([Y], dtype=torch.float64))
    return net, UnitGates(net, [pair], dtype=torch.float64), data


def _by_hand() -> dict[str, list[float]]:
    """g and Hg from the closed forms, with the Hessian written out as a 6x6 matrix.

    Parameters in the order W1[0,0], W1[0,1], W1[1,0], W1[1,1], W2[0], W2[1].
    J = do/dtheta: W2_i x_j for W1[i,j], h_i for W2[i] (h = W1 x). g = r J.
    H = J J^T + r B, B = d^2 o / dtheta^2: the only non-zero entries are
    d^2 o / (dW1[i,j] dW2[i]) = x_j.
    """
    h = [sum(W1[i][j] * X[j] for j in range(2)) for i in range(2)]
    r = sum(W2[i] * h[i] for i in range(2)) - Y
    jac = [W2[i] * X[j] for i in range(2) for j in range(2)] + h
    g = [r * v for v in jac]
    hess = [[jac[a] * jac[b] for b in range(6)] for a in range(6)]
    for i in range(2):
        for j in range(2):
            hess[2 * i + j][4 + i] += r * X[j]
            hess[4 + i][2 * i + j] += r * X[j]
    hg = [sum(hess[a][b] * g[b] for b in range(6)) for a in range(6)]
    theta = [W1[0][0], W1[0][1], W1[1][0], W1[1][1], *W2]
    return {"g": g, "hg": hg, "theta": theta}


def test_hand_formulas_agree_with_the_closed_form_scores() -> None:
    """Sanity of the hand computation itself: theta_f^T g = r W2_i h_i and
    theta_f^T Hg = r W2_i h_i ||J||^2 + r^2 h_i^2 for filter i (row i of W1)."""
    hand = _by_hand()
    h = [sum(W1[i][j] * X[j] for j in range(2)) for i in range(2)]
    r = sum(W2[i] * h[i] for i in range(2)) - Y
    jj = sum(v * v for v in (*[W2[i] * X[j] for i in range(2) for j in range(2)], *h))
    for i in range(2):
        row = range(2 * i, 2 * i + 2)
        tg = sum(hand["theta"][k] * hand["g"][k] for k in row)
        thg = sum(hand["theta"][k] * hand["hg"][k] for k in row)
        assert tg == pytest.approx(r * W2[i] * h[i])
        assert thg == pytest.approx(r * W2[i] * h[i] * jj + r * r * h[i] * h[i])


@pytest.mark.parametrize(
    ("cls", "kwargs", "unit", "weight"),
    [
        (LossPreservation, {}, lambda t, g, hg: abs(sum(a * b for a, b in zip(t, g, strict=True))),
         lambda t, g, hg: abs(t * g)),
        (LossPreservation, {"form": "abs_sum"},
         lambda t, g, hg: sum(abs(a * b) for a, b in zip(t, g, strict=True)),
         lambda t, g, hg: abs(t * g)),
        (GradNormIncrease, {}, lambda t, g, hg: sum(a * b for a, b in zip(t, hg, strict=True)),
         lambda t, g, hg: t * hg),
        (GradNormPreservation, {},
         lambda t, g, hg: abs(sum(a * b for a, b in zip(t, hg, strict=True))),
         lambda t, g, hg: abs(t * hg)),
        (MagnitudeL2, None, lambda t, g, hg: math.sqrt(sum(a * a for a in t)),
         lambda t, g, hg: abs(t)),
    ],
)  # fmt: skip
def test_scores_match_hand_computed_values(cls, kwargs, unit, weight) -> None:  # type: ignore[no-untyped-def]
    hand = _by_hand()
    net, gates, data = _linear_net()
    if kwargs is None:
        measure = cls()
    else:
        options = {
            "samples": None,
            "samples_per_class": None,
            "temperature": 1.0,
            "loss": _half_mse,
        }
        measure = cls(data, **options, **kwargs)
    scores = measure.unit_scores(net, gates, None)
    t, g, hg = hand["theta"], hand["g"], hand["hg"]
    expected = [
        unit(t[2 * i : 2 * i + 2], g[2 * i : 2 * i + 2], hg[2 * i : 2 * i + 2]) for i in range(2)
    ]
    assert scores[0].tolist() == pytest.approx(expected, rel=1e-12)
    per_weight = measure.weight_scores(net, ["0", "1"], None)
    got = per_weight["0"].flatten().tolist() + per_weight["1"].flatten().tolist()
    assert got == pytest.approx(
        [weight(a, b, c) for a, b, c in zip(t, g, hg, strict=True)], rel=1e-12
    )


def test_temperature_defaults_follow_the_papers_code() -> None:
    data = (torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    assert GradNormIncrease(data).temperature == 200.0  # GraSP's T
    assert GradNormPreservation(data).temperature == 1.0
    assert LossPreservation(data).temperature == 1.0
    assert set(GRADFLOW_MEASURES) == {
        "magnitude_l2", "loss_preservation", "gradnorm_increase", "gradnorm_preservation"
    }  # fmt: skip


def _conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
        nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 6 * 6, 8), nn.ReLU(),
        nn.Linear(8, 3),
    )  # fmt: skip


def _images(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    return torch.randn(n, 1, 6, 6, generator=gen), torch.arange(n) % 3


def test_loss_preservation_on_a_conv_net_uses_the_full_gradient_in_eval_mode() -> None:
    net, (x, y) = _conv_net(), _images()
    reference = _conv_net().eval()
    loss = F.cross_entropy(reference(x[:20]), y[:20])
    grad = torch.autograd.grad(loss, [reference[0].weight])[0]
    expected = (reference[0].weight * grad).flatten(1).sum(1).abs().double()
    measure = LossPreservation((x, y), samples=20)
    pairs, _ = find_prunable_pairs(net)
    scores = measure.unit_scores(net, UnitGates(net, pairs), None)
    torch.testing.assert_close(scores[0], expected.detach(), rtol=1e-5, atol=1e-8)
    result = compress(_conv_net(), target=0.3, method=measure, progress=False)
    assert result.report.params_removed >= 0.3


def test_early_schedule_matches_the_papers_rule_and_ends_at_the_target() -> None:
    p, n = 0.75, 5
    paper = early_schedule(p, n)
    assert paper == pytest.approx([k * p / (k * p + n * (1 - p)) for k in range(1, n + 1)])
    assert paper[-1] == p
    kept = 1.0
    for k, removed in enumerate(
        paper, start=1
    ):  # each round removes p / (k p + n (1 - p)) of the rest
        kept *= 1 - p / (k * p + n * (1 - p))
        assert 1 - kept == pytest.approx(removed)
    geometric = early_schedule(p, n, "geometric")
    assert geometric[-1] == p and all(a < b for a, b in itertools.pairwise(geometric))
    with pytest.raises(ValueError, match="target"):
        early_schedule(1.0, 3)
    with pytest.raises(ValueError, match="rounds"):
        early_schedule(0.5, 0)
    with pytest.raises(ValueError, match="schedule"):
        early_schedule(0.5, 3, "linear")


def _loader() -> DataLoader:
    x, y = _images(96)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)


def test_prune_early_follows_the_schedule_and_leaves_the_model_alone() -> None:
    net, loader = _conv_net(), _loader()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    probe = _images(24)
    result = prune_early(
        net, loader, "loss_preservation", 0.5, rounds=3, epochs_between=1, epochs_after=1,
        lr=0.05, probe=probe, val_loader=loader, seed=0,
        method_options={"samples": 64},
    )  # fmt: skip
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])
    assert len(result.rounds) == 3 and len(result.between) == 3
    assert result.final is not None and result.final.epochs == 1
    plan = early_schedule(0.5, 3)
    for record, scheduled in zip(result.rounds, plan, strict=True):
        assert record.scheduled == scheduled
        assert record.removed >= scheduled - 1e-12  # compress meets or exceeds each step
        assert record.epochs_trained == record.round
        assert record.probe_loss_before is not None and record.probe_grad_norm_after is not None
    assert result.removed >= 0.5
    params = sum(p.numel() for p in result.model.parameters())
    assert params == result.rounds[-1].params_after
    assert result.model(probe[0]).shape == (24, 3)


def test_prune_early_accepts_factories_and_pruners_and_rejects_bad_input() -> None:
    net, loader = _conv_net(), _loader()
    calls = []

    def factory(data: DataLoader) -> GradFlow:
        calls.append(data)
        return GradNormPreservation(data, samples_per_class=8)

    result = prune_early(net, loader, factory, 0.4, rounds=2, epochs_between=0, lr=0.05)
    assert len(calls) == 2 and calls[0] is loader and result.removed >= 0.4
    prune_early(net, loader, MagnitudeL2(), 0.4, rounds=1, epochs_between=0)
    with pytest.raises(TypeError, match="train_loader"):
        prune_early(net, [_images()], "magnitude_l2", 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target"):
        prune_early(net, loader, "magnitude_l2", 1.5)
    with pytest.raises(ValueError, match="epochs_between"):
        prune_early(net, loader, "magnitude_l2", 0.5, epochs_between=-1)
    with pytest.raises(ValueError, match="method_options"):
        prune_early(net, loader, MagnitudeL2(), 0.5, method_options={"samples": 3})
    with pytest.raises(ValueError, match="method must be one of"):
        prune_early(net, loader, "nonsense", 0.5)


def test_bad_arguments_name_the_argument() -> None:
    data = _images()
    with pytest.raises(TypeError, match="shared base"):
        GradFlow(data)
    with pytest.raises(ValueError, match="needs labelled data"):
        LossPreservation()
    with pytest.raises(ValueError, match="form"):
        LossPreservation(data, form="squared")
    with pytest.raises(ValueError, match="temperature"):
        GradNormIncrease(data, temperature=-1.0)
    with pytest.raises(ValueError, match="samples"):
        LossPreservation(data, samples=0)


def test_loss_and_grad_norm_by_hand_and_flags_untouched() -> None:
    """Cross-entropy and the gradient norm, computed in eval mode, against the formulas; the
    model's per-module train flags and requires_grad are as before (a frozen batch norm in a
    training model stays frozen), and no .grad is written."""
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.BatchNorm1d(2), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.5]]))
        net[2].bias.zero_()
    net.train()
    net[1].eval()
    net[2].bias.requires_grad_(False)
    x, y = torch.tensor([[1.0, 1.0]]), torch.tensor([0])
    loss, norm = loss_and_grad_norm(net, (x, y))
    # eval-mode BN with fresh statistics: y / sqrt(1 + 1e-5); logits W2 (W1 x) / sqrt(1 + eps)
    h = torch.tensor([1.0, 2.0]) / math.sqrt(1 + 1e-5)
    logits = torch.tensor([h[0] - h[1], 0.5 * (h[0] + h[1])])
    p = torch.softmax(logits, 0)
    assert loss == pytest.approx(float(-torch.log(p[0])), rel=1e-6)
    d_logits = p - torch.tensor([1.0, 0.0])  # dL/dlogits
    w2 = torch.tensor([[1.0, -1.0], [0.5, 0.5]])
    g_w2 = torch.outer(d_logits, h)
    g_out = w2.T @ d_logits  # dL/d(batch-norm output)
    g_w1 = torch.outer(g_out / math.sqrt(1 + 1e-5), x[0])
    g_bn = torch.cat([g_out * h, g_out])  # d/dgamma = g * y_hat (= h here), d/dbeta = g
    want = math.sqrt(sum(float((g**2).sum()) for g in (g_w1, g_w2, g_bn)))
    assert norm == pytest.approx(want, rel=1e-6)
    assert [m.training for m in net] == [True, False, True] and net.training
    assert [p.requires_grad for p in net.parameters()] == [True, True, True, True, False]
    assert all(p.grad is None for p in net.parameters())
