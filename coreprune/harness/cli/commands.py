"""The other commands: train, compare, oneshot and report; each `prepare_*` checks every input
and returns the work to do."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from coreprune.harness.cli.run_folder import check_run_folder, run_dir, run_loaders, write_json
from coreprune.harness.comparison import (
    CompareConfig,
    check_run,
    read_rows,
    run_comparison,
    write_summary,
)
from coreprune.harness.evaluation.machine import describe_device
from coreprune.harness.oneshot import (
    format_table,
    parse_method,
    run_oneshot,
)
from coreprune.harness.training import (
    build_for_dataset,
    default_image_size,
    evaluate,
    fit,
    set_seed,
)
from coreprune.serialization import save_model
from coreprune.torch_utils import resolve_device


def compare_config(a: argparse.Namespace) -> CompareConfig:
    """The CompareConfig of parsed `compare` arguments (0 limits mean all images)."""
    return CompareConfig(
        models=tuple(a.models), methods=tuple(a.methods), targets=tuple(a.targets),
        metrics=tuple(a.metrics), seeds=tuple(a.seeds), dataset=a.dataset,
        data_root=a.data_root, train_limit=a.train_limit or None,
        test_limit=a.test_limit or None, image_size=a.image_size, epochs=a.epochs, lr=a.lr,
        finetune_epochs=a.finetune_epochs, finetune_lr=a.finetune_lr,
        batch_size=a.batch_size, calibration=a.calibration, rank=a.rank,
        synflow_rounds=a.synflow_rounds, beyond_accuracy=a.beyond_accuracy, at_init=a.at_init,
        device=a.device, out=a.out,
    )  # fmt: skip


def prepare_train(a: argparse.Namespace) -> Callable[[], int]:
    out = Path(a.out)
    if a.resume and a.overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite replaces it: pick one")
    if a.resume and not (out / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {out / 'checkpoint.pt'}")
    check_run_folder(out, a, resume=a.resume)
    model, kwargs = build_for_dataset(a.model, a.dataset, a.image_size)
    loaders = run_loaders(a, default_image_size(a.model, a.dataset))
    device = resolve_device(a.device)

    def work() -> int:
        run_dir(out, a, device)
        set_seed(a.seed)
        fresh, _ = build_for_dataset(a.model, a.dataset, a.image_size)  # seeded initialisation
        print(f"training {a.model} on {a.dataset} for {a.epochs} epochs ({device})")
        history = fit(
            fresh, loaders.train, epochs=a.epochs, lr=a.lr, val_loader=loaders.val,
            device=device, checkpoint=out / "checkpoint.pt", resume=a.resume, seed=a.seed,
        )  # fmt: skip
        test = evaluate(fresh, loaders.test, device=device)
        save_model(fresh.cpu(), out / "model", arch=a.model, arch_kwargs=kwargs)
        write_json(out / "metrics.json", {"test": test, "history": history.to_dict()})
        print(f"{a.model}: test accuracy {test['accuracy']:.4f}; saved to {out / 'model'}")
        return 0

    del model  # built only to check the arguments before anything is written
    return work


def prepare_compare(a: argparse.Namespace) -> Callable[[], int]:
    config = compare_config(a)
    data = check_run(config, overwrite=a.overwrite)

    def work() -> int:
        rows = run_comparison(config, data=data, progress=True)
        print()
        print(write_summary(rows, config.folder))
        print(f"\nresults in {config.folder}/ (results.csv, summary.md, summary.png, config.json)")
        return 0

    return work


def prepare_oneshot(a: argparse.Namespace) -> Callable[[], int]:
    for method in a.methods:
        parse_method(method)  # a bad name is a usage error before any work
    out = None if a.out is None else Path(a.out)

    def work() -> int:
        print(
            f"oneshot: {', '.join(a.models)} at {', '.join(f'{b:g}' for b in a.budgets)} of "
            f"params removed; {a.threads} thread(s) on {describe_device(torch.device('cpu'))}"
        )
        rows = run_oneshot(
            a.models, a.budgets, a.methods, calibration=a.calibration,
            test_images=a.test_images, seed=a.seed,
        )  # fmt: skip
        table = format_table(rows)
        print(table)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(table + "\n", encoding="utf-8")
        return 0

    return work


def prepare_report(a: argparse.Namespace) -> Callable[[], int]:
    folder = Path(a.run_dir)
    rows = read_rows(folder / "results.csv")
    if not rows:
        raise FileNotFoundError(f"no results.csv with rows in {folder}")

    def work() -> int:
        print(write_summary(rows, folder))
        return 0

    return work
