"""fit's per-step hook and loss argument: the hook sees every step in order, its context wraps
forward and backward but not the update, a hook that does nothing changes nothing, and fit puts
every submodule's train flag back (a frozen batch norm stays frozen)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coreprune.harness.training import fit, set_seed

torch.set_num_threads(1)

SETTINGS: dict[str, Any] = {
    "lr": 0.05,
    "schedule": "cosine",
    "progress": False,
    "device": "cpu",
    "seed": 3,
}


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(48) % 3
    centres = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    x = centres[labels] + 0.5 * torch.randn(48, 2, generator=g)
    return DataLoader(TensorDataset(x, labels), batch_size=16, shuffle=True)


def _mlp() -> nn.Sequential:
    set_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_hook_sees_every_step_in_order_with_the_model() -> None:
    model, seen = _mlp(), []

    def hook(step: int, net: nn.Module) -> None:
        assert net is model
        seen.append(step)

    fit(model, _loader(), epochs=2, step_hook=hook, **SETTINGS)
    assert seen == list(range(6))  # 3 batches x 2 epochs


def test_a_hook_that_does_nothing_changes_nothing() -> None:
    plain, hooked = _mlp(), _mlp()
    a = fit(plain, _loader(), epochs=2, **SETTINGS)
    b = fit(
        hooked, _loader(), epochs=2, step_hook=lambda s, m: contextlib.nullcontext(), **SETTINGS
    )
    assert a.train_loss == b.train_loss and a.lr == b.lr
    for key, value in _state(plain).items():
        assert torch.equal(value, hooked.state_dict()[key])


def test_context_wraps_forward_and_backward_but_not_the_update() -> None:
    """A context that masks the first layer's weight on entry and restores it on exit: the
    gradient is that of the masked model (zero for a masked weight's inputs only through the
    loss), and the update lands on the restored dense weight after the context has left."""
    model = _mlp()
    first = model[0]
    assert isinstance(first, nn.Linear)
    weight = first.weight
    mask = torch.ones_like(weight, dtype=torch.bool)
    mask[0] = False  # unit 0 of the first layer is masked during forward and backward
    events: list[str] = []
    first.register_forward_pre_hook(lambda m, a: events.append("forward"))

    @contextlib.contextmanager
    def masked() -> Iterator[None]:
        events.append("enter")
        dense = weight.detach().clone()
        with torch.no_grad():
            weight.mul_(mask)
        yield
        assert weight.grad is not None  # backward ran inside
        events.append("exit")
        with torch.no_grad():
            weight.copy_(dense)
        restored.append(weight.detach().clone())

    restored: list[torch.Tensor] = []
    fit(model, _loader(), epochs=1, weight_decay=0.0, momentum=0.0, nesterov=False,
        step_hook=lambda s, m: masked(), **SETTINGS)  # fmt: skip
    assert events == ["enter", "forward", "exit"] * 3
    # the row of the masked unit: zero input to the pruned model's forward, but its gradient
    # (the feedback) still moved the dense weight, which the update applied after the exit
    assert not torch.equal(restored[1][0], restored[0][0])
    assert bool((weight[0] != 0).all())


def test_resumed_run_continues_the_step_count(tmp_path: Path) -> None:
    path, seen = tmp_path / "run.pt", []

    def stop_after_first(epoch: int, *_: object) -> bool:
        return epoch == 0

    fit(_mlp(), _loader(), epochs=3, checkpoint=path, on_epoch_end=stop_after_first, **SETTINGS)
    # stopping early is recorded; resume a fresh run from epoch 1's checkpoint by path
    state = torch.load(path, weights_only=False)
    state["history"]["stopped_early"] = False
    torch.save(state, path)
    fit(_mlp(), _loader(), epochs=3, resume=path,
        step_hook=lambda s, m: seen.append(s), **SETTINGS)  # fmt: skip
    assert seen == list(range(3, 9))


def test_custom_loss_is_used_and_accuracy_needs_class_scores() -> None:
    calls = []

    def counted(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls.append(outputs.dtype)
        return F.cross_entropy(outputs, targets)

    default, custom = _mlp(), _mlp()
    a = fit(default, _loader(), epochs=1, **SETTINGS)
    b = fit(custom, _loader(), epochs=1, loss=counted, **SETTINGS)
    assert calls == [torch.float32] * 3  # once per step, on float32 outputs
    assert b.train_loss == a.train_loss  # cross-entropy is the default

    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 2, generator=g)
    regression = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)
    set_seed(0)
    history = fit(nn.Linear(2, 1), regression, epochs=2, loss=F.mse_loss, **SETTINGS)
    assert history.train_accuracy == [0.0, 0.0]  # float targets: no classes to count
    assert history.train_loss[1] < history.train_loss[0]


def test_frozen_batch_norm_stays_frozen_after_fit() -> None:
    model = _mlp()
    model.train()
    model[1].eval()  # frozen statistics inside a training model
    fit(model, _loader(), epochs=1, **SETTINGS)
    assert model.training and not model[1].training
    model.eval()
    fit(model, _loader(), epochs=1, **SETTINGS)
    assert not any(m.training for m in model.modules())


def test_bad_hook_or_loss_is_refused_before_training() -> None:
    model = _mlp()
    before = _state(model)
    with pytest.raises(TypeError, match="step_hook"):
        fit(model, _loader(), epochs=1, step_hook=3, **SETTINGS)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss"):
        fit(model, _loader(), epochs=1, loss="mse", **SETTINGS)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="context manager"):
        fit(model, _loader(), epochs=1, step_hook=lambda s, m: 1, **SETTINGS)  # type: ignore[arg-type,return-value]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
