"""A small, solid SGD trainer: Nesterov momentum, cosine or step schedule, CUDA with mixed
precision and channels-last when a GPU is present, plain float32 on CPU."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ._device import resolve_device, unpack_batch
from .metrics import evaluate
from .schedules import Schedule, check_schedule, lr_factor


@dataclass
class TrainHistory:
    """Per-epoch records of one ``fit`` call (validation lists stay empty without a
    validation loader). Accuracies are fractions in [0, 1]; ``lr`` is the rate of the last
    step of each epoch; ``train_loss``/``train_accuracy`` average over the epoch's steps
    while the weights were changing."""

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    device: str = "cpu"
    amp: bool = False

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    @property
    def best_val_accuracy(self) -> float | None:
        return max(self.val_accuracy) if self.val_accuracy else None

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready form for saving with results."""
        return asdict(self)


def _check_number(value: object, name: str, low: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number < low or (low_open and number == low):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return number


def _amp_settings(device: torch.device, amp: bool | None) -> tuple[bool, torch.dtype | None]:
    """Mixed precision is on by default on CUDA (bfloat16 where supported, else float16 with
    loss scaling) and unavailable on CPU."""
    if amp is None:
        amp = device.type == "cuda"
    if not isinstance(amp, bool):
        raise TypeError(f"amp must be a bool or None, got {type(amp).__name__}")
    if amp and device.type != "cuda":
        raise ValueError("amp=True needs a CUDA device; use amp=None or False on CPU")
    if not amp:
        return False, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return True, dtype


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    epochs: int,
    lr: float = 0.1,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
    schedule: Schedule = "cosine",
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
    val_loader: DataLoader | None = None,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    progress: bool = True,
) -> TrainHistory:
    """Train ``model`` in place with SGD on cross-entropy and return its history.

    Training is the point, so the model's weights change, and it is moved to ``device``
    (default: CUDA if available, else CPU); on CUDA it also switches to channels-last memory
    format. Its train/eval mode is restored at the end. ``schedule``: "cosine" (per step, to
    zero), "step" (times ``gamma`` at each fraction of ``epochs`` in ``milestones``) or
    "constant". Weight decay applies to all parameters. A non-finite training loss raises
    FloatingPointError rather than training on garbage.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    lr = _check_number(lr, "lr", 0.0, low_open=True)
    momentum = _check_number(momentum, "momentum", 0.0)
    if momentum >= 1.0:
        raise ValueError(f"momentum must be < 1, got {momentum}")
    if nesterov and momentum == 0.0:
        raise ValueError("nesterov=True needs momentum > 0; set nesterov=False")
    weight_decay = _check_number(weight_decay, "weight_decay", 0.0)
    marks = check_schedule(schedule, milestones, gamma)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("train_loader is empty")

    target = resolve_device(device)
    use_amp, amp_dtype = _amp_settings(target, amp)
    channels_last = target.type == "cuda"
    model.to(target)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    optimizer = torch.optim.SGD(
        params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    history = TrainHistory(device=str(target), amp=use_amp)
    total_steps = epochs * steps_per_epoch
    was_training = model.training
    step = 0
    bar = tqdm(total=total_steps, disable=not progress, desc="train", unit="step")
    try:
        for epoch in range(epochs):
            model.train()
            start = time.perf_counter()
            loss_sum = torch.zeros((), dtype=torch.float64, device=target)
            correct = torch.zeros((), dtype=torch.int64, device=target)
            seen = 0
            for batch in train_loader:
                factor = lr_factor(
                    schedule, step, total_steps, epoch=epoch, epochs=epochs,
                    milestones=marks, gamma=gamma,
                )  # fmt: skip
                for group in optimizer.param_groups:
                    group["lr"] = lr * factor
                x, y = unpack_batch(batch, target, channels_last)
                autocast = (
                    torch.autocast(device_type="cuda", dtype=amp_dtype)
                    if use_amp
                    else nullcontext()
                )
                with autocast:
                    logits = model(x)
                    loss = F.cross_entropy(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_sum += loss.detach().double() * len(y)
                correct += (logits.detach().argmax(dim=1) == y).sum()
                seen += len(y)
                step += 1
                bar.update(1)
            train_loss = loss_sum.item() / seen
            if not math.isfinite(train_loss):
                raise FloatingPointError(
                    f"training loss became {train_loss} in epoch {epoch + 1}; lower lr"
                )
            history.train_loss.append(train_loss)
            history.train_accuracy.append(correct.item() / seen)
            history.lr.append(optimizer.param_groups[0]["lr"])
            postfix = {"loss": f"{train_loss:.4f}", "acc": f"{correct.item() / seen:.4f}"}
            if val_loader is not None:
                result = evaluate(model, val_loader)
                history.val_loss.append(result["loss"])
                history.val_accuracy.append(result["accuracy"])
                postfix["val_acc"] = f"{result['accuracy']:.4f}"
            history.epoch_seconds.append(time.perf_counter() - start)
            bar.set_postfix(postfix, refresh=False)
    finally:
        bar.close()
        model.train(was_training)
    return history
