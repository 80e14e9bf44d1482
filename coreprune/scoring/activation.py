"""Activation-aware scores for transformers: Wanda's structured form and FLAP's fluctuation.

Both read how much each hidden unit j actually carries on calibration inputs, not only how large
its weights are, which is what transformer pruning papers found to matter (outlier features):

- **Wanda** (Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large
  Language Models", ICLR 2024) scores a weight W_ij by |W_ij| * ||X_j||_2, X_j the j-th input
  feature over all calibration rows (every token of every sequence). Its structured form,
  "Wanda-sp" (as An et al. define it for comparison, below), scores an input channel j of the
  next layer by the sum of its weights' scores: S_j = sum_i |W_ij| * ||X_j||_2.
- **FLAP** (An, Zhao, Yu, Tang & Wang, "Fluctuation-based Adaptive Structured Pruning for Large
  Language Models", AAAI 2024) scores channel j by how much its input fluctuates around its
  mean, weighted by the column it feeds: S_j = Var_n(X_nj) * ||W_:,j||_2^2 (the sample variance
  over the N calibration rows, 1/(N-1)). A removed channel's mean is then put back into the next
  layer's bias, b' = b + W_:,removed Xbar_removed (`compensate_bias`), since a channel that does
  not fluctuate is, to the next layer, a constant.

Here j is a producer unit of a prunable pair and W the consumer's weights that read it, through
the registry's reading (so nn.Linear, HF Conv1D and nn.Conv2d consumers, and a Linear after a
flatten, are read the same way). For a Linear reading a flattened block of features per unit,
the unit's score sums the scores of all its features. For a Conv2d consumer, X_j is channel j
over every image and position, and sum_i |W_ij| sums over output channels and kernel offsets
(an adaptation: Wanda and FLAP are defined for Linear layers). FLAP's adaptive cross-layer
allocation (standardised scores ranked globally) is not used: every method here gets the same
per-layer widths, so the comparison is matched (docs/baselines.md).
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from coreprune.checks import check_int
from coreprune.surgery.registry import is_conv1d, layer_kind
from coreprune.torch_utils import module_weight

from .base import Pruner, UnitScorer
from .gates import UnitGates

__all__ = ["FLAP", "FeatureStats", "Wanda", "calibration_inputs", "compensate_bias"]

DEFAULT_SAMPLES = 256


def calibration_inputs(data: object, samples: int | None, who: str) -> torch.Tensor:
    """The first `samples` inputs of `data`: a tensor (batch first), one (inputs, labels) pair,
    or an iterable of such batches (a DataLoader). Labels are not used."""
    if samples is not None:
        check_int(samples, "samples (or None)", minimum=2)
    if isinstance(data, torch.Tensor):
        batches: Iterable[object] = [data]
    elif isinstance(data, (tuple, list)) and data and isinstance(data[0], torch.Tensor):
        batches = [data[0]]
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        batches = data
    else:
        raise TypeError(
            f"{who}: data must be calibration inputs (a tensor, an (inputs, labels) pair or a "
            f"DataLoader), got {type(data).__name__}"
        )
    parts: list[torch.Tensor] = []
    have = 0
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.is_floating_point():
            raise TypeError(f"{who}: each batch must be a floating-point tensor, batch first")
        parts.append(x)
        have += x.shape[0]
        if samples is not None and have >= samples:
            break
    if have < 2:
        raise ValueError(f"{who}: data holds {have} inputs; give at least 2 calibration inputs")
    x = torch.cat(parts)
    return x if samples is None else x[:samples]


class FeatureStats:
    """Per-feature count, sum and sum of squares (float64) of a module's input, accumulated
    over every row: all leading axes for a Linear or Conv1D, all images and positions for a
    Conv2d (its feature axis is dim 1)."""

    def __init__(self, channels_first: bool) -> None:
        self.channels_first = channels_first
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        rows = x.transpose(0, 1).flatten(1).T if self.channels_first else x.flatten(0, -2)
        total, squares = rows.sum(dim=0), (rows * rows).sum(dim=0)
        self.count += rows.shape[0]
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares

    def _checked(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.total is None or self.squares is None or self.count < 2:
            raise ValueError("the module saw fewer than 2 rows; give more calibration inputs")
        return self.total, self.squares

    def norm(self) -> torch.Tensor:
        """||X_j||_2 over all rows."""
        return self._checked()[1].clamp_min(0).sqrt()

    def mean(self) -> torch.Tensor:
        return self._checked()[0] / self.count

    def variance(self) -> torch.Tensor:
        """The sample variance over all rows, 1/(N-1) as FLAP defines it."""
        total, squares = self._checked()
        centred = squares - total * total / self.count
        return centred.clamp_min(0) / (self.count - 1)


def _record(
    model: nn.Module, modules: Sequence[nn.Module], inputs: torch.Tensor, batch: int
) -> list[FeatureStats]:
    """Run `model` (eval mode, no grad) on `inputs` and gather each module's input stats."""
    stats = [FeatureStats(isinstance(m, nn.Conv2d)) for m in modules]
    handles = [
        m.register_forward_pre_hook(lambda _m, args, s=s: s.add(args[0]))
        for m, s in zip(modules, stats, strict=True)
    ]
    flags = [m.training for m in model.modules()]
    model.eval()
    device = next((p.device for p in model.parameters()), inputs.device)
    try:
        with torch.no_grad():
            for lo in range(0, inputs.shape[0], batch):
                model(inputs[lo : lo + batch].to(device))
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(model.modules(), flags, strict=True):
            m.train(flag)
    return stats


def _per_unit(consumer: nn.Module, n: int, feature: torch.Tensor, power: int) -> torch.Tensor:
    """sum over the weights reading unit j of |w|^power * feature(input of w), per unit.

    `feature` has one entry per input feature of the consumer (a Linear's n * block features,
    a Conv2d's n channels); the registry's reading U has one row per (output, block position)
    or (output channel, kernel offset)."""
    kind = layer_kind(consumer)
    if kind is None:
        raise TypeError(f"consumer is {type(consumer).__name__}, not a layer the registry knows")
    u = kind.reading(consumer, n).abs() ** power  # (rows, n)
    if isinstance(consumer, nn.Conv2d):
        return u.sum(dim=0) * feature.to(u)
    block = feature.numel() // n
    weights = u.reshape(-1, block, n).sum(dim=0)  # (block, n)
    return (weights * feature.to(u).reshape(n, block).T).sum(dim=0)


class _ActivationScorer(UnitScorer):
    """Shared calibration handling (`data` gives the inputs, `samples` how many are used) and the
    one structured score both papers' forms are: S_j = sum_i |W_ij|^power * feature(X)_j.

    A subclass names its input statistic (`feature`) and the power of the weights (`power`);
    recording the inputs and summing over the weights reading each unit are the same for both.
    """

    needs_data: ClassVar[bool] = True
    power: ClassVar[int]

    def __init__(
        self, data: object = None, *, samples: int | None = DEFAULT_SAMPLES, batch_size: int = 128
    ) -> None:
        who = type(self).__name__
        if data is None:
            raise ValueError(
                f"{who} needs calibration inputs: pass data= (a tensor, an (inputs, labels) "
                "pair or a DataLoader)"
            )
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.samples = samples
        self.inputs = calibration_inputs(data, samples, who)

    @abstractmethod
    def feature(self, stats: FeatureStats) -> torch.Tensor:
        """The per-feature statistic of a consumer's input that weighs its weights."""

    def unit_scores(
        self, model: nn.Module, gates: UnitGates, example_input: torch.Tensor | None
    ) -> list[torch.Tensor]:
        with gates:
            stats = _record(model, gates.consumers, self.inputs, self.batch_size)
        return [
            _per_unit(c, gates.units(i), self.feature(s), self.power).cpu()
            for i, (c, s) in enumerate(zip(gates.consumers, stats, strict=True))
        ]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(samples={self.samples}, batch_size={self.batch_size})"


class Wanda(_ActivationScorer, Pruner):
    """Wanda's structured form: S_j = sum_i |W_ij| * ||X_j||_2 (module docstring). Per weight,
    Wanda itself: |W_ij| * ||X_j||_2 for the layer's own input feature j."""

    name: ClassVar[str] = "wanda"
    power: ClassVar[int] = 1

    def feature(self, stats: FeatureStats) -> torch.Tensor:
        return stats.norm()

    def weight_scores(
        self, model: nn.Module, names: Sequence[str], example_input: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        modules = [model.get_submodule(n) for n in names]
        stats = _record(model, modules, self.inputs, self.batch_size)
        out: dict[str, torch.Tensor] = {}
        for name, module, s in zip(names, modules, stats, strict=True):
            w = module_weight(model, name).detach().abs().double()
            norm = s.norm().to(w)
            if isinstance(module, nn.Conv2d):
                out[name] = w * norm[None, :, None, None]
            elif is_conv1d(module):
                out[name] = w * norm[:, None]  # weight (inputs, outputs)
            elif isinstance(module, nn.Linear):
                out[name] = w * norm[None, :]
            else:
                raise TypeError(
                    f"{name!r} is {type(module).__name__}; Wanda scores layers' weights"
                )
        return out


class FLAP(_ActivationScorer):
    """FLAP's fluctuation score: S_j = Var_n(X_nj) * ||W_:,j||_2^2 (module docstring). Pair it
    with `compensate_bias` for FLAP's bias compensation."""

    name: ClassVar[str] = "flap"
    power: ClassVar[int] = 2

    def feature(self, stats: FeatureStats) -> torch.Tensor:
        return stats.variance()


def compensate_bias(
    dense: nn.Module,
    pruned: nn.Module,
    cuts: Sequence[tuple[str, str, torch.Tensor]],
    calibration: torch.Tensor,
    *,
    batch_size: int = 128,
) -> nn.Module:
    """FLAP's bias compensation: a copy of `pruned` in which each consumer's bias gains what
    its removed inputs carried on average in the dense model, b' = b + W_:,removed Xbar_removed.

    `cuts` lists (producer name, consumer name, kept unit indices into the dense producer's
    units), e.g. `[(r.producer, r.consumer, r.keep) for r in result.report.rows]` of a
    `compress(..., compensate="none")` result. The means are the dense model's on
    `calibration`. A consumer whose own outputs were cut (it produces the next cut) gets the
    compensation of its kept outputs. Neither model is changed. For a Conv2d consumer the mean
    is per channel and zero padding is ignored (exact away from the border).
    """
    if not isinstance(calibration, torch.Tensor) or calibration.ndim < 2:
        raise TypeError("calibration must be a batched tensor of model inputs")
    out_keep = {producer: keep for producer, _, keep in cuts}
    dense_consumers = [dense.get_submodule(consumer) for _, consumer, _ in cuts]
    stats = _record(dense, dense_consumers, calibration, batch_size)
    out = copy.deepcopy(pruned)
    for (producer, name, keep), consumer, s in zip(cuts, dense_consumers, stats, strict=True):
        target: Any = out.get_submodule(name)
        if getattr(target, "bias", None) is None:
            raise ValueError(f"consumer {name!r} has no bias to compensate into")
        kind = layer_kind(dense.get_submodule(producer))
        if kind is None:
            raise TypeError(f"{producer!r} is not a layer the registry knows")
        n = kind.out_units(dense.get_submodule(producer))
        removed = torch.ones(n, dtype=torch.bool)
        removed[keep.cpu().long()] = False
        mean = s.mean()
        mask = removed.repeat_interleave(mean.numel() // n).to(mean.device)
        shift = _apply_weight(consumer, torch.where(mask, mean, torch.zeros_like(mean)))
        if name in out_keep:
            shift = shift[out_keep[name].to(shift.device).long()]
        with torch.no_grad():
            target.bias.add_(shift.to(target.bias))
    return out


def _apply_weight(consumer: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """W @ features for the consumer's weight (summed over kernel offsets for a Conv2d)."""
    w: Any = consumer.weight
    w = w.detach().double()
    if isinstance(consumer, nn.Conv2d):
        return w.sum(dim=(2, 3)) @ features
    if is_conv1d(consumer):
        return features @ w
    return w @ features
