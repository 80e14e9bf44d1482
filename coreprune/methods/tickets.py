"""Early-bird tickets end to end: train until the ticket is drawn, remove exactly its channels,
then train only the small network (You et al., ICLR 2020). The detectors live in
`coreprune.methods.earlybird`; this module sits above `compress` and `training`, which it uses.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from coreprune.checks import check_fraction, check_int, check_module
from coreprune.compress import PairCut, apply_plan, count_params
from coreprune.methods.earlybird import (
    EarlyBird,
    SplineEarlyBird,
    bn_channel_mask,
    bn_pairs,
)
from coreprune.surgery.graph import PrunablePair
from coreprune.torch_utils import module_weight
from coreprune.training import fit
from coreprune.training.history import TrainHistory

__all__ = ["EarlyBirdResult", "train_early_bird"]

Mask = dict[str, torch.Tensor]
_FIT_OWNED = ("epochs", "on_epoch_end", "lr", "progress")


# --------------------------------------------------------------------------------------------
# Train, draw, prune, retrain


@dataclass(frozen=True)
class EarlyBirdResult:
    """The outcome of `train_early_bird`.

    `model` is the final network (pruned and retrained; the caller's model is untouched).
    `ticket_epoch` is the 0-based epoch whose end drew the ticket, None if none was drawn (then
    the network was pruned after the last epoch with that epoch's mask). `mask` is the channel
    mask that was removed (True = kept), `params_before` / `params_after` the parameter counts
    before and after removing it, `search` and `retrain` the two `fit` histories.
    """

    model: nn.Module
    ticket_epoch: int | None
    mask: Mask
    params_before: int
    params_after: int
    search: TrainHistory
    retrain: TrainHistory | None
    detector: EarlyBird | SplineEarlyBird = field(repr=False)

    @property
    def removed(self) -> float:
        """Fraction of the parameters that removing the ticket's channels removed."""
        return 1.0 - self.params_after / self.params_before

    @property
    def dense_epochs(self) -> int:
        """Epochs trained at full width."""
        return self.search.epochs


def train_early_bird(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    ratio: float,
    epochs: int,
    detector: str | EarlyBird | SplineEarlyBird = "bn",
    lr: float = 0.1,
    retrain_lr: float | None = None,
    anchor_inputs: torch.Tensor | None = None,
    pairs: Sequence[PrunablePair] | None = None,
    progress: bool = False,
    fit_kwargs: Mapping[str, Any] | None = None,
) -> EarlyBirdResult:
    """Train a copy of `model` until the early-bird ticket is drawn, prune it, train the rest.

    `detector` is "bn" (`EarlyBird(ratio)`), "spline" (`SplineEarlyBird(anchor_inputs)`; default
    anchors: examples 0, 1, 2 of `train_loader.dataset`) or a fresh detector instance. At the
    ticket epoch the channels masked by `bn_channel_mask(model, ratio)` are cut out exactly by
    `coreprune.compress.apply_plan` (a layer the mask would empty keeps its largest-|gamma|
    channel). The small network is then trained for the remaining `epochs` with a fresh `fit`
    schedule at `retrain_lr` (default `lr`). `fit_kwargs` go to both `fit` calls.
    """

    check_module(model, "model")
    ratio = check_fraction(ratio, "ratio")
    epochs = check_int(epochs, "epochs", minimum=1)
    kwargs = dict(fit_kwargs or {})
    owned = sorted(set(kwargs) & set(_FIT_OWNED))
    if owned:
        raise ValueError(f"fit_kwargs must not set {owned}; pass them to train_early_bird itself")
    retrain_lr = lr if retrain_lr is None else retrain_lr

    work = copy.deepcopy(model)
    chosen = bn_pairs(work, pairs)
    watcher = _make_detector(detector, ratio, chosen, anchor_inputs, train_loader)
    search = fit(work, train_loader, epochs=epochs, on_epoch_end=watcher, lr=lr,
                 progress=progress, **kwargs)  # fmt: skip
    if watcher.found:
        ticket_epoch = watcher.ticket_epoch
        mask = (
            watcher.ticket_mask
            if isinstance(watcher, EarlyBird) and watcher.ticket_mask is not None
            else bn_channel_mask(work, ratio, chosen)
        )
    else:
        ticket_epoch = None
        mask = bn_channel_mask(work, ratio, chosen)
        warnings.warn(
            f"no early-bird ticket within {epochs} epochs ({watcher!r}); pruning the trained "
            "network with its last mask instead, with no epochs left to retrain",
            UserWarning,
            stacklevel=2,
        )
    keeps = _ticket_keeps(work, chosen, mask)
    mask = {
        str(p.norm): _as_mask(k, mask[str(p.norm)].numel())
        for p, k in zip(chosen, keeps, strict=True)
    }
    final = apply_plan(work, chosen, [PairCut(keep) for keep in keeps])
    remaining = epochs - search.epochs
    retrain = None
    if remaining > 0:
        retrain = fit(final, train_loader, epochs=remaining, lr=retrain_lr, progress=progress,
                      **kwargs)  # fmt: skip
    return EarlyBirdResult(
        final, ticket_epoch, mask, count_params(work), count_params(final), search, retrain, watcher
    )


def _make_detector(
    detector: object, ratio: float, pairs: list[PrunablePair], anchors: torch.Tensor | None,
    loader: Any,
) -> EarlyBird | SplineEarlyBird:  # fmt: skip
    if anchors is not None and not (isinstance(detector, str) and detector == "spline"):
        raise ValueError(
            "anchor_inputs is only used with detector='spline'; a SplineEarlyBird instance "
            "carries its own anchors"
        )
    if isinstance(detector, (EarlyBird, SplineEarlyBird)):
        if detector.epochs:
            raise ValueError(
                "detector has records from an earlier run; pass a fresh one or reset() it"
            )
        if isinstance(detector, EarlyBird):
            if detector.ratio != ratio:
                raise ValueError(
                    f"detector ratio {detector.ratio:g} differs from ratio {ratio:g}; make them equal"
                )
            if detector.pairs is None:
                detector.pairs = pairs
            elif list(detector.pairs) != pairs:
                raise ValueError(
                    "detector.pairs differ from the pairs train_early_bird prunes; pass the same "
                    "pairs= to both, or leave the detector's pairs None"
                )
        return detector
    if detector == "bn":
        return EarlyBird(ratio, pairs=pairs)
    if detector == "spline":
        if anchors is None:
            anchors = _default_anchors(loader)
        return SplineEarlyBird(anchors)
    raise ValueError(
        f"detector must be 'bn', 'spline' or an EarlyBird/SplineEarlyBird, got {detector!r}"
    )


def _default_anchors(loader: Any) -> torch.Tensor:
    dataset = getattr(loader, "dataset", None)
    try:
        items = [dataset[i] for i in range(3)]  # type: ignore[index]
        xs = [item[0] if isinstance(item, (tuple, list)) else item for item in items]
        return torch.stack([torch.as_tensor(x) for x in xs]).float()
    except Exception as err:  # any dataset shape we cannot read: ask for the anchors
        raise ValueError(
            "detector='spline' needs anchor_inputs (three examples stacked, shape "
            "(3, *input_shape)); they could not be read from train_loader.dataset"
        ) from err


def _ticket_keeps(model: nn.Module, pairs: list[PrunablePair], mask: Mask) -> list[torch.Tensor]:
    """Kept channel indices per pair; a layer the mask empties keeps its largest |gamma|
    (first index on ties), so no layer is emptied."""
    keeps = []
    for pair in pairs:
        name = str(pair.norm)
        kept = mask[name]
        if not bool(kept.any()):
            gamma = module_weight(model, name).detach().abs().double().cpu()
            kept = torch.zeros_like(kept)
            kept[int(torch.argmax(gamma))] = True
        keeps.append(torch.nonzero(kept).flatten())
    return keeps


def _as_mask(keep: torch.Tensor, n: int) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[keep] = True
    return mask
