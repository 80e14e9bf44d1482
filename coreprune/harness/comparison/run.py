"""Running the comparison: the dense model of each model and seed (trained or loaded), then every
method at every target, each pruned model fine-tuned alike; one row per run."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from coreprune.compress import compress
from coreprune.harness.comparison.config import CompareConfig, check_run, prepare_run_folder
from coreprune.harness.comparison.results import append_row, read_rows, row_key
from coreprune.harness.data import ImageData, Loaders, make_loaders
from coreprune.harness.evaluation.machine import describe_device
from coreprune.harness.evaluation.robustness import DEFAULT_SIGMAS, robustness_report
from coreprune.harness.training import (
    build_for_dataset,
    default_image_size,
    evaluate,
    fit,
    recalibrated_copy,
    set_seed,
)
from coreprune.methods.dpf import dpf_train
from coreprune.scoring import UnitScorer, make_scorer, needs_data
from coreprune.serialization import load_model, save_model
from coreprune.torch_utils import resolve_device


def run_comparison(
    config: CompareConfig,
    *,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    overwrite: bool = False,
    data: ImageData | None = None,
) -> list[dict[str, Any]]:
    """Run every (model, seed, metric, target, method) not already in results.csv; return all rows.

    Inputs are checked (`check_run`) before the run folder is created or anything is trained;
    `data` (from `check_run`) skips loading the dataset again.
    """
    say = log if log is not None else (tqdm.write if progress else print)
    device = resolve_device(config.device)
    if data is None:
        data = check_run(config, overwrite=overwrite)
    else:
        prepare_run_folder(config, overwrite=overwrite)
    out = config.folder
    (out / "config.json").write_text(
        json.dumps({**asdict(config), "machine": describe_device(device)}, indent=2) + "\n"
    )
    results = out / "results.csv"
    rows = read_rows(results)
    done = {row_key(r) for r in rows}
    plan = [
        (model_name, seed, metric, target, method)
        for model_name in config.models
        for seed in config.seeds
        for metric in config.metrics
        for target in config.targets
        for method in config.methods
        if not (method == "dpf" and metric != "params")  # DPF budgets params only
    ]
    todo = [p for p in plan if (p[0], str(p[1]), p[4], p[2], f"{p[3]:g}") not in done]
    if len(todo) < len(plan):
        say(f"resuming {out}: {len(plan) - len(todo)} of {len(plan)} runs already done")
    bar = tqdm(total=len(todo), desc="compare", unit="run", disable=not progress or not todo)
    try:
        for model_name in config.models:
            if not any(p[0] == model_name for p in todo):
                continue
            loaders = _loaders(config, model_name, data)
            test = _limited(loaders.test, config.test_limit)
            set_seed(config.split_seed)  # the same calibration inputs on every rerun
            example = next(iter(loaders.train))[0]
            calibration = first_inputs(loaders.train, config.calibration)
            for seed in config.seeds:
                runs = [p for p in todo if p[0] == model_name and p[1] == seed]
                if not runs:
                    continue
                dense, dense_acc = _dense(
                    config, model_name, seed, loaders.train, test, device, say, progress
                )
                start = _initial(config, model_name, seed, device) if config.at_init else dense
                for _, _, metric, target, method in runs:
                    bar.set_postfix_str(f"{model_name} seed {seed} {metric} {target:g} {method}")
                    row = _one_run(
                        config, model_name, seed, method, metric, target, start, dense,
                        dense_acc, loaders.train, test, example, calibration, device,
                    )  # fmt: skip
                    append_row(results, row)
                    rows.append(row)
                    bar.update()
                    say(
                        f"{model_name} seed {seed} {metric} {target:g} {method:9s}: "
                        f"pruned {row['pruned_accuracy']:.4f} fine-tuned "
                        f"{row['finetuned_accuracy']:.4f} (dense {dense_acc:.4f}, "
                        f"prune {row['prune_seconds']:.1f} s)"
                    )
    finally:
        bar.close()
    return rows


def _one_run(
    config: CompareConfig, model_name: str, seed: int, method: str, metric: str, target: float,
    start_model: nn.Module, dense: nn.Module, dense_acc: float, train: DataLoader,
    test: DataLoader, example: torch.Tensor, calibration: torch.Tensor, device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """Prune `start_model` (the trained dense model, or a fresh one with `at_init`), then give the
    pruned model the same fine-tuning (or, at init, the dense model's training budget)."""
    epochs, lr = (config.epochs, config.lr) if config.at_init else (
        config.finetune_epochs, config.finetune_lr)  # fmt: skip
    set_seed(seed)
    start = time.perf_counter()
    if method == "dpf":
        if metric != "params":
            raise ValueError("dpf budgets params only; run it with metrics=('params',)")
        dpf = dpf_train(start_model, train, target=target, epochs=epochs, lr=lr, structured=True,
                        example_input=example[:1], device=device, seed=seed)  # fmt: skip
        assert dpf.report is not None
        report, pruned = dpf.report, dpf.model
        seconds = time.perf_counter() - start
        pruned_acc = recal_acc = math.nan  # DPF prunes while it trains: no one-shot model
    else:
        kwargs: dict[str, Any] = {
            "target": target,
            "metric": metric,
            "progress": False,
            "example_input": example[:1].to(device),
            # Every method, DPF included, prunes the same single pairs by the same plain surgery:
            # this comparison isolates the choice of units (rewiring: benchmarks/bench_oneshot.py).
            "groups": False,
            "compensate": "none",
        }  # MACs per image
        if method == "coreset" and config.calibration > 0:
            kwargs.update(calibration=calibration.to(device), rank=config.rank)
        result = compress(start_model, method=make_pruner(config, method, train, seed), **kwargs)
        seconds = time.perf_counter() - start
        report, pruned = result.report, result.model
        pruned_acc = evaluate(pruned, test, device=device)["accuracy"]
        recal_acc = math.nan
        if not config.at_init:  # BN statistics of an untrained model say nothing
            recalibrated = recalibrated_copy(pruned, train, device)
            recal_acc = evaluate(recalibrated, test, device=device)["accuracy"]
        if epochs > 0:  # finetune_epochs=0: report the accuracy without fine-tuning
            fit(pruned, train, epochs=epochs, lr=lr, device=device, progress=False, seed=seed)
    tuned_acc = evaluate(pruned, test, device=device)["accuracy"]
    extra: dict[str, Any] = {}
    if config.beyond_accuracy:
        rep = robustness_report(pruned, dense, test, sigmas=DEFAULT_SIGMAS, seed=seed)
        extra = {"agreement": rep["agreement"], "ece": rep["ece"]}
        noisy = rep["noisy_accuracy"]
        assert isinstance(noisy, dict)
        extra.update({f"noise_{s:g}": a for s, a in noisy.items()})
    return extra | {
        "model": model_name, "seed": seed, "method": method, "metric": metric, "target": target,
        "achieved": report.achieved, "params_removed": report.params_removed,
        "prunable_params_removed": report.prunable_params_removed,
        "macs_removed": report.macs_removed, "params_after": report.params_after,
        "macs_after": report.macs_after, "dense_accuracy": dense_acc,
        "pruned_accuracy": pruned_acc, "recalibrated_accuracy": recal_acc,
        "finetuned_accuracy": tuned_acc,
        "prune_seconds": seconds, "device": str(device),
        "when": "init" if config.at_init else "trained",
    }  # fmt: skip


def make_pruner(
    config: CompareConfig, method: str, train: DataLoader, seed: int
) -> str | UnitScorer:
    """The scoring rule a method name stands for in the comparison ("coreset" stays a name).

    Built by the library's one factory (`coreprune.scoring.make_scorer`); the comparison's own
    settings are the options below.
    """
    if method == "coreset":
        return "coreset"
    data = train if needs_data(method) else None
    options: dict[str, Any] = {}
    if method == "snip":
        options["batch_size"] = min(config.snip_batch, len(train.dataset))  # type: ignore[arg-type]
    elif method == "synflow":
        options["rounds"] = config.synflow_rounds
    elif method == "random":
        options["seed"] = seed
    elif method in ("loss_preservation", "gradnorm_preservation", "gradnorm_increase"):
        # a smaller sample than the measures' default 2560, to fit the CPU budget
        options.update(samples=min(512, len(train.dataset)), samples_per_class=None)  # type: ignore[arg-type]
    scorer = make_scorer(method, data, **options)
    assert isinstance(scorer, UnitScorer)
    return scorer


def _dense(
    config: CompareConfig, model_name: str, seed: int, train: DataLoader, test: DataLoader,
    device: torch.device, log: Callable[[str], None], progress: bool,
) -> tuple[nn.Module, float]:  # fmt: skip
    """The trained dense model for (model, seed), cached in the run folder."""
    folder = config.folder / "dense" / f"{model_name}-seed{seed}"
    info = folder / "accuracy.json"
    if info.exists():
        return load_model(folder).to(device), json.loads(info.read_text())["accuracy"]
    set_seed(seed)
    model, kwargs = build_for_dataset(model_name, config.dataset, config.image_size)
    model = model.to(device)
    start = time.perf_counter()
    log(f"{model_name} seed {seed}: training the dense model ({config.epochs} epochs on "
        f"{len(train.dataset)} images, {device})")  # type: ignore[arg-type]  # fmt: skip
    fit(model, train, epochs=config.epochs, lr=config.lr, device=device, progress=progress,
        seed=seed)  # fmt: skip
    acc = evaluate(model, test, device=device)["accuracy"]
    save_model(model.cpu(), folder, arch=model_name, arch_kwargs=kwargs)
    info.write_text(json.dumps({"accuracy": acc, "seconds": time.perf_counter() - start}) + "\n")
    log(f"{model_name} seed {seed}: dense test accuracy {acc:.4f} "
        f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    return model.to(device), acc


def _initial(config: CompareConfig, model_name: str, seed: int, device: torch.device) -> nn.Module:
    """The freshly initialised model of `seed` (the one the dense model was trained from)."""
    set_seed(seed)
    return build_for_dataset(model_name, config.dataset, config.image_size)[0].to(device)


def _loaders(config: CompareConfig, model_name: str, data: ImageData) -> Loaders:
    size = config.image_size or default_image_size(model_name, config.dataset)
    return make_loaders(
        config.dataset, batch_size=config.batch_size, seed=config.split_seed, image_size=size,
        limit=config.train_limit, data=data,
    )  # fmt: skip


def _limited(loader: DataLoader, limit: int | None) -> DataLoader:
    dataset = loader.dataset
    if limit is None or limit >= len(dataset):  # type: ignore[arg-type]
        return loader
    return DataLoader(Subset(dataset, range(limit)), batch_size=loader.batch_size)


def first_inputs(train: DataLoader, count: int) -> torch.Tensor:
    """The first `count` (augmented) training inputs."""
    xs: list[torch.Tensor] = []
    for x, _ in train:
        xs.append(x)
        if sum(len(b) for b in xs) >= count:
            break
    return torch.cat(xs)[:count]
