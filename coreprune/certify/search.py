"""Certified compression: the strongest budget whose held-out guarantee is certified.

`certified_compress` compresses the model at each budget of a fixed list, mildest first, and
tests each compressed model on the holdout with fixed-sequence testing (the Learn-then-Test
recipe): the null hypothesis "budget t misses the guarantee" is tested at the full delta, in
order, stopping at the first budget that cannot be certified. The last budget accepted is
certified, and the chance that any accepted budget in fact misses the guarantee is <= delta
(proof in docs/theory.md, "Held-out certificates"). The compressed models depend only on the
model and the compress arguments, never on the holdout, which is what makes this valid.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from coreprune.certify._data import (
    DEFAULT_BATCH_SIZE,
    Holdout,
    check_batch_size,
    check_confidence,
    check_holdout,
    check_model,
)
from coreprune.certify.bounds import clopper_pearson_lower, min_holdout_size
from coreprune.certify.disjoint import check_disjoint
from coreprune.certify.heldout import (
    ASSUMPTION,
    INFORMATIVE,
    Predictions,
    check_classifier,
    drop_upper,
    predict,
)
from coreprune.compress import CompressResult, compress

__all__ = [
    "DEFAULT_TARGETS",
    "METRICS",
    "BudgetTest",
    "CertifiedCompression",
    "Guarantee",
    "certified_compress",
]

METRICS = ("agreement", "accuracy", "accuracy_drop")
SEARCHES = ("fixed_sequence",)
DEFAULT_TARGETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Guarantee:
    """What the compressed model must certify on the deployment distribution.

    metric "agreement": P(pruned predicts as dense) >= level; "accuracy": P(pruned right) >=
    level; "accuracy_drop": acc(dense) - acc(pruned) <= level.
    """

    metric: str
    level: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"guarantee metric must be one of {METRICS}, got {self.metric!r}")
        level = self.level
        if isinstance(level, bool) or not isinstance(level, (int, float)):
            raise TypeError(f"guarantee level must be a number, got {type(level).__name__}")
        low, high = (-1.0, 1.0) if self.metric == "accuracy_drop" else (0.0, 1.0)
        if not low < level < high:
            raise ValueError(
                f"guarantee level for {self.metric} must lie in ({low:g}, {high:g}), got {level}"
            )

    @property
    def lower_is_better(self) -> bool:
        return self.metric == "accuracy_drop"

    def describe(self) -> str:
        sign = "<=" if self.lower_is_better else ">="
        return f"{self.metric} {sign} {self.level:g}"

    def bound(self, p: Predictions, delta: float) -> tuple[float, float]:
        """(observed value, its one-sided 1 - delta bound) for this metric."""
        n = int(p.labels.numel())
        dense_right, pruned_right = p.dense == p.labels, p.pruned == p.labels
        if self.metric == "agreement":
            k = int((p.dense == p.pruned).sum())
            return k / n, clopper_pearson_lower(k, n, delta)
        if self.metric == "accuracy":
            k = int(pruned_right.sum())
            return k / n, clopper_pearson_lower(k, n, delta)
        lost = int((dense_right & ~pruned_right).sum())
        gained = int((~dense_right & pruned_right).sum())
        return (lost - gained) / n, drop_upper(lost, gained, n, delta)

    def met(self, bound: float) -> bool:
        return bound <= self.level if self.lower_is_better else bound >= self.level


@dataclass(frozen=True)
class BudgetTest:
    """One budget of the sequence: what compress achieved and what the holdout certified."""

    target: float
    params_removed: float
    observed: float
    bound: float
    accepted: bool


@dataclass(frozen=True)
class CertifiedCompression:
    """The certified model (the strongest accepted budget) and the whole tested sequence.

    With probability >= `confidence` over the holdout, every accepted budget meets
    `guarantee`; in particular `result.model` does. Budgets after the first rejection were not
    tested (that is what keeps the family-wise error at delta).
    """

    result: CompressResult
    target: float
    guarantee: Guarantee
    confidence: float
    n: int
    tests: tuple[BudgetTest, ...]
    untested: tuple[float, ...]
    assumption: str = ASSUMPTION

    @property
    def model(self) -> nn.Module:
        return self.result.model

    def __str__(self) -> str:
        lines = [
            f"certified compression: {self.guarantee.describe()} with confidence "
            f"{self.confidence:g} on n = {self.n} held-out examples (fixed-sequence test)",
            "| target | params removed | observed | certified bound | accepted |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {t.target:g} | {100 * t.params_removed:.1f}% | {t.observed:.4f} | "
            f"{t.bound:.4f} | {'yes' if t.accepted else 'no (stop)'} |"
            for t in self.tests
        ]
        if self.untested:
            lines.append(f"not tested: {', '.join(f'{t:g}' for t in self.untested)}")
        lines.append(f"certified budget: target {self.target:g}")
        lines.append(f"assumes {self.assumption}")
        return "\n".join(lines)


def certified_compress(
    model: nn.Module,
    *,
    guarantee: Guarantee | Mapping[str, float],
    holdout: Holdout,
    confidence: float = 0.95,
    targets: Sequence[float] = DEFAULT_TARGETS,
    search: str = "fixed_sequence",
    batch_size: int = DEFAULT_BATCH_SIZE,
    **compress_kwargs: Any,
) -> CertifiedCompression:
    """Compress `model` as far along `targets` as the holdout certifies `guarantee`.

    `guarantee` is a `Guarantee` or a one-entry mapping such as {"agreement": 0.97} or
    {"accuracy_drop": 0.01}. `targets` are compress's `target` fractions, tested in increasing
    order (mildest first). Each is compressed with `compress(model, target=t,
    **compress_kwargs)`; `compress_kwargs` must not use the holdout (e.g. as calibration), or
    the guarantee is void: a `calibration` sharing any input with the holdout is refused
    (`check_disjoint`). Raises ValueError when even the mildest budget is not certified.
    """
    check_model(model, "model")
    guarantee = _check_guarantee(guarantee)
    confidence = check_confidence(confidence)
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    budgets = _check_targets(targets)
    if "target" in compress_kwargs or "eps" in compress_kwargs:
        raise ValueError(
            "pass the budgets as targets=(...), not target= or eps= (certified_compress sets "
            "compress's target itself)"
        )
    delta = 1.0 - confidence
    batches = check_holdout(holdout, check_batch_size(batch_size), labelled=True)
    need = min_holdout_size(delta, INFORMATIVE)
    if batches.size is not None and batches.size < need:
        raise ValueError(
            f"holdout has {batches.size} examples; at confidence {confidence:g} a bound needs "
            f"at least {need} (pass more held-out examples or lower the confidence)"
        )
    check_disjoint(batches, compress_kwargs.get("calibration"))
    check_classifier(model, batches, None)  # outputs and labels, before any compression
    tests: list[BudgetTest] = []
    accepted: CompressResult | None = None
    n = 0
    for index, target in enumerate(budgets):
        result = compress(model, target=target, **compress_kwargs)
        p = predict(model, result.model, holdout, confidence, batch_size=batch_size,
                    simultaneous=False)  # fmt: skip
        n = int(p.labels.numel())
        if n < need:
            raise ValueError(
                f"holdout has {n} examples; at confidence {confidence:g} a bound needs at "
                f"least {need}"
            )
        observed, bound = guarantee.bound(p, delta)
        ok = guarantee.met(bound)
        tests.append(BudgetTest(target, result.report.params_removed, observed, bound, ok))
        if not ok:
            if accepted is None:
                raise ValueError(
                    f"no budget certifies {guarantee.describe()} at confidence {confidence:g}: "
                    f"the mildest, target {target:g}, observed {guarantee.metric} "
                    f"{observed:.4f} and certified only {bound:.4f} on {n} held-out examples "
                    "(ask for a weaker level, add a milder target, or use more held-out data)"
                )
            return CertifiedCompression(
                accepted, tests[-2].target, guarantee, confidence, n, tuple(tests),
                tuple(budgets[index + 1 :]),
            )  # fmt: skip
        accepted = result
    assert accepted is not None
    return CertifiedCompression(accepted, budgets[-1], guarantee, confidence, n, tuple(tests), ())


def _check_guarantee(guarantee: object) -> Guarantee:
    if isinstance(guarantee, Guarantee):
        return guarantee
    if isinstance(guarantee, Mapping):
        if len(guarantee) != 1:
            raise ValueError(
                "guarantee must name exactly one metric, e.g. {'agreement': 0.97}, got "
                f"{dict(guarantee)!r}"
            )
        ((metric, level),) = guarantee.items()
        return Guarantee(metric, level)
    raise TypeError(
        "guarantee must be a Guarantee or a mapping like {'agreement': 0.97}, got "
        f"{type(guarantee).__name__}"
    )


def _check_targets(targets: object) -> list[float]:
    if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence):
        raise TypeError(f"targets must be a sequence of fractions, got {type(targets).__name__}")
    if len(targets) == 0:
        raise ValueError("targets is empty: give at least one budget, e.g. targets=(0.5,)")
    out = []
    for t in targets:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise TypeError(f"targets must hold numbers, got {t!r}")
        if not 0 < t < 1:
            raise ValueError(f"targets must lie in (0, 1) (fractions to remove), got {t}")
        out.append(float(t))
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(
            f"targets must increase strictly (mildest budget first), got {tuple(out)}; the "
            "order is fixed before looking at the holdout"
        )
    return out
