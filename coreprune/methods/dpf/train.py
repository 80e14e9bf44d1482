"""The DPF training pass: `dpf_train` checks its arguments, builds the masker for the form asked
for, and runs `coreprune.training.fit` with a step hook that recomputes the mask on schedule and
wraps every forward and backward pass in the pruned model.

The loop owns no mask mechanics (those are `masks` and `units`) and no schedule (`schedule`):
it only decides when each is asked and collects the history.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence, Sized
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from coreprune.checks import (
    check_bool,
    check_choice,
    check_float,
    check_fraction,
    check_int,
    check_module,
)
from coreprune.methods.dpf.masks import Loss, _Masker, _WeightMasker
from coreprune.methods.dpf.result import DPFHistory, DPFResult
from coreprune.methods.dpf.schedule import _check_sparsity, cubic_sparsity
from coreprune.methods.dpf.units import _UnitMasker
from coreprune.surgery.graph import PrunablePair
from coreprune.torch_utils import resolve_device
from coreprune.training import TrainHistory, fit, set_seed
from coreprune.training.schedules import Schedule

__all__ = ["dpf_train"]

SCOPES = ("global", "layer")


def dpf_train(
    model: nn.Module,
    train_loader: Iterable[Any],
    *,
    target: float,
    epochs: int,
    lr: float = 0.1,
    structured: bool = False,
    update_every: int = 16,
    initial_sparsity: float = 0.0,
    ramp: tuple[float, float] = (0.0, 1.0),
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 1e-4,
    schedule: str = "cosine",
    scope: str = "global",
    layers: Sequence[str] | None = None,
    allow_collapse: bool = False,
    pairs: Sequence[PrunablePair] | None = None,
    example_input: torch.Tensor | None = None,
    loss: Loss = F.cross_entropy,
    val_loader: Iterable[Any] | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> DPFResult:
    """Train a copy of `model` with DPF for `epochs` epochs and return the pruned model.

    `target`: unstructured, the fraction of the scored weights masked at the end (as
    `prune_weights`' sparsity); structured, the fraction of the model's params removed (as
    `compress`'s target, uniform allocation). Sparsity ramps from `initial_sparsity` to `target`
    on the cubic schedule between the fractions `ramp` = (start, end) of all steps; the mask is
    recomputed every `update_every` steps and once more after the last step, at `target`. In
    structured mode the schedule counts units: pair i masks round(s_t / target * (n_i - k_i)) of
    its n_i units, k_i being compress's final count.

    Training runs through `coreprune.training.fit` (float32, one process): SGD with
    `momentum`, `nesterov`, `weight_decay` (on the dense weights) and `schedule` ("cosine",
    "step" at 50% and 75% of the epochs, or "constant"), set per step; its `step_hook` updates
    the mask and wraps each forward and backward pass in the pruned model. `seed` seeds the
    global RNGs once, before the copy is made. `loss(outputs, labels)` is the training loss; a
    non-finite value stops training at that step (FloatingPointError). `device` None: CUDA when
    available. `progress`: a bar over the steps. `model` is not modified.
    """

    final = _check(model, train_loader, target, epochs, lr, structured, update_every,
                  initial_sparsity, ramp, scope, schedule, loss, seed)  # fmt: skip
    if seed is not None:
        set_seed(seed)
    target_device = resolve_device(device)
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    total = epochs * steps_per_epoch
    start, end = round(ramp[0] * total), round(ramp[1] * total)
    if end <= start:
        raise ValueError(
            f"ramp {ramp} covers no step of the {total} training steps; widen it or train longer"
        )

    def sparsity(step: int) -> float:
        return cubic_sparsity(step, final=final, initial=initial_sparsity, start=start, end=end)

    work = copy.deepcopy(model).to(target_device)
    masker: _Masker = (
        _UnitMasker(model, work, final, pairs, example_input)
        if structured
        else _WeightMasker(work, layers, scope, allow_collapse)
    )
    history = DPFHistory()

    def before_step(step: int, _model: nn.Module) -> Any:
        """Recompute the mask every `update_every` steps; the step then runs forward and
        backward at m ⊙ w, and fit applies the update to the dense w after leaving."""
        if step % update_every == 0:
            history.updates.append(masker.update(step, sparsity(step)))
        return masker.pruned()

    def after_epoch(_epoch: int, _model: nn.Module, _fit: TrainHistory) -> None:
        if val_loader is not None:
            numbers = masker.evaluate(val_loader, loss, target_device)
            history.val_loss.append(numbers[0])
            history.val_accuracy.append(numbers[1])

    trained = fit(  # the lr schedule, SGD and loop are fit's; float32, one process, as in the paper
        work, cast(DataLoader, train_loader), epochs=epochs, lr=lr, momentum=momentum,
        nesterov=nesterov, weight_decay=weight_decay, schedule=cast(Schedule, schedule),
        device=target_device, amp=False,
        progress=progress, distributed=False, loss=_finite(loss), step_hook=before_step,
        on_epoch_end=after_epoch,
    )  # fmt: skip
    history.train_loss = list(trained.train_loss)
    history.train_accuracy = list(trained.train_accuracy)
    history.lr = list(trained.lr)
    history.updates.append(masker.update(total, sparsity(total)))
    out, masks, report = masker.finish()
    return DPFResult(out, masks, structured, float(target), history, report)


def _check(
    model: object, loader: object, target: object, epochs: object, lr: object, structured: object,
    update_every: object, initial: object, ramp: object, scope: object, schedule: object,
    loss: object, seed: object,
) -> float:  # fmt: skip
    check_module(model, "model")
    if not (isinstance(loader, Iterable) and isinstance(loader, Sized)):
        raise TypeError(
            f"train_loader must be a DataLoader (or a list of (inputs, labels) batches), got "
            f"{type(loader).__name__}"
        )
    if len(loader) == 0:
        raise ValueError("train_loader is empty")
    check_bool(structured, "structured")
    value = _check_sparsity(target, "target")
    if structured and value == 0:
        raise ValueError("structured DPF needs target in (0, 1): the fraction of params to remove")
    check_int(epochs, "epochs", minimum=1)
    check_float(lr, "lr", low=0.0, low_open=True)
    check_int(update_every, "update_every (the paper uses 16)", minimum=1)
    start_value = _check_sparsity(initial, "initial_sparsity")
    if start_value > value:
        raise ValueError(
            f"initial_sparsity {start_value} exceeds target {value}; pass initial_sparsity <= target"
        )
    if not (isinstance(ramp, tuple) and len(ramp) == 2):
        raise TypeError("ramp must be a (start, end) tuple of fractions of training")
    a = check_fraction(ramp[0], "ramp[0]", low_open=False, high_open=False)
    b = check_fraction(ramp[1], "ramp[1]", low_open=False, high_open=False)
    if not a < b:
        raise ValueError(f"ramp must satisfy 0 <= start < end <= 1, got {ramp}")
    check_choice(scope, SCOPES, "scope")
    check_choice(schedule, ("cosine", "step", "constant"), "schedule")
    if not callable(loss):
        raise TypeError("loss must be callable as loss(outputs, labels)")
    if seed is not None:
        check_int(seed, "seed (or None)")
    return value


def _finite(loss: Loss) -> Loss:
    """`loss` checked at every step, so a diverging run stops at the step it diverges."""

    def checked(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        value = loss(outputs, labels)
        if not torch.isfinite(value):
            raise FloatingPointError(f"DPF training loss became {float(value)}; lower lr")
        return value

    return checked
