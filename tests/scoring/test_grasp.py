"""GraSP against its definition: Hg by double backprop equals a finite difference of g, the score is
theta ⊙ Hg (= -S), and the unit forms are the documented first-order changes of g^T g / 2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coreprune import compress
from coreprune.scoring import UnitGates, prune_weights
from coreprune.scoring.grasp import GraSP, class_balanced_batch, hessian_gradient
from coreprune.surgery.graph import find_prunable_pairs

torch.set_num_threads(1)


def _tanh_net(bias: bool = True) -> nn.Sequential:
    """Smooth activations so the Hessian is well defined everywhere (finite differences)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, 5, bias=bias), nn.Tanh(), nn.Linear(5, 4, bias=bias), nn.Tanh(),
        nn.Linear(4, 3, bias=bias),
    ).double()  # fmt: skip


def _bn_net() -> nn.Sequential:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)
    ).double()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def _data(n: int = 12, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    return x, torch.arange(n) % classes


def _weights(net: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in net if isinstance(m, nn.Linear)]


def _grad(net: nn.Module, x: torch.Tensor, y: torch.Tensor, t: float) -> list[torch.Tensor]:
    loss = F.cross_entropy(net(x) / t, y)
    return list(torch.autograd.grad(loss, _weights(net)))


def _half_sq_norm(net: nn.Module, x: torch.Tensor, y: torch.Tensor, t: float) -> float:
    return 0.5 * sum(float((g**2).sum()) for g in _grad(net, x, y, t))


@pytest.mark.parametrize("chunk", [None, 5])
def test_hg_matches_finite_difference_of_the_gradient(chunk: int | None) -> None:
    net, (x, y), t, h = _tanh_net(), _data(), 2.0, 1e-5
    params = _weights(net)
    g, hg, _ = hessian_gradient(net, x, y, params, temperature=t, chunk=chunk)
    reference = _grad(net, x, y, t)
    for a, b in zip(g, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    grads = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, d in zip(params, g, strict=True):
                p.add_(sign * h * d)
        grads.append(_grad(net, x, y, t))
        with torch.no_grad():
            for p, d in zip(params, g, strict=True):
                p.sub_(sign * h * d)
    for exact, plus, minus in zip(hg, *grads, strict=True):
        torch.testing.assert_close(exact, (plus - minus) / (2 * h), rtol=1e-6, atol=1e-10)


def test_weight_scores_are_theta_times_hg_and_minus_the_papers_s() -> None:
    """Keep score theta ⊙ Hg; the paper's S = -theta ⊙ Hg is d/dt (||g||^2 / 2) along the removal
    direction -theta_i e_i, checked by finite differences for several weights."""
    x, y = _data()
    net = _tanh_net()
    scores = GraSP((x, y), samples_per_class=4, temperature=3.0).weight_scores(
        _tanh_net(), ["0", "2", "4"], None
    )
    _, hg, _ = hessian_gradient(net, x, y, _weights(net), temperature=3.0)
    for name, w, h in zip(["0", "2", "4"], _weights(net), hg, strict=True):
        torch.testing.assert_close(scores[name], (w.detach() * h).double())
    step = 1e-5
    weight = net[2].weight
    for index in [(0, 0), (1, 3), (3, 4)]:
        theta = float(weight[index].detach())
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                weight[index] = theta - sign * step * theta
            values.append(_half_sq_norm(net, x, y, 3.0))
        with torch.no_grad():
            weight[index] = theta
        s_paper = (values[0] - values[1]) / (2 * step)
        assert s_paper == pytest.approx(-float(scores["2"][index]), rel=1e-5, abs=1e-12)


def test_prune_weights_removes_the_largest_s() -> None:
    x, y = _data()
    grasp = GraSP((x, y), samples_per_class=4)
    scores = grasp.weight_scores(_tanh_net(), ["0", "2", "4"], None)
    result = prune_weights(_tanh_net(), grasp, 0.4, allow_collapse=True)
    s = torch.cat([-scores[n].flatten() for n in ("0", "2", "4")])  # the paper's S
    kept = torch.cat([result.masks[n].flatten() for n in ("0", "2", "4")])
    assert int((~kept).sum()) == round(0.4 * s.numel())
    assert float(s[~kept].min()) >= float(s[kept].max())


def test_unit_sum_form_is_the_row_sum_of_weight_scores_without_bias_or_norm() -> None:
    x, y = _data()
    grasp = GraSP((x, y), samples_per_class=4, unit_form="sum")
    weight = grasp.weight_scores(_tanh_net(bias=False), ["0", "2"], None)
    net = _tanh_net(bias=False)
    pairs, _ = find_prunable_pairs(net)
    units = grasp.unit_scores(net, UnitGates(net, pairs, dtype=torch.float64), None)
    assert [p.producer for p in pairs] == ["0", "2"]
    for name, score in zip(["0", "2"], units, strict=True):
        torch.testing.assert_close(score, weight[name].sum(1))


def test_unit_sum_form_counts_bias_and_batch_norm_parameters() -> None:
    """With a bias and batch norm the unit's score is sum over (filter, bias, gamma, beta) of
    theta * d(||g||^2/2)/dtheta, the g over Linear weights only: checked by finite differences."""
    x, y = _data()
    net = _bn_net()
    pairs, _ = find_prunable_pairs(net)
    grasp = GraSP((x, y), samples_per_class=4, unit_form="sum", temperature=2.0)
    units = grasp.unit_scores(net, UnitGates(net, pairs, dtype=torch.float64), None)
    step, unit = 1e-6, 2
    params = [net[0].weight[unit], net[0].bias[unit : unit + 1], net[1].weight[unit : unit + 1],
              net[1].bias[unit : unit + 1]]  # fmt: skip
    theta = [p.detach().clone() for p in params]
    values = []
    for sign in (1.0, -1.0):  # move the unit's parameters along -theta (towards removal)
        with torch.no_grad():
            for p, t in zip(params, theta, strict=True):
                p.copy_(t * (1 + sign * step))
        values.append(_half_sq_norm(net, x, y, 2.0))
    with torch.no_grad():
        for p, t in zip(params, theta, strict=True):
            p.copy_(t)
    assert float(units[0][unit]) == pytest.approx((values[0] - values[1]) / (2 * step), rel=1e-5)


def test_unit_gate_form_is_the_gate_derivative_of_half_squared_gradient_norm() -> None:
    x, y = _data()
    net = _bn_net()
    pairs, _ = find_prunable_pairs(net)
    gates = UnitGates(net, pairs, dtype=torch.float64)
    units = GraSP((x, y), samples_per_class=4, temperature=2.0).unit_scores(net, gates, None)
    step = 1e-6
    for index, unit in [(0, 1), (1, 3)]:
        values = []
        for sign in (1.0, -1.0):
            probe = UnitGates(net, pairs, dtype=torch.float64)
            probe.values[index][unit] = 1 + sign * step
            with probe:
                values.append(_half_sq_norm(net, x, y, 2.0))
        fd = (values[0] - values[1]) / (2 * step)
        assert float(units[index][unit]) == pytest.approx(fd, rel=1e-5, abs=1e-12)


def test_class_balanced_sample_takes_the_first_examples_of_each_class_in_order() -> None:
    x = torch.arange(20.0).unsqueeze(1)
    y = torch.tensor([0, 1, 1, 2, 0, 0, 1, 2, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    inputs, labels = class_balanced_batch(loader, 2, 3)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert inputs.flatten().tolist() == [0.0, 4.0, 1.0, 2.0, 3.0, 7.0]
    grasp = GraSP(loader, samples_per_class=2)  # num_classes from the model's last Linear
    sample = grasp.sample(nn.Sequential(nn.Linear(1, 3)))
    assert sample[1].tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="samples_per_class"):
        class_balanced_batch(loader, 7, 3)
    with pytest.raises(ValueError, match="num_classes"):  # label 2 arrives before class 0 is full
        class_balanced_batch(loader, 2, 2)


def test_compress_with_grasp_keeps_the_highest_gate_scores() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 6 * 6, 6), nn.ReLU(), nn.Linear(6, 3),
    )  # fmt: skip
    x, y = torch.randn(30, 1, 6, 6), torch.arange(30) % 3
    grasp = GraSP((x, y), samples_per_class=5)
    work = net.eval()
    pairs, _ = find_prunable_pairs(work)
    scores = grasp.unit_scores(work, UnitGates(work, pairs), None)
    result = compress(net, target=0.4, method=grasp, progress=False)
    for row, score in zip(result.report, scores, strict=True):
        assert row.keep is not None
        expected = torch.sort(torch.argsort(score, descending=True, stable=True)[: row.units_after])
        assert row.keep.tolist() == expected.values.tolist()


def test_bad_arguments_name_the_argument() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="needs labelled data"):
        GraSP()
    with pytest.raises(TypeError, match="data"):
        GraSP(5)
    with pytest.raises(ValueError, match="temperature"):
        GraSP((x, y), temperature=0.0)
    with pytest.raises(ValueError, match="unit_form"):
        GraSP((x, y), unit_form="mean")
    with pytest.raises(ValueError, match="samples_per_class"):
        GraSP((x, y), samples_per_class=0)
    with pytest.raises(TypeError, match="loss"):
        GraSP((x, y), loss=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integer class labels"):
        class_balanced_batch((x, x[:, 0]), 1, 3)
