"""Early-bird tickets: find, during training, the epoch after which the pruning mask stops moving.

Two detectors, both usable as `coreprune.training.fit(..., on_epoch_end=detector)`:

- `EarlyBird` (You et al., ICLR 2020, "Drawing Early-Bird Tickets"): the channel mask of the
  batch-norm scales |gamma| at a global quantile; the ticket is drawn once the current mask is
  within a normalised Hamming distance `threshold` of each of the previous `window` masks.
- `SplineEarlyBird` (Balestriero, You et al., "Max-Affine Spline Insights Into Deep Network
  Pruning"): the same test on the network's partition code, the signs of every batch-norm output
  on a 2-D grid of inputs spanned by three training examples (computed by
  `coreprune.methods.spline_code`).

`BNScale` scores units by |gamma| for `coreprune.compress`, and `train_early_bird` ties it all
together: train until the ticket is drawn, remove the masked channels physically, and train the
small network for the remaining epochs. Adaptations are listed in docs/baselines.md.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from coreprune.checks import check_fraction, check_int, check_module
from coreprune.methods.spline_code import (
    PackedCode,
    check_anchors,
    code_distance,
    grid_coeffs,
    grid_inputs,
    pack_bits,
    partition_code,
    sign_chunks,
    spline_grid,
)
from coreprune.scoring.bn_scale import BNScale
from coreprune.surgery.activations import resolve_activation
from coreprune.surgery.graph import PrunablePair, find_prunable_pairs, validate_pairs
from coreprune.torch_utils import model_device, module_weight

if TYPE_CHECKING:
    from coreprune.training.history import TrainHistory

__all__ = [
    "BNScale",
    "EarlyBird",
    "SplineEarlyBird",
    "bn_channel_mask",
    "bn_pairs",
    "mask_distance",
    "partition_code",
    "spline_grid",
]

Mask = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Batch-norm channel masks and their distance


def bn_pairs(model: nn.Module, pairs: Sequence[PrunablePair] | None = None) -> list[PrunablePair]:
    """The prunable pairs whose producer is followed by an affine batch norm.

    With `pairs=None`, every pair `find_prunable_pairs` finds that `compress` can prune (its
    activation is certifiable) and that has a batch norm; pairs without one are left out, as the
    paper prunes only BN-scaled channels (e.g. VGG's hidden Linear layers stay). Given pairs must
    all have a batch norm: otherwise the error names the producer without one.
    """
    check_module(model, "model")
    if pairs is None:
        found, _ = find_prunable_pairs(model)
        usable = [p for p in found if _certifiable(p)]
        chosen = [p for p in usable if p.norm is not None]
        if not chosen:
            names = ", ".join(repr(p.producer) for p in usable) or "none"
            raise ValueError(
                "no prunable layer of the model is followed by a batch norm (prunable producers: "
                f"{names}); batch-norm scales gamma are what this method ranks, so add "
                "nn.BatchNorm after the layers to prune or use another method"
            )
    else:
        if isinstance(pairs, PrunablePair):
            raise TypeError("pairs must be a list of PrunablePair, got one; wrap it in a list")
        chosen = validate_pairs(model, pairs)
        if not chosen:
            raise ValueError("pairs is empty; leave it None to use every prunable BN pair")
        for pair in chosen:
            if pair.norm is None:
                raise ValueError(
                    f"pair {pair.producer!r} -> {pair.consumer!r}: producer {pair.producer!r} has "
                    "no batch norm after it, so it has no gamma to rank; drop this pair"
                )
            if not _certifiable(pair):
                raise ValueError(
                    f"pair {pair.producer!r}: activation {pair.activation!r} is one compress "
                    "cannot prune; drop this pair"
                )
    for pair in chosen:
        norm = model.get_submodule(str(pair.norm))
        if getattr(norm, "weight", None) is None:
            raise ValueError(
                f"batch norm {pair.norm!r} (after {pair.producer!r}) has affine=False, so no "
                "scale gamma; build it with affine=True"
            )
    return chosen


def _certifiable(pair: PrunablePair) -> bool:
    """The same filter `compress` applies, so masks cover exactly the pairs it prunes."""
    try:
        resolve_activation(pair.activation)
    except (TypeError, ValueError):
        return False
    return True


def bn_channel_mask(
    model: nn.Module, ratio: float, pairs: Sequence[PrunablePair] | None = None
) -> Mask:
    """Per batch norm (by module name): a bool mask over its channels, True = kept.

    All |gamma| of the chosen pairs' norms are pooled (one global ranking, as in the paper) and
    the channels strictly below the global `ratio`-quantile are masked. The quantile is the order
    statistic sorted(|gamma|)[floor(ratio * N)], so without ties exactly floor(ratio * N) of the N
    channels are masked (fewer when several share the threshold value). Masks are CPU tensors.
    """
    check_module(model, "model")
    ratio = check_fraction(ratio, "ratio", low_open=True, high_open=True)
    chosen = bn_pairs(model, pairs)
    scales: dict[str, torch.Tensor] = {}
    for pair in chosen:
        name = str(pair.norm)
        scales[name] = module_weight(model, name).detach().abs().float().cpu()
        if not torch.isfinite(scales[name]).all():
            raise ValueError(f"batch norm {name!r} has non-finite gamma; the model has diverged")
    pooled = torch.cat(list(scales.values()))
    k = math.floor(ratio * pooled.numel() + 1e-9)  # 1e-9: 0.29 * 100 must give 29, not 28
    if k == 0:
        return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scales.items()}
    threshold = torch.sort(pooled).values[k]
    return {name: s >= threshold for name, s in scales.items()}


def mask_distance(a: Mapping[str, torch.Tensor] | torch.Tensor, b: object) -> float:
    """Normalised Hamming distance: the fraction of entries where two masks (or codes) differ.

    Both are bool tensors of one shape, or dicts with the same keys and per-key shapes (the
    fraction is over all entries together). It is a metric on masks of one layout, in [0, 1].
    """
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"b must be a tensor like a, got {type(b).__name__}")
        pairs = [("mask", a, b)]
    elif isinstance(a, Mapping):
        if not isinstance(b, Mapping):
            raise TypeError(f"b must be a dict of masks like a, got {type(b).__name__}")
        if set(a) != set(b):
            only = sorted(set(a) ^ set(b))
            raise ValueError(f"a and b must mask the same layers; only one has {only}")
        pairs = [(k, a[k], b[k]) for k in a]
    else:
        raise TypeError(f"a must be a bool tensor or a dict of them, got {type(a).__name__}")
    differ, total = 0, 0
    for key, x, y in pairs:
        for side, t in (("a", x), ("b", y)):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.bool:
                got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
                raise TypeError(f"{side}[{key!r}] must be a bool tensor (use .bool()), got {got}")
        if x.shape != y.shape:
            raise ValueError(
                f"{key!r}: a has shape {tuple(x.shape)}, b {tuple(y.shape)}; masks must match"
            )
        differ += int((x != y.to(x.device)).sum())
        total += x.numel()
    if total == 0:
        raise ValueError("the masks are empty; there is nothing to compare")
    return differ / total


# --------------------------------------------------------------------------------------------
# Detectors


class _WindowDetector:
    """Shared FIFO logic: the current signature against each of the previous `window` ones."""

    def __init__(self, window: int, threshold: float) -> None:
        self.window = check_int(window, "window", minimum=1)
        self.threshold = check_fraction(threshold, "threshold", low_open=True, high_open=False)
        self.epochs: list[int] = []
        self.distances: list[tuple[float, ...]] = []
        self.ticket_epoch: int | None = None
        self._fifo: deque[Any] = deque(maxlen=self.window)

    @property
    def found(self) -> bool:
        """Whether the ticket has been drawn."""
        return self.ticket_epoch is not None

    def _signature(self, model: nn.Module) -> Any:
        raise NotImplementedError

    def _distance(self, current: Any, previous: Any) -> float:
        raise NotImplementedError

    def _keep(self, epoch: int, signature: Any, ticket: bool) -> None:
        """Hook for subclasses to record what they need."""

    def __call__(self, epoch: int, model: nn.Module, history: TrainHistory | None = None) -> bool:
        """Record this epoch; True once the ticket is drawn (so `fit` stops), from then on."""
        if self.found:
            return True
        check_int(epoch, "epoch", minimum=0)
        check_module(model, "model")
        current = self._signature(model)
        dists = tuple(self._distance(current, previous) for previous in self._fifo)
        self.epochs.append(epoch)
        self.distances.append(dists)
        full = len(dists) == self.window
        ticket = full and max(dists) < self.threshold
        self._fifo.append(current)
        if ticket:
            self.ticket_epoch = epoch
        self._keep(epoch, current, ticket)
        return ticket

    def reset(self) -> None:
        """Forget every record, to start a new run."""
        self.epochs.clear()
        self.distances.clear()
        self._fifo.clear()
        self.ticket_epoch = None


class EarlyBird(_WindowDetector):
    """Early-bird detector on batch-norm channel masks (You et al., ICLR 2020).

    Each call computes `bn_channel_mask(model, ratio, pairs)` and its distance to each of the
    previous `window` masks (a FIFO); the ticket is drawn when all `window` distances are
    strictly below `threshold`, so at the earliest in epoch index `window`. `masks[i]` and
    `distances[i]` are the records of the i-th call (`epochs[i]` its epoch); once drawn,
    `ticket_epoch` and `ticket_mask` hold the epoch and its mask and every call returns True.
    """

    def __init__(
        self,
        ratio: float,
        *,
        window: int = 5,
        threshold: float = 0.1,
        pairs: Sequence[PrunablePair] | None = None,
    ) -> None:
        super().__init__(window, threshold)
        self.ratio = check_fraction(ratio, "ratio", low_open=True, high_open=True)
        if isinstance(pairs, PrunablePair):
            raise TypeError("pairs must be a list of PrunablePair, got one; wrap it in a list")
        self.pairs: list[PrunablePair] | None = None if pairs is None else list(pairs)
        self.masks: list[Mask] = []
        self.ticket_mask: Mask | None = None

    def _signature(self, model: nn.Module) -> Mask:
        if self.pairs is None:
            self.pairs = bn_pairs(model)  # traced once; the architecture does not change in fit
        return bn_channel_mask(model, self.ratio, self.pairs)

    def _distance(self, current: Mask, previous: Mask) -> float:
        return mask_distance(current, previous)

    def _keep(self, epoch: int, signature: Mask, ticket: bool) -> None:
        self.masks.append(signature)
        if ticket:
            self.ticket_mask = signature

    def reset(self) -> None:
        super().reset()
        self.masks.clear()
        self.ticket_mask = None

    def __repr__(self) -> str:
        return (
            f"EarlyBird(ratio={self.ratio:g}, window={self.window}, threshold={self.threshold:g})"
        )


class SplineEarlyBird(_WindowDetector):
    """Early-bird detector on the spline partition code (Balestriero, You et al.).

    Each call evaluates the model (eval mode) on the grid `spline_grid(anchor_inputs, grid)` and
    takes the signs of every batch-norm output; the distance between epochs is the normalised
    Hamming distance of these codes. The ticket is drawn when the code is strictly within
    `threshold` of each of the previous `window` codes. Codes are kept bit-packed, and only the
    last `window` of them. `distances[i]`, `epochs[i]` and `ticket_epoch` as in `EarlyBird`.
    """

    def __init__(
        self,
        anchor_inputs: torch.Tensor,
        *,
        grid: int | Sequence[float] | torch.Tensor = 16,
        window: int = 3,
        threshold: float = 0.16,
        batch_size: int = 64,
    ) -> None:
        super().__init__(window, threshold)
        self.anchors = check_anchors(anchor_inputs).detach().clone()
        self.coeffs = grid_coeffs(grid)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)

    @property
    def inputs(self) -> int:
        """Number of grid inputs per evaluation."""
        return self.coeffs.numel() ** 2

    def _signature(self, model: nn.Module) -> PackedCode:
        device = model_device(model)
        anchors = self.anchors.to(device)
        coeffs = self.coeffs.to(device, anchors.dtype)
        chunks: list[torch.Tensor] = []
        total = [0]

        def consume(bits: torch.Tensor) -> None:
            total[0] += bits.numel()
            chunks.append(pack_bits(bits))

        sign_chunks(
            model, lambda s, e: grid_inputs(anchors, coeffs, s, e), self.inputs, self.batch_size,
            consume,
        )  # fmt: skip
        return PackedCode(torch.cat(chunks), total[0])

    def _distance(self, current: PackedCode, previous: PackedCode) -> float:
        return code_distance(current, previous)

    def __repr__(self) -> str:
        return (
            f"SplineEarlyBird(grid={self.coeffs.numel()}, window={self.window}, "
            f"threshold={self.threshold:g})"
        )


# --------------------------------------------------------------------------------------------
# Unit scores for compress
