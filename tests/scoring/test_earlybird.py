"""Early-bird tickets: the mask distance is a metric, the quantile mask is exact, the detectors
fire exactly when their window is stable, and train_early_bird removes exactly the ticket."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coreprune import compress
from coreprune.methods.earlybird import (
    BNScale,
    EarlyBird,
    SplineEarlyBird,
    bn_channel_mask,
    bn_pairs,
    mask_distance,
    partition_code,
    spline_grid,
)
from coreprune.methods.tickets import train_early_bird
from coreprune.scoring import UnitGates, prune_weights
from coreprune.surgery.graph import find_prunable_pairs


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _convnet(c1: int = 4, c2: int = 6, *, norm: bool = True) -> nn.Sequential:
    torch.manual_seed(0)

    def bn(c: int) -> nn.Module:
        return nn.BatchNorm2d(c) if norm else nn.Identity()

    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), bn(c1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1), bn(c2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c2, 3),
    )  # fmt: skip


def _set_gamma(model: nn.Module, name: str, values: list[float] | torch.Tensor) -> None:
    with torch.no_grad():
        model.get_submodule(name).weight.copy_(torch.as_tensor(values, dtype=torch.float32))


def _mlp(width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 2))


def _gamma_for(mask: torch.Tensor, seed: int) -> torch.Tensor:
    """Scales whose lowest half (ratio 0.5) is exactly the masked (False) channels."""
    u = torch.rand(mask.numel(), generator=torch.Generator().manual_seed(seed))
    return torch.where(mask, 1.0 + u, 0.5 * u)


def _half_mask(perm_seed: int, n: int) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed))[: n // 2]] = True
    return mask


def _swap(mask: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Exchange k kept and k masked channels: Hamming distance 2k."""
    out = mask.clone()
    kept, masked = torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()
    out[kept[:k]], out[masked[:k]] = False, True
    return out


# --------------------------------------------------------------------------------------------
# Distance


def test_mask_distance_is_a_normalised_hamming_metric() -> None:
    gen = torch.Generator().manual_seed(0)

    def draw() -> dict[str, torch.Tensor]:
        return {"a": torch.rand(7, generator=gen) < 0.5, "b": torch.rand(2, 5, generator=gen) < 0.3}

    masks = [draw() for _ in range(12)]
    for x, y, z in itertools.product(masks[:6], masks[3:9], masks[6:]):
        dxy, dyz, dxz = mask_distance(x, y), mask_distance(y, z), mask_distance(x, z)
        assert 0.0 <= dxy <= 1.0
        assert dxy == mask_distance(y, x)
        assert dxz <= dxy + dyz + 1e-12
        equal = all(torch.equal(x[k], y[k]) for k in x)
        assert (dxy == 0.0) == equal
    a = {"a": torch.tensor([True, True, False, False])}
    b = {"a": torch.tensor([True, False, True, False])}
    assert mask_distance(a, b) == 0.5
    assert mask_distance(torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)) == 1.0
    two = {"x": torch.tensor([True]), "y": torch.tensor([True, True, True])}
    assert mask_distance(two, {"x": torch.tensor([False]), "y": two["y"]}) == 0.25


def test_mask_distance_rejects_masks_of_another_layout() -> None:
    a = {"a": torch.ones(3, dtype=torch.bool)}
    with pytest.raises(ValueError, match="same layers"):
        mask_distance(a, {"b": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        mask_distance(a, {"a": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(TypeError, match="bool"):
        mask_distance(a, {"a": torch.ones(3)})
    with pytest.raises(TypeError, match="dict"):
        mask_distance(a, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty"):
        mask_distance(torch.ones(0, dtype=torch.bool), torch.ones(0, dtype=torch.bool))


# --------------------------------------------------------------------------------------------
# Quantile mask


def test_quantile_mask_masks_exactly_the_channels_below_the_global_quantile() -> None:
    model = _convnet()
    _set_gamma(model, "1", [0.5, -0.1, 0.9, 0.2])
    _set_gamma(model, "4", [0.3, -0.05, 0.7, 0.15, 0.8, 0.6])
    before = copy.deepcopy(model.state_dict())
    # pooled |gamma| sorted: .05 .1 .15 .2 .3 .5 .6 .7 .8 .9 (N = 10)
    mask = bn_channel_mask(model, 0.3)
    assert list(mask) == ["1", "4"]
    assert mask["1"].tolist() == [True, False, True, True]
    assert mask["4"].tolist() == [True, False, True, False, True, True]
    mask = bn_channel_mask(model, 0.29)  # floor(2.9) = 2 masked: |gamma| = .05 and .1
    assert mask["1"].tolist() == [True, False, True, True]
    assert mask["4"].tolist() == [True, False, True, True, True, True]
    assert sum(int((~m).sum()) for m in bn_channel_mask(model, 0.75).values()) == 7
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    _set_gamma(model, "1", [1.0] * 4)
    _set_gamma(model, "4", [1.0] * 6)
    assert all(bool(m.all()) for m in bn_channel_mask(model, 0.5).values())  # ties: none below


def test_bad_ratio_and_models_without_batch_norm_are_refused() -> None:
    model = _convnet()
    for bad in (0.0, 1.0, 1.5, -0.1, math.nan):
        with pytest.raises(ValueError, match="ratio"):
            bn_channel_mask(model, bad)
    for bad_type in (True, "0.5", None):
        with pytest.raises(TypeError, match="ratio"):
            bn_channel_mask(model, bad_type)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'0', '3'"):
        bn_channel_mask(_convnet(norm=False), 0.5)
    plain = _convnet(norm=False)
    pairs, _ = find_prunable_pairs(plain)
    with pytest.raises(ValueError, match="producer '0' has no batch norm"):
        bn_pairs(plain, pairs)
    frozen = _convnet()
    frozen[1] = nn.BatchNorm2d(4, affine=False)
    with pytest.raises(ValueError, match=r"'1'.*affine=False"):
        bn_channel_mask(frozen, 0.5)
    with pytest.raises(ValueError, match="ratio"):
        EarlyBird(1.0)
    with pytest.raises(ValueError, match="threshold"):
        EarlyBird(0.5, threshold=0.0)
    with pytest.raises(ValueError, match="threshold"):
        EarlyBird(0.5, threshold=1.5)
    with pytest.raises(ValueError, match="window"):
        EarlyBird(0.5, window=0)


# --------------------------------------------------------------------------------------------
# Detection


def test_early_bird_fires_exactly_when_the_last_five_masks_are_close() -> None:
    n = 40
    stable = _half_mask(99, n)
    early = [torch.arange(n) < n // 2, torch.arange(n) >= n // 2, torch.arange(n) % 2 == 0]
    sequence = [*early, stable, _swap(stable), stable, stable, stable, stable]
    for m in early:
        assert mask_distance(m, stable) >= 0.1  # the early masks are far from the stable one
    assert mask_distance(_swap(stable), stable) == 0.05
    model = _mlp(n)
    detector = EarlyBird(0.5)
    fired = []
    for epoch, mask in enumerate(sequence):
        _set_gamma(model, "1", _gamma_for(mask, epoch))
        fired.append(detector(epoch, model, None))
        assert torch.equal(detector.masks[-1]["1"], mask)
    # previous five masks all within 0.1 of the current one first at epoch 8 (epochs 3..7)
    assert fired == [False] * 8 + [True]
    assert detector.ticket_epoch == 8 and detector.found
    assert detector.ticket_mask is not None and torch.equal(detector.ticket_mask["1"], stable)
    assert [len(d) for d in detector.distances] == [0, 1, 2, 3, 4, 5, 5, 5, 5]
    assert detector.distances[-1] == (0.0, 0.05, 0.0, 0.0, 0.0)
    assert detector(9, model, None)  # stays drawn; the ticket does not move
    assert detector.ticket_epoch == 8 and len(detector.masks) == 9


def test_the_threshold_is_strict() -> None:
    n = 20
    base = _half_mask(1, n)
    model = _mlp(n)
    for threshold, expected in ((0.1, [False] * 4), (0.11, [False, True])):
        detector = EarlyBird(0.5, window=1, threshold=threshold)
        fired = []
        for epoch in range(len(expected)):
            mask = base if epoch % 2 == 0 else _swap(base)  # distance 2/20 = 0.1 each step
            _set_gamma(model, "1", _gamma_for(mask, epoch))
            fired.append(detector(epoch, model, None))
        assert fired == expected


def test_spline_code_is_a_function_of_the_weights() -> None:
    model = _convnet()
    anchors = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    inputs = spline_grid(anchors, 5)
    assert inputs.shape == (25, 1, 8, 8)
    corners = spline_grid(anchors, [0.0, 1.0])
    x0, x1, x2 = anchors
    for got, want in zip(corners, (x0, x2, x1, x1 + x2 - x0), strict=True):
        torch.testing.assert_close(got, want)
    model.train()
    stats = copy.deepcopy(model[1].running_mean)
    code = partition_code(model, inputs)
    assert code.dtype == torch.bool and code.shape == (25, 8 * 8 * (4 + 6))
    assert model.training and torch.equal(model[1].running_mean, stats)  # eval inside, restored
    twin = copy.deepcopy(model)
    assert torch.equal(partition_code(twin, inputs), code)
    with torch.no_grad():
        twin[3].weight.mul_(-1.0)
    other = partition_code(twin, inputs)
    assert mask_distance(code, other) > 0.0
    detector = SplineEarlyBird(anchors, grid=5, batch_size=7)  # packed codes across chunks
    detector(0, model, None)
    detector(1, twin, None)
    assert detector.distances[1][0] == pytest.approx(mask_distance(other, code), abs=1e-12)


def test_spline_detector_fires_after_its_window_and_not_before() -> None:
    model = _convnet()
    anchors = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    detector = SplineEarlyBird(anchors, grid=4)
    assert [detector(e, model, None) for e in range(4)] == [False, False, False, True]
    assert detector.ticket_epoch == 3 and detector.distances[-1] == (0.0, 0.0, 0.0)
    changing = SplineEarlyBird(anchors, grid=4, threshold=0.01)
    fired = []
    for epoch in range(5):
        twin = copy.deepcopy(model)
        with torch.no_grad():
            twin[4].bias.copy_(torch.randn(6, generator=torch.Generator().manual_seed(epoch)))
        fired.append(changing(epoch, twin, None))
    assert fired == [False] * 5 and min(max(d) for d in changing.distances[3:]) > 0.01


def test_spline_detector_refuses_bad_input() -> None:
    anchors = torch.randn(3, 1, 8, 8)
    with pytest.raises(ValueError, match=r"\(3, \*input_shape\)"):
        SplineEarlyBird(anchors[:2])
    with pytest.raises(TypeError, match="anchor_inputs"):
        SplineEarlyBird([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating"):
        SplineEarlyBird(anchors.long())
    with pytest.raises(ValueError, match="grid"):
        SplineEarlyBird(anchors, grid=1)
    with pytest.raises(ValueError, match="threshold"):
        SplineEarlyBird(anchors, threshold=1.5)
    with pytest.raises(ValueError, match="no batch-norm layer"):
        SplineEarlyBird(anchors)(0, _convnet(norm=False), None)


# --------------------------------------------------------------------------------------------
# Unit scores and the whole pipeline


def test_bn_scale_scores_units_by_gamma_and_needs_batch_norm() -> None:
    model = _convnet()
    _set_gamma(model, "1", [0.5, -0.1, 0.9, 0.2])
    _set_gamma(model, "4", [0.3, -0.05, 0.7, 0.15, 0.8, 0.6])
    pairs, _ = find_prunable_pairs(model)
    scores = BNScale().unit_scores(model, UnitGates(model, pairs), None)
    torch.testing.assert_close(scores[0], torch.tensor([0.5, 0.1, 0.9, 0.2], dtype=torch.float64))
    result = compress(model, target=0.3, method=BNScale(), allocation="global", progress=False)
    assert result.report.method == "bn_scale"
    gammas = [[0.5, 0.1, 0.9, 0.2], [0.3, 0.05, 0.7, 0.15, 0.8, 0.6]]
    kept = [g[i] for g, row in zip(gammas, result.report, strict=True) for i in row.keep.tolist()]
    removed = sorted({g for layer in gammas for g in layer} - set(kept))
    assert removed and max(removed) < min(kept)  # one global |gamma| ranking, lowest removed
    assert not hasattr(BNScale(), "weight_scores")  # a unit scorer only: no per-weight form
    with pytest.raises(TypeError, match="no weight form"):
        prune_weights(model, BNScale(), 0.5)
    plain = _convnet(norm=False)
    plain_pairs, _ = find_prunable_pairs(plain)
    with pytest.raises(ValueError, match="'0' has no batch norm"):
        BNScale().unit_scores(plain, UnitGates(plain, plain_pairs), None)


def _loader() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    )
    return DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))


def test_train_early_bird_removes_exactly_the_ticket_and_trains_the_rest() -> None:
    model = _convnet(8, 8)
    before = copy.deepcopy(model.state_dict())
    detector = EarlyBird(0.5, window=1, threshold=1.0)  # any change < 1 counts: ticket at epoch 1
    result = train_early_bird(model, _loader(), ratio=0.5, epochs=4, detector=detector, lr=0.05)
    assert result.ticket_epoch == 1 and result.dense_epochs == 2
    assert result.retrain is not None and result.retrain.epochs == 2
    assert result.detector is detector and detector.ticket_mask is not None
    for name, kept in result.mask.items():
        assert torch.equal(kept, detector.ticket_mask[name])
    assert sum(int((~m).sum()) for m in result.mask.values()) == 8  # floor(0.5 * 16)
    # each layer keeps exactly its mask's channels: conv 0 / bn 1 and conv 3 / bn 4
    assert list(result.mask) == ["1", "4"]
    assert result.model[0].out_channels == int(result.mask["1"].sum())
    assert result.model[3].out_channels == int(result.mask["4"].sum())
    assert result.model[1].num_features == result.model[0].out_channels
    assert result.model[3].in_channels == result.model[0].out_channels
    dense_params = sum(p.numel() for p in model.parameters())
    pruned_params = sum(p.numel() for p in result.model.parameters())
    assert (result.params_before, result.params_after) == (dense_params, pruned_params)
    assert result.removed == pytest.approx(1 - pruned_params / dense_params)
    assert result.model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # the caller's model is untouched


def test_train_early_bird_with_the_spline_detector_and_bad_input() -> None:
    result = train_early_bird(
        _convnet(), _loader(), ratio=0.25, epochs=3, lr=0.05,
        detector=SplineEarlyBird(torch.randn(3, 1, 8, 8), grid=3, window=1, threshold=1.0),
    )  # fmt: skip
    assert result.ticket_epoch == 1 and result.retrain is not None and result.retrain.epochs == 1
    assert sum(int((~m).sum()) for m in result.mask.values()) == math.floor(0.25 * 10)
    with pytest.raises(ValueError, match="detector"):
        train_early_bird(_convnet(), _loader(), ratio=0.5, epochs=2, detector="slimming")
    with pytest.raises(ValueError, match="differs from ratio"):
        train_early_bird(_convnet(), _loader(), ratio=0.5, epochs=2, detector=EarlyBird(0.3))
    with pytest.raises(ValueError, match="anchor_inputs"):
        train_early_bird(_convnet(), _loader(), ratio=0.5, epochs=2, anchor_inputs=torch.ones(3, 1))
    with pytest.raises(ValueError, match="fit_kwargs"):
        train_early_bird(_convnet(), _loader(), ratio=0.5, epochs=2, fit_kwargs={"epochs": 3})
    with pytest.raises(ValueError, match="epochs"):
        train_early_bird(_convnet(), _loader(), ratio=0.5, epochs=0)
    with pytest.raises(ValueError, match="no prunable layer of the model is followed by a batch"):
        train_early_bird(_convnet(norm=False), _loader(), ratio=0.5, epochs=1)


def test_no_ticket_prunes_at_the_end_with_a_warning() -> None:
    detector = EarlyBird(0.5, window=5)
    with pytest.warns(UserWarning, match="no early-bird ticket"):
        result = train_early_bird(_convnet(), _loader(), ratio=0.5, epochs=2, detector=detector)
    assert result.ticket_epoch is None and result.retrain is None and result.dense_epochs == 2
    assert result.params_after < result.params_before
