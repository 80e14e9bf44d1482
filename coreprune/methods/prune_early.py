"""Lubana & Dick's "prune early" protocol: prune in rounds during the first epochs of training,
then train on (ICLR 2021, "A Gradient Flow Framework for Analyzing Network Pruning").

The importance measures live in `coreprune.scoring.gradflow`; this module sits above
`compress` and `training`, which it drives.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from coreprune.checks import check_choice, check_fraction, check_int, check_module
from coreprune.compress import CompressReport, compress
from coreprune.scoring.base import Pruner
from coreprune.scoring.gradflow import GRADFLOW_MEASURES
from coreprune.scoring.registry import SCORERS, make_scorer, resolve_method
from coreprune.surgery.graph import PrunablePair
from coreprune.torch_utils import eval_mode, model_device
from coreprune.training import TrainHistory, evaluate, fit, set_seed

__all__ = [
    "EARLY_SCHEDULES",
    "PruneEarlyResult",
    "RoundRecord",
    "early_schedule",
    "loss_and_grad_norm",
    "prune_early",
]

EARLY_SCHEDULES = ("paper", "geometric")


# --------------------------------------------------------------------------------------------
# Prune early: alternate training and unit pruning, then train on


@dataclass(frozen=True)
class RoundRecord:
    """One pruning round. `removed` is the cumulative fraction of the original model's params
    gone after it. Probe/validation numbers are None when no probe/val_loader was given."""

    round: int
    epochs_trained: int
    scheduled: float
    round_target: float | None
    params_before: int
    params_after: int
    removed: float
    probe_loss_before: float | None
    probe_loss_after: float | None
    probe_grad_norm_before: float | None
    probe_grad_norm_after: float | None
    val_accuracy_before: float | None
    val_accuracy_after: float | None
    val_loss_before: float | None
    val_loss_after: float | None
    report: CompressReport | None


@dataclass
class PruneEarlyResult:
    """The pruned, trained model (a new module), one record per round and the training logs."""

    model: nn.Module
    method: str
    target: float
    params_original: int
    rounds: list[RoundRecord]
    warmup: TrainHistory | None
    between: list[TrainHistory] = field(default_factory=list)
    final: TrainHistory | None = None

    @property
    def removed(self) -> float:
        """Fraction of the original params removed in the end."""
        return self.rounds[-1].removed if self.rounds else 0.0

    def __str__(self) -> str:
        lines = [
            f"prune early ({self.method}): target {100 * self.target:g}% of params, "
            f"removed {100 * self.removed:.2f}% in {len(self.rounds)} rounds"
        ]
        for r in self.rounds:
            step = "skipped (already past the schedule)" if r.round_target is None else (
                f"pruned {100 * r.round_target:.2f}% of the current params"
            )  # fmt: skip
            lines.append(
                f"  round {r.round} after {r.epochs_trained} epochs: {step}; "
                f"cumulative {100 * r.removed:.2f}% (schedule {100 * r.scheduled:.2f}%)"
            )
        return "\n".join(lines)


MethodLike = str | Pruner | Callable[[DataLoader], Pruner]


def early_schedule(target: float, rounds: int, kind: str = "paper") -> list[float]:
    """Cumulative fraction of params removed after each round; the last entry is `target`.

    "paper": R_k = k p / (k p + n (1 - p)), the schedule of the paper's code (each round removes
    p / (k p + n (1 - p)) of what remains); "geometric": R_k = 1 - (1 - p)^(k / n), the same
    fraction of what remains every round.
    """
    target = check_fraction(target, "target (the fraction of params to remove)")
    rounds = check_int(rounds, "rounds", minimum=1)
    check_choice(kind, EARLY_SCHEDULES, "schedule")
    out = []
    for k in range(1, rounds + 1):
        if kind == "paper":
            out.append(k * target / (k * target + rounds * (1 - target)))
        else:
            out.append(1 - (1 - target) ** (k / rounds))
    out[-1] = target
    return out


def prune_early(
    model: nn.Module,
    train_loader: DataLoader,
    method: MethodLike,
    target: float,
    *,
    rounds: int = 5,
    epochs_between: int = 1,
    warmup_epochs: int = 0,
    epochs_after: int = 0,
    schedule: str = "paper",
    lr: float = 0.1,
    final_lr: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    allocation: str = "global",
    val_loader: DataLoader | None = None,
    probe: tuple[torch.Tensor, torch.Tensor] | None = None,
    example_input: torch.Tensor | None = None,
    pairs: Sequence[PrunablePair] | None = None,
    method_options: dict[str, Any] | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> PruneEarlyResult:
    """Lubana & Dick's protocol: train `warmup_epochs`, then `rounds` times (train
    `epochs_between` epochs at constant `lr`, score units, remove them with `coreprune.compress`
    so that the cumulative params removed follow `early_schedule`), then train `epochs_after`
    epochs (cosine from `final_lr`, default `lr`). The last round hits `target`.

    `method`: a Pruner, a factory called with `train_loader` each round (fresh data per round,
    as in the paper), or a name: one of GRADFLOW_MEASURES, "grasp" or "snip" (built each round
    as cls(train_loader, **method_options)), or a data-free baseline name. `allocation` is compress's
    ("global": one ranking across layers, as in the paper's code). `probe` (inputs, labels):
    loss and gradient norm are measured on it before and after every pruning step, to check
    what each measure preserves. `model` is not modified; SGD momentum restarts each round
    (the paper's default). `seed` seeds every RNG once at the start.
    """

    check_module(model, "model")
    if not isinstance(train_loader, DataLoader):
        raise TypeError(f"train_loader must be a DataLoader, got {type(train_loader).__name__}")
    plan = early_schedule(target, rounds, schedule)
    for value, name in ((epochs_between, "epochs_between"), (warmup_epochs, "warmup_epochs"),
                        (epochs_after, "epochs_after")):  # fmt: skip
        check_int(value, name, minimum=0)
    make = _pruner_factory(method, method_options)
    if probe is not None and not (
        isinstance(probe, tuple)
        and len(probe) == 2
        and all(isinstance(t, torch.Tensor) for t in probe)
    ):
        raise TypeError("probe must be one (inputs, labels) pair of tensors")
    if seed is not None:
        set_seed(seed)
    work = copy.deepcopy(model)
    original = _params(work)
    result = PruneEarlyResult(work, _method_name(method), float(target), original, [], None)
    if warmup_epochs:
        result.warmup = fit(
            work, train_loader, epochs=warmup_epochs, schedule="constant", progress=progress,
            lr=lr, momentum=momentum, nesterov=False, weight_decay=weight_decay,
        )  # fmt: skip
    epochs = warmup_epochs
    for k, scheduled in enumerate(plan, start=1):
        if epochs_between:
            history = fit(
                work, train_loader, epochs=epochs_between, schedule="constant",
                progress=progress, lr=lr, momentum=momentum, nesterov=False,
                weight_decay=weight_decay,
            )  # fmt: skip
            result.between.append(history)
            epochs += epochs_between
        before = _params(work)
        round_target = 1 - (1 - scheduled) * original / before
        loss_b, norm_b = _probe(work, probe)
        val_b = None if val_loader is None else evaluate(work, val_loader)
        report = None
        if round_target > 1e-12:
            pruner = make(train_loader)
            example = None if example_input is None else example_input.to(model_device(work))
            pruned = compress(
                work, target=round_target, method=pruner, allocation=allocation,
                example_input=example, pairs=pairs, progress=progress,
            )  # fmt: skip
            work, report = pruned.model, pruned.report
        loss_a, norm_a = _probe(work, probe)
        val_a = None if val_loader is None else evaluate(work, val_loader)
        after = _params(work)
        record = RoundRecord(
            round=k, epochs_trained=epochs, scheduled=scheduled,
            round_target=round_target if report is not None else None,
            params_before=before, params_after=after, removed=1 - after / original,
            probe_loss_before=loss_b, probe_loss_after=loss_a,
            probe_grad_norm_before=norm_b, probe_grad_norm_after=norm_a,
            val_accuracy_before=None if val_b is None else val_b["accuracy"],
            val_accuracy_after=None if val_a is None else val_a["accuracy"],
            val_loss_before=None if val_b is None else val_b["loss"],
            val_loss_after=None if val_a is None else val_a["loss"], report=report,
        )  # fmt: skip
        result.rounds.append(record)
    if epochs_after:
        result.final = fit(
            work, train_loader, epochs=epochs_after, lr=lr if final_lr is None else final_lr,
            momentum=momentum, nesterov=False, weight_decay=weight_decay, schedule="cosine",
            val_loader=val_loader, progress=progress,
        )  # fmt: skip
    result.model = work
    if result.removed < target - 1e-9:
        warnings.warn(
            f"prune_early removed {result.removed:.4f} of the params, short of target {target}",
            UserWarning,
            stacklevel=2,
        )
    return result


def loss_and_grad_norm(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> tuple[float, float]:
    """Cross-entropy and ||dL/dtheta||_2 over all trainable params, in eval mode; the model's
    gradients and mode are left as they were."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = model_device(model)
    x, y = batch
    with eval_mode(model):
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads if g is not None))
    return float(loss.detach()), norm


# --------------------------------------------------------------------------------------------
# Helpers


def _pruner_factory(
    method: object, options: dict[str, Any] | None
) -> Callable[[DataLoader], Pruner]:
    data_driven = sorted(name for name, cls in SCORERS.items() if cls.needs_data)
    if options is not None and not (isinstance(method, str) and method in data_driven):
        raise ValueError(
            f"method_options apply to a data-driven method named by string "
            f"({data_driven}); for anything else build the Pruner yourself"
        )
    kwargs = dict(options or {})
    if isinstance(method, Pruner):
        return lambda _loader: method
    if isinstance(method, str):
        if method in data_driven:
            return lambda loader: cast(Pruner, make_scorer(method, loader, **kwargs))
        if method in GRADFLOW_MEASURES:
            return lambda _loader: GRADFLOW_MEASURES[method]()

        pruner = resolve_method(method)  # raises for unknown names
        return lambda _loader: pruner
    if callable(method):
        factory = cast(Callable[[DataLoader], object], method)

        def build(loader: DataLoader) -> Pruner:
            pruner = factory(loader)
            if not isinstance(pruner, Pruner):
                raise TypeError(f"method(loader) must return a Pruner, got {type(pruner).__name__}")
            return pruner

        return build
    raise TypeError(
        f"method must be a name, a Pruner or a callable loader -> Pruner, got {type(method).__name__}"
    )


def _method_name(method: object) -> str:
    if isinstance(method, str):
        return method
    if isinstance(method, Pruner):
        return method.name
    return getattr(method, "__name__", "custom")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _probe(
    model: nn.Module, probe: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[float | None, float | None]:
    if probe is None:
        return None, None
    return loss_and_grad_norm(model, probe)
