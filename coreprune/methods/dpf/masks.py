"""How DPF holds its mask, and the unstructured form's magnitude masks on the weights.

The training loop only ever asks a masker three things: recompute the mask at a sparsity, run a
step (or an evaluation) at the pruned model m ⊙ w while the dense w stays the one updated, and
turn the final mask into the result. `_Masker` is that interface with the evaluation both forms
share; `_WeightMasker` is the unstructured form. The structured form is in `units`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from coreprune.compress import CompressReport
from coreprune.methods.dpf.result import MaskUpdate
from coreprune.scoring.masks import layer_names, select_mask
from coreprune.torch_utils import eval_mode, module_weight

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def _record(
    step: int, sparsity: float, old: Iterable[torch.Tensor], new: Iterable[torch.Tensor]
) -> MaskUpdate:
    """The update from masks `old` to `new` (True = kept), matched one for one: both forms
    count what came back (DPF's feedback) and what was newly masked the same way."""
    masked = reactivated = newly = 0
    for before, after in zip(old, new, strict=True):
        before, after = before.cpu(), after.cpu()
        masked += int((~after).sum())
        reactivated += int((~before & after).sum())
        newly += int((before & ~after).sum())
    return MaskUpdate(step, float(sparsity), masked, reactivated, newly)


def _unpack(batch: object, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise TypeError("train_loader must yield (inputs, labels) batches")
    x, y = batch[0], batch[1]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("train_loader must yield tensors (inputs, labels)")
    return x.to(device), y.to(device)
