"""GraSP (Wang, Zhang & Grosse, ICLR 2020, "Picking Winning Tickets Before Training by Preserving
Gradient Flow"): keep the weights whose removal would shrink the gradient norm.

Removing weights moves theta by delta = -theta (on the removed entries). To first order the squared
gradient norm then changes by 2 delta^T H g, where g is the loss gradient and H g the
Hessian-gradient product. GraSP's score is S(-theta) = -theta ⊙ Hg, and GraSP removes the weights
with the LARGEST S (their removal increases, or least reduces, the gradient flow).

Sign convention here: every `Pruner` returns "higher = keep", so `GraSP` returns -S = theta ⊙ Hg.
The lowest theta ⊙ Hg is removed first, which is exactly the paper's rule. Scores are signed and
are not passed through |.|.

Setting, as in the paper: loss = cross-entropy of logits / T with T = 200, on a class-balanced
sample (the first `samples_per_class` examples of each class in the loader), batch norm in eval
mode, g and H taken over the weights of every Linear and Conv2d layer (not biases or batch-norm
parameters), one shot.

`hessian_gradient` (g and Hg by double backprop, in chunks) and `class_balanced_batch` are shared
with `coreprune.scoring.gradflow`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from coreprune.checks import check_choice, check_float, check_int
from coreprune.torch_utils import module_weight

from .base import Pruner
from .data import is_labelled_pair, labelled_batches
from .gates import UnitGates, param_unit_rows, unit_params

__all__ = ["UNIT_FORMS", "GraSP", "class_balanced_batch", "hessian_gradient", "prunable_weights"]

UNIT_FORMS = ("gate", "sum")
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GraSP(Pruner):
    """Gradient Signal Preservation scores on a class-balanced sample of `data`.

    Per weight: theta ⊙ Hg (= -S, see the module docstring). Per unit (`unit_form`):

    - "gate" (default): a gate c on the unit's output (after its batch norm); removing the unit is
      delta c = -1, so S_c = -c (H g)_c, and the score is c · d(g^T g / 2)/dc at c = 1, where g is
      the gradient over the Linear/Conv2d weights. It is the first-order change of the weights'
      gradient norm when the whole unit is switched off, its bias and batch-norm shift included.
    - "sum": the sum of theta ⊙ Hg over the unit's own parameters (filter, bias, batch-norm scale
      and shift), where (Hg) on a bias or batch-norm entry means d(g^T g / 2)/d(that entry). GraSP's
      S is linear in delta, so this is exactly S for zeroing all of them at once (which zeroes
      the unit's output). With neither bias nor batch norm it is the sum of the unit's row of
      `weight_scores`.

    `num_classes` defaults to the width of the model's output; the sample is drawn on the first
    scoring call and reused. `chunk` bounds how many examples go through the double backward at
    once (the result does not depend on it).
    """

    name: ClassVar[str] = "grasp"
    needs_data: ClassVar[bool] = True

    def __init__(
        self,
        data: object = None,
        *,
        samples_per_class: int = 10,
        num_classes: int | None = None,
        temperature: float = 200.0,
        unit_form: str = "gate",
        loss: Loss = F.cross_entropy,
        chunk: int | None = 256,
    ) -> None:
        check_data(data, "GraSP")
        self.samples_per_class = check_int(samples_per_class, "samples_per_class", minimum=1)
        self.num_classes = (
            None if num_classes is None else check_int(num_classes, "num_classes", minimum=1)
        )
        self.temperature = check_temperature(temperature)
        self.unit_form = check_choice(unit_form, UNIT_FORMS, "unit_form")
        if not callable(loss):
            raise TypeError("loss must be callable as loss(logits, labels) -> mean loss")
        self.loss = loss
        self.chunk = None if chunk is None else check_int(chunk, "chunk", minimum=1)
        self.data = data
        self._sample: tuple[torch.Tensor, torch.Tensor] | None = None

    def sample(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The class-balanced (inputs, labels) used for scoring; drawn once, then cached."""
        if self._sample is None:
            self._sample = class_balanced_batch(
                self.data, self.samples_per_class, self.num_classes or output_width(model), "GraSP"
            )
        return self._sample

    def weight_scores(
        self, model: nn.Module, names: Sequence[str], example_input: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        model.eval()
        x, y = self.sample(model)
        params = prunable_weights(model)
        targets = [module_weight(model, n) for n in names]
        _, _, hg = hessian_gradient(
            model, x, y, params, temperature=self.temperature, loss=self.loss, chunk=self.chunk,
            wrt=targets,
        )  # fmt: skip
        return {n: (t.detach() * h).double() for n, t, h in zip(names, targets, hg, strict=True)}

    def unit_scores(
        self, model: nn.Module, gates: UnitGates, example_input: torch.Tensor | None
    ) -> list[torch.Tensor]:
        model.eval()
        x, y = self.sample(model)
        params = prunable_weights(model)
        if self.unit_form == "gate":
            gates.require_grad()
            with gates:
                _, _, hg = hessian_gradient(
                    model, x, y, params, temperature=self.temperature, loss=self.loss,
                    chunk=self.chunk, wrt=gates.values,
                )  # fmt: skip
            return [(c.detach() * h).double().cpu() for c, h in zip(gates.values, hg, strict=True)]
        groups = [unit_params(gates, i) for i in range(len(gates.pairs))]
        flat = [p for group in groups for p in group]
        for p in flat:
            p.requires_grad_(True)
        with gates:
            _, _, hg = hessian_gradient(
                model, x, y, params, temperature=self.temperature, loss=self.loss,
                chunk=self.chunk, wrt=flat,
            )  # fmt: skip
        by_id = {id(p): h for p, h in zip(flat, hg, strict=True)}
        scores = []
        for i, group in enumerate(groups):
            n = gates.units(i)
            total = torch.zeros(n, dtype=torch.float64)
            for p in group:
                rows = param_unit_rows(gates, i, p, p.detach() * by_id[id(p)])
                total += rows.sum(1).double().cpu()
            scores.append(total)
        return scores

    def __repr__(self) -> str:
        return (
            f"GraSP(samples_per_class={self.samples_per_class}, temperature={self.temperature:g}, "
            f"unit_form={self.unit_form!r})"
        )


# --------------------------------------------------------------------------------------------
# Shared pieces (also used by gradflow.py)


def hessian_gradient(
    model: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    params: Sequence[torch.Tensor],
    *,
    temperature: float = 1.0,
    loss: Loss = F.cross_entropy,
    chunk: int | None = None,
    wrt: Sequence[torch.Tensor] = (),
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """g, Hg and d(g^T g / 2)/dt for the mean loss L = loss(model(x) / T, y) over all inputs.

    g = dL/dP over `params` P; Hg = d/dP (g_fixed^T dL/dP), the Hessian over P times g, by double
    backprop; the third list holds d/dt (g_fixed^T dL/dP) for each tensor t in `wrt` (zeros
    where t does not influence it). For t in P that is (Hg)_t; for anything else (a gate, a bias
    outside P) it is the first-order change of g^T g / 2 along t. `loss` must return the mean over
    its batch: chunks of `chunk` examples are weighted by their size, so the result is that of
    one batch. Inputs are cast to the dtype and device of the first parameter.
    """
    if not params:
        raise ValueError("params is empty: pass the tensors the gradient is taken over")
    first = params[0]
    if inputs.is_floating_point():
        inputs = inputs.to(device=first.device, dtype=first.dtype)
    else:
        inputs = inputs.to(first.device)
    labels = labels.to(first.device)
    total = inputs.shape[0]
    if total == 0:
        raise ValueError("inputs is empty: pass at least one labelled example")
    size = total if chunk is None else chunk
    pieces = [(inputs[s : s + size], labels[s : s + size]) for s in range(0, total, size)]
    unique = _unique(list(params) + list(wrt))

    def chunk_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss(model(x) / temperature, y) * (x.shape[0] / total)

    if len(pieces) == 1:  # one forward serves both passes
        value = chunk_loss(*pieces[0])
        grads = torch.autograd.grad(value, list(params), create_graph=True)
        g = [gr.detach() for gr in grads]
        second = _grad_or_zero(_dot(g, grads), unique)
    else:
        g = [torch.zeros_like(p) for p in params]
        for x, y in pieces:
            grads = torch.autograd.grad(chunk_loss(x, y), list(params))
            g = [a + b.detach() for a, b in zip(g, grads, strict=True)]
        second = [torch.zeros_like(t) for t in unique]
        for x, y in pieces:
            grads = torch.autograd.grad(chunk_loss(x, y), list(params), create_graph=True)
            second = [
                s + d for s, d in zip(second, _grad_or_zero(_dot(g, grads), unique), strict=True)
            ]
    by_id = {id(t): s for t, s in zip(unique, second, strict=True)}
    return g, [by_id[id(p)] for p in params], [by_id[id(t)] for t in wrt]


def class_balanced_batch(
    data: object, samples_per_class: int, num_classes: int, who: str = "GraSP"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `samples_per_class` examples of each class 0..num_classes-1, in loader order,
    grouped by class; reading stops as soon as every class is full."""
    check_data(data, who)
    samples_per_class = check_int(samples_per_class, "samples_per_class", minimum=1)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    xs: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]
    counts = [0] * num_classes
    for x, y in labelled_batches(data, who):
        if y.is_floating_point() or y.ndim != 1:
            raise ValueError(
                f"{who}: class-balanced sampling needs integer class labels (a 1-D tensor), "
                f"got {y.dtype} labels of shape {tuple(y.shape)}"
            )
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(
                f"{who}: labels must lie in [0, num_classes={num_classes}), found "
                f"{int(y.min())}..{int(y.max())}; pass the right num_classes"
            )
        for c in range(num_classes):
            need = samples_per_class - counts[c]
            if need > 0:
                picked = x[y == c][:need]
                if picked.shape[0]:
                    xs[c].append(picked)
                    counts[c] += picked.shape[0]
        if min(counts) >= samples_per_class:
            break
    short = [c for c in range(num_classes) if counts[c] < samples_per_class]
    if short:
        raise ValueError(
            f"{who}: samples_per_class={samples_per_class} but class(es) {short[:10]} have only "
            f"{min(counts[c] for c in short)} example(s) in data; lower samples_per_class or pass "
            "more data"
        )
    inputs = torch.cat([torch.cat(parts) for parts in xs])
    labels = torch.arange(num_classes).repeat_interleave(samples_per_class)
    return inputs, labels


def prunable_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights of every Linear and Conv2d, made to require grad (the scoring copy's)."""
    out = []
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.requires_grad_(True)
            out.append(module.weight)
    if not out:
        raise ValueError("model has no nn.Linear or nn.Conv2d layer to score")
    return out


def output_width(model: nn.Module) -> int:
    """The number of classes a classifier predicts, read as the out_features of its last
    registered Linear (pass num_classes= where that is not the classifier head)."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError("cannot infer the number of classes (no nn.Linear); pass num_classes=")
    return int(last[-1].out_features)


def check_data(data: object, who: str) -> None:
    """Fail early, at construction, when a data-driven method gets no usable data."""
    if data is None:
        raise ValueError(
            f"{who} needs labelled data: pass data= (a DataLoader of (inputs, labels) batches, "
            "or one (inputs, labels) pair)"
        )
    if not (is_labelled_pair(data) or isinstance(data, Iterable)):
        raise TypeError(
            f"{who}: data must be a DataLoader/iterable of (inputs, labels) or one "
            f"(inputs, labels) pair, got {type(data).__name__}"
        )


def check_temperature(value: object) -> float:
    """A softmax temperature T dividing the logits in the loss: a finite number > 0."""
    return check_float(value, "temperature", low=0.0, low_open=True)


def _dot(left: Sequence[torch.Tensor], right: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_i <left_i, right_i>, summed in order (a 0-d tensor; differentiable in both)."""
    pairs = list(zip(left, right, strict=True))
    if not pairs:
        raise ValueError("no parameters to take the gradient over")
    total = (pairs[0][0] * pairs[0][1]).sum()
    for a, b in pairs[1:]:
        total = total + (a * b).sum()
    return total


def _unique(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _grad_or_zero(value: torch.Tensor, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if not value.requires_grad:  # the gradient does not depend on anything (a loss linear in P)
        return [torch.zeros_like(t) for t in tensors]
    grads = torch.autograd.grad(value, list(tensors), allow_unused=True)
    return [
        torch.zeros_like(t) if g is None else g.detach()
        for t, g in zip(tensors, grads, strict=True)
    ]
