"""Trainer: learns a toy problem, evaluate matches hand arithmetic, seeded runs reproduce."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coreprune.harness.training import TrainHistory, evaluate, fit, lr_factor, set_seed


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny batches gain nothing from threads, and on a shared 2-core machine the thread
    pool's spin-waiting makes them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blobs(n: int = 256, seed: int = 0) -> TensorDataset:
    """Three well-separated Gaussian blobs in 2-D: easy, so the loss must fall."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    x = centres[labels] + 0.3 * torch.randn(n, 2, generator=g)
    return TensorDataset(x, labels)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def test_fit_reduces_loss_and_learns() -> None:
    set_seed(0)
    model = _mlp()
    loader = DataLoader(_blobs(), batch_size=32, shuffle=True)
    before = evaluate(model, loader)
    history = fit(model, loader, epochs=6, lr=0.05, val_loader=loader, progress=False)
    assert isinstance(history, TrainHistory) and history.epochs == 6
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    after = evaluate(model, loader)
    assert after["loss"] < 0.25 * before["loss"]
    assert after["accuracy"] > 0.95
    assert len(history.val_accuracy) == 6 and history.best_val_accuracy == max(history.val_accuracy)
    assert history.device == "cpu" and history.amp is False


def test_evaluate_matches_hand_computation() -> None:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model.bias.zero_()
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    # logits equal the inputs; CE = log(e^a + e^b) - logit of the true class
    hand_losses = [
        math.log(math.exp(2) + math.exp(0)) - 2,
        math.log(math.exp(0) + math.exp(1)) - 0,
        math.log(math.exp(3) + math.exp(1)) - 1,
    ]
    for batch_size in (1, 2, 3):
        result = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=batch_size))
        assert result["accuracy"] == pytest.approx(1 / 3)  # only the first is right
        assert result["loss"] == pytest.approx(sum(hand_losses) / 3, rel=1e-6)


def test_evaluate_uses_eval_mode_and_restores_it() -> None:
    model = _mlp()
    model.train()
    loader = DataLoader(_blobs(32), batch_size=8)
    running_mean = model[1].running_mean.clone()
    evaluate(model, loader)
    assert model.training
    assert torch.equal(model[1].running_mean, running_mean)  # no BN update in eval


def test_evaluate_empty_loader() -> None:
    empty = DataLoader(TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="empty"):
        evaluate(nn.Linear(2, 2), empty)


def _seeded_run(seed: int) -> tuple[dict[str, torch.Tensor], list[float]]:
    set_seed(seed)
    model = _mlp()
    loader = DataLoader(_blobs(96), batch_size=16, shuffle=True)
    history = fit(model, loader, epochs=2, lr=0.05, progress=False)
    return model.state_dict(), history.train_loss


def test_seeded_runs_reproduce() -> None:
    state_a, loss_a = _seeded_run(7)
    state_b, loss_b = _seeded_run(7)
    assert loss_a == loss_b
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    state_c, _ = _seeded_run(8)
    assert not torch.equal(state_a["0.weight"], state_c["0.weight"])


def test_fit_restores_mode_and_records_lr() -> None:
    set_seed(0)
    model = _mlp().eval()
    loader = DataLoader(_blobs(64), batch_size=16)
    history = fit(
        model, loader, epochs=4, lr=0.1, schedule="step", milestones=(0.5, 0.75), progress=False
    )
    assert not model.training
    assert history.lr == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_lr_factor_values() -> None:
    assert lr_factor("cosine", 0, 100, epoch=0, epochs=10) == 1.0
    assert lr_factor("cosine", 50, 100, epoch=5, epochs=10) == pytest.approx(0.5)
    assert lr_factor("cosine", 99, 100, epoch=9, epochs=10) < 0.001
    steps = [lr_factor("step", 0, 1, epoch=e, epochs=160) for e in (79, 80, 119, 120)]
    assert steps == pytest.approx([1.0, 0.1, 0.1, 0.01])
    assert lr_factor("constant", 5, 10, epoch=3, epochs=4) == 1.0


def test_fit_stops_on_non_finite_loss() -> None:
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    loader = DataLoader(_blobs(16), batch_size=8)
    with pytest.raises(FloatingPointError, match="lower lr"):
        fit(model, loader, epochs=1, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": 0}, ValueError, "epochs"),
        ({"epochs": 1, "lr": -0.1}, ValueError, "lr"),
        ({"epochs": 1, "lr": float("nan")}, ValueError, "lr"),
        ({"epochs": 1, "momentum": 0.0}, ValueError, "nesterov"),
        ({"epochs": 1, "momentum": 1.0}, ValueError, "momentum"),
        ({"epochs": 1, "weight_decay": -1.0}, ValueError, "weight_decay"),
        ({"epochs": 1, "schedule": "linear"}, ValueError, "schedule"),
        ({"epochs": 1, "schedule": "step", "milestones": (0.8, 0.3)}, ValueError, "milestones"),
        ({"epochs": 1, "amp": True, "device": "cpu"}, ValueError, "CUDA"),
        ({"epochs": 1, "device": "nonsense"}, ValueError, "device"),
    ],
)
def test_fit_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    loader = DataLoader(_blobs(16), batch_size=8)
    with pytest.raises(error, match=match):
        fit(nn.Linear(2, 3), loader, progress=False, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_fit_cuda_without_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        fit(nn.Linear(2, 3), DataLoader(_blobs(8)), epochs=1, device="cuda", progress=False)


def test_set_seed_validates() -> None:
    with pytest.raises(TypeError):
        set_seed(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        set_seed(-1)
