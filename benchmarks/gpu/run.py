"""One call on one GPU: train VGG-16-BN and ResNet-56 on Fashion-MNIST (zero-padded to 32 px),
prune both one-shot at matched widths against the baselines, run the CUDA tests, print a table.

Everything goes under --out (default benchmarks/results/gpu/):
- --weights (default OUT/models)/<name>/: the trained dense model (`save_model`: safetensors +
  architecture.json) and manifest.json (device, torch, epochs, seconds, accuracies, history),
  copied to OUT/dense_<name>.json;
- results.csv: one row per (model, budget, method, rewiring, choice, seed), appended as it
  finishes; summary.md: the tables; log.txt; pytest_cuda.txt; run.json (settings, timings).

Phases, in order: the CUDA tests (`pytest -m cuda`, in a subprocess with a timeout), training
(the recipe of docs/training.md with fewer epochs: with `--epochs auto` the script times a few
training steps and picks the epochs that fit `--train-seconds`), the one-shot benchmark (the
functions of benchmarks/bench_oneshot.py: same widths for every row, checked), the table.
The data are loaded once onto the device as tensors (augmentation on the device); training
and fine-tuning use `coreprune.harness.training.fit` (AMP and channels-last on CUDA).

The benchmark has a wall-clock budget (`--seconds`, split evenly over the models, and cut so
that the whole run ends within `--total-seconds`): a row is not started when the slowest row
of its kind so far would overrun it, and is recorded as "skipped" (the table says so).
The rewired rows and Torch-Pruning's run first, one budget after the other (a cut drops the
highest budgets, not whole methods), then the rows without rewiring. A rerun into the
same --out loads the saved dense models and runs only the rows not finished.

`--smoke` is the same script on the CPU at toy sizes (tiny widths, a few hundred images,
one epoch), run by tests/test_gpu_script.py so that it cannot rot.

New methods or coreset choices are one entry in METHODS / CHOICES (or on the command line):
a method name bench_oneshot does not know is passed to `compress(method=name)`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks import bench_oneshot as bench
from coreprune.compress import count_macs, count_params
from coreprune.harness.data import dataset_spec, load_dataset, train_val_split
from coreprune.harness.evaluation.machine import describe_device
from coreprune.harness.models import build_model
from coreprune.harness.training import evaluate, fit, model_kwargs, recalibrated_copy, recipe
from coreprune.harness.training import set_seed as seed_everything
from coreprune.serialization import load_model, save_model
from coreprune.surgery.graph import find_prunable_pairs

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu"
DATASET = "fashion_mnist"
IMAGE_SIZE = 32

MODELS = ("vgg16", "resnet56")
# The coreset's choices: "default" is compress's own (choice=None); add new names here.
CHOICES = ("default", "certified")
# Our methods (bench_oneshot's, or any name compress accepts), then Torch-Pruning's.
METHODS = ("coreset", "magnitude", "snip", "synflow", "random", *bench.TP_IMPORTANCES)
COMPENSATE = ("none", "lstsq")
TRAIN_SECONDS = {"vgg16": 100.0, "resnet56": 130.0}  # --epochs auto, on one H100 (estimated)
EXTRA_FIELDS = ("acc_finetuned_std", "acc_finetuned_all", "finetune_seeds", "device")
FIELDS = (*bench.FIELDS, *EXTRA_FIELDS)

# Toy sizes for --smoke (CPU, seconds): every phase runs, nothing is meaningful.
SMOKE = {
    "models": ["vgg11", "resnet20"], "width": 0.0625, "train_limit": 256, "test_limit": 200,
    "epochs": ["1"], "budgets": [0.5], "methods": ["coreset", "magnitude", "random", "tp_l2"],
    "choices": ["default"], "random_seeds": [0], "finetune_seeds": [0, 1],
    "finetune_images": 64, "calibration": 64, "snip_batch": 32, "synflow_rounds": 5,
    "hessian_samples": 8, "bn_batches": 1, "tests": False, "device": "cpu",
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Arguments


def _per_model(values: Sequence[str], models: Sequence[str], name: str) -> dict[str, str]:
    """`V` for every model, or `model=V` entries (later ones win)."""
    out: dict[str, str] = {}
    for item in values:
        model, _, value = item.rpartition("=")
        if model and model not in models:
            raise ValueError(f"{name}: {item!r} names a model not in --models ({models})")
        for key in [model] if model else models:
            out[key] = value
    missing = [m for m in models if m not in out]
    if missing:
        raise ValueError(f"{name}: no value for {', '.join(missing)}")
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--weights", type=Path, default=None,
        help="folder for the trained dense models (default: OUT/models)",
    )  # fmt: skip
    p.add_argument(
        "--data-root", type=Path, default=None,
        help="folder with the four Fashion-MNIST IDX files (default: the Debian package's)",
    )  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="CPU, toy sizes, seconds (the test)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(MODELS)}")
    p.add_argument("--width", type=float, default=None, help="width multiplier (default 1)")
    p.add_argument(
        "--epochs", nargs="+", default=None,
        help="N, auto, or model=N|auto (default auto: as many as fit --train-seconds, 3..30)",
    )  # fmt: skip
    p.add_argument(
        "--train-seconds", nargs="+", default=None,
        help="training time per model for --epochs auto (N or model=N; default vgg16=100 "
        "resnet56=130, 120 for others)",
    )  # fmt: skip
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--train-limit", type=int, default=None, help="first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="first N test images")
    p.add_argument("--budgets", nargs="+", type=bench._fraction, default=None)
    p.add_argument("--methods", nargs="+", default=None, help=f"default: {' '.join(METHODS)}")
    p.add_argument("--choices", nargs="+", default=None, help=f"default: {' '.join(CHOICES)}")
    p.add_argument("--compensate", nargs="+", default=list(COMPENSATE))
    p.add_argument("--random-seeds", nargs="+", type=int, default=None)
    p.add_argument("--finetune-seeds", nargs="+", type=int, default=None)
    p.add_argument("--finetune-images", type=int, default=None, help="default 5000")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--calibration", type=int, default=None, help="default 1024")
    p.add_argument("--snip-batch", type=int, default=None, help="default 128")
    p.add_argument("--synflow-rounds", type=int, default=None, help="default 100")
    p.add_argument("--hessian-samples", type=int, default=None, help="default 128")
    p.add_argument("--bn-batches", type=int, default=None, help="default 20 batches of 128")
    p.add_argument(
        "--seconds", type=float, default=None,
        help="wall-clock budget of the one-shot benchmark, all models (default 230; none smoke)",
    )  # fmt: skip
    p.add_argument(
        "--total-seconds", type=float, default=None,
        help="wall-clock limit of the whole run; the benchmark ends in time for it "
        "(default 500; none with --smoke)",
    )  # fmt: skip
    p.add_argument("--tests", dest="tests", action="store_true", default=None)
    p.add_argument("--no-tests", dest="tests", action="store_false")
    p.add_argument("--test-timeout", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    defaults: dict[str, Any] = {
        "models": list(MODELS), "width": 1.0, "epochs": ["auto"], "budgets": [0.5, 0.75, 0.9],
        "methods": list(METHODS), "choices": list(CHOICES), "random_seeds": [0, 1, 2],
        "finetune_seeds": [0, 1, 2], "finetune_images": 5000, "calibration": 1024,
        "snip_batch": 128, "synflow_rounds": 100, "hessian_samples": 128, "bn_batches": 20,
        "tests": True, "device": None, "seconds": 230.0, "total_seconds": 500.0,
    }  # fmt: skip
    if args.smoke:
        defaults |= SMOKE | {"seconds": None, "total_seconds": None}
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.weights = args.weights or args.out / "models"
    args.epochs = _per_model(args.epochs, args.models, "--epochs")
    for model, value in args.epochs.items():
        if value != "auto" and (not value.isdigit() or int(value) < 1):
            raise ValueError(f"--epochs: {model}={value!r} is not auto or N >= 1")
    if args.train_seconds is None:
        given = [f"{m}={TRAIN_SECONDS[m]:g}" for m in args.models if m in TRAIN_SECONDS]
        args.train_seconds = ["120", *given]
    args.train_seconds = {
        m: float(v)
        for m, v in _per_model(args.train_seconds, args.models, "--train-seconds").items()
    }
    for name in ("calibration", "snip_batch", "synflow_rounds", "hessian_samples", "bn_batches",
                 "finetune_epochs"):  # fmt: skip
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.snip_batch > args.calibration:
        raise ValueError("--snip-batch must not exceed --calibration")
    bad = [c for c in args.compensate if c not in ("none", "merge", "lstsq")]
    if bad:
        raise ValueError(f"--compensate: unknown {bad}; choose from none, merge, lstsq")
    return args


# --------------------------------------------------------------------------------------------
# Data: every image on the device once, batches drawn there


class DeviceBatches:
    """(inputs, labels) batches of tensors that already live on the device.

    Images are stored in [0, 1] (zero-padded to 32 px, as `make_loaders(image_size=32)` does),
    and each batch is augmented (the dataset's random crop and flip, as in `build_transform`)
    and normalised on the device. The order is drawn from torch's global RNG on the device, which
    `fit(seed=...)` re-seeds every epoch. `fit` and `evaluate` take it like a DataLoader.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
        shuffle: bool = False, augment: bool = False,
    ) -> None:  # fmt: skip
        spec = dataset_spec(DATASET)
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.padding, self.flip = spec.crop_padding, spec.flip
        self.mean, self.std = spec.mean[0], spec.std[0]

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, device = len(self.labels), self.images.device
        order = torch.randperm(n, device=device) if self.shuffle else None
        for lo in range(0, n, self.batch_size):
            idx = (
                slice(lo, lo + self.batch_size)
                if order is None
                else order[lo : lo + self.batch_size]
            )
            x = self.images[idx]
            if self.augment:
                x = crop_and_flip(x, self.padding, self.flip)
            yield (x - self.mean) / self.std, self.labels[idx]


def crop_and_flip(x: torch.Tensor, padding: int, flip: bool) -> torch.Tensor:
    """Per image: zero-pad by `padding`, crop back at a random offset, mirror with p = 1/2
    (the library's RandomCrop and RandomHorizontalFlip, with every index on x's device)."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded.gather(2, rows.expand(b, c, h, w + 2 * padding)).gather(3, cols.expand(b, c, h, w))
    if flip:
        mirror = torch.rand(b, device=x.device) < 0.5
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    return out


@dataclass
class Split:
    """Unaugmented [0, 1] images (N, 1, 32, 32) and labels of train / val / test, on the device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        spec = dataset_spec(DATASET)
        return (x - spec.mean[0]) / spec.std[0]


def load_split(args: argparse.Namespace) -> Split:
    """Fashion-MNIST with make_loaders' fixed 10% validation split (seed 0), on the device."""
    data = load_dataset(DATASET, args.data_root)
    train_idx, val_idx = train_val_split(len(data.train_labels), 0.1, 0)
    if args.train_limit is not None:
        train_idx, val_idx = train_idx[: args.train_limit], val_idx[: args.train_limit]
    test_n = len(data.test_labels) if args.test_limit is None else args.test_limit

    def images(x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32).div_(255.0).unsqueeze(1)
        pad = IMAGE_SIZE - x.shape[-1]
        x = torch.nn.functional.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
        return x.to(args.device)

    def labels(y: torch.Tensor) -> torch.Tensor:
        return y.long().to(args.device)

    return Split(
        images(data.train_images[train_idx]), labels(data.train_labels[train_idx]),
        images(data.train_images[val_idx]), labels(data.train_labels[val_idx]),
        images(data.test_images[:test_n]), labels(data.test_labels[:test_n]),
    )  # fmt: skip


def bench_data(split: Split, args: argparse.Namespace) -> bench.Data:
    """bench_oneshot's shared data (calibration, fine-tuning, BN and test batches) on the
    device: the first images of a fixed permutation of the training split, unaugmented."""
    order = torch.randperm(len(split.train_y), generator=torch.Generator().manual_seed(args.seed))
    need = max(args.calibration, args.finetune_images, args.bn_batches * 128)
    pick = order[:need].to(args.device)
    x, y = split.normalised(split.train_x[pick]), split.train_y[pick]
    bn_n = args.bn_batches * 128
    return bench.Data(
        calibration=x[: args.calibration], calibration_labels=y[: args.calibration],
        tune_x=x[: args.finetune_images], tune_y=y[: args.finetune_images],
        bn_loader=DeviceBatches(x[:bn_n], y[:bn_n], 128),  # type: ignore[arg-type]
        test=DeviceBatches(split.test_x, split.test_y, 1000),  # type: ignore[arg-type]
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Training the dense models


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pick_epochs(
    name: str, model: nn.Module, train: DeviceBatches, args: argparse.Namespace,
    log: Callable[[str], None],
) -> int:  # fmt: skip
    """`--epochs` as given, or (auto) as many as fit `--train-seconds` at the speed of a few
    timed steps of `fit` on a copy (after a warm-up), between 3 and `--max-epochs`."""
    given = args.epochs[name]
    if given != "auto":
        return int(given)
    steps = min(30, len(train))
    probe = DeviceBatches(train.images[: steps * train.batch_size],
                          train.labels[: steps * train.batch_size], train.batch_size,
                          shuffle=True, augment=True)  # fmt: skip
    work = copy.deepcopy(model)
    kwargs = recipe(name, epochs=1).fit_kwargs()
    loader: Any = probe  # fit takes any sized iterable of (inputs, labels) batches
    fit(work, loader, **kwargs, device=args.device, progress=False, seed=args.seed)  # warm-up
    _sync(args.device)
    start = time.perf_counter()
    fit(work, loader, **kwargs, device=args.device, progress=False, seed=args.seed)
    _sync(args.device)
    per_step = (time.perf_counter() - start) / len(probe)
    per_epoch = per_step * len(train) * 1.1  # + validation
    epochs = max(3, min(args.max_epochs, int(args.train_seconds[name] / per_epoch)))
    log(f"{name}: {1000 * per_step:.1f} ms per step of {train.batch_size}, ~{per_epoch:.1f} s "
        f"per epoch -> {epochs} epochs for {args.train_seconds[name]:g} s")  # fmt: skip
    return epochs


def train_dense(
    name: str, split: Split, args: argparse.Namespace, log: Callable[[str], None]
) -> tuple[nn.Module, dict[str, Any]]:
    """The dense model trained by its recipe (fewer epochs), saved with a manifest; a saved
    one in --out is loaded instead (so a rerun goes on with the benchmark)."""
    folder = args.weights / name
    manifest_file = folder / "manifest.json"
    if manifest_file.exists():
        log(f"{name}: loading the trained model from {folder}")
        manifest = json.loads(manifest_file.read_text())
        (args.out / f"dense_{name}.json").write_text(json.dumps(manifest, indent=1))
        return load_model(folder).to(args.device), manifest
    kwargs = model_kwargs(name, DATASET, IMAGE_SIZE) | {"width_multiplier": args.width}
    seed_everything(args.seed)
    model = build_model(name, **kwargs)
    plan = recipe(name)
    train = DeviceBatches(split.train_x, split.train_y, plan.batch_size, shuffle=True,
                          augment=True)  # fmt: skip
    val = DeviceBatches(split.val_x, split.val_y, 1000)
    epochs = pick_epochs(name, model, train, args, log)
    plan = recipe(name, epochs=epochs)
    start = time.perf_counter()
    history = fit(model, train, **plan.fit_kwargs(), val_loader=val, device=args.device,  # type: ignore[arg-type]
                  progress=False, seed=args.seed)  # fmt: skip
    _sync(args.device)
    seconds = time.perf_counter() - start
    test = evaluate(model, DeviceBatches(split.test_x, split.test_y, 1000))  # type: ignore[arg-type]
    save_model(model, folder, arch=name, arch_kwargs=kwargs)
    manifest = {
        "architecture": name, "arch_kwargs": kwargs, "dataset": f"{DATASET} zero-padded to 32 px",
        "device": describe_device(args.device), "torch": torch.__version__,
        "cuda": torch.version.cuda, "amp": history.amp, "channels_last": args.device.type == "cuda",
        "epochs": epochs, "recipe": {k: v for k, v in plan.fit_kwargs().items()} | {
            "batch_size": plan.batch_size, "source": plan.source},
        "augmentation": "random crop (pad 2) and horizontal flip, on the device",
        "train_size": len(split.train_y), "val_size": len(split.val_y),
        "test_size": len(split.test_y), "split": "make_loaders seed 0, val_fraction 0.1",
        "weights": str(folder / "weights.safetensors"),
        "seed": args.seed, "train_seconds": round(seconds, 2),
        "test_accuracy": test["accuracy"], "val_accuracy": history.val_accuracy[-1],
        "history": history.to_dict(), "command": _command(),
    }  # fmt: skip
    for file in (manifest_file, args.out / f"dense_{name}.json"):
        file.write_text(json.dumps(manifest, indent=1, default=str))
    log(f"{name}: {epochs} epochs in {seconds:.0f} s, val {history.val_accuracy[-1]:.4f}, "
        f"test {test['accuracy']:.4f} ({describe_device(args.device)})")  # fmt: skip
    return model, manifest


# --------------------------------------------------------------------------------------------
# The one-shot benchmark (bench_oneshot's pruning functions, on the device)


def row_specs(args: argparse.Namespace) -> list[bench.Spec]:
    """Every row, rewired rows first, then Torch-Pruning's, then the rest (what runs first
    survives the time budget)."""
    out: list[bench.Spec] = []
    for method in args.methods:
        if method == "coreset":
            out += [bench.Spec("coreset", c, choice) for choice in args.choices
                    for c in args.compensate]  # fmt: skip
        elif method == "random":
            out += [bench.Spec("random", c, seed=s) for s in args.random_seeds
                    for c in args.compensate]  # fmt: skip
        elif method in bench.TP_IMPORTANCES:  # as shipped; + lstsq where bench_oneshot can
            refits = hasattr(bench, "prune_tp_refit")
            out += [bench.Spec(method, c) for c in args.compensate if c == "none" or refits]
        else:
            out += [bench.Spec(method, c) for c in args.compensate]

    def rank(s: bench.Spec) -> int:
        return 1 if s.method in bench.TP_IMPORTANCES else (2 if s.compensate == "none" else 0)

    return sorted(out, key=rank)


def row_order(args: argparse.Namespace) -> list[tuple[bench.Spec, float]]:
    """(spec, budget) in the order they run: the rewired rows and Torch-Pruning's, one budget
    after the other (so that what the time budget cuts is the highest budgets, not whole
    methods, and each column stays a matched comparison), then the rows without rewiring."""
    pairs = [(s, t) for s in row_specs(args) for t in args.budgets]

    def key(pair: tuple[bench.Spec, float]) -> tuple[int, int]:
        spec, target = pair
        plain = spec.compensate == "none" and spec.method not in bench.TP_IMPORTANCES
        return int(plain), args.budgets.index(target)

    return sorted(pairs, key=key)


def measure(
    pruned: nn.Module, data: bench.Data, args: argparse.Namespace, has_bn: bool
) -> tuple[float, float, list[float]]:
    """Accuracy right after pruning, after BN re-estimation (NaN without BN), and after the
    same fine-tuning from the re-estimated model for each fine-tuning seed (bench_oneshot's
    measure, on the device and over several seeds)."""
    acc_pruned = evaluate(pruned, data.test, device=args.device)["accuracy"]
    model, acc_bn = pruned, math.nan
    if has_bn:
        model = recalibrated_copy(pruned, data.bn_loader, args.device, batches=args.bn_batches)
        acc_bn = evaluate(model, data.test)["accuracy"]
    tuned: list[float] = []
    for seed in args.finetune_seeds:
        work = copy.deepcopy(model)
        tune = DeviceBatches(data.tune_x, data.tune_y, 128, shuffle=True)
        fit(work, tune, epochs=args.finetune_epochs, lr=args.finetune_lr, schedule="constant",  # type: ignore[arg-type]
            weight_decay=5e-4, device=args.device, progress=False, seed=seed)  # fmt: skip
        tuned.append(evaluate(work, data.test)["accuracy"])
    return acc_pruned, acc_bn, tuned


def _on_device(model: nn.Module, device: torch.device) -> None:
    """Every parameter and buffer of a pruned model must be where the dense one was."""
    wrong = {str(t.device) for t in [*model.parameters(), *model.buffers()] if t.device != device}
    if wrong:
        raise RuntimeError(f"pruned model has tensors on {sorted(wrong)}, not only {device}")


def run_model(
    name: str, dense: nn.Module, data: bench.Data, args: argparse.Namespace, path: Path,
    deadline: float, log: Callable[[str], None],
) -> None:  # fmt: skip
    """Every row of one model (bench_oneshot.run_model's checks: one architecture per budget)."""
    dense = dense.eval()
    done = {bench._key(r) for r in bench.read_rows(path) if r["status"] == "ok"}
    has_bn = bench._has_bn(dense)
    example = data.calibration[:1]
    producers = [p.producer for p in find_prunable_pairs(dense)[0]]
    params0, macs0 = count_params(dense), count_macs(dense, example)
    base = {"model": name, "finetune_images": args.finetune_images, "device": str(args.device),
            "finetune_seeds": " ".join(map(str, args.finetune_seeds))}  # fmt: skip
    if (name, "0%", "dense", "", "", "") not in done:
        acc = evaluate(dense, data.test, device=args.device)["accuracy"]
        _write(path, base | {
            "budget": "0%", "target": 0.0, "method": "dense", "compensate": "", "choice": "",
            "seed": "", "status": "ok", "params": params0, "macs": macs0,
            "params_removed": 0.0, "macs_removed": 0.0, "acc_pruned": acc,
            "widths": bench._width_text(bench.widths_of(dense, producers)),
        })  # fmt: skip
    widths: dict[str, dict[str, int]] = {}
    params: dict[str, int] = {}
    for old in bench.read_rows(path):  # widths of finished rows (a rerun)
        if old["model"] == name and old["status"] == "ok" and old["method"] != "dense":
            widths.setdefault(old["budget"], bench._parse_widths(old["widths"]))
            params.setdefault(old["budget"], int(old["params"]))
    longest: dict[tuple[str, str, str], float] = {}  # the slowest row of each kind so far
    for spec, target in row_order(args):
        label = bench.budget_label(target)
        if spec.key(name, label) in done:
            continue
        row: dict[str, Any] = base | {
            "budget": label, "target": target, "method": spec.method,
            "compensate": spec.compensate, "choice": spec.choice, "seed": spec.seed,
        }  # fmt: skip
        kind = (spec.method, spec.compensate, spec.choice)
        if time.perf_counter() + longest.get(kind, 0.0) > deadline:
            _write(path, row | {"status": "skipped", "note": "time budget"})
            continue
        start = time.perf_counter()
        try:
            if spec.method in bench.TP_IMPORTANCES:
                if label not in widths:
                    raise RuntimeError("no reference widths: no row of ours finished")
                if spec.compensate == "none":
                    pruned = bench.prune_tp(dense, widths[label], spec, args, data)
                    got = bench.widths_of(pruned, list(widths[label]))
                else:  # TP's kept units, our surgery and refit
                    pruned, got = bench.prune_tp_refit(dense, widths[label], target, spec, args,
                                                       data)  # fmt: skip
            else:
                pruned, got = bench.prune_ours(dense, target, spec, args, data)
            _sync(args.device)
            seconds = time.perf_counter() - start
            if widths.setdefault(label, got) != got:
                raise RuntimeError(f"widths {got} differ from the budget's {widths[label]}")
            if params.setdefault(label, count_params(pruned)) != count_params(pruned):
                raise RuntimeError(f"{count_params(pruned)} params, not {params[label]}")
            _on_device(pruned, args.device)
            accs = measure(pruned, data, args, has_bn)
        except Exception as err:  # a failed row is recorded and shown, not hidden
            _write(path, row | {"status": "failed", "note": f"{type(err).__name__}: {err}"})
            log(f"{name} {label} {_name(spec)}: FAILED {type(err).__name__}: {err}")
            continue
        kind_seconds = time.perf_counter() - start
        longest[kind] = max(longest.get(kind, 0.0), kind_seconds)
        tuned = accs[2]
        macs = count_macs(pruned, example)
        _write(path, row | {
            "status": "ok", "params": count_params(pruned), "macs": macs,
            "params_removed": 1 - count_params(pruned) / params0,
            "macs_removed": 1 - macs / macs0, "widths": bench._width_text(got),
            "acc_pruned": accs[0], "acc_bn": accs[1],
            "acc_finetuned": statistics.mean(tuned) if tuned else math.nan,
            "acc_finetuned_std": statistics.stdev(tuned) if len(tuned) > 1 else math.nan,
            "acc_finetuned_all": " ".join(f"{a:.4f}" for a in tuned),
            "prune_seconds": seconds,
        })  # fmt: skip
        log(f"{name} {label} {_name(spec)}: {accs[0]:.4f} / {accs[1]:.4f} -> "
            f"{' '.join(f'{a:.4f}' for a in tuned)} ({seconds:.1f} s prune, "
            f"{time.perf_counter() - start:.1f} s row)")  # fmt: skip


def _name(spec: bench.Spec) -> str:
    return "/".join(
        str(p) for p in (spec.method, spec.compensate, spec.choice, spec.seed) if p != ""
    )


def _write(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: bench._cell(row.get(k, "")) for k in FIELDS})


# --------------------------------------------------------------------------------------------
# The table


def table(rows: list[dict[str, str]]) -> str:
    """Per model: methods x budgets; cells: after pruning / after BN -> after fine-tuning
    (mean±std over fine-tuning seeds, and over random's seeds)."""
    rows = list({bench._key(r): r for r in rows}.values())  # the latest row of a key counts
    parts: list[str] = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        dense = [r for r in mine if r["method"] == "dense"]
        budgets = list(dict.fromkeys(r["budget"] for r in mine if r["method"] != "dense"))
        acc = f"{100 * float(dense[0]['acc_pruned']):.2f}%" if dense else "?"
        parts += [f"**{model}** (dense {acc})", "",
                  "| method | " + " | ".join(budgets) + " |", "|---" * (len(budgets) + 1) + "|"]  # fmt: skip
        for label in dict.fromkeys(bench._label(r) for r in mine if r["method"] != "dense"):
            cells = []
            for budget in budgets:
                group = [r for r in mine if r["budget"] == budget and bench._label(r) == label]
                ok = [r for r in group if r["status"] == "ok"]
                if not ok:
                    cells.append(group[0]["status"] if group else "–")
                    continue
                tuned = [float(a) for r in ok for a in r["acc_finetuned_all"].split()]
                cells.append(
                    f"{bench._stat([bench._num(r['acc_pruned']) for r in ok])} / "
                    f"{bench._stat([bench._num(r['acc_bn']) for r in ok])} → {bench._stat(tuned)}"
                )
            parts.append(f"| {label} | " + " | ".join(cells) + " |")
        shapes = {r["budget"]: r for r in mine if r["status"] == "ok" and r["method"] != "dense"}
        removed = ", ".join(
            f"{b}: {100 * float(r['params_removed']):.1f}% params, "
            f"{100 * float(r['macs_removed']):.1f}% MACs"
            for b, r in shapes.items()
        )
        parts += ["", f"Removed (same widths in every row of a column): {removed}.", ""]
    parts.append(
        "Cells: test accuracy (%) right after pruning / after BN re-estimation → after the same "
        "fine-tuning (mean±std over fine-tuning seeds, and over seeds for random). "
        "'skipped': not started within the time budget; 'failed': see results.csv."
    )
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# CUDA tests, run record, main


def run_cuda_tests(args: argparse.Namespace, log: Callable[[str], None]) -> str:
    """`pytest -m cuda` in a subprocess (its own timeout); returns its summary line."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
               "-rfEs", "--durations=10", str(ROOT / "tests" / "cuda")]  # fmt: skip
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              timeout=args.test_timeout)  # fmt: skip
        text, code = done.stdout + done.stderr, str(done.returncode)
    except subprocess.TimeoutExpired as err:
        partial = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        text, code = f"{partial}\n(timed out after {args.test_timeout:g} s)", "timeout"
    (args.out / "pytest_cuda.txt").write_text(text)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    summary = f"pytest -m cuda (exit {code}): {lines[-1] if lines else 'no output'}"
    for line in [*failures[:20], summary]:
        log(line)
    return summary


def _command() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def main(argv: Sequence[str] | None = None) -> list[dict[str, str]]:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.csv"
    log_file = args.out / "log.txt"

    def log(message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} [{time.perf_counter() - start:5.0f} s] {message}"
        print(line, flush=True)
        with log_file.open("a") as handle:
            handle.write(line + "\n")

    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    log(f"device: {describe_device(args.device)}; {os.cpu_count()} CPU cores; "
        f"{platform.python_version()}; out {args.out}")  # fmt: skip
    if importlib_find("torch_pruning") is None:
        skipped = [m for m in args.methods if m in bench.TP_IMPORTANCES]
        args.methods = [m for m in args.methods if m not in bench.TP_IMPORTANCES]
        if skipped:
            log(f"torch_pruning is not importable: skipping {', '.join(skipped)} "
                "(pip install torch-pruning==1.6.1 --no-deps)")  # fmt: skip
    timings: dict[str, float] = {}
    tests = run_cuda_tests(args, log) if args.tests else "CUDA tests not run (--no-tests)"
    timings["tests"] = time.perf_counter() - start
    split = load_split(args)
    data = bench_data(split, args)
    models: dict[str, nn.Module] = {}
    manifests: dict[str, dict[str, Any]] = {}
    for name in args.models:
        models[name], manifests[name] = train_dense(name, split, args, log)
    timings["training"] = time.perf_counter() - start - timings["tests"]
    bench_start = time.perf_counter()
    end = math.inf if args.seconds is None else bench_start + args.seconds
    if args.total_seconds is not None:  # leave ~10 s for the table and the records
        end = min(end, start + args.total_seconds - 10.0)
    for i, name in enumerate(args.models):
        share = (end - time.perf_counter()) / (len(args.models) - i)
        run_model(name, models[name], data, args, path, time.perf_counter() + share, log)
        torch.cuda.empty_cache() if args.device.type == "cuda" else None
    timings["benchmark"] = time.perf_counter() - bench_start
    rows = [r for r in bench.read_rows(path) if r["model"] in args.models]
    text = table(rows)
    settings = {k: (str(v) if isinstance(v, (Path, torch.device)) else v)
                for k, v in vars(args).items()}  # fmt: skip
    record = {
        "command": _command(), "device": describe_device(args.device), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cpu_cores": os.cpu_count(), "settings": settings,
        "seconds": {k: round(v, 1) for k, v in timings.items()}, "cuda_tests": tests,
        "dense": {n: {k: m.get(k) for k in ("epochs", "train_seconds", "test_accuracy")}
                  for n, m in manifests.items()},
    }  # fmt: skip
    (args.out / "run.json").write_text(json.dumps(record, indent=1, default=str))
    header = [
        f"# One-shot pruning of GPU-trained models ({DATASET}, 32 px)", "",
        f"- device: {record['device']}; command: `{record['command']}`",
        "- dense: " + "; ".join(
            f"{n} {m.get('epochs')} epochs in {m.get('train_seconds')} s, test "
            f"{100 * float(m.get('test_accuracy', math.nan)):.2f}%" for n, m in manifests.items()),
        f"- calibration {args.calibration} images; fine-tuning {args.finetune_epochs} epoch(s) "
        f"over {args.finetune_images} images at lr {args.finetune_lr:g}, seeds "
        f"{args.finetune_seeds}; BN re-estimation {args.bn_batches} batches of 128; random "
        f"seeds {args.random_seeds}",
        f"- {tests}", f"- wall time: {record['seconds']}", "", "",
    ]  # fmt: skip
    (args.out / "summary.md").write_text("\n".join(header) + text + "\n")
    print("\n" + "\n".join(header) + text, flush=True)
    log(f"done in {time.perf_counter() - start:.0f} s")
    return rows


def importlib_find(name: str) -> object:
    import importlib.util

    return importlib.util.find_spec(name)


if __name__ == "__main__":
    main()
