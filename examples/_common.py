"""Helpers shared by the example scripts: Fashion-MNIST loaders, a trained model cached in a run
folder, layer inputs captured with hooks, and small printing utilities.

They live next to the examples, not in the library, because they encode choices made for
demonstrations (cache layout, default sizes) rather than anything a user of coreprune needs.
Scripts import this module as `_common` (Python puts the script's folder on sys.path).
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from coreprune.harness.data import ImageData, Loaders, load_dataset, make_loaders
from coreprune.harness.models import MODEL_NAMES, build_model
from coreprune.harness.training import evaluate, fit, set_seed
from coreprune.serialization import ARCH_FILE, load_model, save_model

DATASET = "fashion_mnist"
IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
DEFAULT_CACHE = Path("runs") / "cache"

Log = Callable[[str], None]


def add_training_args(
    parser: argparse.ArgumentParser,
    *,
    model: str | None,
    epochs: int,
    limit: int | None,
    lr: float = 0.05,
    threads: int | None = None,
) -> None:
    """The flags every example shares: which model, how long to train it, on how much data.

    `threads` is the default of --threads (None: torch's own choice).
    """
    if model is not None:
        parser.add_argument("--model", default=model, choices=MODEL_NAMES, help="architecture")
        parser.add_argument(
            "--width", type=float, default=None, help="width_multiplier for VGG / ResNet models"
        )
    parser.add_argument("--epochs", type=int, default=epochs, help="training epochs")
    parser.add_argument("--lr", type=float, default=lr, help="peak SGD learning rate (cosine)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--limit",
        type=int,
        default=limit,
        help="use at most this many examples of each of train / val / test",
    )
    parser.add_argument("--augment", action="store_true", help="random crop + flip in training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-root", default=None, help="Fashion-MNIST idx folder (default: Debian's)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help="folder where trained models are kept and reused",
    )
    parser.add_argument("--no-cache", action="store_true", help="always train, never save")
    parser.add_argument(
        "--threads",
        type=int,
        default=threads,
        help="CPU threads for torch (float64 LAPACK on small matrices gains little from more, "
        "and slows down badly when the cores are shared); default: torch's choice",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: when stderr is a terminal)",
    )


def show_progress(args: argparse.Namespace) -> bool:
    """Bars on a terminal, none in logs and tests unless asked for."""
    return sys.stderr.isatty() if args.progress is None else bool(args.progress)


@functools.lru_cache(maxsize=2)
def _dataset(root: str | None) -> ImageData:
    """Decoding the 70k gzipped images takes seconds; scripts run in one process share it."""
    return load_dataset(DATASET, root)


def fashion_loaders(args: argparse.Namespace) -> Loaders:
    """Train / fixed 10% validation / test loaders, capped at `--limit` examples each.

    Also applies --threads, since every script calls this first.
    """
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return make_loaders(
        DATASET,
        args.data_root,
        batch_size=args.batch_size,
        augment=args.augment,
        limit=args.limit,
        data=_dataset(args.data_root),
    )


def model_kwargs(name: str, width: float | None = None) -> dict[str, Any]:
    """Constructor arguments that fit a model to 1-channel 28x28 images with 10 classes."""
    if name == "lenet300100":
        kwargs: dict[str, Any] = {"in_features": 784, "num_classes": NUM_CLASSES}
    elif name == "lenet5":
        kwargs = {"in_channels": 1, "num_classes": NUM_CLASSES, "image_size": 28}
    else:
        kwargs = {"in_channels": 1, "num_classes": NUM_CLASSES}
        if name in ("resnet18", "resnet50"):
            kwargs["small_input"] = True  # 3x3 stem, no max-pool: 28 px needs the resolution
    if width is not None:
        if name.startswith("lenet"):
            raise ValueError(f"--width applies to VGG and ResNet models, not {name}")
        kwargs["width_multiplier"] = width
    return kwargs


def load_or_train(
    args: argparse.Namespace, name: str, kwargs: dict[str, Any], loaders: Loaders, log: Log = print
) -> tuple[nn.Module, dict[str, Any]]:
    """A model trained with `fit` under these settings: from the cache if there, else trained.

    The cache key covers every setting that changes the weights, so a different `--epochs` or
    `--limit` trains a new model instead of silently reusing an old one.
    """
    settings = {
        "dataset": DATASET,
        "model": name,
        "kwargs": kwargs,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "limit": args.limit,
        "augment": args.augment,
        "seed": args.seed,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(args.cache) / f"{name}-{key}"
    info_file = folder / "train.json"
    if not args.no_cache and (folder / ARCH_FILE).is_file() and info_file.is_file():
        model = load_model(folder)
        info = json.loads(info_file.read_text())
        log(f"loaded {name} from {folder} (trained {args.epochs} epochs, {info['device']})")
        return model, info
    set_seed(args.seed)
    model = build_model(name, **kwargs)
    start = time.perf_counter()
    history = fit(
        model,
        loaders.train,
        epochs=args.epochs,
        lr=args.lr,
        val_loader=loaders.val,
        progress=show_progress(args),
    )
    seconds = time.perf_counter() - start
    info = {
        "settings": settings,
        "seconds": seconds,
        "device": history.device,
        "val_accuracy": history.val_accuracy,
        "train_examples": len(loaders.train.dataset),  # type: ignore[arg-type]
    }
    log(
        f"trained {name} for {args.epochs} epochs on {info['train_examples']} images "
        f"({history.device}, {seconds:.1f} s): val accuracy {history.val_accuracy[-1]:.4f}"
    )
    if not args.no_cache:
        model.cpu()
        save_model(model, folder, arch=name, arch_kwargs=kwargs)
        info_file.write_text(json.dumps(info, indent=1))
        log(f"saved to {folder}")
    return model, info


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Test (or validation) accuracy as a fraction."""
    return evaluate(model, loader)["accuracy"]


def images(loader: DataLoader, count: int) -> torch.Tensor:
    """The first `count` inputs of a loader, as one batch (e.g. a calibration batch)."""
    seen: list[torch.Tensor] = []
    total = 0
    for x, _ in loader:
        seen.append(x)
        total += len(x)
        if total >= count:
            break
    return torch.cat(seen)[:count]


def layer_inputs(
    model: nn.Module, layer: nn.Module, batch: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """What `layer` receives when `model` runs on `batch`, one row per example (float64).

    A forward pre-hook records the input: no assumption about the layers before it.
    """
    seen: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen.append(inputs[0].detach().flatten(1).to(torch.float64))

    handle = layer.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, len(batch), chunk):
                model(batch[start : start + chunk].to(device))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(seen).cpu()


def with_modules(model: nn.Module, replacements: dict[str, nn.Module]) -> nn.Module:
    """A copy of `model` with the named submodules swapped; the original is untouched."""
    new = copy.deepcopy(model)
    for name, module in replacements.items():
        parent, _, child = name.rpartition(".")
        setattr(new.get_submodule(parent), child, module)
    return new


def fmt_ratio(measured: float, eps: float) -> str:
    """measured / eps, or why it is undefined."""
    return f"{measured / eps:.3f}" if eps > 0 else "n/a (eps = 0: nothing removed)"
