"""Train a model on Fashion-MNIST, compress it layer by layer with `coreprune.compress`, and
compare accuracy, params and MACs before compression, after it, and after fine-tuning.

`compress` finds the prunable (producer, consumer) pairs with torch.fx, prunes each one with a
certificate (or a baseline's unit scores) and returns a new, physically smaller model plus a
per-layer report. Accuracy right after compression shows what the certificates buy; accuracy
after the same `fit` for a short while shows what fine-tuning recovers.

    python examples/compress_model.py                            # LeNet-5, 50% of params removed
    python examples/compress_model.py --eps 0.3                  # a per-layer certificate target
    python examples/compress_model.py --model resnet20 --limit 5000 --target 0.7 --out runs/r20
    python examples/compress_model.py --method random            # same budget, random units
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    IMAGE_SHAPE,
    accuracy,
    add_training_args,
    fashion_loaders,
    images,
    load_or_train,
    model_kwargs,
    show_progress,
)

from coreprune import compress
from coreprune.compress import ALLOCATIONS, METRICS, MODES
from coreprune.coreset.sensitivity import METHODS
from coreprune.harness.evaluation import count_macs, count_params
from coreprune.harness.training import fit
from coreprune.scoring import SCORERS, UnitScorer, make_scorer, needs_data
from coreprune.serialization import load_model, save_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_training_args(p, model="lenet5", epochs=3, limit=20000)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--target", type=float, default=None, help="fraction of params (or MACs) to remove; 0.5 "
        "when no budget is given"
    )  # fmt: skip
    budget.add_argument("--eps", type=float, default=None, help="per-layer certificate target")
    p.add_argument(
        "--method",
        choices=("coreset", *SCORERS),
        default="coreset",
        help="the coreset, or a baseline pruned to the same budget by the same surgery",
    )
    p.add_argument("--mode", choices=MODES, default="select", help="coreset mode")
    p.add_argument("--allocation", choices=ALLOCATIONS, default="uniform", help="with --target")
    p.add_argument("--metric", choices=METRICS, default="params", help="what --target counts")
    p.add_argument(
        "--calibration",
        type=int,
        default=512,
        help="validation images spanning each layer's query space; 0 = data-free certificates",
    )
    p.add_argument("--rank", type=int, default=None, help="calibration subspace dimension (8)")
    p.add_argument("--sensitivity", choices=METHODS, default="auto", help="sensitivity bound")
    p.add_argument("--finetune-epochs", type=int, default=1, help="0 skips fine-tuning")
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument(
        "--device",
        default=None,
        help="where compression and evaluation run (default: cuda if available); training "
        "uses fit's own default device",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="write report.md, summary.json and the model here"
    )
    args = p.parse_args(argv)
    if args.target is None and args.eps is None:
        args.target = 0.5
    if args.eps is not None and args.method != "coreset":
        p.error(f"--eps needs --method coreset ({args.method} has no certificate); use --target")
    if args.method != "coreset" and args.mode != "select":
        p.error("--mode sample is a coreset mode; other methods keep their top-scored units")
    if args.rank is not None and args.calibration == 0:
        p.error("--rank sets the calibration query space; it needs --calibration > 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the example; returns the measured numbers (the tests check them)."""
    args = parse_args(argv)
    start = time.perf_counter()
    loaders = fashion_loaders(args)
    kwargs = model_kwargs(args.model, args.width)
    model, _ = load_or_train(args, args.model, kwargs, loaders)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    example = torch.zeros(1, *IMAGE_SHAPE, device=device)
    calibration = None
    if args.calibration > 0:
        calibration = images(loaders.val, args.calibration).to(device)

    stages: dict[str, dict[str, float]] = {}

    def record(stage: str, net: torch.nn.Module) -> None:
        stages[stage] = {
            "params": count_params(net),
            "macs": count_macs(net, example),
            "accuracy": accuracy(net, loaders.test),
        }

    record("dense", model)
    budget = f"eps={args.eps:g}" if args.eps is not None else f"target={args.target:g}"
    query = f"calibration ({args.calibration} images)" if calibration is not None else "data-free"
    print(
        f"\ncompressing {args.model}: method={args.method}, mode={args.mode}, {budget}, "
        f"query spaces: {query}"
    )
    method: str | UnitScorer = args.method
    if args.method != "coreset" and needs_data(args.method):  # SNIP, GraSP, ...: labelled data
        scorer = make_scorer(args.method, loaders.train)
        assert isinstance(scorer, UnitScorer)
        method = scorer
    result = compress(
        model,
        eps=args.eps,
        target=args.target,
        method=method,
        mode=args.mode,
        allocation=args.allocation,
        metric=args.metric,
        example_input=example,
        calibration=calibration,
        rank=args.rank if calibration is not None else None,
        generator=torch.Generator().manual_seed(args.seed),
        sensitivity=args.sensitivity,
        progress=show_progress(args),
    )
    report = result.report
    print(report.to_markdown())
    certified = [r.eps for r in report if r.eps is not None]
    if certified:
        useful = sum(1 for r in report if r.vacuous is False)
        print(
            f"\ncertificates: {useful}/{len(certified)} layers non-vacuous (eps < 1); "
            f"worst layer eps {max(certified):.4g}"
        )
    record("compressed", result.model)

    final = result.model
    if args.finetune_epochs > 0:
        final = copy.deepcopy(result.model)
        t0 = time.perf_counter()
        fit(
            final,
            loaders.train,
            epochs=args.finetune_epochs,
            lr=args.finetune_lr,
            val_loader=loaders.val,
            progress=show_progress(args),
        )
        final = final.to(device).eval()
        print(
            f"fine-tuned {args.finetune_epochs} epoch(s) at lr {args.finetune_lr:g} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        record("fine-tuned", final)

    dense = stages["dense"]
    print(f"\n{'':12} {'params':>12} {'MACs':>14} {'test acc':>9}")
    for stage, row in stages.items():
        print(
            f"{stage:12} {row['params']:>12,} {row['macs']:>14,} {row['accuracy']:>9.4f}"
            + (
                ""
                if stage == "dense"
                else f"   ({1 - row['params'] / dense['params']:.1%} params, "
                f"{1 - row['macs'] / dense['macs']:.1%} MACs removed)"
            )
        )

    summary: dict[str, Any] = {
        "model": args.model,
        "method": args.method,
        "mode": args.mode,
        "eps": args.eps,
        "target": args.target,
        "query": query,
        "stages": stages,
        "layers": [
            {
                "producer": r.producer,
                "units_before": r.units_before,
                "units_after": r.units_after,
                "eps": r.eps,
                "vacuous": r.vacuous,
            }
            for r in report
        ],
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(report.to_markdown() + "\n")
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
        saved = final.cpu()
        save_model(saved, args.out / "model", arch=args.model, arch_kwargs=kwargs)
        reloaded = load_model(args.out / "model").eval()
        batch = images(loaders.test, 64)
        with torch.no_grad():
            diff = float((saved.eval()(batch) - reloaded(batch)).abs().max())
        summary["reload_max_abs_diff"] = diff
        print(
            f"\nsaved the compressed model to {args.out / 'model'} (JSON spec + safetensors); "
            f"reloaded, its outputs differ by at most {diff:.1e}"
        )
    print(f"total {time.perf_counter() - start:.1f} s")
    return summary


if __name__ == "__main__":
    main()
