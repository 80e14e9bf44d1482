"""One SGD trainer for training from scratch, for fine-tuning after pruning and for methods that
prune while they train: Nesterov momentum, cosine or step schedule, CUDA with mixed precision
and channels-last when a GPU is present, plain float32 on CPU, checkpoint/resume, DDP under
torchrun, and a per-step hook through which such a method changes what each step computes."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from coreprune.torch_utils import restore_flags, training_flags

from ._device import unpack_batch
from .checkpoint import (
    FORMAT,
    as_path,
    check_config_matches,
    check_state_matches,
    load_checkpoint,
    save_checkpoint,
)
from .distributed import DistContext, setup_distributed, shard_loader, wrap_model
from .history import TrainHistory
from .metrics import evaluate
from .schedules import Schedule
from .seeding import epoch_seed, restore_rng, rng_snapshot, seed_epoch
from .settings import TrainSettings

__all__ = ["EpochCallback", "Loss", "StepHook", "TrainHistory", "fit"]

EpochCallback = Callable[[int, nn.Module, TrainHistory], Any]
StepHook = Callable[[int, nn.Module], AbstractContextManager[Any] | None]
"""``hook(step, model)`` runs before optimiser step ``step`` (0-based, counted over the whole
run); a returned context manager wraps that step's forward pass and backward pass, but not the
optimiser update."""
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(outputs, targets)``: a scalar tensor to minimise, averaged over the batch."""


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


def _resume_source(resume: object, checkpoint: Path | None) -> Path | None:
    """Which file to resume from: None for a fresh start. ``resume=True`` resumes from
    ``checkpoint`` when that file exists (so a rerun script picks up where it stopped) and
    starts fresh otherwise; ``resume=PATH`` must exist."""
    if resume is False:
        return None
    if resume is True:
        if checkpoint is None:
            raise ValueError("resume=True needs checkpoint=PATH (or pass resume=PATH)")
        return checkpoint if checkpoint.is_file() else None
    path = as_path(resume, "resume")
    if not path.is_file():
        raise FileNotFoundError(f"resume={str(path)!r}: no checkpoint there; check the path")
    return path


def _reseed_epoch(seed: int | None, epoch: int, loader: Iterable[Any], rank: int) -> None:
    """Make epoch ``epoch``'s data order a function of (seed, epoch) alone: seed the global
    RNGs and the loader's own generator, and tell an epoch-aware sampler the epoch."""
    if seed is not None:
        seed_epoch(seed, epoch, rank)
        generator = getattr(loader, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(epoch_seed(seed, epoch, rank, stream=1))
    set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)


def _step_context(
    hook: StepHook | None, step: int, model: nn.Module
) -> AbstractContextManager[Any]:
    """The context the step hook asks for (none when there is no hook or it returns None)."""
    if hook is None:
        return nullcontext()
    context = hook(step, model)
    if context is None:
        return nullcontext()
    if not (hasattr(context, "__enter__") and hasattr(context, "__exit__")):
        raise TypeError(
            f"step_hook must return a context manager or None, got {type(context).__name__}"
        )
    return context


def _train_epoch(
    net: nn.Module,
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rate: Callable[[int], float],
    step: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    bar: tqdm,
    loss_fn: Loss,
    step_hook: StepHook | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """One pass over ``loader``; returns (loss sum, correct, seen) on ``device`` and the
    step counter after the epoch. Accuracy counts only batches whose outputs are class scores
    (2-d) and whose targets are class indices; other batches add nothing to ``correct``."""
    channels_last = device.type == "cuda"
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = torch.zeros((), dtype=torch.int64, device=device)
    for batch in loader:
        for group in optimizer.param_groups:
            group["lr"] = rate(step)
        x, y = unpack_batch(batch, device, channels_last)
        autocast = (
            torch.autocast(device_type="cuda", dtype=autocast_dtype)
            if autocast_dtype is not None
            else nullcontext()
        )
        with _step_context(step_hook, step, model):
            with autocast:
                logits = net(x)
                loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().double() * len(y)
        if logits.ndim == 2 and not y.is_floating_point():
            correct += (logits.detach().argmax(dim=1) == y).sum()
        seen += len(y)
        step += 1
        bar.update(1)
    return loss_sum, correct, seen, step


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
    warmup_epochs: int = 0,
    warmup_factor: float = 0.1,
    val_loader: DataLoader | None = None,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool | str | os.PathLike[str] = False,
    seed: int | None = None,
    on_epoch_end: EpochCallback | None = None,
    distributed: bool | None = None,
    loss: Loss | None = None,
    step_hook: StepHook | None = None,
) -> TrainHistory:
    """Train ``model`` in place with SGD on cross-entropy (or ``loss``) and return its history.

    Training is the point, so the model's weights change, and it is moved to ``device``
    (default: CUDA if available, else CPU); on CUDA it also switches to channels-last memory
    format and mixed precision (``amp``). Every submodule's train/eval flag is restored at the
    end (a frozen batch norm inside a training model stays frozen).

    - ``schedule``: "cosine" (per step, to zero), "step" (times ``gamma`` at each fraction of
      ``epochs`` in ``milestones``) or "constant" (fine-tuning); the first ``warmup_epochs``
      run at ``warmup_factor`` x ``lr``. Weight decay applies to all parameters.
    - ``checkpoint=PATH`` saves model, optimizer, schedule position, RNG states and history
      atomically after every epoch. ``resume=True`` continues from that file if it exists
      (fresh start otherwise); ``resume=PATH`` continues from PATH. The architecture and the
      settings above must match the checkpoint's. On CPU a resumed run ends with exactly the
      weights of an uninterrupted one.
    - ``seed``: when given, each epoch's data order and augmentation are re-seeded from
      ``(seed, epoch)``; when None they follow the global RNG (seed it with ``set_seed``).
    - ``on_epoch_end(epoch, model, history)`` runs after each epoch (0-based ``epoch``,
      validation done); a truthy return stops training (``history.stopped_early``). The
      epoch's checkpoint is written after it returns.
    - ``distributed``: None trains with DDP when a process group is initialised or torchrun
      started several processes; True requires that; False never. Under DDP each rank uses
      the loader's batch size on its shard of the data; rank 0 alone writes checkpoints and
      shows progress.
    - ``loss(outputs, targets)``: the training loss (default ``F.cross_entropy``), given
      float32 outputs. Validation still reports cross-entropy and accuracy.
    - ``step_hook(step, model)``: called before every optimiser step (``step`` 0-based over
      the whole run, so a resumed run continues the count; ``model`` is the unwrapped model).
      It may change the model (e.g. recompute a pruning mask) and may return a context
      manager, entered around that step's forward and backward pass and left before the
      optimiser update: a method that trains the pruned model m * w but updates the dense w
      masks on entry and puts w back on exit. State the hook keeps is its own to save: a
      checkpoint holds the model, optimiser and RNGs only.

    A non-finite training loss raises FloatingPointError rather than training on garbage.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    settings = TrainSettings(
        epochs=epochs, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
        schedule=schedule, milestones=milestones, gamma=gamma, warmup_epochs=warmup_epochs,
        warmup_factor=warmup_factor, seed=seed,
    )  # fmt: skip
    if on_epoch_end is not None and not callable(on_epoch_end):
        raise TypeError(f"on_epoch_end must be callable, got {type(on_epoch_end).__name__}")
    if loss is not None and not callable(loss):
        raise TypeError(
            f"loss must be callable as loss(outputs, targets), got {type(loss).__name__}"
        )
    if step_hook is not None and not callable(step_hook):
        raise TypeError(
            f"step_hook must be callable as step_hook(step, model), got {type(step_hook).__name__}"
        )
    loss_fn: Loss = F.cross_entropy if loss is None else loss
    checkpoint_path = None if checkpoint is None else as_path(checkpoint, "checkpoint")
    if not isinstance(resume, bool) and not isinstance(resume, (str, os.PathLike)):
        raise TypeError(f"resume must be a bool or a path, got {type(resume).__name__}")
    resume_path = _resume_source(resume, checkpoint_path)
    try:
        if len(train_loader) == 0:
            raise ValueError("train_loader is empty; give fit at least one batch")
    except TypeError as error:
        raise TypeError(
            "train_loader must be a DataLoader (or a sized iterable of batches)"
        ) from error

    context, target = setup_distributed(distributed, device)
    use_amp, amp_dtype = _amp_settings(target, amp)
    model.to(target)
    if target.type == "cuda":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in the stubs
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    optimizer = torch.optim.SGD(
        params,
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=nesterov,
        weight_decay=settings.weight_decay,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    state = None if resume_path is None else load_checkpoint(resume_path)
    if state is not None:
        data_seed = state.get("data_seed")
    elif seed is not None or not context.enabled:
        data_seed = seed
    else:  # every rank must shard with the same seed: take rank 0's draw
        data_seed = context.broadcast_int(int(torch.randint(0, 2**31, ()).item()), target)
    loader = shard_loader(train_loader, context, 0 if data_seed is None else data_seed)
    steps_per_epoch = len(loader)
    config = settings.config(steps_per_epoch, context.world_size)

    history = TrainHistory(device=str(target), amp=use_amp, world_size=context.world_size)
    start_epoch = 0
    if state is not None:
        start_epoch = _restore(
            state, resume_path, model, optimizer, scaler, config, context, target
        )
        history = TrainHistory.from_dict(state["history"])
        history.device, history.amp = str(target), use_amp
    flags = training_flags(model)
    if start_epoch >= epochs or history.stopped_early:
        return history

    def rate(step: int) -> float:
        return settings.rate(step, steps_per_epoch)

    net = wrap_model(model, context, target)
    step = start_epoch * steps_per_epoch
    bar = tqdm(
        total=epochs * steps_per_epoch,
        initial=step,
        disable=not progress or not context.is_main,
        desc="train",
        unit="step",
    )
    try:
        for epoch in range(start_epoch, epochs):
            model.train()
            start = time.perf_counter()
            _reseed_epoch(seed, epoch, loader, context.rank)
            loss_sum, correct, seen, step = _train_epoch(
                net, model, loader, optimizer, scaler, rate, step, target, amp_dtype, bar,
                loss_fn, step_hook,
            )  # fmt: skip
            context.all_reduce_sum(loss_sum, correct, seen)
            train_loss = loss_sum.item() / seen.item()
            if not math.isfinite(train_loss):
                raise FloatingPointError(
                    f"training loss became {train_loss} in epoch {epoch + 1}; lower lr"
                )
            history.train_loss.append(train_loss)
            history.train_accuracy.append(correct.item() / seen.item())
            history.lr.append(optimizer.param_groups[0]["lr"])
            postfix = {"loss": f"{train_loss:.4f}", "acc": f"{history.train_accuracy[-1]:.4f}"}
            if val_loader is not None:
                result = evaluate(model, val_loader)
                history.val_loss.append(result["loss"])
                history.val_accuracy.append(result["accuracy"])
                postfix["val_acc"] = f"{result['accuracy']:.4f}"
            history.epoch_seconds.append(time.perf_counter() - start)
            bar.set_postfix(postfix, refresh=False)
            stop = on_epoch_end is not None and bool(on_epoch_end(epoch, model, history))
            history.stopped_early = bool(context.broadcast_int(int(stop), target))
            if checkpoint_path is not None:
                payload = {
                    "format": FORMAT,
                    "epoch": epoch + 1,
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "history": history.to_dict(),
                    "rng": context.all_gather(rng_snapshot(target)),
                    "config": config,
                    "data_seed": data_seed,
                }
                if context.is_main:
                    save_checkpoint(checkpoint_path, payload)
                context.barrier()
            if history.stopped_early:
                break
    finally:
        bar.close()
        restore_flags(model, flags)
    return history


def _restore(
    state: dict[str, Any],
    path: Path | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: dict[str, Any],
    context: DistContext,
    device: torch.device,
) -> int:
    """Load a checkpoint's weights, optimizer, scaler and this rank's RNG states after
    checking they fit; returns the number of finished epochs."""
    check_state_matches(model.state_dict(), state["model"], path)
    check_config_matches(state.get("config", {}), config, path)
    model.load_state_dict(state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as error:
        raise ValueError(
            f"checkpoint {path}: optimizer state does not fit this model's trainable "
            f"parameters ({error}); freeze the same parameters as the run that wrote it"
        ) from error
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    snapshots = state.get("rng") or []
    if len(snapshots) == context.world_size:
        restore_rng(snapshots[context.rank], device)
    return int(state["epoch"])
