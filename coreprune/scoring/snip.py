"""SNIP (Lee, Ajanthan & Torr, ICLR 2019): connection sensitivity |dL/dc| of a gate c on each
weight, on one labelled mini-batch, normalised to sum to 1."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from coreprune.checks import check_choice
from coreprune.torch_utils import model_device

from .base import Pruner
from .data import labelled_batch
from .gates import UnitGates, param_unit_rows, unit_params

__all__ = ["SNIP", "UNIT_FORMS"]

UNIT_FORMS = ("gate", "sum")
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SNIP(Pruner):
    """Connection sensitivity on one batch of `batch_size` examples from `data`.

    Per weight, the gate derivative dL/dc at c = 1 equals g * w, so the score is |g * w|. Per unit
    (`unit_form`): "gate" (default) puts one gate on the unit's output and scores |dL/dc|, the
    first-order change of the loss when the whole unit is removed; "sum" adds |theta * g| over the
    unit's parameters (filter, bias, batch-norm scale and shift), which ignores cancellation
    between them. Batch norm is in eval mode.
    """

    name: ClassVar[str] = "snip"
    needs_data: ClassVar[bool] = True

    def __init__(
        self,
        data: object = None,
        *,
        batch_size: int | None = 128,
        unit_form: str = "gate",
        loss: Loss = F.cross_entropy,
    ) -> None:
        check_choice(unit_form, UNIT_FORMS, "unit_form")
        if not callable(loss):
            raise TypeError("loss must be callable as loss(logits, labels)")
        self.inputs, self.labels = labelled_batch(data, batch_size, "SNIP")
        self.batch_size = batch_size
        self.unit_form = unit_form
        self.loss = loss

    def _loss(
        self, model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        device = model_device(model)
        return self.loss(forward(self.inputs.to(device)), self.labels.to(device))

    def weight_scores(
        self, model: nn.Module, names: Sequence[str], example_input: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        model.eval()
        params = dict(model.named_parameters())
        weights = {f"{n}.weight": params[f"{n}.weight"].detach() for n in names}
        cs = {k: torch.ones_like(w, requires_grad=True) for k, w in weights.items()}
        gated = {k: weights[k] * cs[k] for k in weights}
        loss = self._loss(model, lambda x: functional_call(model, gated, (x,)))
        grads = torch.autograd.grad(loss, list(cs.values()))
        scores = {n: g.detach().abs().double() for n, g in zip(names, grads, strict=True)}
        return _normalised(scores)

    def unit_scores(
        self, model: nn.Module, gates: UnitGates, example_input: torch.Tensor | None
    ) -> list[torch.Tensor]:
        model.eval()
        gates.require_grad()
        groups = [unit_params(gates, i) for i in range(len(gates.pairs))]
        flat = [p for group in groups for p in group]
        for p in flat:
            p.requires_grad_(True)
        with gates:
            loss = self._loss(model, model)
        grads = torch.autograd.grad(loss, gates.values + flat, allow_unused=True)
        gate_grads = grads[: len(gates.values)]
        param_grads = dict(zip(map(id, flat), grads[len(gates.values) :], strict=True))
        scores: list[torch.Tensor] = []
        for i, group in enumerate(groups):
            n = gates.units(i)
            total = torch.zeros(n, dtype=torch.float64)
            if self.unit_form == "gate":
                if gate_grads[i] is not None:
                    total += gate_grads[i].detach().abs().double().cpu()
            else:
                for p in group:
                    g = param_grads[id(p)]
                    if g is not None:
                        rows = param_unit_rows(gates, i, p, (p.detach() * g).abs())
                        total += rows.sum(1).double().cpu()
            scores.append(total)
        total_score = sum(float(s.sum()) for s in scores)
        return [s / total_score for s in scores] if total_score > 0 else scores

    def __repr__(self) -> str:
        return f"SNIP(batch_size={self.batch_size}, unit_form={self.unit_form!r})"


def _normalised(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    total = sum(float(s.sum()) for s in scores.values())
    return {k: s / total for k, s in scores.items()} if total > 0 else scores
