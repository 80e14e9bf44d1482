"""One-shot structured pruning of the shipped Fashion-MNIST models at matched widths.

Every method prunes the same layers to the same per-layer widths (uniform allocation gives one
architecture per budget), so the rows differ only in WHICH units are kept and in how the next
layer is rewired. Each row is measured three ways on the full 10k test set: right after pruning,
after batch-norm re-estimation (the same training batches for every row), and after the same
short fine-tuning (same images, order, optimizer and learning rate for every row).

Rows:
- the coreset's default choice, "refit" (greedy structured OBS on each consumer's least-squares
  problem, chosen and refitted together), with lstsq; the empirical choice with compensate
  none / merge / lstsq, and the certified choice with lstsq (separates the choice from the
  rewiring);
- magnitude (filter L1), SNIP (one batch of 128), SynFlow, and random (several seeds), each with
  compensate none and lstsq on the same calibration batch;
- Torch-Pruning (optional, `pip install torch-pruning==1.6.1 --no-deps`): its MetaPruner with
  group-L2, group-Taylor and group-Hessian importance, driven to exactly our per-layer widths and
  restricted to exactly the layers we prune (checked after pruning), as shipped ("none"), and
  with the same least-squares refit as ours ("lstsq": TP's kept units, recovered from its
  pruned weights, cut by our surgery and refitted layer by layer), to separate choice from refit.

Run (results go to benchmarks/results/oneshot/, rows are appended as they finish, finished rows
are skipped on a rerun, and summary.md is rewritten after each model):

    python benchmarks/bench_oneshot.py --models lenet300100 vgg_small resnet20
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import fcntl
import hashlib
import importlib
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import coreprune
from coreprune.compress import PairCut, apply_plan, compress, count_macs, count_params
from coreprune.harness.data import load_dataset, make_loaders
from coreprune.harness.evaluation.machine import cpu_name
from coreprune.harness.pretrained import load_pretrained
from coreprune.harness.training import evaluate, fit, recalibrated_copy
from coreprune.scoring import SNIP, Magnitude, Pruner, Random, SynFlow
from coreprune.surgery.graph import find_prunable_pairs
from coreprune.surgery.groups import find_channel_groups

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "oneshot"
MODELS = ("lenet300100", "vgg_small", "resnet20")
OURS = ("coreset", "magnitude", "snip", "synflow", "random")
TP_IMPORTANCES = ("tp_l2", "tp_taylor", "tp_hessian")
METHODS = (*OURS, *TP_IMPORTANCES)
HIDDEN = "hidden"  # budget label prefix: a fraction of hidden units removed in every layer

FIELDS = (
    "model", "budget", "target", "method", "compensate", "choice", "seed", "status",
    "params", "macs", "params_removed", "macs_removed", "widths",
    "acc_pruned", "acc_bn", "acc_finetuned", "prune_seconds", "finetune_images", "note",
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Arguments


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"a budget must lie strictly between 0 and 1, got {text}")
    return value


def _per_model(values: Sequence[str], default: int, name: str) -> dict[str, int]:
    """`N` for every model, or `model=N` entries (later ones win)."""
    out = {m: default for m in MODELS}
    for item in values:
        model, _, number = item.rpartition("=")
        try:
            count = int(number)
        except ValueError as err:
            raise ValueError(f"{name}: {item!r} is not N or model=N") from err
        if count < 0:
            raise ValueError(f"{name}: {item!r} must be >= 0")
        if model and model not in MODELS:
            raise ValueError(f"{name}: unknown model {model!r}; choose from {', '.join(MODELS)}")
        for key in [model] if model else MODELS:
            out[key] = count
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument(
        "--budgets",
        nargs="+",
        type=_fraction,
        default=[0.5, 0.75, 0.9],
        help="fractions of params removed (metric='params', uniform allocation)",
    )
    p.add_argument(
        "--hidden-removed",
        type=_fraction,
        default=0.8,
        help="LeNet-300-100 also at this fraction of hidden units removed per layer",
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument(
        "--compensate",
        nargs="+",
        default=["none", "merge", "lstsq"],
        choices=["none", "merge", "lstsq"],
        help="rewirings to run for our methods (a subset to run the most telling rows first)",
    )
    p.add_argument(
        "--choices",
        nargs="+",
        default=["refit", "empirical", "certified"],
        choices=["refit", "empirical", "certified"],
        help="coreset choices to run (refit and certified only with lstsq)",
    )
    p.add_argument("--random-seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--calibration",
        type=int,
        default=1024,
        help="training-split images for the empirical choice and lstsq rewiring",
    )
    p.add_argument("--snip-batch", type=int, default=128)
    p.add_argument("--synflow-rounds", type=int, default=100)
    p.add_argument(
        "--hessian-samples",
        type=int,
        default=128,
        help="per-sample gradients for Torch-Pruning's Hessian importance",
    )
    p.add_argument("--bn-batches", type=int, default=20, help="batches of 128 for BN re-estimation")
    p.add_argument(
        "--finetune-images",
        nargs="+",
        default=["10000"],
        help="N or model=N: fixed training-split images for the one fine-tuning epoch",
    )
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="evaluate on the first N test images only (smoke runs; not for results)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the fixed training subsets")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--summary-only",
        action="store_true",
        help="only rewrite summary.md from the rows in --out (settings as given)",
    )
    args = p.parse_args(argv)
    args.finetune_images = _per_model(args.finetune_images, 10000, "--finetune-images")
    for name in ("calibration", "snip_batch", "synflow_rounds", "hessian_samples", "bn_batches"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.snip_batch > args.calibration:
        raise ValueError(
            "--snip-batch must not exceed --calibration (SNIP scores on its first part)"
        )
    return args


# --------------------------------------------------------------------------------------------
# Data: fixed subsets of the training split, the full test set


@dataclass(frozen=True)
class Data:
    """Everything every row of a model shares, so the rows differ only in the method."""

    calibration: torch.Tensor  # first `--calibration` images of a fixed permutation
    calibration_labels: torch.Tensor
    tune_x: torch.Tensor  # first `--finetune-images` images of the same permutation
    tune_y: torch.Tensor
    bn_loader: DataLoader  # in order: the same BN batches for every row
    test: DataLoader


def load_data(args: argparse.Namespace, finetune_images: int) -> Data:
    """Unaugmented, normalised tensors of the fixed split (make_loaders' 10% validation)."""
    loaders = make_loaders(
        "fashion_mnist", batch_size=128, augment=False, eval_batch_size=1000, seed=0,
        data=load_dataset("fashion_mnist"),
    )  # fmt: skip
    train = loaders.train.dataset
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))  # type: ignore[arg-type]
    need = max(args.calibration, finetune_images, args.bn_batches * 128)
    x, y = next(iter(DataLoader(Subset(train, order[:need].tolist()), batch_size=need)))
    test = loaders.test
    if args.test_limit is not None:
        test = DataLoader(Subset(test.dataset, range(args.test_limit)), batch_size=1000)
    bn = TensorDataset(x[: args.bn_batches * 128], y[: args.bn_batches * 128])
    return Data(
        calibration=x[: args.calibration], calibration_labels=y[: args.calibration],
        tune_x=x[:finetune_images], tune_y=y[:finetune_images],
        bn_loader=DataLoader(bn, batch_size=128), test=test,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Rows


@dataclass(frozen=True)
class Spec:
    """One row: a method, its rewiring, the coreset's choice and the random seed."""

    method: str
    compensate: str
    choice: str = ""
    seed: int | str = ""

    def key(self, model: str, budget: str) -> tuple[str, ...]:
        return (model, budget, self.method, self.compensate, self.choice, str(self.seed))


def specs(args: argparse.Namespace) -> list[Spec]:
    out: list[Spec] = []
    for method in args.methods:
        if method == "coreset":
            out.append(Spec("coreset", "lstsq", "refit"))
            out += [Spec("coreset", c, "empirical") for c in ("none", "merge", "lstsq")]
            out.append(Spec("coreset", "lstsq", "certified"))
        elif method == "random":
            out += [Spec("random", c, seed=s) for s in args.random_seeds for c in ("none", "lstsq")]
        elif method in TP_IMPORTANCES:
            out += [Spec(method, c) for c in ("none", "lstsq")]
        else:
            out += [Spec(method, c) for c in ("none", "lstsq")]
    return [
        s
        for s in out
        if (
            (s.method in TP_IMPORTANCES and s.compensate == "none")
            or s.compensate in args.compensate
        )
        and (s.method != "coreset" or s.choice in args.choices)
    ]


def _pruner(spec: Spec, args: argparse.Namespace, data: Data) -> str | Pruner:
    if spec.method == "coreset":
        return "coreset"
    if spec.method == "magnitude":
        return Magnitude(p=1)
    if spec.method == "snip":
        batch = (data.calibration[: args.snip_batch], data.calibration_labels[: args.snip_batch])
        return SNIP(batch, batch_size=args.snip_batch)
    if spec.method == "synflow":
        return SynFlow(rounds=args.synflow_rounds)
    if spec.method == "random":
        assert isinstance(spec.seed, int)
        return Random(spec.seed)
    return spec.method  # any other name compress knows (it rejects unknown ones)


def prune_ours(
    model: nn.Module, target: float, spec: Spec, args: argparse.Namespace, data: Data
) -> tuple[nn.Module, dict[str, int]]:
    """The pruned model and its kept units per report row (a row's producer may be a group of
    layers writing one residual stream, named "a + b + ...")."""
    kwargs: dict[str, Any] = {
        "target": target, "metric": "params", "allocation": "uniform",
        "compensate": spec.compensate, "progress": False,
        "example_input": data.calibration[:1],
    }  # fmt: skip
    if spec.method == "coreset":
        kwargs.update(calibration=data.calibration,
                      choice=None if spec.choice == "default" else spec.choice)  # fmt: skip
    elif spec.compensate == "lstsq":
        kwargs.update(calibration=data.calibration)
    result = compress(model, method=_pruner(spec, args, data), **kwargs)
    return result.model, {r.producer: r.units_after for r in result.report.rows}


def widths_of(model: nn.Module, producers: Sequence[str]) -> dict[str, int]:
    """Output units of each producer (Linear out_features, Conv2d out_channels); a group
    "a + b + ..." (layers writing one residual stream) reads its first layer."""
    out: dict[str, int] = {}
    for name in producers:
        layer = model.get_submodule(name.split(" + ")[0])
        if isinstance(layer, nn.Linear):
            out[name] = layer.out_features
        elif isinstance(layer, nn.Conv2d):
            out[name] = layer.out_channels
        else:
            raise TypeError(f"{name}: expected Linear or Conv2d, got {type(layer).__name__}")
    return out


def prune_tp(
    model: nn.Module, widths: dict[str, int], spec: Spec, args: argparse.Namespace, data: Data
) -> nn.Module:
    """Torch-Pruning's MetaPruner at exactly `widths`, on exactly those producers.

    Every other Linear/Conv2d is in `ignored_layers`, so TP neither prunes the residual streams
    of ResNet-20 nor the classifier; each producer gets the ratio that leaves `widths[name]`
    units (TP keeps int(n * (1 - ratio)), hence the half unit). The caller checks the widths.
    """
    tp: Any = importlib.import_module("torch_pruning")
    work = copy.deepcopy(model).eval()
    modules = dict(work.named_modules())
    dense = widths_of(work, list(widths))
    members = {m: n for n in widths for m in n.split(" + ")}
    ratios = {modules[m]: 1.0 - (widths[n] + 0.5) / dense[n] for m, n in members.items()}
    ignored = [
        m for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d)) and n not in members
    ]
    x, y = data.calibration[: args.snip_batch], data.calibration_labels[: args.snip_batch]
    if spec.method == "tp_l2":
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    elif spec.method == "tp_taylor":
        importance = tp.importance.GroupTaylorImportance()
    else:
        importance = _hessian_importance(tp)
    pruner = tp.pruner.MetaPruner(
        work, example_inputs=data.calibration[:1], importance=importance, pruning_ratio=0.0,
        pruning_ratio_dict=ratios, ignored_layers=ignored,
    )  # fmt: skip
    work.zero_grad()
    if spec.method == "tp_taylor":
        F.cross_entropy(work(x), y).backward()  # eval mode: BN statistics untouched
    elif spec.method == "tp_hessian":
        importance.zero_grad()
        losses = F.cross_entropy(work(x[: args.hessian_samples]), y[: args.hessian_samples],
                                 reduction="none")  # fmt: skip
        for loss in losses:
            work.zero_grad()
            loss.backward(retain_graph=True)
            importance.accumulate_grad(work)
    pruner.step()
    work.zero_grad(set_to_none=True)
    return work


def tp_kept_units(
    dense: nn.Module, pruned: nn.Module, producers: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Which of each producer's units Torch-Pruning kept, matched exactly on per-unit vectors
    TP slices but never changes: the following batch norm's affine parameters and running
    statistics, or the producer's bias (a group "a + b" reads its first layer)."""
    norms = {
        p: n
        for g in find_channel_groups(dense)[0]
        for p, n in zip(g.producers, g.producer_norms, strict=True)
    }
    kept: dict[str, torch.Tensor] = {}
    for name in producers:
        layer = name.split(" + ")[0]
        before, after = (
            _unit_tags(dense, layer, norms.get(layer)),
            _unit_tags(pruned, layer, norms.get(layer)),
        )
        where = {tuple(row.tolist()): i for i, row in enumerate(before)}
        if len(where) != before.shape[0]:
            raise RuntimeError(f"{layer}: two units carry the same tags; cannot match TP's choice")
        try:
            kept[name] = torch.tensor([where[tuple(row.tolist())] for row in after])
        except KeyError as err:
            raise RuntimeError(f"{layer}: a unit Torch-Pruning kept matches no dense unit") from err
    return kept


def _unit_tags(model: nn.Module, layer: str, norm: str | None) -> torch.Tensor:
    if norm is not None:
        bn = model.get_submodule(norm)
        return torch.stack([bn.weight, bn.bias, bn.running_mean, bn.running_var], 1).detach()
    bias = model.get_submodule(layer).bias
    if bias is None:
        raise RuntimeError(f"{layer} has neither a batch norm nor a bias to match units by")
    return bias.detach()[:, None]


class KeptUnits(Pruner):
    """Scores 1 for the units of a fixed choice and 0 for the rest: at the same widths,
    compress keeps exactly that choice and applies its own surgery and rewiring."""

    name = "tp_choice"

    def __init__(self, kept: dict[str, torch.Tensor]) -> None:
        self.kept = kept

    def unit_scores(
        self, model: nn.Module, gates: Any, example_input: torch.Tensor | None
    ) -> list[torch.Tensor]:
        out = []
        for pair, producer in zip(gates.pairs, gates.producers, strict=True):
            n = producer.weight.shape[0]
            score = torch.zeros(n, dtype=torch.float64)
            for label, index in self.kept.items():
                if pair.producer in label.split(" + "):
                    score[index] = 1.0
            out.append(score)
        return out

    def weight_scores(
        self, model: nn.Module, names: Sequence[str], example_input: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError("KeptUnits scores units only")


def prune_tp_refit(
    model: nn.Module,
    widths: dict[str, int],
    target: float,
    spec: Spec,
    args: argparse.Namespace,
    data: Data,
) -> tuple[nn.Module, dict[str, int]]:
    """Torch-Pruning's choice of units, cut by our surgery and refitted by least squares."""
    tp_model = prune_tp(model, widths, Spec(spec.method, "none"), args, data)
    kept = tp_kept_units(model, tp_model, list(widths))
    result = compress(
        model, method=KeptUnits(kept), target=target, metric="params",
        allocation="uniform", compensate="lstsq", calibration=data.calibration,
        progress=False, example_input=data.calibration[:1],
    )  # fmt: skip
    return result.model, {r.producer: r.units_after for r in result.report.rows}


def _hessian_importance(tp: Any) -> Any:
    """TP 1.6's GroupHessianImportance keys its running sums by parameter but tests membership
    by name, so each sample overwrites the sum and only the last one counts; this subclass
    accumulates over all samples, as its docstring describes."""

    class Accumulating(tp.importance.GroupHessianImportance):
        def accumulate_grad(self, model: nn.Module) -> None:
            for param in model.parameters():
                if param.grad is not None:
                    square = param.grad.detach().pow(2)
                    if param in self._accu_grad:
                        self._accu_grad[param] += square
                        self._counter[param] += 1
                    else:
                        self._accu_grad[param] = square.clone()
                        self._counter[param] = 1

    return Accumulating()


# --------------------------------------------------------------------------------------------
# Budgets


def hidden_target(model: nn.Module, removed: float) -> tuple[float, dict[str, int]]:
    """The params target whose uniform plan keeps round((1 - removed) * n) units in every
    producer, and those widths (checked against what compress does)."""
    pairs, _ = find_prunable_pairs(model)
    dense = widths_of(model, [p.producer for p in pairs])
    keep = {n: max(1, round((1 - removed) * u)) for n, u in dense.items()}
    cuts = [PairCut(torch.arange(keep[p.producer]), None) for p in pairs]
    small = apply_plan(model, pairs, cuts)
    return 1.0 - count_params(small) / count_params(model), keep


def budget_label(target: float) -> str:
    return f"{100 * target:g}%"


# --------------------------------------------------------------------------------------------
# Measuring one row


def measure(
    pruned: nn.Module, data: Data, args: argparse.Namespace, finetune_images: int, has_bn: bool
) -> tuple[float, float, float]:
    """Accuracy after pruning, after BN re-estimation (NaN without BN), after fine-tuning.

    Fine-tuning starts from the BN-re-estimated copy (the same model for LeNet): one epoch of
    SGD (Nesterov momentum 0.9, weight decay 5e-4, constant lr, batch 128) over the fixed
    subset, in an order seeded the same for every row.
    """
    acc_pruned = evaluate(pruned, data.test, device="cpu")["accuracy"]
    model = pruned
    acc_bn = math.nan
    if has_bn:
        model = recalibrated_copy(pruned, data.bn_loader, "cpu", batches=args.bn_batches)
        acc_bn = evaluate(model, data.test, device="cpu")["accuracy"]
    acc_tuned = math.nan
    if finetune_images > 0:
        model = copy.deepcopy(model)
        tune = DataLoader(TensorDataset(data.tune_x, data.tune_y), batch_size=128, shuffle=True)
        fit(model, tune, epochs=1, lr=args.finetune_lr, schedule="constant", weight_decay=5e-4,
            device="cpu", progress=False, seed=args.seed)  # fmt: skip
        acc_tuned = evaluate(model, data.test, device="cpu")["accuracy"]
    return acc_pruned, acc_bn, acc_tuned


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _width_text(widths: dict[str, int]) -> str:
    return "; ".join(f"{n}:{w}" for n, w in widths.items())


def run_model(
    name: str, args: argparse.Namespace, done: set[tuple[str, ...]], path: Path,
    log: Callable[[str], None],
) -> None:  # fmt: skip
    """Every row of one model, appended to `path` as it finishes (rows in `done` skipped)."""
    dense = load_pretrained(name)
    n_tune = args.finetune_images[name]
    data = load_data(args, n_tune)
    has_bn = _has_bn(dense)
    example = data.calibration[:1]
    pairs, _ = find_prunable_pairs(dense)
    producers = [p.producer for p in pairs]
    base = {"model": name, "finetune_images": n_tune}
    if (name, "0%", "dense", "", "", "") not in done:
        acc = evaluate(dense, data.test, device="cpu")["accuracy"]
        _append(path, base | {
            "budget": "0%", "target": 0.0, "method": "dense", "compensate": "", "choice": "",
            "seed": "", "status": "ok", "params": count_params(dense),
            "macs": count_macs(dense, example), "params_removed": 0.0, "macs_removed": 0.0,
            "widths": _width_text(widths_of(dense, producers)), "acc_pruned": acc,
            "acc_bn": math.nan, "acc_finetuned": math.nan, "prune_seconds": 0.0, "note": "",
        })  # fmt: skip
        log(f"{name}: dense {acc:.4f}")
    budgets: list[tuple[str, float, dict[str, int] | None]] = []
    if name == "lenet300100":
        target, keep = hidden_target(dense, args.hidden_removed)
        budgets.append((f"{HIDDEN} {100 * args.hidden_removed:g}%", target, keep))
    budgets += [(budget_label(t), t, None) for t in args.budgets]
    params0, macs0 = count_params(dense), count_macs(dense, example)
    for label, target, expected in budgets:
        widths = expected
        reference: str | None = None
        for spec in specs(args):
            key = spec.key(name, label)
            if key in done or key in {_key(r) for r in read_rows(path) if r["status"] == "ok"}:
                continue  # finished here or by a concurrent run into the same folder
            row: dict[str, Any] = base | {
                "budget": label, "target": target, "method": spec.method,
                "compensate": spec.compensate, "choice": spec.choice, "seed": spec.seed,
            }  # fmt: skip
            start = time.perf_counter()
            try:
                if spec.method in TP_IMPORTANCES:
                    text = _recorded(path, name, label, "widths")
                    widths = widths or (None if text is None else _parse_widths(text))
                    if widths is None:
                        raise RuntimeError("no reference widths yet: run a method of ours first")
                    if spec.compensate == "lstsq":
                        pruned, got = prune_tp_refit(dense, widths, target, spec, args, data)
                    else:
                        pruned = prune_tp(dense, widths, spec, args, data)
                        got = widths_of(pruned, list(widths))
                else:
                    pruned, got = prune_ours(dense, target, spec, args, data)
                seconds = time.perf_counter() - start
                if widths is None:
                    widths = got
                elif got != widths:
                    raise RuntimeError(f"widths {got} differ from the budget's {widths}")
                reference = reference or _recorded(path, name, label, "params")
                if reference is None:
                    reference = str(count_params(pruned))
                elif int(reference) != count_params(pruned):
                    raise RuntimeError(
                        f"{count_params(pruned)} params, not the budget's {reference}: "
                        "a layer outside the widths was pruned or left dense"
                    )
            except Exception as err:  # recorded in the results as a failed row, not hidden
                _append(path, row | {"status": "failed", "note": f"{type(err).__name__}: {err}"})
                log(f"{name} {label} {spec}: FAILED {type(err).__name__}: {err}")
                done.add(key)
                continue
            accs = measure(pruned, data, args, n_tune, has_bn)
            params, macs = count_params(pruned), count_macs(pruned, example)
            _append(path, row | {
                "status": "ok", "params": params, "macs": macs,
                "params_removed": 1 - params / params0, "macs_removed": 1 - macs / macs0,
                "widths": _width_text(got), "acc_pruned": accs[0], "acc_bn": accs[1],
                "acc_finetuned": accs[2], "prune_seconds": seconds, "note": "",
            })  # fmt: skip
            done.add(key)
            log(f"{name} {label} {spec.method}/{spec.compensate}/{spec.choice}/{spec.seed}: "
                f"{accs[0]:.4f} / {accs[1]:.4f} -> {accs[2]:.4f} ({seconds:.1f} s prune, "
                f"{time.perf_counter() - start:.0f} s row)")  # fmt: skip


def _recorded(path: Path, model: str, budget: str, field: str) -> str | None:
    """`field` of an earlier successful row of this budget (a resumed or concurrent run)."""
    for row in read_rows(path):
        if row["model"] == model and row["budget"] == budget and row["status"] == "ok":
            return row[field]
    return None


def _parse_widths(text: str) -> dict[str, int]:
    """Inverse of `_width_text`: "name:width; name:width" (names may hold spaces); rows
    written before groups were named use single spaces and plain layer names."""
    items = text.split("; ") if "; " in text or " + " in text else text.split()
    return {n: int(w) for n, _, w in (i.rpartition(":") for i in items)}


# --------------------------------------------------------------------------------------------
# Results: CSV and summary


def _append(path: Path, row: dict[str, Any]) -> None:
    with _locked(path.parent):
        _write(path, row)


def _write(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: _cell(row.get(k, "")) for k in FIELDS})


def _cell(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Serialise CSV writes of several runs (one per model) into the same folder."""
    digest = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]
    lock = Path(tempfile.gettempdir()) / f"bench_oneshot-{digest}.lock"  # not in the results
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _drop_failed(path: Path, models: Sequence[str]) -> list[dict[str, str]]:
    """Drop the failed rows of `models`, so a rerun retries them; return the rows kept."""
    with _locked(path.parent):
        rows = read_rows(path)
        kept = [r for r in rows if r["status"] == "ok" or r["model"] not in models]
        if len(kept) != len(rows):
            path.unlink()
            for row in kept:
                _write(path, row)
    return kept


def _key(row: dict[str, str]) -> tuple[str, ...]:
    return (row["model"], row["budget"], row["method"], row["compensate"], row["choice"],
            row["seed"])  # fmt: skip


def _num(text: str) -> float:
    return float(text) if text else math.nan


def _stat(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f}±{100 * statistics.stdev(values):.2f}"


def _label(row: dict[str, str]) -> str:
    method = {"tp_l2": "TP group-L2", "tp_taylor": "TP group-Taylor",
              "tp_hessian": "TP group-Hessian"}.get(row["method"], row["method"])  # fmt: skip
    if row["method"] == "coreset":
        return f"coreset ({row['choice']}) + {row['compensate']}"
    return f"{method} + {row['compensate']}"


def summary_tables(rows: list[dict[str, str]]) -> str:
    """Per model: rows = method + rewiring, columns = budgets; random as mean±std over seeds."""
    rows = list({_key(r): r for r in rows}.values())  # a repeated row: the latest counts
    parts: list[str] = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        dense = [r for r in mine if r["method"] == "dense"]
        budgets = list(dict.fromkeys(r["budget"] for r in mine if r["method"] != "dense"))
        has_bn = any(r["acc_bn"] for r in mine)
        tuned = {r["finetune_images"] for r in mine}
        parts.append(f"### {model}\n")
        if dense:
            parts.append(f"Dense: test accuracy {100 * float(dense[0]['acc_pruned']):.2f}%, "
                         f"{int(dense[0]['params']):,} params, {int(dense[0]['macs']):,} MACs. "
                         f"Fine-tuned on {', '.join(sorted(tuned))} images.\n")  # fmt: skip
        cell_form = "after pruning / after BN → after fine-tune" if has_bn else (
            "after pruning → after fine-tune")  # fmt: skip
        parts.append(f"Cells: test accuracy (%) {cell_form}.\n")
        head = "| method + rewiring | " + " | ".join(budgets) + " |"
        parts += [head, "|" + "---|" * (len(budgets) + 1)]
        labels = list(dict.fromkeys(_label(r) for r in mine if r["method"] != "dense"))
        for label in labels:
            cells = []
            for budget in budgets:
                group = [r for r in mine if r["budget"] == budget and _label(r) == label]
                failed = [r for r in group if r["status"] != "ok"]
                ok = [r for r in group if r["status"] == "ok"]
                if not ok:
                    cells.append("failed" if failed else "not run")
                    continue
                pruned = _stat([_num(r["acc_pruned"]) for r in ok])
                bn = _stat([_num(r["acc_bn"]) for r in ok])
                tune = _stat([_num(r["acc_finetuned"]) for r in ok])
                cells.append(f"{pruned} / {bn} → {tune}" if has_bn else f"{pruned} → {tune}")
            parts.append(f"| {label} | " + " | ".join(cells) + " |")
        parts.append("\nArchitectures (identical for every successful row of a budget):\n")
        parts += ["| budget | params | MACs | params removed | MACs removed | widths |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for budget in budgets:
            ok = [r for r in mine if r["budget"] == budget and r["status"] == "ok"]
            # Widths are checked when each row runs; early rows listed fewer layers (no groups).
            shapes = {(r["params"], r["macs"]) for r in ok}
            if not ok:
                continue
            mark = "" if len(shapes) == 1 else " **(rows differ!)**"
            r = max(ok, key=lambda row: len(row["widths"]))
            parts.append(f"| {budget} | {int(r['params']):,}{mark} | {int(r['macs']):,} | "
                         f"{100 * float(r['params_removed']):.2f}% | "
                         f"{100 * float(r['macs_removed']):.2f}% | {r['widths']} |")  # fmt: skip
        failures = [r for r in mine if r["status"] != "ok"]
        if failures:
            parts.append("\nFailed rows:\n")
            parts += [f"- {r['budget']} {_label(r)}: {r['note']}" for r in failures]
        parts.append("")
    return "\n".join(parts)


def write_summary(out: Path, header: str) -> None:
    """summary.md from every row in the folder, with the command each model was run with."""
    with _locked(out):
        rows = read_rows(out / "results.csv")
        models = list(dict.fromkeys(r["model"] for r in rows))
        runs = [(out / f"command_{m}.txt") for m in models]
        commands = [
            f"  - {line}" for f in runs if f.exists() for line in f.read_text().split("\n") if line
        ]
        lines = ["- commands, per model:", *commands, "", SNAPSHOT_NOTE, "", ""]
        text = header + "\n".join(lines)
        (out / "summary.md").write_text(text + summary_tables(rows))


def _revision() -> str:
    """The commit the library was at, and whether coreprune/ had uncommitted changes; for a
    snapshot (a REVISION file next to the imported package), the commit it was taken from."""
    package = Path(coreprune.__file__).resolve().parent
    marker = package.parent / "REVISION"
    if marker.exists():
        return f"{marker.read_text().strip()}, imported from a snapshot at {package.parent}"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "coreprune"], cwd=ROOT,
                               check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {head}" + (" with uncommitted changes in coreprune/" if dirty else "")


SNAPSHOT_NOTE = (
    "A run 'imported from a snapshot' used `git archive <commit> coreprune` of this repository "
    "plus the pretrained weights then in the working tree (the committed ones since), via "
    "PYTHONPATH, so that edits made while it ran could not reach it."
)


def _tp_version() -> str:
    try:
        return str(importlib.import_module("torch_pruning").__version__)
    except ImportError:
        return "(not installed)"


def _header(args: argparse.Namespace) -> str:
    return "\n".join([
        "# One-shot pruning at matched widths (Fashion-MNIST)",
        "",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores ({platform.machine()}), torch "
        f"{torch.__version__}; threads per run below; the cores were shared with other jobs, "
        "so wall times are only indicative",
        "- models: the shipped pretrained dense models (`coreprune.harness.pretrained`)",
        "- budgets: fraction of all params removed (`metric='params'`, uniform allocation, so "
        "every row of a budget has the same widths; checked, see the architecture tables)",
        f"- calibration: {args.calibration} unaugmented images of the training split (fixed "
        f"permutation, seed {args.seed}); coreset rows use the choice named in the row "
        "(refit: the default, greedy structured OBS; empirical; certified); every lstsq rewiring refits on it; SNIP scores on its first "
        f"{args.snip_batch} images (with labels); SynFlow {args.synflow_rounds} rounds",
        "- deterministic rows: everything except random is a deterministic function of the "
        f"dense model and the calibration batch; random uses seeds {args.random_seeds} "
        "(mean±std)",
        f"- Torch-Pruning {_tp_version()} MetaPruner restricted to exactly our producers, at "
        "our widths (group L2; group Taylor from one backward on the SNIP batch; group Hessian "
        f"from {args.hessian_samples} per-sample gradients, accumulated over all samples: TP "
        "1.6's own accumulate_grad keeps only the last sample); '+ none' as TP ships it, "
        "'+ lstsq' TP's kept units cut by our surgery and refitted by our least squares",
        f"- BN re-estimation: {args.bn_batches} batches of 128 of the same fixed subset, in "
        "order, cumulative average (`recalibrated_copy`); LeNet has no BN",
        f"- fine-tuning (from the BN-re-estimated model): 1 epoch over a fixed subset of the "
        f"training split (the count is given per model), SGD Nesterov momentum 0.9, lr {args.finetune_lr} "
        "constant, weight decay 5e-4, batch 128, same seeded order for every row",
        f"- test set: {'full 10k' if args.test_limit is None else f'first {args.test_limit}'} "
        "Fashion-MNIST test images",
        "",
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> list[dict[str, str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.csv"
    if args.summary_only:
        write_summary(args.out, _header(args))
        return read_rows(path)
    done = {_key(r) for r in _drop_failed(path, args.models)}
    header = _header(args)
    command = "python benchmarks/bench_oneshot.py " + shlex.join(argv)
    for name in args.models:
        with (args.out / f"command_{name}.txt").open("a") as handle:
            handle.write(
                f"{name}: `{command}` (library at {_revision()}, "
                f"{torch.get_num_threads()} threads)\n"
            )
    log_path = args.out / "log.txt"

    def log(message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        print(line, flush=True)
        with log_path.open("a") as handle:
            handle.write(line + "\n")

    log(f"start: {' '.join(argv)} (pid {os.getpid()})")
    for name in args.models:
        run_model(name, args, done, path, log)
        write_summary(args.out, header)
    return read_rows(path)


if __name__ == "__main__":
    main()
