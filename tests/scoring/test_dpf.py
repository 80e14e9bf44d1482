"""DPF: the cubic schedule, feedback that brings pruned weights and units back, exact final
sparsity, and a structured result that equals the masked network it was trained as."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coreprune import compress
from coreprune.compress import count_macs, count_params
from coreprune.methods.dpf import cubic_sparsity, dpf_train

torch.set_num_threads(1)


def _mse(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs.squeeze(1), labels)


def test_cubic_schedule_is_monotone_and_ends_exactly_at_the_target() -> None:
    start, end, s_i, s_f = 10, 410, 0.1, 0.9
    values = [cubic_sparsity(t, final=s_f, initial=s_i, start=start, end=end) for t in range(500)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert values[0] == values[start] == s_i
    assert values[end] == s_f and values[-1] == s_f
    assert values[end - 1] < s_f
    t = 110  # a quarter of the ramp: s_f + (s_i - s_f) (3/4)^3
    assert values[t] == pytest.approx(s_f + (s_i - s_f) * 0.75**3)
    with pytest.raises(ValueError, match="end"):
        cubic_sparsity(0, final=0.5, start=5, end=5)
    with pytest.raises(ValueError, match="initial"):
        cubic_sparsity(0, final=0.5, initial=0.6, end=5)
    with pytest.raises(ValueError, match="final"):
        cubic_sparsity(0, final=1.0, end=5)


def _regression(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=gen)
    return x, 3 * x[:, 1]


def test_a_pruned_weight_comes_back_when_the_pruned_models_gradient_grows_it() -> None:
    """y = 3 x_2, but w_2 = 0.9 starts below w_1 = 1 and is masked at 50% sparsity. On the pruned
    model the gradient for w_2 is -6 E[x_2^2] < 0, applied to the dense w_2 it grows past w_1,
    and the next mask update brings it back (w_1, useless, is masked instead)."""
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.9]]))
    x, y = _regression()
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    result = dpf_train(
        layer, batches, target=0.5, initial_sparsity=0.5, epochs=6, lr=0.05, update_every=4,
        momentum=0.0, weight_decay=0.0, schedule="constant", loss=_mse, device="cpu",
    )  # fmt: skip
    first, second = result.history.updates[:2]
    assert first.step == 0 and first.masked == 1 and first.reactivated == 0
    assert second.step == 4 and second.reactivated == 1 and second.newly_masked == 1
    assert result.masks[""].tolist() == [[False, True]]
    assert float(result.model.weight_orig[0, 1].detach()) == pytest.approx(3.0, abs=0.05)
    assert float(result.model.weight[0, 0].detach()) == 0.0  # the masked copy computes m ⊙ w
    assert torch.equal(layer.weight, torch.tensor([[1.0, 0.9]]))  # the caller's model is untouched


def test_without_feedback_the_same_weight_would_stay_pruned() -> None:
    """Control: masking the gradient as well (no feedback), w_2 never moves: it could only come
    back if w_1 happened to shrink below 0.9, never because the loss needs it."""
    w = torch.tensor([1.0, 0.9])
    x, y = _regression()
    mask = torch.tensor([True, False])
    for i in range(0, 64, 16):
        xb, yb = x[i : i + 16], y[i : i + 16]
        grad = -2 * ((yb - xb @ (w * mask)).unsqueeze(1) * xb).mean(0)
        w = w - 0.05 * grad * mask
    assert bool(w[1] == torch.tensor(0.9))


def _classification(n: int = 96) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 6, 6, generator=gen)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 0).long()
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def _conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 10), nn.ReLU(),
        nn.Linear(10, 3),
    )  # fmt: skip


def test_unstructured_dpf_hits_the_target_exactly_with_global_magnitude() -> None:
    net, batches = _conv_net(), _classification()
    result = dpf_train(net, batches, target=0.8, epochs=2, lr=0.05, device="cpu", seed=0)
    total = sum(m.numel() for m in result.masks.values())
    assert result.achieved == round(0.8 * total) / total
    assert result.history.updates[-1].step == 2 * len(batches)
    assert result.history.updates[-1].sparsity == 0.8
    sparsities = [u.sparsity for u in result.history.updates]
    assert sparsities[0] == 0.0 and all(a <= b for a, b in itertools.pairwise(sparsities))
    kept = torch.cat([
        result.model.get_submodule(n).weight_orig.detach().abs()[m].flatten()
        for n, m in result.masks.items()
    ])  # fmt: skip
    dropped = torch.cat([
        result.model.get_submodule(n).weight_orig.detach().abs()[~m].flatten()
        for n, m in result.masks.items()
    ])  # fmt: skip
    assert float(dropped.max()) <= float(kept.min())  # one global magnitude threshold
    for name, mask in result.masks.items():
        module = result.model.get_submodule(name)
        assert torch.equal(module.weight, module.weight_orig * mask)


def test_structured_dpf_revives_a_unit_and_returns_the_masked_network_physically_pruned() -> None:
    """Unit 1 (filter norm 0.5 < 1) is masked first although it is the useful one; its filter gets
    the pruned model's gradient through the straight-through mask, grows, and comes back. The
    result is the compress-pruned model, equal to the masked network it was trained as."""
    net = nn.Sequential(nn.Linear(1, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [0.5]]))
        net[2].weight.copy_(torch.tensor([[-0.1, 1.0]]))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, generator=gen) + 0.5
    batches = [(x[i : i + 16], 3 * x[i : i + 16, 0]) for i in range(0, 64, 16)]
    result = dpf_train(
        net, batches, target=0.5, initial_sparsity=0.5, epochs=4, lr=0.05, structured=True,
        update_every=4, momentum=0.0, weight_decay=0.0, schedule="constant", loss=_mse,
        device="cpu", val_loader=batches,
    )  # fmt: skip
    updates = result.history.updates
    assert updates[0].masked == 1 and updates[1].reactivated == 1
    assert result.masks["0"].tolist() == [False, True]
    assert result.model[0].weight.shape == (1, 1) and result.model[2].weight.shape == (1, 1)
    assert updates[-1].reactivated == 0 and updates[-1].newly_masked == 0
    with torch.no_grad():
        pruned_loss = sum(float(_mse(result.model(xb), yb)) * len(yb) for xb, yb in batches) / 64
    assert pruned_loss == pytest.approx(result.history.val_loss[-1], rel=1e-6, abs=1e-12)


def test_structured_dpf_uses_compress_budget_and_keeps_its_final_mask() -> None:
    net, batches = _conv_net(), _classification()
    example = batches[0][0][:1]
    result = dpf_train(
        net, batches, target=0.5, epochs=2, lr=0.05, structured=True, update_every=3,
        device="cpu", seed=0, example_input=example,
    )  # fmt: skip
    plan = compress(net, target=0.5, method="magnitude", example_input=example, progress=False)
    report = result.report
    assert report is not None and report.method == "dpf"
    assert [r.units_after for r in report] == [r.units_after for r in plan.report]
    assert result.achieved == pytest.approx(plan.report.params_removed)
    for row in report:
        assert row.keep is not None
        assert row.keep.tolist() == torch.nonzero(result.masks[row.producer]).flatten().tolist()
    # the totals are those of the returned model
    assert report.params_after == count_params(result.model)
    assert report.macs_after == count_macs(result.model, example)
    assert report.macs_before == count_macs(net, example) and report.target_reached
    assert report.params_removed == pytest.approx(
        1 - count_params(result.model) / count_params(net)
    )


def test_bad_arguments_name_the_argument() -> None:
    net, batches = _conv_net(), _classification()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match="target"):
        dpf_train(net, batches, target=1.0, epochs=1)
    with pytest.raises(ValueError, match="structured DPF needs target"):
        dpf_train(net, batches, target=0.0, epochs=1, structured=True)
    with pytest.raises(ValueError, match="update_every"):
        dpf_train(net, batches, target=0.5, epochs=1, update_every=0)
    with pytest.raises(ValueError, match="ramp"):
        dpf_train(net, batches, target=0.5, epochs=1, ramp=(0.5, 0.5))
    with pytest.raises(ValueError, match="initial_sparsity"):
        dpf_train(net, batches, target=0.5, epochs=1, initial_sparsity=0.6)
    with pytest.raises(TypeError, match="train_loader"):
        dpf_train(net, iter(batches), target=0.5, epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        dpf_train(net, batches, target=0.5, epochs=0)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize("structured", [False, True])
def test_result_keeps_the_models_train_flags_and_requires_grad(structured: bool) -> None:
    net, batches = _conv_net(), _classification(32)
    net.train()
    net[1].eval()  # a frozen batch norm inside a training model
    net[0].bias.requires_grad_(False)
    result = dpf_train(
        net, batches, target=0.3, epochs=1, lr=0.01, structured=structured, update_every=1,
        device="cpu", seed=0,
    )  # fmt: skip
    assert [m.training for m in result.model] == [m.training for m in net]
    assert result.model[0].bias.requires_grad is False
    assert net[0].bias.requires_grad is False and not net[1].training  # the input is untouched
