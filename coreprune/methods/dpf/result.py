"""What a DPF run hands back: the pruned model with its final masks, and the run's history.

The types sit apart from the loop that fills them so that a caller reading a result (the
comparison harness, a test) needs nothing of how the masks were trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from coreprune.compress import CompressReport

__all__ = ["DPFHistory", "DPFResult", "MaskUpdate"]


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
