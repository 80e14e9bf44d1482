"""One-shot pruning of the shipped pretrained models, every method at the same widths.

This is the library's main demonstration (`coreprune oneshot`): load the trained Fashion-MNIST
models that ship with the package, prune each to the same architecture with the coreset and the
baselines (each with the rewiring named in its label), and measure test accuracy right after
pruning and after re-estimating batch-norm statistics. No fine-tuning: it shows what the choice of
units and the rewiring alone are worth. `benchmarks/bench_oneshot.py` is the full version (all
budgets, three seeds, fine-tuning, Torch-Pruning's importances).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from coreprune.checks import check_fraction, check_int
from coreprune.compress import compress
from coreprune.harness.data import make_loaders
from coreprune.harness.pretrained import PRETRAINED, load_pretrained
from coreprune.harness.training import set_seed
from coreprune.scoring import SCORERS, UnitScorer, make_scorer, needs_data
from coreprune.torch_utils import eval_mode
from coreprune.training.batchnorm import recalibrated_copy

__all__ = [
    "DEFAULT_BUDGETS",
    "DEFAULT_METHODS",
    "DEFAULT_MODELS",
    "OneshotRow",
    "first_examples",
    "format_table",
    "parse_method",
    "run_oneshot",
]

DEFAULT_MODELS = ("lenet300100", "vgg_small")
DEFAULT_BUDGETS = (0.5, 0.75)
DEFAULT_METHODS = ("coreset+lstsq", "magnitude+lstsq", "magnitude", "snip", "random")
REWIRINGS = ("none", "merge", "lstsq")


@dataclass(frozen=True)
class OneshotRow:
    """One pruned model: its budget, size and test accuracy (fractions in [0, 1])."""

    model: str
    budget: float
    method: str
    compensate: str
    params_removed: float
    widths: tuple[int, ...]
    accuracy: float
    accuracy_bn: float | None
    dense_accuracy: float
    seconds: float


def parse_method(text: str) -> tuple[str, str]:
    """'coreset+lstsq' -> ('coreset', 'lstsq'); a bare name means no rewiring."""
    name, _, rewiring = text.partition("+")
    rewiring = rewiring or "none"
    if name != "coreset" and name not in SCORERS:
        raise ValueError(f"unknown method {name!r} in {text!r}; known: coreset, {sorted(SCORERS)}")
    if rewiring not in REWIRINGS:
        raise ValueError(f"unknown rewiring {rewiring!r} in {text!r}; use one of {REWIRINGS}")
    return name, rewiring


def run_oneshot(
    models: Sequence[str] = DEFAULT_MODELS,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    calibration: int = 1024,
    test_images: int = 2000,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[OneshotRow]:
    """Prune every model to every budget (fraction of params removed) with every method.

    Every method of a budget gets the same per-layer widths (uniform allocation), the same
    `calibration` training images (for the coreset's choice, SNIP and least-squares rewiring)
    and is tested on the same first `test_images` test images.
    """
    for name in models:
        if name not in PRETRAINED:
            raise ValueError(f"no pretrained model {name!r}; available: {sorted(PRETRAINED)}")
    budgets = [check_fraction(b, "budget") for b in budgets]
    parsed = [parse_method(m) for m in methods]
    calibration = check_int(calibration, "calibration", minimum=2)
    test_images = check_int(test_images, "test_images", minimum=1)
    loaders = make_loaders("fashion_mnist", batch_size=256, augment=False, seed=seed)
    set_seed(seed)  # the training loader shuffles with the global generator
    calib = first_examples(loaders.train, calibration)[0]
    test_x, test_y = first_examples(loaders.test, test_images)
    rows: list[OneshotRow] = []
    bar = tqdm(total=len(models) * len(budgets) * len(parsed), desc="oneshot", disable=not progress)
    for name in models:
        dense = load_pretrained(name)
        dense_acc = _accuracy(dense, test_x, test_y)
        log(f"{name}: dense test accuracy {100 * dense_acc:.2f}% on {len(test_y)} images")
        for budget in budgets:
            for method, rewiring in parsed:
                set_seed(seed)  # each row draws the same batches (SNIP, BN re-estimation)
                start = time.perf_counter()
                scorer: str | UnitScorer = method
                if method != "coreset":
                    scorer = _scorer(method, loaders.train, seed)
                result = compress(
                    dense, target=budget, method=scorer, compensate=rewiring,
                    calibration=calib, progress=False,
                    generator=torch.Generator().manual_seed(seed),
                )  # fmt: skip
                seconds = time.perf_counter() - start
                acc = _accuracy(result.model, test_x, test_y)
                acc_bn = None
                if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in dense.modules()):
                    tuned = recalibrated_copy(result.model, loaders.train, "cpu")
                    acc_bn = _accuracy(tuned, test_x, test_y)
                rows.append(
                    OneshotRow(
                        name,
                        budget,
                        method,
                        rewiring,
                        result.report.params_removed,
                        tuple(r.units_after for r in result.report),
                        acc,
                        acc_bn,
                        dense_acc,
                        seconds,
                    )
                )
                bar.update(1)
    bar.close()
    return rows


def format_table(rows: Sequence[OneshotRow]) -> str:
    """A markdown table per model: methods down, budgets across, with its legend."""
    out: list[str] = []
    for name in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == name]
        budgets = list(dict.fromkeys(r.budget for r in mine))
        labels = list(dict.fromkeys(_label(r) for r in mine))
        bn = any(r.accuracy_bn is not None for r in mine)
        out.append(f"### {name} (dense {100 * mine[0].dense_accuracy:.2f}%)")
        out.append("")
        head = [f"{100 * b:g}% params removed" for b in budgets]
        out.append("| method | " + " | ".join(head) + " |")
        out.append("|---|" + "---|" * len(budgets))
        for label in labels:
            cells = []
            for budget in budgets:
                match = [r for r in mine if r.budget == budget and _label(r) == label]
                cells.append(_cell(match[0], bn) if match else "—")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        removed = {b: next(r.params_removed for r in mine if r.budget == b) for b in budgets}
        legend = "Test accuracy (%) right after pruning"
        legend += " / after re-estimating batch-norm statistics" if bn else ""
        legend += "; no fine-tuning. Every row of a column has the same widths: "
        legend += ", ".join(f"{100 * removed[b]:.1f}% of params removed" for b in budgets)
        out += ["", legend + ".", ""]
    return "\n".join(out)


def _label(row: OneshotRow) -> str:
    return row.method + ("" if row.compensate == "none" else f" + {row.compensate}")


def _cell(row: OneshotRow, bn: bool) -> str:
    text = f"{100 * row.accuracy:.2f}"
    if bn:
        text += " / " + ("—" if row.accuracy_bn is None else f"{100 * row.accuracy_bn:.2f}")
    return text


def _scorer(method: str, train: DataLoader, seed: int) -> UnitScorer:
    if needs_data(method):
        scorer = make_scorer(method, train)
    else:
        scorer = make_scorer(method, seed=seed) if method == "random" else make_scorer(method)
    if not isinstance(scorer, UnitScorer):
        raise ValueError(f"method {method!r} has no unit form; it cannot remove units")
    return scorer


def first_examples(loader: DataLoader, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` examples of a loader (fewer if it has fewer), as two tensors."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    seen = 0
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        seen += len(y)
        if seen >= count:
            break
    return torch.cat(xs)[:count], torch.cat(ys)[:count]


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with eval_mode(model, no_grad=True):
        batches = zip(x.split(500), y.split(500), strict=True)
        hits = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches)
    return hits / len(y)
