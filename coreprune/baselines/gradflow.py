"""Importance measures from Lubana & Dick (ICLR 2021, "A Gradient Flow Framework for Analyzing
Network Pruning"), at filter (unit) level, and their "prune early" protocol.

The paper relates each family of measures to a time derivative of the parameter norm under
gradient flow, and draws three conclusions about pruning early in training:

- magnitude (||theta_f||_2 per filter) removes the parameters that contribute least to loss
  reduction, so the pruned model converges faster than with magnitude-agnostic measures;
- loss preservation (|theta_f^T g| per filter) keeps the first-order dynamics, so it suits
  minimally trained models;
- gradient-norm measures (theta_f^T H g) act on second-order dynamics: removing the filters with
  the lowest theta_f^T H g (GraSP's direction, "increase the gradient norm") hurts, while
  removing the lowest |theta_f^T H g| ("preserve the gradient norm") does not.

Here theta_f is a unit's filter (the producer's weight row: kernel weights only, not its bias or
batch norm, as in the paper's code), g the loss gradient and Hg the Hessian-gradient product,
both over every trainable parameter of the model (batch-norm and bias parameters included, as in
the paper's code), with batch norm in eval mode. Higher score = keep. Exact definitions and every
adaptation: docs/baselines.md.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .base import Pruner
from .data import labelled_batch
from .gates import UnitGates
from .grasp import (
    GraSP,
    check_count,
    check_data,
    check_temperature,
    class_balanced_batch,
    hessian_gradient,
    output_width,
)
from .snip import SNIP

if TYPE_CHECKING:
    from coreprune.compress import CompressReport
    from coreprune.surgery.graph import PrunablePair
    from coreprune.training import TrainHistory

__all__ = [
    "EARLY_SCHEDULES",
    "GRADFLOW_MEASURES",
    "GradFlow",
    "GradNormIncrease",
    "GradNormPreservation",
    "LossPreservation",
    "MagnitudeL2",
    "PruneEarlyResult",
    "RoundRecord",
    "early_schedule",
    "prune_early",
]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSS_FORMS = ("paper", "abs_sum")
EARLY_SCHEDULES = ("paper", "geometric")


class GradFlow(Pruner):
    """Shared machinery of the four measures; use a subclass.

    Data (for the data-driven measures), drawn on the first scoring call and then reused:
    the loss measure uses the first `samples` examples of `data` (the paper: 2560, i.e. 20
    mini-batches of 128); the Hessian measures use the first `samples_per_class` examples of each
    class (the paper: 2560 / number of classes), or the first `samples` examples when
    `samples_per_class=None`. `temperature` divides the logits in the loss (None: the measure's
    paper default). `loss(logits, labels)` must return a batch mean. `chunk` bounds the examples
    per forward pass; results do not depend on it.
    """

    name: ClassVar[str] = "gradflow"
    signal: ClassVar[str] = ""  # "" (data-free), "g" or "hg"
    default_temperature: ClassVar[float] = 1.0

    def __init__(
        self,
        data: object = None,
        *,
        samples: int | None = 2560,
        samples_per_class: int | None = 256,
        num_classes: int | None = None,
        temperature: float | None = None,
        loss: Loss = F.cross_entropy,
        chunk: int | None = 256,
    ) -> None:
        if type(self) is GradFlow:
            raise TypeError(
                "GradFlow is the shared base; use MagnitudeL2, LossPreservation, "
                "GradNormIncrease or GradNormPreservation"
            )
        if self.signal:
            check_data(data, type(self).__name__)
        self.data = data
        self.samples = None if samples is None else check_count(samples, "samples")
        self.samples_per_class = (
            None
            if samples_per_class is None
            else check_count(samples_per_class, "samples_per_class")
        )
        self.num_classes = None if num_classes is None else check_count(num_classes, "num_classes")
        self.temperature = check_temperature(
            self.default_temperature if temperature is None else temperature
        )
        if not callable(loss):
            raise TypeError("loss must be callable as loss(logits, labels) -> mean loss")
        self.loss = loss
        self.chunk = None if chunk is None else check_count(chunk, "chunk")
        self._sample: tuple[torch.Tensor, torch.Tensor] | None = None

    # ---- the per-parameter signal (g or Hg) over every trainable parameter

    def sample(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The labelled examples the scores use; drawn once, then cached."""
        if self._sample is None:
            who = type(self).__name__
            if self.signal == "hg" and self.samples_per_class is not None:
                classes = self.num_classes or output_width(model)
                self._sample = class_balanced_batch(self.data, self.samples_per_class, classes, who)
            else:
                self._sample = labelled_batch(self.data, self.samples, who)
        return self._sample

    def signals(self, model: nn.Module, gates: UnitGates | None = None) -> dict[int, torch.Tensor]:
        """id(parameter) -> g or Hg for every parameter of `model` (eval mode)."""
        model.eval()
        params = [p for p in model.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        x, y = self.sample(model)
        if gates is None:
            g, hg, _ = self._run(model, x, y, params)
        else:
            with gates:
                g, hg, _ = self._run(model, x, y, params)
        chosen = g if self.signal == "g" else hg
        return {id(p): s for p, s in zip(params, chosen, strict=True)}

    def _run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        if self.signal == "g":  # one backward is enough
            xs, ys = _to(x, params[0]), y.to(params[0].device)
            size = xs.shape[0] if self.chunk is None else self.chunk
            total = [torch.zeros_like(p) for p in params]
            for s in range(0, xs.shape[0], size):
                xc, yc = xs[s : s + size], ys[s : s + size]
                value = self.loss(model(xc) / self.temperature, yc) * (xc.shape[0] / xs.shape[0])
                grads = torch.autograd.grad(value, params, allow_unused=True)
                total = [t if d is None else t + d for t, d in zip(total, grads, strict=True)]
            return total, total, []
        return hessian_gradient(
            model, x, y, params, temperature=self.temperature, loss=self.loss, chunk=self.chunk
        )

    # ---- scores

    def combine(self, theta: torch.Tensor, signal: torch.Tensor, dim: int | None) -> torch.Tensor:
        """The measure from theta and its signal, summed over `dim` (None: per entry)."""
        raise NotImplementedError

    def weight_scores(
        self, model: nn.Module, names: Sequence[str], example_input: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        weights = [model.get_submodule(n).weight for n in names]
        signals = self.signals(model) if self.signal else {}
        out = {}
        for name, w in zip(names, weights, strict=True):
            signal = signals.get(id(w), torch.zeros_like(w))
            out[name] = self.combine(w.detach(), signal, None).double()
        return out

    def unit_scores(
        self, model: nn.Module, gates: UnitGates, example_input: torch.Tensor | None
    ) -> list[torch.Tensor]:
        signals = self.signals(model, gates) if self.signal else {}
        out = []
        for producer in gates.producers:
            w = producer.weight.detach()
            signal = signals.get(id(producer.weight), torch.zeros_like(w))
            rows = self.combine(w.flatten(1), signal.flatten(1), 1)
            out.append(rows.double().cpu())
        return out

    def __repr__(self) -> str:
        if not self.signal:
            return f"{type(self).__name__}()"
        return (
            f"{type(self).__name__}(samples={self.samples}, "
            f"samples_per_class={self.samples_per_class}, temperature={self.temperature:g})"
        )


class MagnitudeL2(GradFlow):
    """Magnitude-based: ||theta_f||_2 per filter (|theta| per weight). Data-free; the same
    ranking as `Magnitude(p=2)`, kept here so the four measures share one interface."""

    name: ClassVar[str] = "magnitude_l2"

    def __init__(self, data: object = None) -> None:
        super().__init__(data)

    def combine(self, theta: torch.Tensor, signal: torch.Tensor, dim: int | None) -> torch.Tensor:
        if dim is None:
            return theta.abs()
        return torch.linalg.vector_norm(theta.double(), ord=2, dim=dim)


class LossPreservation(GradFlow):
    """Loss preservation: |theta_f^T g| per filter, the first-order change of the loss when
    the filter is removed (the paper's equation; `form="paper"`, default). `form="abs_sum"` is
    sum |theta * g| over the filter, which is what the paper's released code ranks by for this
    measure ("loss_based"). Per weight both are |theta * g|. Temperature 1: the training loss."""

    name: ClassVar[str] = "loss_preservation"
    signal: ClassVar[str] = "g"

    def __init__(self, data: object = None, *, form: str = "paper", **kwargs: Any) -> None:
        if form not in LOSS_FORMS:
            raise ValueError(f"form must be one of {LOSS_FORMS}, got {form!r}")
        super().__init__(data, **kwargs)
        self.form = form

    def combine(self, theta: torch.Tensor, signal: torch.Tensor, dim: int | None) -> torch.Tensor:
        product = theta.double() * signal.double()
        if dim is None:
            return product.abs()
        return product.abs().sum(dim) if self.form == "abs_sum" else product.sum(dim).abs()


class GradNormIncrease(GradFlow):
    """theta_f^T H g per filter (theta * Hg per weight); removing the lowest increases the
    gradient norm the most to first order. At temperature 200 on a class-balanced sample this is
    GraSP applied to filters (the paper's "GraSP" measure)."""

    name: ClassVar[str] = "gradnorm_increase"
    signal: ClassVar[str] = "hg"
    default_temperature: ClassVar[float] = 200.0

    def combine(self, theta: torch.Tensor, signal: torch.Tensor, dim: int | None) -> torch.Tensor:
        product = theta.double() * signal.double()
        return product if dim is None else product.sum(dim)


class GradNormPreservation(GradFlow):
    """|theta_f^T H g| per filter (|theta * Hg| per weight): remove the filters whose removal
    changes the gradient norm least. Temperature 1, as the paper's code uses for it."""

    name: ClassVar[str] = "gradnorm_preservation"
    signal: ClassVar[str] = "hg"

    def combine(self, theta: torch.Tensor, signal: torch.Tensor, dim: int | None) -> torch.Tensor:
        product = theta.double() * signal.double()
        return product.abs() if dim is None else product.sum(dim).abs()


GRADFLOW_MEASURES: dict[str, type[GradFlow]] = {
    cls.name: cls for cls in (MagnitudeL2, LossPreservation, GradNormIncrease, GradNormPreservation)
}
_DATA_DRIVEN: dict[str, type[Pruner]] = {
    "loss_preservation": LossPreservation,
    "gradnorm_increase": GradNormIncrease,
    "gradnorm_preservation": GradNormPreservation,
    "grasp": GraSP,
    "snip": SNIP,
}


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
    target = _fraction(target, "target")
    rounds = check_count(rounds, "rounds")
    if kind not in EARLY_SCHEDULES:
        raise ValueError(f"schedule must be one of {EARLY_SCHEDULES}, got {kind!r}")
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
    from coreprune.compress import compress  # lazy: compress imports this package
    from coreprune.training import evaluate, fit, set_seed

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(train_loader, DataLoader):
        raise TypeError(f"train_loader must be a DataLoader, got {type(train_loader).__name__}")
    plan = early_schedule(target, rounds, schedule)
    for value, name in ((epochs_between, "epochs_between"), (warmup_epochs, "warmup_epochs"),
                        (epochs_after, "epochs_after")):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    make = _pruner_factory(method, method_options)
    if probe is not None and not (
        isinstance(probe, tuple)
        and len(probe) == 2
        and all(isinstance(t, torch.Tensor) for t in probe)
    ):
        raise TypeError("probe must be one (inputs, labels) pair of tensors")
    if seed is not None:
        set_seed(seed)
    train = {"lr": lr, "momentum": momentum, "nesterov": False, "weight_decay": weight_decay}
    work = copy.deepcopy(model)
    original = _params(work)
    result = PruneEarlyResult(work, _method_name(method), float(target), original, [], None)
    if warmup_epochs:
        result.warmup = fit(
            work, train_loader, epochs=warmup_epochs, schedule="constant", progress=progress,
            **train,
        )  # fmt: skip
    epochs = warmup_epochs
    for k, scheduled in enumerate(plan, start=1):
        if epochs_between:
            history = fit(
                work, train_loader, epochs=epochs_between, schedule="constant",
                progress=progress, **train,
            )  # fmt: skip
            result.between.append(history)
            epochs += epochs_between
        before = _params(work)
        round_target = 1 - (1 - scheduled) * original / before
        loss_b, norm_b = _probe(work, probe)
        acc_b = None if val_loader is None else evaluate(work, val_loader)["accuracy"]
        report = None
        if round_target > 1e-12:
            pruner = make(train_loader)
            example = None if example_input is None else example_input.to(_device(work))
            pruned = compress(
                work, target=round_target, method=pruner, allocation=allocation,
                example_input=example, pairs=pairs, progress=progress,
            )  # fmt: skip
            work, report = pruned.model, pruned.report
        loss_a, norm_a = _probe(work, probe)
        acc_a = None if val_loader is None else evaluate(work, val_loader)["accuracy"]
        after = _params(work)
        record = RoundRecord(
            round=k, epochs_trained=epochs, scheduled=scheduled,
            round_target=round_target if report is not None else None,
            params_before=before, params_after=after, removed=1 - after / original,
            probe_loss_before=loss_b, probe_loss_after=loss_a,
            probe_grad_norm_before=norm_b, probe_grad_norm_after=norm_a,
            val_accuracy_before=acc_b, val_accuracy_after=acc_a, report=report,
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
    was = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    device = _device(model)
    x, y = batch
    try:
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        model.train(was)
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads if g is not None))
    return float(loss.detach()), norm


# --------------------------------------------------------------------------------------------
# Helpers


def _pruner_factory(
    method: object, options: dict[str, Any] | None
) -> Callable[[DataLoader], Pruner]:
    if options is not None and not (isinstance(method, str) and method in _DATA_DRIVEN):
        raise ValueError(
            f"method_options apply to a data-driven method named by string "
            f"({sorted(_DATA_DRIVEN)}); for anything else build the Pruner yourself"
        )
    kwargs = dict(options or {})
    if isinstance(method, Pruner):
        return lambda _loader: method
    if isinstance(method, str):
        if method in _DATA_DRIVEN:
            cls = _DATA_DRIVEN[method]
            return lambda loader: cls(loader, **kwargs)
        if method in GRADFLOW_MEASURES:
            return lambda _loader: GRADFLOW_MEASURES[method]()
        from .registry import resolve_method  # lazy: the registry may import this module

        pruner = resolve_method(method)  # raises for unknown names
        return lambda _loader: pruner
    if callable(method):

        def build(loader: DataLoader) -> Pruner:
            pruner = method(loader)
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


def _fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not 0 < value < 1:
        raise ValueError(
            f"{name} must be a fraction in (0, 1) of the params to remove, got {value}"
        )
    return float(value)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return torch.device("cpu") if first is None else first.device


def _to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if x.is_floating_point():
        return x.to(device=like.device, dtype=like.dtype)
    return x.to(like.device)


def _probe(
    model: nn.Module, probe: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[float | None, float | None]:
    if probe is None:
        return None, None
    return loss_and_grad_norm(model, probe)
