"""Coupled channel groups: discovery, surgery, cost model and `compress` on the patterns real
models are made of (plain-PyTorch replicas in `patterns.py`) and on the library's ResNet-20."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from coreprune.compress import (
    CostModel,
    GroupCut,
    compress,
    count_macs,
    count_params,
    cut_groups,
)
from coreprune.harness.models import build_model
from coreprune.scoring import make_scorer
from coreprune.scoring.gates import UnitGates, group_gate_pairs, reduce_group_scores
from coreprune.surgery.groups import ChannelGroup, find_channel_groups
from coreprune.surgery.registry import layer_kind

from . import patterns as P

torch.set_num_threads(1)

BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "inverted_residual": P.InvertedResidual,
    "squeeze_excite": P.SqueezeExcite,
    "fused_norm_act": P.FusedNormAct,
    "functional_norm": P.FunctionalNorm,
    "dense_block": P.DenseBlock,
    "grouped_conv": P.GroupedConv,
    "resnet_stages": P.ResNetStages,
    "resnet20": lambda: build_model("resnet20"),
}
STREAMS = ("inverted_residual", "resnet_stages", "resnet20")  # models with a residual stream


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return P.randomise_norms(BUILDERS[name]())


def _input(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _random_keep(group: ChannelGroup, divisor: int, gen: torch.Generator) -> torch.Tensor:
    """A random 1/divisor of the channels (at least one), the same count in every block."""
    size = group.width // group.blocks
    count = max(1, size // divisor)
    picks = [b * size + torch.randperm(size, generator=gen)[:count] for b in range(group.blocks)]
    return torch.cat(picks)


def _by_producers(groups: list[ChannelGroup]) -> dict[tuple[str, ...], ChannelGroup]:
    return {g.producers: g for g in groups}


# --------------------------------------------------------------------------------------------
# Discovery


def test_residual_stream_is_one_group_with_identity_and_projection_shortcuts() -> None:
    groups, _ = find_channel_groups(_model("resnet_stages"))
    found = _by_producers(groups)
    stage1 = found[("conv", "stage1.0.conv2", "stage1.1.conv2")]
    assert not stage1.simple and "residual add" in stage1.joins
    assert [c.name for c in stage1.consumers] == [
        "stage1.0.conv1", "stage1.1.conv1", "stage2.0.conv1", "stage2.0.shortcut.0",
    ]  # fmt: skip
    assert stage1.producer_norms == ("bn", "stage1.0.bn2", "stage1.1.bn2")
    stage2 = found[("stage2.0.conv2", "stage2.0.shortcut.0", "stage2.1.conv2")]
    assert {c.name for c in stage2.consumers} == {"stage2.1.conv1", "fc"}
    inner = found[("stage1.0.conv1",)]
    assert inner.simple and inner.pair is not None and inner.pair.consumer == "stage1.0.conv2"


def test_depthwise_conv_joins_the_expanded_space() -> None:
    groups, _ = find_channel_groups(_model("inverted_residual"))
    found = _by_producers(groups)
    hidden = found[("expand",)]
    kinds = {(m.name, m.kind) for m in hidden.channelwise}
    assert ("dw", "depthwise") in kinds and ("bn2", "norm") in kinds
    assert [c.name for c in hidden.consumers] == ["project"]
    stream = found[("stem", "project")]
    assert "residual add" in stream.joins


def test_squeeze_excitation_gate_is_a_gate_member() -> None:
    groups, _ = find_channel_groups(_model("squeeze_excite"))
    found = _by_producers(groups)
    main = found[("conv",)]
    assert main.gates == ("fc2",)
    assert {c.name for c in main.consumers} == {"fc1", "conv2"}
    assert found[("fc1",)].simple


def test_fused_norm_activation_module_is_a_norm_member() -> None:
    groups, _ = find_channel_groups(_model("fused_norm_act"))
    first = _by_producers(groups)[("conv1",)]
    assert [(m.name, m.kind) for m in first.channelwise] == [("bn1", "norm")]
    assert [c.name for c in first.consumers] == ["conv2"]


def test_functional_batch_norm_tensors_are_members() -> None:
    groups, _ = find_channel_groups(_model("functional_norm"))
    stream = _by_producers(groups)[("conv1", "conv2")]
    tensors = [m for m in stream.channelwise if m.kind == "tensors"]
    assert {m.name for m in tensors} == {"norm1", "norm2"}
    assert set(tensors[0].attrs) == {"running_mean", "running_var", "weight", "bias"}
    assert "residual add" in stream.joins


def test_concatenation_keeps_each_input_space_with_offsets() -> None:
    groups, _ = find_channel_groups(_model("dense_block"))
    found = _by_producers(groups)
    stem, layer1 = found[("stem",)], found[("layer1",)]
    assert {(c.name, c.offset, c.total) for c in stem.consumers} == {
        ("layer1", 0, 8), ("layer2", 0, 14), ("transition", 0, 20),
    }  # fmt: skip
    assert {(c.name, c.offset, c.total) for c in layer1.consumers} == {
        ("layer2", 8, 14), ("transition", 8, 20),
    }  # fmt: skip
    assert {(m.name, m.offset) for m in layer1.channelwise} == {("bn1", 8), ("bn2", 8)}


def test_grouped_conv_ties_its_spaces_in_per_group_blocks() -> None:
    groups, _ = find_channel_groups(_model("grouped_conv"))
    found = _by_producers(groups)
    before, after = found[("conv1",)], found[("grouped",)]
    assert before.blocks == after.blocks == 4 and not before.simple and not after.simple
    assert [c.name for c in before.consumers] == ["grouped"]
    model = _model("grouped_conv")
    with pytest.raises(ValueError, match="same number of channels in each of its 4 blocks"):
        cut_groups(model, [before], [GroupCut(torch.arange(8))])  # blocks 0 and 1 only


# --------------------------------------------------------------------------------------------
# Surgery: masked dense model == physically smaller model


def _masked_forward(
    model: nn.Module, groups: list[ChannelGroup], keeps: list[torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """The dense model with the removed channels zeroed where every consumer reads them."""
    masks: dict[str, torch.Tensor] = {}
    for group, keep in zip(groups, keeps, strict=True):
        removed = torch.ones(group.width, dtype=torch.bool)
        removed[keep] = False
        for consumer in group.consumers:
            mask = masks.setdefault(consumer.name, torch.ones(consumer.total * consumer.block))
            for r in torch.nonzero(removed).flatten().tolist():
                lo = (consumer.offset + r) * consumer.block
                mask[lo : lo + consumer.block] = 0
    modules = dict(model.named_modules())
    handles = []
    for name, mask in masks.items():

        def zero(_m: nn.Module, args: Any, mask: torch.Tensor = mask) -> tuple[torch.Tensor]:
            x = args[0]
            return (x * mask.view((1, -1) + (1,) * (x.ndim - 2)),)

        handles.append(modules[name].register_forward_pre_hook(zero))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", list(BUILDERS))
def test_cut_groups_matches_masking_and_keeps_shapes(name: str) -> None:
    model = _model(name)
    groups, _ = find_channel_groups(model)
    gen = torch.Generator().manual_seed(2)
    keeps = [_random_keep(g, 2, gen) for g in groups]
    small = copy.deepcopy(model)
    cut_groups(small, groups, [GroupCut(k) for k in keeps])
    x = _input()
    with torch.no_grad():
        out = small(x)
    masked = _masked_forward(model, groups, [k.sort().values for k in keeps], x)
    assert out.shape == masked.shape == (4, 10)
    torch.testing.assert_close(out, masked, rtol=1e-5, atol=1e-5)
    assert count_params(small) < count_params(model)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_cut_groups_keeping_everything_is_the_dense_model(name: str) -> None:
    model = _model(name)
    groups, _ = find_channel_groups(model)
    same = copy.deepcopy(model)
    cut_groups(same, groups, [GroupCut(torch.arange(g.width)) for g in groups])
    x = _input()
    with torch.no_grad():
        assert torch.equal(same(x), model(x))


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("metric", ["params", "macs"])
def test_cost_model_is_exact_on_group_members(name: str, metric: str) -> None:
    model = _model(name)
    groups, _ = find_channel_groups(model)
    x = _input(1)
    cost = CostModel.build_groups(model, groups, metric, x)
    gen = torch.Generator().manual_seed(3)
    keeps = [_random_keep(g, 3, gen) for g in groups]
    small = copy.deepcopy(model)
    cut_groups(small, groups, [GroupCut(k) for k in keeps])
    count = (lambda m: count_params(m)) if metric == "params" else (lambda m: count_macs(m, x))
    assert cost.cost(None) == count(model)
    assert cost.cost([int(k.numel()) for k in keeps]) == count(small)


def test_cut_groups_refuses_bad_keeps() -> None:
    model = _model("resnet_stages")
    groups, _ = find_channel_groups(model)
    with pytest.raises(ValueError, match="distinct indices"):
        cut_groups(model, groups[:1], [GroupCut(torch.tensor([0, 0]))])
    with pytest.raises(TypeError, match="GroupCut"):
        cut_groups(model, groups[:1], [torch.tensor([0])])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="one cut per group"):
        cut_groups(model, groups[:2], [GroupCut(torch.tensor([0]))])


# --------------------------------------------------------------------------------------------
# compress


def _masks_from_report(model: nn.Module, result: Any) -> tuple[list[ChannelGroup], list[Any]]:
    groups, _ = find_channel_groups(model)
    by_label = {}
    for g in groups:
        label = g.pair.producer if g.pair is not None else " + ".join(g.producers)
        by_label[label] = g
    picked, keeps = [], []
    for row in result.report:
        picked.append(by_label[row.producer])
        keeps.append(row.keep)
    return picked, keeps


@pytest.mark.parametrize("name", list(BUILDERS))
def test_compress_target_half_matches_masking_and_recounts(name: str) -> None:
    model = _model(name)
    x = _input()
    result = compress(model, target=0.5, compensate="none", example_input=x[:1], progress=False)
    report = result.report
    assert abs(report.achieved - 0.5) <= 0.02 and report.target_reached
    assert report.params_after == count_params(result.model)
    assert report.macs_after == count_macs(result.model, x[:1])
    assert sum(r.params_after for r in report) >= report.prunable_params_after
    floor = {r.producer: max(1, -(-r.units_before // 10)) for r in report}
    assert all(r.units_after >= floor[r.producer] for r in report)
    groups, keeps = _masks_from_report(model, result)
    with torch.no_grad():
        out = result.model(x)
    torch.testing.assert_close(out, _masked_forward(model, groups, keeps, x), rtol=1e-5, atol=1e-5)
    coupled = [r for r in report if r.eps is None and "coupled group" in r.note]
    if name in STREAMS:
        stream = [r for r in coupled if "residual add" in r.note]
        assert stream and all(r.units_after < r.units_before for r in stream)
        assert all("not certified: coupled group" in r.note for r in stream)
    model_again = _model(name)  # the caller's model is untouched
    for a, b in zip(model.state_dict().values(), model_again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_groups_false_prunes_single_pairs_only() -> None:
    model = _model("resnet20")
    result = compress(model, target=0.3, groups=False, progress=False)
    assert all(r.eps is not None for r in result.report)
    assert result.model.conv1.out_channels == 16  # the stream keeps every channel
    grouped = compress(model, target=0.3, progress=False)
    assert grouped.model.conv1.out_channels < 16


@pytest.mark.parametrize("method", ["magnitude", "snip", "random"])
def test_baselines_score_groups_by_summed_producer_scores(method: str) -> None:
    model = _model("resnet_stages")
    x = _input(8)
    labels = torch.arange(8) % 10
    scorer: Any = method
    if method == "snip":
        scorer = make_scorer(method, data=[(x, labels)], batch_size=8)
    result = compress(model, target=0.5, method=scorer, progress=False)
    assert abs(result.report.achieved - 0.5) <= 0.02
    stream = [r for r in result.report if "residual add" in r.note]
    assert stream and all(f"sum of {method}" in r.note for r in stream)


def test_group_gate_scores_are_summed_per_group() -> None:
    model = _model("resnet_stages")
    groups, _ = find_channel_groups(model)
    pairs, owners = group_gate_pairs(groups)
    assert len(pairs) == sum(1 if g.simple else len(g.producers) for g in groups)
    gates = UnitGates(model, pairs)
    with gates:
        pass
    scores = [torch.full((gates.units(i),), float(i)) for i in range(len(pairs))]
    summed = reduce_group_scores(scores, owners, len(groups))
    for index, total in enumerate(summed):
        expected = sum(float(i) for i, o in enumerate(owners) if o == index)
        assert torch.all(total == expected)


def test_zeroed_gates_on_a_stream_equal_masking() -> None:
    """A gate at 0 on every producer of a stream channel is that channel removed."""
    model = _model("resnet_stages")
    groups, _ = find_channel_groups(model)
    stream = next(i for i, g in enumerate(groups) if "residual add" in g.joins)
    pairs, owners = group_gate_pairs(groups)
    keep = torch.arange(0, groups[stream].width, 2)
    masks = []
    for owner, pair in zip(owners, pairs, strict=True):
        kind = layer_kind(model.get_submodule(pair.producer))
        assert kind is not None
        mask = torch.ones(kind.out_units(model.get_submodule(pair.producer)))
        if owner == stream:
            mask = torch.zeros_like(mask)
            mask[keep] = 1
        masks.append(mask)
    x = _input()
    with UnitGates(model, pairs, masks=masks), torch.no_grad():
        gated = model(x)
    keeps = [keep if i == stream else torch.arange(g.width) for i, g in enumerate(groups)]
    torch.testing.assert_close(gated, _masked_forward(model, groups, keeps, x))


def test_lstsq_refits_each_consumer_of_a_coupled_group() -> None:
    model = _model("resnet_stages")
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    fitted = compress(model, target=0.5, calibration=x, compensate="lstsq", progress=False)
    sliced = compress(model, target=0.5, calibration=x, compensate="none", progress=False)
    stream = [r for r in fitted.report if "residual add" in r.note]
    assert stream and all(r.compensate == "lstsq" for r in stream)
    with torch.no_grad():
        dense = model(x)
        err_fit = (fitted.model(x) - dense).norm()
        err_cut = (sliced.model(x) - dense).norm()
    assert err_fit < err_cut


def test_merge_leaves_coupled_consumers_sliced_and_says_so() -> None:
    result = compress(_model("resnet_stages"), target=0.5, compensate="merge", progress=False)
    stream = [r for r in result.report if "residual add" in r.note]
    assert stream and all("merge applies to single pairs only" in r.note for r in stream)


def test_eps_mode_leaves_coupled_groups_and_tiny_eps_changes_nothing() -> None:
    model = _model("resnet20")
    result = compress(model, eps=1e-12, progress=False)
    assert any("eps= sizes certified single pairs" in b.reason for b in result.report.blocked)
    assert result.report.params_after == result.report.params_before
    x = _input()
    with torch.no_grad():
        assert torch.equal(result.model(x), model(x))


def test_groups_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="groups"):
        compress(_model("resnet_stages"), target=0.5, groups=1, progress=False)  # type: ignore[arg-type]


def test_ignored_layers_block_the_whole_group() -> None:
    model = _model("resnet_stages")
    result = compress(model, target=0.3, ignored_layers=["stage1.1.conv1"], progress=False)
    blocked = {b.name: b.reason for b in result.report.blocked}
    for name in ("conv", "stage1.0.conv2", "stage1.1.conv2"):  # the stage-1 stream reads it
        assert "ignored_layers" in blocked[name]
    assert result.model.conv.out_channels == 8
    assert result.model.stage2[0].conv2.out_channels < 16


def test_round_to_and_floor_apply_per_group() -> None:
    result = compress(_model("resnet20"), target=0.6, round_to=4, floor=0.3, progress=False)
    for row in result.report:
        assert row.units_after % 4 == 0 or row.units_after == row.units_before
        assert row.units_after >= 0.3 * row.units_before
    assert abs(result.report.achieved - 0.6) <= 0.02


def test_choices_rank_with_calibration_and_rms_is_available() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 3))
    x = torch.randn(64, 16)
    kept = {}
    for choice in ("empirical", "empirical_rms", "certified"):
        report = compress(net, target=0.4, calibration=x, choice=choice, progress=False).report
        kept[choice] = report[0].units_after
        assert ("empirical sensitivity" in report[0].note) == (choice != "certified")
    assert len(set(kept.values())) == 1  # the same widths, whatever the ranking
    with pytest.raises(ValueError, match="choice must be one of"):
        compress(net, target=0.4, calibration=x, choice="empirical_max", progress=False)
