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

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from coreprune.checks import check_choice, check_int
from coreprune.torch_utils import module_weight

from .base import Pruner
from .data import labelled_batch
from .gates import UnitGates, unit_rows
from .grasp import (
    check_data,
    check_temperature,
    class_balanced_batch,
    hessian_gradient,
    output_width,
)

__all__ = [
    "GRADFLOW_MEASURES",
    "GradFlow",
    "GradNormIncrease",
    "GradNormPreservation",
    "LossPreservation",
    "MagnitudeL2",
]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSS_FORMS = ("paper", "abs_sum")


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
        self.samples = None if samples is None else check_int(samples, "samples", minimum=1)
        self.samples_per_class = (
            None
            if samples_per_class is None
            else check_int(samples_per_class, "samples_per_class", minimum=1)
        )
        self.num_classes = (
            None if num_classes is None else check_int(num_classes, "num_classes", minimum=1)
        )
        self.temperature = check_temperature(
            self.default_temperature if temperature is None else temperature
        )
        if not callable(loss):
            raise TypeError("loss must be callable as loss(logits, labels) -> mean loss")
        self.loss = loss
        self.chunk = None if chunk is None else check_int(chunk, "chunk", minimum=1)
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
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        if self.signal == "g":  # one backward is enough
            xs, ys = _to(x, params[0]), y.to(params[0].device)
            size = xs.shape[0] if self.chunk is None else self.chunk
            total = [torch.zeros_like(p) for p in params]
            for s in range(0, xs.shape[0], size):
                xc, yc = xs[s : s + size], ys[s : s + size]
                value = self.loss(model(xc) / self.temperature, yc) * (xc.shape[0] / xs.shape[0])
                grads = torch.autograd.grad(value, list(params), allow_unused=True)
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
        weights = [module_weight(model, n) for n in names]
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
            rows = self.combine(unit_rows(producer, w), unit_rows(producer, signal), 1)
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
    needs_data: ClassVar[bool] = True
    signal: ClassVar[str] = "g"

    def __init__(self, data: object = None, *, form: str = "paper", **kwargs: Any) -> None:
        self.form = check_choice(form, LOSS_FORMS, "form")
        super().__init__(data, **kwargs)

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
    needs_data: ClassVar[bool] = True
    signal: ClassVar[str] = "hg"
    default_temperature: ClassVar[float] = 200.0

    def combine(self, theta: torch.Tensor, signal: torch.Tensor, dim: int | None) -> torch.Tensor:
        product = theta.double() * signal.double()
        return product if dim is None else product.sum(dim)


class GradNormPreservation(GradFlow):
    """|theta_f^T H g| per filter (|theta * Hg| per weight): remove the filters whose removal
    changes the gradient norm least. Temperature 1, as the paper's code uses for it."""

    name: ClassVar[str] = "gradnorm_preservation"
    needs_data: ClassVar[bool] = True
    signal: ClassVar[str] = "hg"

    def combine(self, theta: torch.Tensor, signal: torch.Tensor, dim: int | None) -> torch.Tensor:
        product = theta.double() * signal.double()
        return product.abs() if dim is None else product.sum(dim).abs()


GRADFLOW_MEASURES: dict[str, type[GradFlow]] = {
    cls.name: cls for cls in (MagnitudeL2, LossPreservation, GradNormIncrease, GradNormPreservation)
}


def _to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if x.is_floating_point():
        return x.to(device=like.device, dtype=like.dtype)
    return x.to(like.device)
