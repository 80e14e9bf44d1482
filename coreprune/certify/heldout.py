"""Held-out certificates for a pruned model: agreement, accuracy and accuracy drop.

The worst-case certificates of `coreprune.coreset` hold for every input of a query space but
grow vacuous at the budgets people prune to. These are the complement: statements about the
deployment distribution, from n held-out examples, exact at any n (Clopper-Pearson), with no
assumption about the models at all. What they assume is about the data (`ASSUMPTION`).

With `simultaneous=True` (the default) the failure probability delta = 1 - confidence is split
so that all reported bounds hold together: delta/3 for agreement, delta/3 for accuracy, and
delta/3 for the drop (itself delta/6 for each of its two discordant cells).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from coreprune.certify._data import (
    DEFAULT_BATCH_SIZE,
    Batches,
    Holdout,
    check_batch_size,
    check_confidence,
    check_finite_inputs,
    check_fits,
    check_holdout,
    check_labels,
    check_model,
    on_device,
    read_only,
    run_device,
)
from coreprune.certify.bounds import (
    clopper_pearson_lower,
    clopper_pearson_upper,
    min_holdout_size,
)
from coreprune.checks import check_bool
from coreprune.torch_utils import model_device

__all__ = [
    "ASSUMPTION",
    "HeldOutCertificate",
    "Predictions",
    "certify",
    "certify_predictions",
    "check_classifier",
    "predict",
]

ASSUMPTION = (
    "the held-out examples are drawn i.i.d. from the deployment distribution and were never "
    "used for any choice (training, pruning, calibration, choosing the budget or the model)"
)
INFORMATIVE = 0.5  # a perfect score must certify more than a coin flip


@dataclass(frozen=True)
class Predictions:
    """Class predictions of the dense and pruned models on the same held-out examples."""

    dense: torch.Tensor
    pruned: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        shapes = {tuple(t.shape) for t in (self.dense, self.pruned, self.labels)}
        if len(shapes) != 1 or self.labels.ndim != 1:
            raise ValueError(
                "dense, pruned and labels must be 1-D tensors of one length, got shapes "
                f"{[tuple(t.shape) for t in (self.dense, self.pruned, self.labels)]}"
            )


@dataclass(frozen=True)
class HeldOutCertificate:
    """Lower bounds on the pruned model's agreement and accuracy, upper bound on its drop.

    Each bound holds with probability >= `confidence` over the draw of the held-out set; with
    `simultaneous` they hold all together with that probability. `agreement` is the fraction of
    inputs on which both models predict the same class; `accuracy_drop` is the dense model's
    accuracy minus the pruned model's (negative when pruning helped). `dense_only` counts
    examples the dense model gets right and the pruned model wrong; `pruned_only` the reverse.
    """

    n: int
    confidence: float
    simultaneous: bool
    agreement: float
    agreement_lower: float
    accuracy: float
    accuracy_lower: float
    dense_accuracy: float
    accuracy_drop: float
    accuracy_drop_upper: float
    dense_only: int
    pruned_only: int
    delta_agreement: float
    delta_accuracy: float
    delta_drop: float
    assumption: str = ASSUMPTION

    def __str__(self) -> str:
        together = "all together" if self.simultaneous else "each on its own"
        return "\n".join(
            [
                f"held-out certificate: n = {self.n}, confidence {self.confidence:g} ({together})",
                f"  agreement with dense: observed {self.agreement:.4f}, "
                f"certified >= {self.agreement_lower:.4f}",
                f"  pruned accuracy:      observed {self.accuracy:.4f}, "
                f"certified >= {self.accuracy_lower:.4f}",
                f"  accuracy drop:        observed {self.accuracy_drop:+.4f}, "
                f"certified <= {self.accuracy_drop_upper:+.4f} "
                f"(dense {self.dense_accuracy:.4f}; {self.dense_only} lost, "
                f"{self.pruned_only} gained)",
                f"  assumes {self.assumption}",
            ]
        )


def deltas(confidence: float, simultaneous: bool) -> tuple[float, float, float]:
    """Failure probability of the agreement, accuracy and drop bounds (the drop's is then halved
    between its two discordant cells)."""
    delta = 1.0 - confidence
    return (delta / 3, delta / 3, delta / 3) if simultaneous else (delta, delta, delta)


def drop_upper(dense_only: int, pruned_only: int, n: int, delta: float) -> float:
    """Upper (1 - delta) bound on acc(dense) - acc(pruned) from the discordant counts.

    acc(dense) - acc(pruned) = P(B) - P(C) with B = {dense right, pruned wrong} and
    C = {dense wrong, pruned right}; so upper(B, delta/2) - lower(C, delta/2) bounds it with
    probability >= 1 - delta (union bound over the two Clopper-Pearson statements).
    """
    return clopper_pearson_upper(dense_only, n, delta / 2) - clopper_pearson_lower(
        pruned_only, n, delta / 2
    )


def certify_predictions(
    predictions: Predictions, confidence: float = 0.95, *, simultaneous: bool = True
) -> HeldOutCertificate:
    """The certificate from predictions already computed (e.g. cached once, resampled often)."""
    confidence = check_confidence(confidence)
    check_bool(simultaneous, "simultaneous")
    if not isinstance(predictions, Predictions):
        raise TypeError(f"predictions must be Predictions, got {type(predictions).__name__}")
    n = int(predictions.labels.numel())
    d_agree, d_acc, d_drop = deltas(confidence, simultaneous)
    _check_size(n, min(d_agree, d_acc))
    dense_right = predictions.dense == predictions.labels
    pruned_right = predictions.pruned == predictions.labels
    agree = int((predictions.dense == predictions.pruned).sum())
    right = int(pruned_right.sum())
    dense_only = int((dense_right & ~pruned_right).sum())
    pruned_only = int((~dense_right & pruned_right).sum())
    return HeldOutCertificate(
        n=n,
        confidence=confidence,
        simultaneous=simultaneous,
        agreement=agree / n,
        agreement_lower=clopper_pearson_lower(agree, n, d_agree),
        accuracy=right / n,
        accuracy_lower=clopper_pearson_lower(right, n, d_acc),
        dense_accuracy=int(dense_right.sum()) / n,
        accuracy_drop=(dense_only - pruned_only) / n,
        accuracy_drop_upper=drop_upper(dense_only, pruned_only, n, d_drop),
        dense_only=dense_only,
        pruned_only=pruned_only,
        delta_agreement=d_agree,
        delta_accuracy=d_acc,
        delta_drop=d_drop,
    )


def certify(
    dense: nn.Module,
    pruned: nn.Module,
    holdout: Holdout,
    confidence: float = 0.95,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    simultaneous: bool = True,
) -> HeldOutCertificate:
    """Certify `pruned` against `dense` on held-out data: agreement, accuracy, accuracy drop.

    `holdout` is a DataLoader yielding (inputs, labels) or an (inputs, labels) pair of tensors
    (then run in chunks of `batch_size`). The bounds hold with probability >= `confidence` over
    the draw of the holdout, under `ASSUMPTION` and nothing else. `device`: where to run (None:
    where `dense`'s parameters are; else a torch.device or a name such as "cpu", "cuda:1" or
    "auto"); a model living elsewhere runs as a copy. Both models run in eval mode under no_grad
    and are left exactly as they were. Before the run each model is tried on one held-out
    example, so inputs it cannot take are a ValueError naming the holdout.
    """
    predictions = predict(dense, pruned, holdout, confidence, batch_size=batch_size,
                          device=device, simultaneous=simultaneous)  # fmt: skip
    return certify_predictions(predictions, confidence, simultaneous=simultaneous)


def predict(
    dense: nn.Module,
    pruned: nn.Module,
    holdout: Holdout,
    confidence: float = 0.95,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    simultaneous: bool = True,
) -> Predictions:
    """Both models' class predictions on the holdout, every argument checked before the run.

    `confidence` and `simultaneous` only serve the up-front check that the holdout is large
    enough for a certificate at that confidence.
    """
    check_model(dense, "dense")
    check_model(pruned, "pruned")
    confidence = check_confidence(confidence)
    check_bool(simultaneous, "simultaneous")
    where = run_device(device, dense)
    batches = check_holdout(holdout, check_batch_size(batch_size), labelled=True)
    d_agree, d_acc, _ = deltas(confidence, simultaneous)
    if batches.size is not None:
        _check_size(batches.size, min(d_agree, d_acc))
    run_dense, run_pruned = on_device(dense, where), on_device(pruned, where)
    dense_out, pruned_out, labels = [], [], []
    with read_only(dense, pruned, run_dense, run_pruned):
        seen = 0
        for index, (x, y) in enumerate(batches):
            check_finite_inputs(x, "holdout", seen)
            x = x.to(where)
            if index == 0:  # one example first: a holdout the models cannot take fails by name
                check_fits(run_dense, x, "dense")
                check_fits(run_pruned, x, "pruned")
            a, b = run_dense(x), run_pruned(x)
            if index == 0:
                _check_outputs(a, b)
                if batches.labels is not None:  # tensors: every label checked before the run
                    check_labels(batches.labels, a.shape[1])
            _check_finite(a, "dense", seen)
            _check_finite(b, "pruned", seen)
            seen += len(a)
            check_labels(y, a.shape[1])
            assert y is not None
            dense_out.append(a.argmax(1).cpu())
            pruned_out.append(b.argmax(1).cpu())
            labels.append(y.cpu().long())
    if not labels:
        raise ValueError("holdout is empty: pass at least one held-out example")
    return Predictions(torch.cat(dense_out), torch.cat(pruned_out), torch.cat(labels))


def check_classifier(model: nn.Module, batches: Batches, device: torch.device | None) -> None:
    """Run `model` on the first held-out batch: it must return (batch, classes) scores and
    every label (all of them for tensors, the first batch's for a DataLoader) must be a class."""
    where = model_device(model) if device is None else device
    run = on_device(model, where)
    x, y = batches.first()
    x = x.to(where)
    check_fits(run, x, "model")
    with read_only(model, run):
        out = run(x)
    _check_outputs(out, out)
    _check_finite(out, "model", 0)
    check_labels(batches.labels if batches.labels is not None else y, out.shape[1])


def _check_outputs(a: object, b: object) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(
            "dense and pruned must return a tensor of class scores, got "
            f"{type(a).__name__} and {type(b).__name__}"
        )
    if a.ndim != 2:
        raise ValueError(
            f"the models must return (batch, classes) scores, got shape {tuple(a.shape)}"
        )
    if a.shape != b.shape:
        raise ValueError(
            f"dense and pruned give outputs of different shapes, {tuple(a.shape)} and "
            f"{tuple(b.shape)}: certify a pruned copy of the same classifier"
        )


def _check_finite(scores: torch.Tensor, name: str, offset: int) -> None:
    """Class scores must be finite: argmax of a NaN row is arbitrary (two all-NaN models would
    "agree" everywhere), so a non-finite score is an error, never a vote."""
    bad = ~torch.isfinite(scores).all(dim=1)
    if bool(bad.any()):
        first = offset + int(torch.nonzero(bad)[0])
        raise ValueError(
            f"{name} returned NaN or Inf class scores on {int(bad.sum())} held-out example(s) "
            f"of this batch (first: example {first}); a certificate needs finite outputs on "
            "every example: fix the model (e.g. its weights or batch-norm statistics) or the "
            "inputs"
        )


def _check_size(n: int, delta: float) -> None:
    if n == 0:
        raise ValueError("holdout is empty: pass at least one held-out example")
    need = min_holdout_size(delta, INFORMATIVE)
    if n < need:
        raise ValueError(
            f"holdout has {n} examples; at this confidence a bound needs at least {need} for a "
            f"perfect score to certify more than {INFORMATIVE} (lower the confidence or pass "
            "more held-out examples)"
        )
