"""The `coreprune` command line: train, compress, compare, report.

Every command writes to a run folder (`--out`): the config it ran with (config.json), its
metrics (metrics.json), tables (CSV, markdown) and plots, plus models saved without pickle.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from coreprune.compress import compress
from coreprune.harness.comparison import (
    METHODS,
    CompareConfig,
    first_inputs,
    make_pruner,
    read_rows,
    run_comparison,
    write_summary,
)
from coreprune.harness.data import make_loaders
from coreprune.harness.evaluation.machine import describe_device
from coreprune.harness.models import MODEL_NAMES, build_model
from coreprune.harness.training import evaluate, fit, set_seed
from coreprune.serialization import ARCH_FILE, load_model, save_model

__all__ = ["add_compare_arguments", "compare_config", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return int(args.run(args) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coreprune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model from scratch; saves it to --out/model")
    _data_arguments(train)
    train.add_argument("--model", default="lenet5", choices=MODEL_NAMES)
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--lr", type=float, default=0.05)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    train.add_argument("--out", default="runs/train")
    train.set_defaults(run=_train)

    comp = sub.add_parser("compress", help="compress a saved model; report, accuracy, saved model")
    _data_arguments(comp)
    comp.add_argument("--model-dir", required=True, help="a folder written by `coreprune train`")
    budget = comp.add_mutually_exclusive_group(required=True)
    budget.add_argument("--target", type=float, help="fraction of params/MACs to remove")
    budget.add_argument("--eps", type=float, help="per-layer certificate target (coreset only)")
    comp.add_argument("--method", default="coreset", choices=[m for m in METHODS if m != "dpf"])
    comp.add_argument("--mode", default="select", choices=("select", "sample"))
    comp.add_argument("--metric", default="params", choices=("params", "macs"))
    comp.add_argument("--allocation", default="uniform", choices=("uniform", "global"))
    comp.add_argument("--calibration", type=int, default=256, help="0 = data-free certificates")
    comp.add_argument("--rank", type=int, default=8)
    comp.add_argument("--finetune-epochs", type=int, default=0)
    comp.add_argument("--finetune-lr", type=float, default=0.01)
    comp.add_argument("--seed", type=int, default=0)
    comp.add_argument("--out", default="runs/compress")
    comp.set_defaults(run=_compress)

    cmp = sub.add_parser("compare", help="coreset vs baselines at matched params and MACs")
    add_compare_arguments(cmp)
    cmp.set_defaults(run=_compare)

    report = sub.add_parser("report", help="summary table and plot from a compare run folder")
    report.add_argument("run_dir", help="a folder written by `coreprune compare`")
    report.set_defaults(run=_report)

    for p in (train, comp, cmp, report):
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--limit", type=int, default=None, help="cap each split (quick runs)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when present)")


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `coreprune compare` (examples/compare_baselines.py runs the same command)."""
    d = CompareConfig()
    p.add_argument("--models", nargs="+", default=list(d.models), choices=MODEL_NAMES)
    p.add_argument("--methods", nargs="+", default=list(d.methods), choices=METHODS)
    p.add_argument("--targets", nargs="+", type=float, default=list(d.targets))
    p.add_argument("--metrics", nargs="+", default=list(d.metrics), choices=("params", "macs"))
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--data-root", default=None)
    p.add_argument("--train-limit", type=int, default=d.train_limit, help="0 = all")
    p.add_argument("--test-limit", type=int, default=d.test_limit, help="0 = all")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    p.add_argument("--finetune-lr", type=float, default=d.finetune_lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--calibration", type=int, default=d.calibration)
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--synflow-rounds", type=int, default=d.synflow_rounds)
    p.add_argument(
        "--beyond-accuracy",
        action="store_true",
        help="also agreement with dense, accuracy under input noise, ECE",
    )
    p.add_argument(
        "--at-init",
        action="store_true",
        help="prune the initialised model, then train it (instead of prune + fine-tune)",
    )
    p.add_argument("--device", default=d.device)
    p.add_argument("--out", default=d.out)


def compare_config(a: argparse.Namespace) -> CompareConfig:
    return CompareConfig(
        models=tuple(a.models), methods=tuple(a.methods), targets=tuple(a.targets),
        metrics=tuple(a.metrics), seeds=tuple(a.seeds), dataset=a.dataset,
        data_root=a.data_root, train_limit=a.train_limit or None,
        test_limit=a.test_limit or None, image_size=a.image_size, epochs=a.epochs, lr=a.lr,
        finetune_epochs=a.finetune_epochs, finetune_lr=a.finetune_lr,
        batch_size=a.batch_size, calibration=a.calibration, rank=a.rank,
        synflow_rounds=a.synflow_rounds, beyond_accuracy=a.beyond_accuracy, at_init=a.at_init, device=a.device,
        out=a.out,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Commands


def _train(a: argparse.Namespace) -> int:
    out = _run_dir(a.out, a)
    loaders = _loaders(a)
    kwargs = _model_kwargs(a)
    set_seed(a.seed)
    model = build_model(a.model, **kwargs)
    history = fit(
        model, loaders.train, epochs=a.epochs, lr=a.lr, val_loader=loaders.val, device=a.device,
        checkpoint=out / "checkpoint.pt", resume=a.resume, seed=a.seed,
    )  # fmt: skip
    test = evaluate(model, loaders.test, device=a.device)
    save_model(model.cpu(), out / "model", arch=a.model, arch_kwargs=kwargs)
    metrics = {"test": test, "history": history.to_dict()}
    _write_json(out / "metrics.json", metrics)
    print(f"{a.model}: test accuracy {test['accuracy']:.4f}; saved to {out / 'model'}")
    return 0


def _compress(a: argparse.Namespace) -> int:
    out = _run_dir(a.out, a)
    model = load_model(a.model_dir)
    loaders = _loaders(a)
    device = torch.device(a.device) if a.device else _auto_device()
    model = model.to(device)
    set_seed(a.seed)
    example = next(iter(loaders.train))[0]
    kwargs: dict[str, Any] = {"example_input": example[:2].to(device), "metric": a.metric,
                              "allocation": a.allocation, "mode": a.mode}  # fmt: skip
    if a.method == "coreset" and a.calibration > 0:
        kwargs.update(
            calibration=first_inputs(loaders.train, a.calibration).to(device), rank=a.rank
        )
    if a.eps is not None:
        kwargs.update(eps=a.eps)
        kwargs.pop("metric"), kwargs.pop("allocation")
    else:
        kwargs.update(target=a.target)
    method = make_pruner(CompareConfig(), a.method, loaders.train, a.seed)
    dense_acc = evaluate(model, loaders.test, device=device)["accuracy"]
    result = compress(model, method=method, generator=torch.Generator().manual_seed(a.seed),
                      **kwargs)  # fmt: skip
    pruned_acc = evaluate(result.model, loaders.test, device=device)["accuracy"]
    metrics: dict[str, Any] = {"dense_accuracy": dense_acc, "pruned_accuracy": pruned_acc,
                               "params_before": result.report.params_before,
                               "params_after": result.report.params_after,
                               "macs_before": result.report.macs_before,
                               "macs_after": result.report.macs_after}  # fmt: skip
    if a.finetune_epochs > 0:
        fit(result.model, loaders.train, epochs=a.finetune_epochs, lr=a.finetune_lr,
            device=device, seed=a.seed)  # fmt: skip
        metrics["finetuned_accuracy"] = evaluate(result.model, loaders.test, device=device)[
            "accuracy"
        ]
    (out / "report.md").write_text(result.report.to_markdown() + "\n")
    spec = json.loads((Path(a.model_dir) / ARCH_FILE).read_text())
    save_model(result.model.cpu(), out / "model", arch=spec["arch"],
               arch_kwargs=spec.get("arch_kwargs"))  # fmt: skip
    _write_json(out / "metrics.json", metrics)
    print(result.report.to_markdown())
    print(json.dumps(metrics, indent=2))
    return 0


def _compare(a: argparse.Namespace) -> int:
    config = compare_config(a)
    rows = run_comparison(config)
    print()
    print(write_summary(rows, config.out))
    print(f"\nresults in {config.out}/ (results.csv, summary.md, summary.png, config.json)")
    return 0


def _report(a: argparse.Namespace) -> int:
    folder = Path(a.run_dir)
    rows = read_rows(folder / "results.csv")
    if not rows:
        raise SystemExit(f"coreprune report: no results.csv with rows in {folder}")
    print(write_summary(rows, folder))
    return 0


# --------------------------------------------------------------------------------------------
# Helpers


def _run_dir(path: str, a: argparse.Namespace) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(a).items() if k != "run"}
    device = torch.device(a.device) if getattr(a, "device", None) else _auto_device()
    config.update(machine=describe_device(device), started=time.strftime("%Y-%m-%d %H:%M:%S"))
    _write_json(out / "config.json", config)
    return out


def _loaders(a: argparse.Namespace) -> Any:
    return make_loaders(a.dataset, a.data_root, batch_size=a.batch_size, limit=a.limit,
                        image_size=a.image_size)  # fmt: skip


def _model_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    channels = 1 if a.dataset in ("fashion_mnist", "mnist") else 3
    classes = 100 if a.dataset == "cifar100" else 10
    if a.model == "lenet300100":
        size = a.image_size or (28 if channels == 1 else 32)
        return {"in_features": channels * size * size, "num_classes": classes}
    return {"in_channels": channels, "num_classes": classes}


def _auto_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
