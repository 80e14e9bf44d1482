"""Checkpoint and resume: an interrupted run resumed from its checkpoint ends bit-exactly where
an uninterrupted run ends; mismatches and damaged files fail loudly; on_epoch_end can stop."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import coreprune.training.checkpoint as checkpoint_module
from coreprune.harness.training import TrainHistory, fit, load_checkpoint, save_checkpoint, set_seed


def _blobs(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3
    centres = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    return centres[labels] + 0.5 * torch.randn(n, 2, generator=g), labels


class _Crashing(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Serves the blobs, then raises after ``budget`` examples: a crash in mid-epoch."""

    def __init__(self, budget: int) -> None:
        self.x, self.y = _blobs()
        self.budget = budget

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.budget -= 1
        if self.budget < 0:
            raise RuntimeError("simulated crash")
        return self.x[index], self.y[index]


def _mlp(width: int = 16) -> nn.Module:
    # dropout and batch norm: resume must restore RNG states and running statistics too
    return nn.Sequential(
        nn.Linear(2, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(0.2), nn.Linear(width, 3)
    )


def _loader(dataset: Dataset | None = None) -> DataLoader:
    return DataLoader(dataset or TensorDataset(*_blobs()), batch_size=16, shuffle=True)


SETTINGS = {"epochs": 4, "lr": 0.05, "schedule": "cosine", "progress": False}


@pytest.mark.parametrize("seed", [None, 5])
def test_resume_after_crash_is_bit_exact(tmp_path: Path, seed: int | None) -> None:
    set_seed(0)
    straight = _mlp()
    full = fit(straight, _loader(), seed=seed, checkpoint=tmp_path / "a.pt", **SETTINGS)

    set_seed(0)
    crashed = _mlp()
    path = tmp_path / "b.pt"
    with pytest.raises(RuntimeError, match="simulated crash"):  # dies in epoch 3 of 4
        fit(crashed, _loader(_Crashing(2 * 96 + 40)), seed=seed, checkpoint=path, **SETTINGS)
    assert load_checkpoint(path)["epoch"] == 2  # both finished epochs were kept

    set_seed(123)  # another RNG state and other initial weights: resume must replace both
    resumed = _mlp()
    history = fit(resumed, _loader(), seed=seed, checkpoint=path, resume=True, **SETTINGS)
    for name, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    assert history.train_loss == full.train_loss and history.lr == full.lr
    assert history.epochs == 4 and len(history.epoch_seconds) == 4
    assert load_checkpoint(path)["epoch"] == 4


def test_checkpoint_loads_weights_only_and_matches_model(tmp_path: Path) -> None:
    set_seed(0)
    model = _mlp()
    fit(model, _loader(), epochs=2, lr=0.05, progress=False, checkpoint=tmp_path / "c.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # no arbitrary pickle needed
    assert raw["epoch"] == 2 and raw["step"] == 12
    assert set(raw["optimizer"]["state"])  # momentum buffers are saved
    for name, tensor in model.state_dict().items():
        assert torch.equal(raw["model"][name], tensor), name
    assert TrainHistory.from_dict(raw["history"]).epochs == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_finished_run_trains_no_more(tmp_path: Path) -> None:
    set_seed(0)
    model = _mlp()
    path = tmp_path / "done.pt"
    fit(model, _loader(), epochs=2, lr=0.05, progress=False, checkpoint=path)
    other = _mlp()
    history = fit(other, _loader(), epochs=2, lr=0.05, progress=False, resume=path)
    assert history.epochs == 2
    for name, tensor in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], tensor), name


def test_resume_true_without_file_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "new.pt"
    history = fit(_mlp(), _loader(), epochs=1, progress=False, checkpoint=path, resume=True)
    assert history.epochs == 1 and path.is_file()


def test_other_architecture_names_the_parameter(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    fit(_mlp(16), _loader(), epochs=1, progress=False, checkpoint=path)
    with pytest.raises(ValueError, match=r"'0\.weight' has shape \(16, 2\) .* \(8, 2\)"):
        fit(_mlp(8), _loader(), epochs=2, progress=False, checkpoint=path, resume=True)
    deeper = nn.Sequential(*_mlp(16), nn.ReLU(), nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"'6\.weight'.*checkpoint does not"):
        fit(deeper, _loader(), epochs=2, progress=False, resume=path)


def test_other_settings_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    fit(_mlp(), _loader(), epochs=2, lr=0.05, progress=False, checkpoint=path)
    with pytest.raises(ValueError, match=r"lr=0\.05 .* lr=0\.1"):
        fit(_mlp(), _loader(), epochs=2, lr=0.1, progress=False, resume=path)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        small = DataLoader(TensorDataset(*_blobs()), batch_size=32)
        fit(_mlp(), small, epochs=2, lr=0.05, progress=False, resume=path)


def test_damaged_or_foreign_checkpoint_names_file(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    fit(_mlp(), _loader(), epochs=1, progress=False, checkpoint=path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"c\.pt"):
        fit(_mlp(), _loader(), epochs=2, progress=False, resume=path)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(
        pickle.dumps({"format": checkpoint_module.FORMAT, "x": _Crashing(1)}, protocol=2)
    )
    with pytest.raises(ValueError, match=r"evil\.pt"):
        load_checkpoint(evil)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a coreprune training checkpoint"):
        load_checkpoint(other)


def test_failed_write_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"format": checkpoint_module.FORMAT, "epoch": 1})
    real_save = torch.save

    def dies_midway(obj: object, file: object) -> None:
        real_save(obj, file)
        file.truncate(10)  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"format": checkpoint_module.FORMAT, "epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_on_epoch_end_sees_each_epoch_and_can_stop(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    model = _mlp()

    def detector(epoch: int, net: nn.Module, history: TrainHistory) -> bool:
        assert net is model and net.training
        seen.append((epoch, history.epochs))
        return epoch == 1

    path = tmp_path / "c.pt"
    history = fit(
        model, _loader(), epochs=5, progress=False, on_epoch_end=detector, checkpoint=path
    )
    assert seen == [(0, 1), (1, 2)]
    assert history.stopped_early and history.epochs == 2
    # a stopped run stays stopped when resumed
    again = fit(_mlp(), _loader(), epochs=5, progress=False, checkpoint=path, resume=True)
    assert again.stopped_early and again.epochs == 2


def test_warmup_runs_at_a_fraction_of_the_rate() -> None:
    history = fit(
        _mlp(), _loader(), epochs=4, lr=0.1, schedule="step", warmup_epochs=1, progress=False
    )
    assert history.lr == pytest.approx([0.01, 0.1, 0.01, 0.001])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"resume": True}, ValueError, "checkpoint=PATH"),
        ({"resume": "/nonexistent/c.pt"}, FileNotFoundError, "resume"),
        ({"resume": 3}, TypeError, "resume"),
        ({"checkpoint": 3}, TypeError, "checkpoint"),
        ({"on_epoch_end": "stop"}, TypeError, "on_epoch_end"),
        ({"seed": -1}, ValueError, "seed"),
        ({"warmup_epochs": 2}, ValueError, "warmup_epochs"),
        ({"warmup_factor": 0.0}, ValueError, "warmup_factor"),
        ({"distributed": "yes"}, TypeError, "distributed"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        fit(_mlp(), _loader(), epochs=2, progress=False, **kwargs)
