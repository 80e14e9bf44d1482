"""DPF, dynamic pruning with feedback (Lin, Stich, Barba, Dmitriev & Jaggi, ICLR 2020).

One training pass produces the sparse model; no retraining. The dense weights w are kept. Each
step computes the stochastic gradient at the pruned model m ⊙ w and applies it to the dense w:

    w_{t+1} = w_t - lr * grad L(m_t ⊙ w_t)

so a pruned weight keeps receiving the gradient the pruned network sends it (the feedback), and
comes back once its dense magnitude beats a kept one. The mask m is recomputed every
`update_every` (16) steps from the dense magnitudes, at a sparsity that grows on Zhu & Gupta's
(2017) cubic schedule s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n Δt))^3.

Two forms:

- unstructured: global (or per-layer) magnitude |w| over the weights of every Linear/Conv2d;
  the result is a copy of the model with `torch.nn.utils.prune` masks whose `weight_orig` holds
  the dense weights;
- structured (per unit): each prunable pair keeps the units with the largest L2 filter norm
  (producer weight row), at the per-pair counts `coreprune.compress(target=...)` would keep; a
  masked unit's output is zeroed where the consumer reads it, with a straight-through gradient,
  and at the end exactly the masked units are cut out (`coreprune.compress.apply_plan`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass, field, replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils.data import DataLoader

from coreprune.checks import (
    check_bool,
    check_choice,
    check_float,
    check_fraction,
    check_int,
    check_module,
)
from coreprune.compress import (
    CompressReport,
    PairCut,
    apply_plan,
    compress,
    count_macs,
    count_params,
)
from coreprune.compress.cost import removed_fraction
from coreprune.scoring.masks import layer_names, select_mask
from coreprune.surgery.graph import PrunablePair, find_prunable_pairs
from coreprune.torch_utils import (
    eval_mode,
    model_device,
    module_weight,
    resolve_device,
)
from coreprune.training import TrainHistory, fit, set_seed
from coreprune.training.schedules import Schedule

__all__ = ["DPFHistory", "DPFResult", "MaskUpdate", "cubic_sparsity", "dpf_train"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SCOPES = ("global", "layer")


def cubic_sparsity(
    step: int, *, final: float, initial: float = 0.0, start: int = 0, end: int
) -> float:
    """Zhu & Gupta's gradual schedule: `initial` until `start`, then
    s_t = final + (initial - final) * (1 - (t - start) / (end - start))^3, then `final` from
    `end` on (end - start = n Δt in the paper's notation). Non-decreasing; exactly `final` at
    t = end."""
    check_int(step, "step", minimum=0)
    _check_sparsity(final, "final")
    _check_sparsity(initial, "initial")
    if initial > final:
        raise ValueError(f"initial sparsity {initial} exceeds final {final}; pass initial <= final")
    check_int(start, "start", minimum=0)
    check_int(end, "end", minimum=0)
    if end <= start:
        raise ValueError(f"end ({end}) must be after start ({start}): the ramp needs >= 1 step")
    if step <= start:
        return float(initial)
    if step >= end:
        return float(final)
    left = 1 - (step - start) / (end - start)
    return float(final + (initial - final) * left**3)


@dataclass(frozen=True)
class MaskUpdate:
    """One mask recomputation: entries are weights (unstructured) or units (structured)."""

    step: int
    sparsity: float
    masked: int
    reactivated: int
    newly_masked: int


@dataclass
class DPFHistory:
    """Per-epoch training numbers of the pruned model (loss, accuracy, validation when given,
    the last step's learning rate) and every mask update."""

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    updates: list[MaskUpdate] = field(default_factory=list)

    @property
    def reactivated(self) -> int:
        """Entries that came back over the whole run: DPF's feedback at work."""
        return sum(u.reactivated for u in self.updates)


@dataclass(frozen=True)
class DPFResult:
    """`model`: unstructured, a masked copy (`weight_orig` dense, `weight_mask` final); structured,
    the physically smaller model cut by `apply_plan` at the final mask. `masks`: True = kept, per
    layer name (weights) or per producer name (units). `report` (structured only): a
    `CompressReport` whose rows keep the final mask's units and whose totals are counted on
    `model`."""

    model: nn.Module
    masks: dict[str, torch.Tensor]
    structured: bool
    target: float
    history: DPFHistory
    report: CompressReport | None

    @property
    def achieved(self) -> float:
        """Unstructured: fraction of the scored weights masked; structured: fraction of the
        model's params removed."""
        if self.report is not None:
            return self.report.params_removed
        total = sum(m.numel() for m in self.masks.values())
        return sum(int((~m).sum()) for m in self.masks.values()) / total


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
    non-finite value stops training at that step (FloatingPointError). `device` None: CUDA when available. `progress`: a bar over
    the steps. `model` is not modified.
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


# --------------------------------------------------------------------------------------------
# Masks


class _Masker:
    """What differs between the two forms: how masks are chosen, applied and made final."""

    def update(self, step: int, sparsity: float) -> MaskUpdate:
        raise NotImplementedError

    def pruned(self) -> Any:
        raise NotImplementedError

    def finish(self) -> tuple[nn.Module, dict[str, torch.Tensor], CompressReport | None]:
        raise NotImplementedError

    def evaluate(
        self, loader: Iterable[Any], loss: Loss, device: torch.device
    ) -> tuple[float, float]:
        """Mean loss and accuracy of the pruned model, in eval mode."""
        model = self.model
        total, correct, seen = 0.0, 0, 0
        with eval_mode(model, no_grad=True), self.pruned():
            for batch in loader:
                x, y = _unpack(batch, device)
                outputs = model(x)
                total += float(loss(outputs, y)) * len(y)
                if outputs.ndim == 2 and not y.is_floating_point():
                    correct += int((outputs.argmax(1) == y).sum())
                seen += len(y)
        if seen == 0:
            raise ValueError("val_loader yielded no examples")
        return total / seen, correct / seen

    model: nn.Module


class _WeightMasker(_Masker):
    """Global (or per-layer) magnitude masks on the weights; applied by swapping the masked
    values in for the forward and backward and the dense ones back before the optimiser step."""

    def __init__(
        self, work: nn.Module, layers: Sequence[str] | None, scope: str, allow_collapse: bool
    ) -> None:
        self.model = work
        self.names = layer_names(work, layers)
        self.weights = {n: module_weight(work, n) for n in self.names}
        self.masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in self.weights.items()}
        self.scope = scope
        self.allow_collapse = allow_collapse

    def update(self, step: int, sparsity: float) -> MaskUpdate:
        scores = {n: w.detach().abs() for n, w in self.weights.items()}
        ones = {n: torch.ones_like(m) for n, m in self.masks.items()}
        new = select_mask(
            scores, ones, sparsity, scope=self.scope, allow_collapse=self.allow_collapse
        )
        record = _record(step, sparsity, self.masks.values(), new.values())
        self.masks = new
        return record

    class _Swap:
        def __init__(self, owner: _WeightMasker) -> None:
            self.owner = owner
            self.dense: dict[str, torch.Tensor] = {}

        def __enter__(self) -> None:
            with torch.no_grad():
                for n, w in self.owner.weights.items():
                    self.dense[n] = w.detach().clone()
                    w.mul_(self.owner.masks[n])

        def __exit__(self, *exc: object) -> None:
            with torch.no_grad():
                for n, w in self.owner.weights.items():
                    w.copy_(self.dense[n])

    def pruned(self) -> Any:
        return _WeightMasker._Swap(self)

    def finish(self) -> tuple[nn.Module, dict[str, torch.Tensor], CompressReport | None]:
        out = copy.deepcopy(self.model)
        for n in self.names:
            torch_prune.custom_from_mask(out.get_submodule(n), "weight", self.masks[n])
        return out, {n: m.detach().cpu().clone() for n, m in self.masks.items()}, None


class _UnitMasker(_Masker):
    """Per-pair unit masks by dense filter L2 norm. A masked unit is zeroed where its consumer
    reads it (exactly what removing it does: every op between is channel-wise and maps 0 to 0),
    through x + (m x - x).detach(), so its filter still gets the gradient of the pruned model.

    The per-pair unit counts are those `compress(target=..., method="magnitude", groups=False)`
    keeps on the original model (single pairs: coupled channel groups such as residual streams
    are left whole); at the end exactly the units of the final mask are cut with `apply_plan`.
    """

    def __init__(
        self,
        original: nn.Module,
        work: nn.Module,
        target: float,
        pairs: Sequence[PrunablePair] | None,
        example_input: torch.Tensor | None,
    ) -> None:
        self.model = work
        self.target = target
        self.example_input = example_input
        self.plan = compress(
            original, target=target, method="magnitude", pairs=pairs,
            example_input=example_input, progress=False, groups=False,
        ).report  # fmt: skip  # groups=False: one row per pair, the unit DPF masks
        self.pairs = _plan_pairs(original, self.plan, pairs)
        consumers = [p.consumer for p in self.pairs]
        if len(set(consumers)) != len(consumers):
            raise ValueError(
                "two pairs share a consumer; structured DPF needs one pair per consumer"
            )
        self.rows = [(r.producer, r.consumer, r.units_before, r.units_after) for r in self.plan]
        self.masks = {p: torch.ones(n, dtype=torch.bool) for p, _, n, _ in self.rows}
        self.started = time.perf_counter()

    def update(self, step: int, sparsity: float) -> MaskUpdate:
        progress = sparsity / self.target
        new = {}
        for producer, _, n, k in self.rows:
            weight = module_weight(self.model, producer).detach()
            norms = torch.linalg.vector_norm(weight.flatten(1).double(), dim=1).cpu()
            drop = round(progress * (n - k))
            keep = torch.ones(n, dtype=torch.bool)
            keep[torch.sort(norms, stable=True).indices[:drop]] = False
            new[producer] = keep
        record = _record(step, sparsity, self.masks.values(), new.values())
        self.masks = new
        return record

    def pruned(self) -> Any:
        return _InputMasks(self.model, [(c, self.masks[p]) for p, c, _, _ in self.rows])

    def finish(self) -> tuple[nn.Module, dict[str, torch.Tensor], CompressReport | None]:
        keeps = [torch.nonzero(self.masks[p.producer]).flatten() for p in self.pairs]
        pruned = apply_plan(self.model, self.pairs, [PairCut(keep) for keep in keeps])
        return pruned, {p: m.clone() for p, m in self.masks.items()}, self._report(pruned, keeps)

    def _report(self, pruned: nn.Module, keeps: Sequence[torch.Tensor]) -> CompressReport:
        """The planning report with DPF's kept units in its rows and the pruned model's totals.

        Each row's params and MACs depend only on how many units the pair keeps, which DPF's
        final mask shares with the plan; the totals are counted on the pruned model itself.
        `seconds` is the wall time from the plan to the cut, training included.
        """
        rows = tuple(
            replace(row, keep=keep.clone(), scale=torch.ones(keep.numel(), dtype=torch.float64))
            for row, keep in zip(self.plan, keeps, strict=True)
        )
        params_after = count_params(pruned)
        names = dict.fromkeys(n for p in self.pairs for n in (p.producer, p.norm, p.consumer) if n)
        prunable_after = sum(
            t.numel() for n in names for t in pruned.get_submodule(n).parameters(recurse=False)
        )
        macs_after = None
        if self.example_input is not None and self.plan.macs_before is not None:
            macs_after = count_macs(pruned, self.example_input.to(model_device(pruned)))
        achieved = removed_fraction(self.plan.params_before, params_after)
        budget = (
            f"target {100 * self.target:g}% of params removed, per-pair unit counts of "
            f"compress(method='magnitude', allocation='uniform'), units chosen by DPF's final "
            f"mask; achieved {100 * achieved:.2f}% params removed"
        )
        return replace(
            self.plan, rows=rows, method="dpf", budget=budget, achieved=achieved,
            target_reached=achieved >= self.target - 1e-12, params_after=params_after,
            prunable_params_after=prunable_after, macs_after=macs_after,
            seconds=time.perf_counter() - self.started,
        )  # fmt: skip


def _plan_pairs(
    model: nn.Module, plan: CompressReport, given: Sequence[PrunablePair] | None
) -> list[PrunablePair]:
    """The pairs of the plan's rows, in the rows' order (from `given`, or as found in `model`)."""
    pool = list(given) if given is not None else find_prunable_pairs(model)[0]
    by_producer = {p.producer: p for p in pool}
    return [by_producer[row.producer] for row in plan]


class _InputMasks:
    """Forward pre-hooks zeroing masked units at each consumer's input, straight-through."""

    def __init__(self, model: nn.Module, entries: Sequence[tuple[str, torch.Tensor]]) -> None:
        self.model = model
        self.entries = list(entries)
        self.handles: list[Any] = []

    def __enter__(self) -> None:
        for consumer, mask in self.entries:
            module = self.model.get_submodule(consumer)
            self.handles.append(module.register_forward_pre_hook(_mask_hook(module, mask)))

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _mask_hook(module: nn.Module, mask: torch.Tensor) -> Callable[..., Any]:
    n = mask.numel()

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        m = mask.to(device=x.device, dtype=x.dtype)
        if isinstance(module, nn.Conv2d):
            m = m.view(1, n, *([1] * (x.ndim - 2)))
        else:  # a Linear reads unit i through a block of in_features // n columns
            m = m.repeat_interleave(x.shape[-1] // n)
        return (x + (x * m - x).detach(), *args[1:])

    return hook


# --------------------------------------------------------------------------------------------
# Helpers


def _record(
    step: int, sparsity: float, old: Iterable[torch.Tensor], new: Iterable[torch.Tensor]
) -> MaskUpdate:
    masked = reactivated = newly = 0
    for before, after in zip(old, new, strict=True):
        before, after = before.cpu(), after.cpu()
        masked += int((~after).sum())
        reactivated += int((~before & after).sum())
        newly += int((before & ~after).sum())
    return MaskUpdate(step, float(sparsity), masked, reactivated, newly)


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


def _check_sparsity(value: object, name: str) -> float:
    """A sparsity: the fraction in [0, 1) of weights (or params) to mask."""
    return check_fraction(value, name, low_open=False, high_open=True)


def _finite(loss: Loss) -> Loss:
    """`loss` checked at every step, so a diverging run stops at the step it diverges."""

    def checked(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        value = loss(outputs, labels)
        if not torch.isfinite(value):
            raise FloatingPointError(f"DPF training loss became {float(value)}; lower lr")
        return value

    return checked


def _unpack(batch: object, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise TypeError("train_loader must yield (inputs, labels) batches")
    x, y = batch[0], batch[1]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("train_loader must yield tensors (inputs, labels)")
    return x.to(device), y.to(device)
