"""Metrics beyond test accuracy, checked against hand-computed cases on fixed "models"."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coreprune.harness.evaluation.robustness import (
    agreement,
    expected_calibration_error,
    noisy_accuracy,
    robustness_report,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


class Lookup(nn.Module):
    """Returns the stored logits of example i, where the input holds i; has dropout and a train
    flag to check that evaluation runs in eval mode and restores it."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", logits.clone())
        self.drop = nn.Dropout(0.9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.table[x[:, 0].round().long()])


class Identity2(nn.Module):
    """Logits = the two input coordinates; a weightless 'model' for the noise test."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def _indexed(labels: list[int], batch_size: int = 2) -> DataLoader:
    index = torch.arange(len(labels), dtype=torch.float32).unsqueeze(1)
    return DataLoader(TensorDataset(index, torch.tensor(labels)), batch_size=batch_size)


def _logits_from_probs(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log().float()


def test_agreement_counts_matching_top1_predictions() -> None:
    a = Lookup(torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0], [5.0, 4.0]]))
    b = Lookup(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 4.0]]))
    loader = _indexed([0, 1, 0, 1, 1])  # labels are not used
    a.train()
    assert agreement(a, b, loader) == pytest.approx(3 / 5)
    assert agreement(a, a, loader) == 1.0
    assert a.training and a.drop.training  # eval mode inside, flags restored


def test_ece_matches_a_hand_computed_two_bin_case() -> None:
    probs = [
        [0.4, 0.3, 0.3],  # conf 0.40 -> bin (0, .5], correct (label 0)
        [0.45, 0.35, 0.2],  # conf 0.45 -> bin (0, .5], wrong (label 1)
        [0.05, 0.9, 0.05],  # conf 0.90 -> bin (.5, 1], correct (label 1)
        [0.7, 0.2, 0.1],  # conf 0.70 -> bin (.5, 1], wrong (label 2)
        [0.2, 0.2, 0.6],  # conf 0.60 -> bin (.5, 1], correct (label 2)
    ]
    model = Lookup(_logits_from_probs(probs))
    loader = _indexed([0, 1, 1, 2, 2])
    # bin 0: acc 1/2, conf 0.425; bin 1: acc 2/3, conf 2.2/3
    want = 2 / 5 * abs(0.5 - 0.425) + 3 / 5 * abs(2 / 3 - 2.2 / 3)
    assert want == pytest.approx(0.07)
    assert expected_calibration_error(model, loader, bins=2) == pytest.approx(want, abs=1e-6)
    # one bin: |overall accuracy - mean confidence|
    one = abs(3 / 5 - (0.4 + 0.45 + 0.9 + 0.7 + 0.6) / 5)
    assert expected_calibration_error(model, loader, bins=1) == pytest.approx(one, abs=1e-6)
    certain = Lookup(torch.tensor([[50.0, 0.0], [0.0, 50.0]]))
    assert expected_calibration_error(certain, _indexed([0, 1])) == pytest.approx(0.0, abs=1e-12)


def test_a_confidence_on_a_bin_edge_goes_to_the_lower_bin() -> None:
    model = Lookup(_logits_from_probs([[0.5, 0.5], [0.5, 0.5]]))
    # conf 0.5 lies in (0, 0.5] (bin 0 of 2); argmax picks class 0: one right, one wrong
    assert expected_calibration_error(model, _indexed([0, 1]), bins=2) == pytest.approx(0.0)
    assert expected_calibration_error(model, _indexed([0, 0]), bins=2) == pytest.approx(0.5)


def test_noisy_accuracy_adds_the_same_seeded_noise_for_every_model_and_sigma() -> None:
    x = torch.tensor([[0.3, 0.0], [0.0, 0.2], [1.0, 0.0], [0.0, 0.05], [0.5, 0.6]])
    y = torch.tensor([0, 1, 0, 1, 1])
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    sigmas = [0.0, 0.1, 0.5]
    got = noisy_accuracy(Identity2(), loader, sigmas, seed=7)
    assert list(got) == sigmas and got[0.0] == 1.0
    for sigma in sigmas:
        gen = torch.Generator().manual_seed(7)
        correct = 0
        for start in range(0, 5, 2):
            xb = x[start : start + 2]
            noisy = xb + sigma * torch.randn(xb.shape, generator=gen)
            correct += int((noisy.argmax(dim=1) == y[start : start + 2]).sum())
        assert got[sigma] == correct / 5
    assert noisy_accuracy(Identity2(), loader, sigmas, seed=7) == got
    assert torch.equal(x[0], torch.tensor([0.3, 0.0]))  # inputs are not modified


def test_robustness_report_gathers_the_single_metrics() -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    pruned = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 3))
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.randn(20, 4, generator=gen), torch.randint(0, 3, (20,), generator=gen)
    )
    loader = DataLoader(data, batch_size=6)
    stats = dense[1].running_mean.clone()
    report = robustness_report(pruned, dense, loader, sigmas=[0.0, 0.3], seed=3, bins=5)
    assert report["examples"] == 20
    assert report["agreement"] == agreement(pruned, dense, loader)
    assert report["ece"] == pytest.approx(expected_calibration_error(pruned, loader, bins=5))
    assert report["noisy_accuracy"] == noisy_accuracy(pruned, loader, [0.0, 0.3], seed=3)
    assert report["noisy_accuracy"][0.0] == report["accuracy"]  # type: ignore[index]
    assert dense.training and torch.equal(dense[1].running_mean, stats)


def test_bad_input_is_refused() -> None:
    model = Identity2()
    loader = DataLoader(TensorDataset(torch.randn(4, 2), torch.tensor([0, 1, 0, 1])), batch_size=2)
    with pytest.raises(ValueError, match="sigma"):
        noisy_accuracy(model, loader, [-0.1])
    with pytest.raises(ValueError, match="sigma"):
        noisy_accuracy(model, loader, [math.inf])
    with pytest.raises(TypeError, match="sequence"):
        noisy_accuracy(model, loader, 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        noisy_accuracy(model, loader, [])
    with pytest.raises(ValueError, match="repeated"):
        noisy_accuracy(model, loader, [0.1, 0.1])
    shuffled = DataLoader(loader.dataset, batch_size=2, shuffle=True)
    with pytest.raises(ValueError, match="shuffle=False"):
        noisy_accuracy(model, shuffled, [0.1])
    with pytest.raises(TypeError, match="seed"):
        noisy_accuracy(model, loader, [0.1], seed=1.5)  # type: ignore[arg-type]
    for bins in (0, -3):
        with pytest.raises(ValueError, match="bins"):
            expected_calibration_error(model, loader, bins=bins)
    with pytest.raises(TypeError, match="bins"):
        expected_calibration_error(model, loader, bins=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model_b"):
        agreement(model, "dense", loader)  # type: ignore[arg-type]
    empty = DataLoader(TensorDataset(torch.randn(0, 2), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="no examples"):
        agreement(model, model, empty)
    soft = DataLoader(TensorDataset(torch.randn(2, 2), torch.rand(2, 2)), batch_size=2)
    with pytest.raises(TypeError, match="labels"):
        expected_calibration_error(model, soft)
    ints = DataLoader(TensorDataset(torch.ones(2, 2, dtype=torch.long), torch.tensor([0, 1])))
    with pytest.raises(TypeError, match="floating"):
        noisy_accuracy(model, ints, [0.1])
