"""Whole-model compression: budgets, surgery equivalence, reporting and input checks."""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from coreprune.compress import CompressResult, compress
from coreprune.harness.evaluation.metrics import count_macs, count_params
from coreprune.harness.models import MODEL_NAMES, build_model
from coreprune.scoring import BASELINES
from coreprune.serialization import load_model, save_model
from coreprune.surgery.graph import FxTraceError, PrunablePair


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _kwargs(name: str) -> dict[str, object]:
    if name == "lenet300100":
        return {}
    if name in ("lenet5", "vit_small"):
        return {"in_channels": 1}
    return {"in_channels": 1, "width_multiplier": 0.25}


def _model(name: str, seed: int = 0) -> nn.Module:
    """A registry model with non-trivial batch-norm statistics, so folding is exercised."""
    torch.manual_seed(seed)
    model = build_model(name, **_kwargs(name))
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=gen))
    return model.eval()


def _input(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _masked(model: nn.Module, result: CompressResult) -> nn.Module:
    """The dense model with each removed unit's outgoing weights zeroed (kept ones scaled)."""
    dense = copy.deepcopy(model)
    for row in result.report:
        consumer = dense.get_submodule(row.consumer)
        weights = torch.zeros(row.units_before, dtype=torch.float64)
        weights[row.keep] = row.scale
        with torch.no_grad():
            if isinstance(consumer, nn.Conv2d):
                consumer.weight.mul_(weights.to(consumer.weight)[None, :, None, None])
            else:
                block = consumer.in_features // row.units_before
                factor = weights.to(consumer.weight).repeat_interleave(block)
                consumer.weight.mul_(factor[None, :])
    return dense


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_registry_model_compresses(name: str) -> None:
    model = _model(name)
    x = _input()
    with torch.no_grad():
        dense_out = model(x)
    for target in (0.2, 0.45):
        result = compress(
            model, target=target, example_input=x, sensitivity="leverage", progress=False
        )
        small = result.model
        out = small(x)
        assert out.shape == dense_out.shape
        out.sum().backward()
        assert all(p.grad is not None for p in small.parameters())
        report = result.report
        assert report.params_after == count_params(small) < count_params(model)
        assert report.macs_after == count_macs(small, x)
        assert report.macs_before == count_macs(model, x)
        assert report.target_reached and report.achieved >= target
        assert report.achieved == pytest.approx(report.params_removed)
        for row in report:
            assert 1 <= row.units_after <= row.units_before
            if "coupled group" in row.note:  # residual streams: no worst-case certificate
                assert row.eps is None and row.modules
            else:
                assert row.eps is not None and row.query is not None
            names = row.modules or [n for n in (row.producer, row.norm, row.consumer) if n]
            modules = [small.get_submodule(n) for n in names]
            assert row.params_after == sum(count_params(m) for m in modules)


def test_input_model_is_never_mutated() -> None:
    model = _model("vgg11").train()
    model.features[1].eval()  # a mixed-mode model: every flag must come back as it was
    before = copy.deepcopy(model.state_dict())
    tree = str(model)
    flags = {n: m.training for n, m in model.named_modules()}
    frozen = model.features[0].weight
    frozen.requires_grad_(False)
    result = compress(
        model, target=0.5, calibration=_input(1), rank=4, example_input=_input(),
        sensitivity="leverage", progress=False,
    )  # fmt: skip
    assert str(model) == tree
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: m.training for n, m in result.model.named_modules()} == flags
    assert not result.model.features[0].weight.requires_grad
    assert model.features[0].weight is frozen


@pytest.mark.parametrize("name", ["vgg11", "resnet20", "lenet5", "lenet300100"])
def test_masked_dense_model_equals_the_smaller_one(name: str) -> None:
    model = _model(name)
    x = _input(3)
    for mode in ("select", "sample"):
        result = compress(
            model, target=0.5, mode=mode, generator=torch.Generator().manual_seed(0),
            sensitivity="leverage", compensate="none", groups=False, progress=False,
        )  # fmt: skip
        if mode == "select":
            assert all(torch.all(row.scale == 1) for row in result.report)
        with torch.no_grad():
            expected = _masked(model, result)(x)
            got = result.model(x)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, model(x), atol=1e-3)  # pruning did change the function


def test_save_load_roundtrip_of_compressed_resnet20(tmp_path: Path) -> None:
    model = _model("resnet20")
    result = compress(model, target=0.4, progress=False)
    save_model(result.model, tmp_path / "m", arch="resnet20", arch_kwargs=_kwargs("resnet20"))
    loaded = load_model(tmp_path / "m").eval()
    x = _input(4)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
    assert count_params(loaded) == result.report.params_after


def test_eps_mode_reports_a_certificate_per_layer() -> None:
    model = _model("lenet300100")
    calib = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    result = compress(model, eps=0.5, calibration=calib, rank=6, progress=False)
    assert len(result.report) == 2
    for row in result.report:
        assert row.certificate is not None
        assert row.eps is not None and row.eps <= 0.5 and not row.vacuous
        assert row.delta == 0.0
        assert row.query is not None and "dimension 6" in row.query
        assert row.units_after < row.units_before  # a low-rank query space allows real removal
    assert "0.5" in result.report.budget
    text = str(result.report)
    assert "fc" in text or "layers" in text
    assert "| producer |" in text and "blocked" in text


def test_data_free_eps_on_independent_units_removes_nothing() -> None:
    """Data-free, a unit alone in some direction has sensitivity 1: eps < 1 removes none."""
    model = _model("resnet20")
    result = compress(model, eps=0.9, progress=False)
    for row in result.report:
        assert row.units_after == row.units_before
        assert row.eps == 0.0 and row.sensitivity == "independent"
        assert row.query is not None and "data-free" in row.query


def test_calibration_scores_layers_in_the_compressed_network() -> None:
    model = _model("vgg11")
    calib = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    result = compress(
        model, target=0.5, calibration=calib, rank=8, sensitivity="leverage", progress=False
    )
    rows = list(result.report)
    assert "in R^9" in (rows[0].query or "")  # first conv: 1 channel x 3 x 3
    for previous, row in itertools.pairwise(rows):
        # The producer's input has the previous pair's kept channels: patch dim = kept * 9.
        assert f"in R^{previous.units_after * 9}" in (row.query or "")


def test_rank_must_be_below_the_patch_dimension() -> None:
    with pytest.raises(ValueError, match=r"rank=9 .*features\.0.*rank < 9"):
        compress(_model("vgg11"), target=0.5, calibration=_input(), rank=9, progress=False)


def test_global_allocation_meets_the_target_with_one_common_eps() -> None:
    model = _model("lenet300100")
    calib = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    result = compress(
        model, target=0.6, allocation="global", calibration=calib, rank=6, progress=False
    )
    assert result.report.target_reached
    assert "common eps" in result.report.budget
    assert result.report.params_removed >= 0.6


def test_global_data_free_removes_the_same_count_per_layer() -> None:
    """Data-free on convs every sensitivity is 1, so eps is the number removed in each layer."""
    result = compress(
        _model("resnet20"), target=0.3, allocation="global", groups=False, progress=False
    )
    removed = {r.units_before - r.units_after for r in result.report if r.units_after > 1}
    assert len(removed) == 1
    assert all(r.eps == r.units_before - r.units_after for r in result.report)


def test_macs_budget_is_counted_by_the_flop_counter() -> None:
    model = _model("vgg11")
    x = _input()
    result = compress(
        model, target=0.4, metric="macs", example_input=x, sensitivity="leverage", progress=False
    )
    dense, small = count_macs(model, x), count_macs(result.model, x)
    assert result.report.achieved == pytest.approx((dense - small) / dense)
    assert result.report.achieved >= 0.4


def test_unreachable_target_is_an_error_naming_the_reachable_maximum() -> None:
    model = _model("resnet20")
    with pytest.raises(ValueError, match=r"cannot be reached.*at most 0\.8\d+ can be removed"):
        compress(model, target=0.9, groups=False, progress=False)
    with pytest.raises(ValueError, match="at most"):
        compress(model, target=0.9, floor=0.0, groups=False, progress=False)  # still short
    with pytest.raises(ValueError, match="at most"):  # residual streams pruned too: 0.985
        compress(model, target=0.99, progress=False)


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_no_pair_is_cut_below_its_floor(allocation: str) -> None:
    model = _model("lenet300100")
    for floor in (0.1, 0.3):
        report = compress(
            model, target=0.5, allocation=allocation, floor=floor, progress=False
        ).report
        assert report.target_reached
        for row in report:
            assert row.units_after >= math.ceil(floor * row.units_before)


def test_random_method_matches_the_coreset_budget_and_is_seeded() -> None:
    model = _model("vgg11")
    coreset = compress(model, target=0.5, sensitivity="leverage", progress=False)
    runs = [
        compress(
            model, target=0.5, method="random", generator=torch.Generator().manual_seed(s),
            progress=False,
        ).report
        for s in (0, 0, 1)
    ]  # fmt: skip
    assert runs[0].params_after == coreset.report.params_after
    assert [r.units_after for r in runs[0]] == [r.units_after for r in coreset.report]
    assert all(torch.equal(a.keep, b.keep) for a, b in zip(runs[0], runs[1], strict=True))
    assert any(not torch.equal(a.keep, b.keep) for a, b in zip(runs[0], runs[2], strict=True))
    assert runs[0][0].eps is None and "random" in BASELINES


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 20)
        self.fc2 = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = -x
        return self.fc2(torch.relu(self.fc1(x)))


def test_pairs_by_hand_for_untraceable_models() -> None:
    torch.manual_seed(0)
    model = _Branchy()
    with pytest.raises(FxTraceError):
        compress(model, target=0.5, progress=False)
    pair = PrunablePair("fc1", "fc2", None, "relu", False, ("relu",), ())
    result = compress(model, target=0.5, pairs=[pair], progress=False)
    # params = 10 k + 3 for k kept units; removing half of 203 leaves k = 9
    assert result.model.fc1.out_features == 9 == result.model.fc2.in_features
    assert result.report.pairs_by_hand and "by hand" in str(result.report)
    bad = PrunablePair("fc2", "fc1", None, "relu", False, (), ())
    with pytest.raises(ValueError, match="pairs"):
        compress(model, target=0.5, pairs=[bad], progress=False)


def test_all_zero_units_are_removed_first_and_change_nothing() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 3))
    with torch.no_grad():
        model[0].weight[[1, 4, 7]] = 0.0
        model[0].bias[[1, 4, 7]] = 0.0
    result = compress(model, eps=0.5, progress=False)
    (row,) = result.report
    assert row.units_after == 9 and "3 all-zero units" in row.note
    x = torch.randn(8, 5)
    with torch.no_grad():
        assert torch.allclose(result.model(x), model(x), atol=1e-6)


def test_progress_bar_runs() -> None:
    result = compress(_model("lenet5"), target=0.3, progress=True)
    assert result.report.params_removed >= 0.3


def test_bad_inputs_are_refused_with_the_argument_named() -> None:
    model = _model("lenet5")
    cases: list[tuple[dict[str, object], type[Exception], str]] = [
        ({}, ValueError, "exactly one of eps"),
        ({"eps": 0.1, "target": 0.5}, ValueError, "exactly one of eps"),
        ({"target": 0.0}, ValueError, "target must lie in"),
        ({"target": 1.0}, ValueError, "target must lie in"),
        ({"target": 1.5}, ValueError, "target must lie in"),
        ({"target": "0.5"}, TypeError, "target must be a real number"),
        ({"eps": -1.0}, ValueError, "eps must lie in"),
        ({"eps": 0.1, "method": "random"}, ValueError, "eps needs method='coreset'"),
        ({"target": 0.5, "method": "magic"}, ValueError, "method must be one of"),
        ({"target": 0.5, "mode": "best"}, ValueError, "mode must be one of"),
        ({"target": 0.5, "allocation": "x"}, ValueError, "allocation must be one of"),
        ({"target": 0.5, "method": "random", "mode": "sample"}, ValueError, "mode='select'"),
        ({"target": 0.5, "metric": "macs"}, ValueError, "needs example_input"),
        ({"eps": 0.1, "allocation": "global"}, ValueError, "only with target"),
        ({"target": 0.5, "rank": 4}, ValueError, "pass calibration"),
        ({"target": 0.5, "calibration": _input(), "rank": 0}, ValueError, "rank must be >= 1"),
        ({"target": 0.5, "calibration": [1]}, TypeError, "calibration must be a torch.Tensor"),
        ({"target": 0.5, "generator": 3}, TypeError, "generator must be"),
        ({"target": 0.5, "delta": 1.0}, ValueError, "delta must be a probability"),
        ({"target": 0.5, "sensitivity": "fast"}, ValueError, "sensitivity must be one of"),
        ({"target": 0.5, "example_input": "x"}, TypeError, "example_input must be"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            compress(model, progress=False, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        compress("resnet20", target=0.5)  # type: ignore[arg-type]


def test_model_without_pairs_names_the_blocked_layers() -> None:
    with pytest.raises(ValueError, match=r"no prunable layer pair.*final layer"):
        compress(nn.Sequential(nn.Linear(4, 2)), target=0.5, progress=False)
    sigmoid = nn.Sequential(nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 2))
    with pytest.raises(ValueError, match="activation not certifiable"):
        compress(sigmoid, target=0.5, progress=False)


def test_mixed_devices_are_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(ValueError, match="calibration is on meta"):
        compress(model, target=0.5, calibration=torch.randn(3, 4, device="meta"), progress=False)
    model[2].to("meta")
    with pytest.raises(ValueError, match="several devices"):
        compress(model, target=0.5, progress=False)


def test_no_warning_when_the_target_is_reachable() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compress(_model("lenet300100"), target=0.5, progress=False)
    assert result.report.target_reached


def test_fast_independent_sensitivities_match_the_general_path() -> None:
    from coreprune import coreset_prune
    from coreprune.compress.choosers.worst_case import fast_sensitivities as _fast_sensitivities

    torch.manual_seed(0)
    conv, bn, nxt = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8).eval(), nn.Conv2d(8, 4, 3)
    with torch.no_grad():
        nxt.weight[1, 2] = 0.0  # next channel 1 does not read unit 2 at any offset: s = 0 there
        nxt.weight[3, 5, 0, 0] = 0.0
    fast = _fast_sensitivities(conv, bn, nxt, None)
    assert fast is not None and fast.bounds.keys() == {"independent"}
    general = coreset_prune(conv, nxt, mode="select", keep=8, norm=bn, sensitivity="leverage")
    assert torch.equal(fast.per_next, general.sensitivities.per_next)
    assert fast.per_next[1 * 9 :, 2].sum() > 0 and torch.all(fast.per_next[9:18, 2] == 0)
    wide = nn.Conv2d(1, 12, 3)  # 12 units in R^10: dependent, so the fast path declines
    assert _fast_sensitivities(wide, None, nn.Conv2d(12, 2, 1), None) is None


def test_max_pooling_between_layers_is_flagged_in_the_report() -> None:
    result = compress(_model("lenet5"), target=0.5, progress=False)
    notes = {row.producer: row.note for row in result.report}
    assert "max pooling" in notes["features.0"] and "max pooling" in notes["features.3"]
    assert "max pooling" not in notes["classifier.0"]


def test_round_to_keeps_multiples_and_refuses_wider_than_a_layer() -> None:
    model = _model("vgg11")
    report = compress(model, target=0.5, round_to=8, method="magnitude", progress=False).report
    assert all(r.units_after % 8 == 0 or r.units_after == r.units_before for r in report)
    assert report.params_removed >= 0.5 - 1e-9
    with pytest.raises(ValueError, match="round_to=4096 is larger than"):
        compress(model, target=0.5, round_to=4096, progress=False)


def test_ignored_layers_are_left_alone_and_unknown_names_refused() -> None:
    model = _model("resnet20")
    ignored = "layer1.0.conv1"
    report = compress(
        model, target=0.3, ignored_layers=[ignored], method="magnitude", progress=False
    ).report
    assert report.rows and all(ignored not in (r.producer, r.consumer) for r in report)
    assert any("ignored_layers" in b.reason for b in report.blocked)
    with pytest.raises(ValueError, match="not modules of the model"):
        compress(model, target=0.3, ignored_layers=["fc9"], progress=False)


def test_iterative_steps_reach_the_target_and_call_back_each_step() -> None:
    model = _model("lenet300100")
    seen: list[int] = []
    result = compress(
        model, target=0.6, steps=3, on_step=lambda m, step: seen.append(step), progress=False
    )
    assert seen == [1, 2, 3]
    removed = 1 - count_params(result.model) / count_params(model)
    assert removed >= 0.6 - 0.01
