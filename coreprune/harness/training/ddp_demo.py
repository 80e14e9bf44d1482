"""Train a model-zoo model on one of the built-in datasets with its recipe, on one process or
data-parallel under torchrun:

    python -m coreprune.harness.training.ddp_demo --model lenet5 --epochs 2
    torchrun --standalone --nproc_per_node=2 -m coreprune.harness.training.ddp_demo \\
        --model resnet20 --dataset cifar10 --root ~/data/cifar-10-batches-py \\
        --checkpoint runs/r20.pt --resume

``--batch-size`` is per process; by default it is the recipe's batch divided by the number
of processes, so the effective batch (and so the recipe's learning rate) stays the same.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist

from coreprune.harness.data import DATASETS, make_loaders
from coreprune.harness.training import (
    build_for_dataset,
    default_image_size,
    evaluate,
    fit,
    recipe,
    set_seed,
)
from coreprune.zoo import MODEL_NAMES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet5", choices=MODEL_NAMES)
    parser.add_argument("--dataset", default=None, choices=tuple(DATASETS))
    parser.add_argument("--root", default=None, help="dataset folder (default: fashion_mnist's)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--batch-size", type=int, default=None, help="per process")
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--limit", type=int, default=None, help="cap each split, for smoke runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--device", default=None, help="default: CUDA if available, else CPU")
    parser.add_argument("--output", default=None, help="write the history as JSON (rank 0)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Run the demo; returns (and on rank 0 prints) the history and test metrics."""
    args = _parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    overrides: dict[str, object] = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.lr is not None:
        overrides["lr"] = args.lr
    plan = recipe(args.model, **overrides)
    dataset = args.dataset or plan.dataset
    image_size = default_image_size(args.model, dataset)
    batch = args.batch_size or max(1, plan.batch_size // world)
    set_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    loaders = make_loaders(
        dataset,
        args.root,
        batch_size=batch,
        seed=args.seed,
        limit=args.limit,
        image_size=image_size,
    )
    model, _ = build_for_dataset(args.model, dataset, image_size)
    history = fit(
        model,
        loaders.train,
        **plan.fit_kwargs(),
        val_loader=loaders.val,
        device=args.device,
        progress=not args.no_progress,
        checkpoint=args.checkpoint,
        resume=args.resume,
        seed=args.seed,
    )
    result: dict[str, object] = {
        "model": args.model,
        "dataset": dataset,
        "world_size": history.world_size,
        "batch_per_process": batch,
        "history": history.to_dict(),
        "test": evaluate(model, loaders.test),
    }
    if rank == 0:
        print(json.dumps({k: v for k, v in result.items() if k != "history"}))
        if args.output is not None:
            Path(args.output).write_text(json.dumps(result, indent=2))
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
