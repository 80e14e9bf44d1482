"""Unit-level baselines through `compress`: same budgets, same surgery, physically smaller."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from coreprune import compress
from coreprune.harness.models import build_model
from coreprune.scoring import SNIP, Magnitude, Random, SynFlow, UnitGates
from coreprune.surgery.graph import find_prunable_pairs


def _methods(x: torch.Tensor, y: torch.Tensor) -> list[object]:
    return [Magnitude(), Magnitude(2), Random(0), SNIP((x, y), batch_size=8),
            SNIP((x, y), batch_size=8, unit_form="sum"), SynFlow(rounds=10)]  # fmt: skip


@pytest.fixture(scope="module")
def setting() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=4)
    gen = torch.Generator().manual_seed(0)
    return model, torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 4, (8,), generator=gen)


@pytest.mark.parametrize("metric", ["params", "macs"])
def test_uniform_allocation_gives_every_method_the_coreset_architecture(
    setting: tuple[torch.nn.Module, torch.Tensor, torch.Tensor], metric: str
) -> None:
    model, x, y = setting
    reference = compress(model, target=0.6, metric=metric, example_input=x[:2], progress=False)
    counts = [r.units_after for r in reference.report]
    for method in _methods(x, y):
        result = compress(model, target=0.6, method=method, metric=metric, example_input=x[:2],
                          progress=False)  # fmt: skip
        assert [r.units_after for r in result.report] == counts, method
        assert result.report.params_after == reference.report.params_after
        assert result.report.macs_after == reference.report.macs_after
        assert result.report.target_reached


def test_global_allocation_meets_the_target_and_keeps_every_layer(
    setting: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = setting
    for method in _methods(x, y):
        result = compress(model, target=0.7, method=method, allocation="global",
                          example_input=x[:2], progress=False)  # fmt: skip
        assert result.report.achieved is not None and result.report.achieved >= 0.7
        assert all(r.units_after >= 1 for r in result.report)
        assert result.model(x).shape == (8, 4)


def test_the_pruned_model_equals_the_dense_model_with_the_same_units_gated_off(
    setting: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = setting
    result = compress(
        model, target=0.5, method=SNIP((x, y), batch_size=8), groups=False, progress=False
    )
    from coreprune.surgery.graph import find_prunable_pairs

    pairs, _ = find_prunable_pairs(model)
    masks = []
    for _pair, row in zip(pairs, result.report, strict=True):
        mask = torch.zeros(row.units_before)
        mask[row.keep] = 1.0
        masks.append(mask)
    model.eval()
    with UnitGates(model, pairs, masks=masks), torch.no_grad():
        gated = model(x)
    with torch.no_grad():
        pruned = result.model.eval()(x)
    torch.testing.assert_close(pruned, gated, rtol=1e-4, atol=1e-5)


def test_baselines_leave_the_model_untouched_and_are_deterministic(
    setting: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, _y = setting
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = model.training
    runs = [compress(model, target=0.5, method=SynFlow(rounds=5), example_input=x[:1],
                     progress=False) for _ in range(2)]  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training == flags
    assert all(
        torch.equal(a.keep, b.keep) for a, b in zip(runs[0].report, runs[1].report, strict=True)
    )


def test_snip_by_name_needs_data(
    setting: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, _x, _ = setting
    with pytest.raises(ValueError, match=r"SNIP\(loader\)"):
        compress(model, target=0.5, method="snip", progress=False)
    with pytest.raises(ValueError, match="input shape"):
        compress(model, target=0.5, method="synflow", progress=False)


def test_gates_multiply_a_linear_producers_last_dim_on_token_inputs() -> None:
    """A Linear applied to (batch, tokens, features): its units are the last dim."""
    torch.manual_seed(0)
    ffn = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 6))
    x = torch.randn(2, 5, 6)
    pairs, _ = find_prunable_pairs(ffn)
    mask = torch.ones(10)
    mask[3] = 0.0
    gates = UnitGates(ffn, pairs, masks=[mask])
    with gates, torch.no_grad():
        gated = ffn(x)
    with torch.no_grad():
        hidden = torch.relu(ffn[0](x))
        hidden[..., 3] = 0.0
        expected = ffn[2](hidden)
    torch.testing.assert_close(gated, expected)
