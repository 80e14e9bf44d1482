"""Train the dense Fashion-MNIST models that ``coreprune.harness.pretrained`` ships.

Pruning experiments and benchmarks need well-trained dense starting points; training them
inside every run would cost minutes to hours on a CPU. This script trains LeNet-300-100,
``vgg_small``, ResNet-20 and the small ViT ``vit_small`` on Fashion-MNIST with the library's own loaders (a fixed 10%
of the training set held out for validation, seed 0) and trainer, then writes each model's
state dict to ``coreprune/harness/pretrained/<model>_fashion_mnist.safetensors`` and its
provenance (command line, seed, schedule, accuracies, wall time, machine) into
``manifest.json`` next to it, as soon as that model is done.

Run: ``python benchmarks/train_fixtures.py`` (all four, in order), or e.g.
``python benchmarks/train_fixtures.py --models vgg_small --epochs vgg_small=10 --threads 1``.
``--limit N --no-save`` makes a quick timing run on the first N examples of each part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from coreprune.harness.data import make_loaders
from coreprune.harness.evaluation.machine import cpu_name, describe_device
from coreprune.harness.models import build_model
from coreprune.harness.training import TrainHistory, evaluate, fit, set_seed

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "coreprune" / "harness" / "pretrained"
DATASET = "fashion_mnist"
SPLIT_SEED = 0
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class Plan:
    """How one model is trained: SGD with Nesterov momentum, per-step cosine to zero."""

    model: str
    epochs: int
    lr: float
    weight_decay: float
    augment: bool
    batch_size: int = 128
    momentum: float = 0.9
    warmup_epochs: int = 0


# LeNet-300-100 is trained without augmentation, as in the pruning literature that uses it;
# the conv nets get the loaders' light Fashion-MNIST augmentation (random 2 px shifts).
# The conv nets' epochs are what fit in about an hour on a shared, heavily loaded 2-core CPU;
# they are short of convergence, so more epochs (``--epochs vgg_small=10``) give better models.
PLANS: dict[str, Plan] = {
    "lenet300100": Plan("lenet300100", epochs=20, lr=0.05, weight_decay=5e-4, augment=False),
    "vgg_small": Plan("vgg_small", epochs=4, lr=0.05, weight_decay=5e-4, augment=True),
    "resnet20": Plan("resnet20", epochs=4, lr=0.1, weight_decay=5e-4, augment=True),
    # The ViT trains with the same SGD after one warm-up epoch (a transformer started at the
    # full learning rate diverges), without augmentation so that a few epochs converge.
    "vit_small": Plan(
        "vit_small", epochs=8, lr=0.05, weight_decay=5e-4, augment=False, warmup_epochs=1
    ),
}


def build(name: str) -> nn.Module:
    """The registered architecture for 28x28 grey, 10-class input."""
    if name == "lenet300100":
        return build_model(name, in_features=784, num_classes=10)
    return build_model(name, in_channels=1, num_classes=10)


def _parse_epochs(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in PLANS or not value.isdigit() or int(value) < 1:
            raise SystemExit(
                f"--epochs expects MODEL=N with MODEL in {sorted(PLANS)} and N >= 1, got {item!r}"
            )
        out[name] = int(value)
    return out


def _save(model: nn.Module, path: Path) -> None:
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous()
        for k, v in model.state_dict().items()
        if v.is_floating_point()
    }
    # BatchNorm's num_batches_tracked is an int64 counter; keep it exact, not as float.
    tensors.update(
        {
            k: v.detach().cpu().contiguous()
            for k, v in model.state_dict().items()
            if not v.is_floating_point()
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"model": path.stem, "format": "pt"})
    os.replace(tmp, path)


def _update_manifest(out_dir: Path, name: str, entry: dict[str, Any]) -> None:
    path = out_dir / "manifest.json"
    manifest: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    manifest[name] = entry
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    os.replace(tmp, path)


def train_one(plan: Plan, args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Train ``plan.model`` from seed ``args.seed``; return its manifest entry."""
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    loaders = make_loaders(
        DATASET,
        args.root,
        batch_size=plan.batch_size,
        val_fraction=VAL_FRACTION,
        seed=SPLIT_SEED,
        augment=plan.augment,
        limit=args.limit,
        eval_batch_size=500,
    )
    model = build(plan.model)

    def log(epoch: int, _model: nn.Module, history: TrainHistory) -> bool:
        print(
            f"[{plan.model}] epoch {epoch + 1}/{plan.epochs} "
            f"loss {history.train_loss[-1]:.4f} train_acc {history.train_accuracy[-1]:.4f} "
            f"val_acc {history.val_accuracy[-1]:.4f} lr {history.lr[-1]:.4g} "
            f"{history.epoch_seconds[-1]:.1f}s",
            flush=True,
        )
        return False

    start = time.perf_counter()
    history = fit(
        model,
        loaders.train,
        epochs=plan.epochs,
        lr=plan.lr,
        momentum=plan.momentum,
        nesterov=True,
        weight_decay=plan.weight_decay,
        schedule="cosine",
        warmup_epochs=plan.warmup_epochs,
        val_loader=loaders.val,
        device="cpu",
        progress=False,
        seed=args.seed,
        on_epoch_end=log,
        checkpoint=None
        if args.checkpoint_dir is None
        else args.checkpoint_dir / f"{plan.model}_{DATASET}.pt",
        resume=args.checkpoint_dir is not None,
    )
    train_seconds = time.perf_counter() - start
    test = evaluate(model, loaders.test, device="cpu")
    val = evaluate(model, loaders.val, device="cpu")
    print(
        f"[{plan.model}] done: val {val['accuracy']:.4f} test {test['accuracy']:.4f} "
        f"in {train_seconds:.0f}s",
        flush=True,
    )
    if not args.no_save:
        _save(model, args.out_dir / f"{plan.model}_{DATASET}.safetensors")
    return {
        "file": f"{plan.model}_{DATASET}.safetensors",
        "architecture": plan.model,
        "dataset": DATASET,
        "command": command,
        "seed": args.seed,
        "epochs": plan.epochs,
        "optimizer": (
            f"SGD, Nesterov momentum {plan.momentum}, weight decay {plan.weight_decay} "
            f"(all parameters), batch {plan.batch_size}, cross-entropy"
        ),
        "lr_schedule": (
            f"lr {plan.lr}, cosine to zero per step over {plan.epochs} epochs"
            + (f", {plan.warmup_epochs} warm-up epochs" if plan.warmup_epochs else "")
        ),
        "augmentation": "random 2 px shifts (zero padding)" if plan.augment else "none",
        "train_size": len(loaders.train.dataset),  # type: ignore[arg-type]
        "val_size": len(loaders.val.dataset),  # type: ignore[arg-type]
        "test_size": len(loaders.test.dataset),  # type: ignore[arg-type]
        "split": f"make_loaders seed {SPLIT_SEED}, val_fraction {VAL_FRACTION}",
        "val_accuracy": round(val["accuracy"], 4),
        "test_accuracy": round(test["accuracy"], 4),
        "val_accuracy_per_epoch": [round(a, 4) for a in history.val_accuracy],
        "epoch_seconds": [round(s, 1) for s in history.epoch_seconds],
        "wall_seconds": round(train_seconds, 1),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": describe_device(torch.device("cpu")),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "plan": asdict(plan),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--models",
        nargs="+",
        choices=sorted(PLANS),
        default=list(PLANS),
        help="models to train, in this order (default: all four)",
    )
    parser.add_argument(
        "--epochs",
        nargs="*",
        default=[],
        metavar="MODEL=N",
        help="override a model's epochs, e.g. resnet20=8",
    )
    parser.add_argument("--seed", type=int, default=0, help="weights, data order, augmentation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--root", default=None, help="Fashion-MNIST folder (default: search)")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only the first N examples of each part (timing runs)",
    )
    parser.add_argument("--out-dir", type=Path, default=PRETRAINED_DIR)
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="save a checkpoint after every epoch there and resume from it if present",
    )
    parser.add_argument("--no-save", action="store_true", help="write no files")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    epochs = _parse_epochs(args.epochs)
    command = shlex.join(
        ["python", "benchmarks/train_fixtures.py", *(sys.argv[1:] if argv is None else argv)]
    )
    for name in args.models:
        plan = replace(PLANS[name], epochs=epochs.get(name, PLANS[name].epochs))
        entry = train_one(plan, args, command)
        if not args.no_save:
            _update_manifest(args.out_dir, name, entry)
            print(f"[{name}] saved to {args.out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
