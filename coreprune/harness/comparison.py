"""The matched comparison: coreset vs baselines at the same budgets, with and without fine-tuning.

For each model and seed, a dense model is trained (or loaded from the run folder), then every
method compresses it to each target with the same surgery and the same uniform allocation, so
all methods reach the *same architecture* (identical params and MACs), and each pruned model gets
the same fine-tuning. Rows are appended to `results.csv` as they finish, so an interrupted run
resumes where it stopped. `summarize` gives mean ± std over seeds.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from coreprune.checks import check_float, check_fraction, check_int
from coreprune.compress import allocate, compress
from coreprune.compress.cost import CostModel
from coreprune.compress.coupled import resolve_groups
from coreprune.compress.options import DEFAULT_FLOOR
from coreprune.harness.data import ImageData, Loaders, dataset_spec, load_dataset, make_loaders
from coreprune.harness.evaluation.machine import describe_device
from coreprune.harness.evaluation.robustness import DEFAULT_SIGMAS, robustness_report
from coreprune.harness.models import MODEL_NAMES
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

__all__ = [
    "CORE_METHODS",
    "METHODS",
    "MORE_METHODS",
    "RUN_FILES",
    "CompareConfig",
    "SettingsMismatch",
    "check_run",
    "first_inputs",
    "make_pruner",
    "markdown_table",
    "plot_summary",
    "prepare_run_folder",
    "reachable_maximum",
    "recalibrated_copy",
    "run_comparison",
    "settings_differences",
    "summarize",
    "write_summary",
]

CORE_METHODS = ("coreset", "magnitude", "snip", "synflow", "random")
# The neighbouring methods (docs/baselines.md): one-shot unit scores on the trained model, plus
# DPF, which replaces fine-tuning by the same number of epochs of dynamic pruning from the dense
# model, and bn_scale, the early-bird / network-slimming channel criterion (|gamma|).
MORE_METHODS = ("grasp", "magnitude_l2", "loss_preservation", "gradnorm_preservation",
                "gradnorm_increase", "bn_scale", "dpf")  # fmt: skip
METHODS = CORE_METHODS + MORE_METHODS
FIELDS = (
    "model", "seed", "method", "metric", "target", "achieved", "params_removed",
    "prunable_params_removed", "macs_removed", "params_after", "macs_after", "dense_accuracy",
    "pruned_accuracy", "recalibrated_accuracy", "finetuned_accuracy", "prune_seconds", "device",
    "agreement", "ece", *(f"noise_{s:g}" for s in DEFAULT_SIGMAS), "when",
)  # fmt: skip


# Fields that do not shape the results: where the data and the run folder are, and the device
# (a resumed run may continue on another device; results carry their device per row).
_NOT_RESULTS = ("data_root", "device", "out")
RUN_FILES = ("config.json", "results.csv", "summary.csv", "summary.md", "summary.png", "dense")


class SettingsMismatch(ValueError):
    """A run folder holds results made with other settings than the ones asked for."""


@dataclass
class CompareConfig:
    """Everything a comparison run depends on; saved as config.json in the run folder.

    `out=None` names the folder after the settings (runs/compare-<digest of the settings>), so
    two different runs never share the default folder and rerunning the same command resumes.
    """

    # The defaults are the quick main job (a few minutes on 2 CPU cores). Targets must be
    # reachable with single pairs at the default floor: at most 87.3% of ResNet-20's params
    # (`reachable_maximum`; check_run refuses more before any training).
    models: tuple[str, ...] = ("resnet20",)
    methods: tuple[str, ...] = CORE_METHODS
    targets: tuple[float, ...] = (0.5, 0.75)
    metrics: tuple[str, ...] = ("params",)
    seeds: tuple[int, ...] = (0,)
    dataset: str = "fashion_mnist"
    data_root: str | None = None
    train_limit: int | None = 4000
    test_limit: int | None = 2000
    image_size: int | None = None  # None: 32 for VGG (five poolings), native otherwise
    epochs: int = 3
    lr: float = 0.05
    finetune_epochs: int = 1
    finetune_lr: float = 0.01
    batch_size: int = 128
    calibration: int = 256  # training inputs spanning the coreset's query spaces; 0: data-free
    rank: int = 8
    snip_batch: int = 128
    synflow_rounds: int = 100
    split_seed: int = 0
    beyond_accuracy: bool = False  # agreement with dense, accuracy under noise, ECE (fine-tuned)
    # Prune the freshly initialised model (as SNIP, SynFlow and GraSP were defined) and train the
    # pruned model for `epochs`, instead of pruning the trained model and fine-tuning it.
    at_init: bool = False
    device: str = "auto"
    out: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("models", "methods", "targets", "metrics", "seeds"):
            values = getattr(self, name)
            if not isinstance(values, (tuple, list)) or not values:
                raise ValueError(f"{name} must name at least one value, got {values!r}")
            repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
            if repeated:
                raise ValueError(f"{name} lists {', '.join(repeated)} more than once")
            setattr(self, name, tuple(values))
        for model in self.models:
            if model not in MODEL_NAMES:
                raise ValueError(f"models: {model!r} is not one of {', '.join(MODEL_NAMES)}")
        for name in self.methods:
            if name not in METHODS:
                raise ValueError(f"methods: {name!r} is not one of {', '.join(METHODS)}")
        for t in self.targets:
            check_fraction(t, "targets")
        for m in self.metrics:
            if m not in ("params", "macs"):
                raise ValueError(f"metrics must be 'params' or 'macs', got {m!r}")
        for seed in (*self.seeds, self.split_seed):
            check_int(seed, "seeds and split_seed", minimum=0)
        spec = dataset_spec(self.dataset)
        for name, low in (("epochs", 1), ("finetune_epochs", 0), ("batch_size", 1),
                          ("calibration", 0), ("rank", 1), ("snip_batch", 1),
                          ("synflow_rounds", 1)):  # fmt: skip
            check_int(getattr(self, name), name, minimum=low)
        for name in ("train_limit", "test_limit", "image_size"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, minimum=1)
        if self.image_size is not None and self.image_size < spec.native_size:
            raise ValueError(
                f"image_size={self.image_size} is smaller than {self.dataset}'s "
                f"{spec.native_size} px; use at least {spec.native_size} (images are only padded)"
            )
        for name in ("lr", "finetune_lr"):
            check_float(getattr(self, name), name, low=0.0, low_open=True)
        if "dpf" in self.methods and not self.at_init and self.finetune_epochs == 0:
            raise ValueError("dpf prunes while fine-tuning: it needs finetune_epochs >= 1")
        if self.out is None:
            self.out = f"runs/compare-{self.digest()}"

    def settings(self) -> dict[str, Any]:
        """The settings that shape the results (all but where the data, output and device are)."""
        return {k: _jsonable(v) for k, v in asdict(self).items() if k not in _NOT_RESULTS}

    def digest(self) -> str:
        """A short fingerprint of `settings()`: equal settings, equal digest."""
        text = json.dumps(self.settings(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def folder(self) -> Path:
        assert self.out is not None  # set in __post_init__
        return Path(self.out)


def _jsonable(value: object) -> object:
    """Tuples as lists, as they come back from config.json."""
    return json.loads(json.dumps(value))


def settings_differences(config: CompareConfig, recorded: dict[str, Any]) -> list[str]:
    """`name: recorded -> asked` for every result-shaping setting that differs.

    A setting missing from `recorded` (a folder written before the setting existed) counts as
    its default, which is what that older version ran with.
    """
    defaults = CompareConfig(out="unused").settings()
    out = []
    for name, value in config.settings().items():
        old = recorded.get(name, defaults[name])
        if old != value:
            out.append(f"{name}: {json.dumps(old)} in the folder, {json.dumps(value)} asked")
    return out


def prepare_run_folder(config: CompareConfig, *, overwrite: bool = False) -> Path:
    """Check that `config` may write into its folder, and create the folder.

    A folder holding results resumes only when every result-shaping setting matches its
    config.json; otherwise `SettingsMismatch` names the differing settings and the fixes.
    `overwrite=True` deletes the previous run's files (only those a comparison writes) first.
    """
    out = config.folder
    recorded_file = out / "config.json"
    has_results = (out / "results.csv").exists() or (out / "dense").exists()
    if overwrite:
        for name in RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    elif has_results:
        if not recorded_file.exists():
            raise SettingsMismatch(
                f"{out} holds results but no config.json, so its settings are unknown; "
                "use a new --out folder, or --overwrite to delete those results"
            )
        try:
            recorded = json.loads(recorded_file.read_text())
        except json.JSONDecodeError as err:
            raise SettingsMismatch(f"{recorded_file} is not valid JSON ({err})") from err
        differences = settings_differences(config, recorded)
        if differences:
            raise SettingsMismatch(
                f"{out} holds results made with other settings ({'; '.join(differences)}); "
                "use a new --out folder, or --overwrite to delete those results"
            )
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_run(config: CompareConfig, *, overwrite: bool = False) -> ImageData:
    """Check every input of a comparison before anything is trained; return the loaded data.

    The dataset must be readable, every model buildable for it, every target reachable on
    every model in every metric (`reachable_maximum`), and the run folder free or
    holding results of the same settings (see `prepare_run_folder`, which this calls: with
    `overwrite=True` the previous results are deleted here).
    """
    resolve_device(config.device)
    data = load_dataset(config.dataset, config.data_root)
    spec = dataset_spec(config.dataset)
    for model_name in config.models:
        model, _ = build_for_dataset(model_name, config.dataset, config.image_size)
        size = config.image_size or default_image_size(model_name, config.dataset)
        example = torch.zeros(1, spec.in_channels, size, size)
        for metric in config.metrics:
            best = reachable_maximum(model, metric, example)
            out_of_reach = [t for t in config.targets if t > best + 1e-12]
            if out_of_reach:
                raise ValueError(
                    f"targets {', '.join(f'{t:g}' for t in out_of_reach)} cannot be reached on "
                    f"{model_name}: the comparison prunes single pairs only (the same plain "
                    f"surgery for every method), each keeping at least {DEFAULT_FLOOR:g} of its "
                    f"units, which removes at most {best:.4f} of its {metric}; pass targets <= "
                    f"{math.floor(best * 1e4) / 1e4:g}"
                )
    prepare_run_folder(config, overwrite=overwrite)
    return data


def reachable_maximum(model: nn.Module, metric: str, example: torch.Tensor) -> float:
    """The largest fraction of `metric` the comparison's surgery can remove from `model`.

    The comparison prunes single pairs only (`groups=False`) at compress's default floor, so
    what sits in unpaired layers (a residual stream, the stem, the classifier) stays; a target
    above this fails in `compress`, which is why `check_run` asks before any training.
    """
    items, _ = resolve_groups(model, None, (), False, True)
    cost = CostModel.build_groups(model, items, metric, example)
    floors = allocate.floors_for([g.width for g in items], DEFAULT_FLOOR, [g.blocks for g in items])
    return allocate.reachable_maximum(cost, floors)


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
    done = {_key(r) for r in rows}
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
                    _append(results, row)
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


# --------------------------------------------------------------------------------------------
# Results files


def _key(row: dict[str, Any]) -> tuple[str, str, str, str, str]:
    return (str(row["model"]), str(row["seed"]), str(row["method"]), str(row["metric"]),
            f"{float(row['target']):g}")  # fmt: skip


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a results.csv (numbers parsed), or [] if there is none yet."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(value: str) -> Any:
    if value in ("", "None"):
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value else number


def _append(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != list(FIELDS):  # written by an older version: rewrite under today's columns
            with path.open(newline="") as f:
                old = list(csv.DictReader(f))
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=FIELDS)
                writer.writeheader()
                writer.writerows({k: r.get(k) for k in FIELDS} for r in old)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k) for k in FIELDS})


# --------------------------------------------------------------------------------------------
# Summary, table, plot


def summarize(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds per (model, metric, target, method)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["metric"], float(r["target"]), r["method"]), []).append(r)
    out = []
    for (model, metric, target, method), group in sorted(groups.items(), key=_order):
        entry: dict[str, Any] = {"model": model, "metric": metric, "target": target,
                                 "method": method, "seeds": len(group),
                                 "when": group[0].get("when") or "trained"}  # fmt: skip
        for col in ("dense_accuracy", "pruned_accuracy", "recalibrated_accuracy",
                    "finetuned_accuracy", "params_removed", "macs_removed", "prune_seconds",
                    "agreement", "ece", *(f"noise_{s:g}" for s in DEFAULT_SIGMAS)):  # fmt: skip
            values = [float(r[col]) for r in group if r.get(col) is not None]
            values = [v for v in values if not math.isnan(v)]  # e.g. no BN step at init
            entry[col] = statistics.fmean(values) if values else math.nan
            entry[col + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def _order(item: tuple[tuple[Any, ...], Any]) -> tuple[Any, ...]:
    model, metric, target, method = item[0]
    rank = METHODS.index(method) if method in METHODS else len(METHODS)
    return (model, metric, target, rank, method)


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """One row per (model, budget), one column pair per method: pruned | fine-tuned accuracy."""
    methods = [m for m in METHODS if any(s["method"] == m for s in summary)]
    methods += sorted({s["method"] for s in summary} - set(methods))
    head = "| model | budget | removed (params / MACs) | dense | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (4 + len(methods))]
    budgets: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for s in summary:
        budgets.setdefault((s["model"], s["metric"], s["target"]), {})[s["method"]] = s
    for (model, metric, target), by_method in budgets.items():
        first = next(iter(by_method.values()))
        best_tuned = max(v["finetuned_accuracy"] for v in by_method.values())
        cells = []
        for m in methods:
            if m not in by_method:
                cells.append("—")
                continue
            s = by_method[m]
            tuned = _pm(s["finetuned_accuracy"], s["finetuned_accuracy_std"], s["seeds"])
            if s["finetuned_accuracy"] == best_tuned:
                tuned = f"**{tuned}**"
            cells.append(
                f"{_pct(s['pruned_accuracy'])} / {_pct(s['recalibrated_accuracy'])} → {tuned}"
            )
        removed = f"{100 * first['params_removed']:.1f}% / " + (
            "—" if math.isnan(first["macs_removed"]) else f"{100 * first['macs_removed']:.1f}%"
        )
        lines.append(
            f"| {model} | {100 * target:g}% {metric} | {removed} | "
            f"{100 * first['dense_accuracy']:.2f} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    if any(s.get("when") == "init" for s in summary):
        lines.append(
            "Pruned at initialisation: accuracy of the untrained pruned model / — → after "
            "training the pruned model for the dense model's epochs (± std over seeds)."
        )
        return "\n".join(lines)
    lines.append(
        "Test accuracy (%), mean over seeds: right after pruning / after re-estimating batch-norm "
        "statistics (no gradient step) → after the same fine-tuning (± std over seeds); the best "
        "fine-tuned accuracy of each budget in bold. Every method has the same architecture, so "
        "the same params and MACs, at each budget."
    )
    return "\n".join(lines)


def beyond_accuracy_table(summary: Sequence[dict[str, Any]]) -> str:
    """Fine-tuned accuracy next to agreement with the dense model, ECE and accuracy under
    Gaussian input noise ("Lost in Pruning"), one row per (model, budget, method)."""
    noise = [f"noise_{s:g}" for s in DEFAULT_SIGMAS]
    head = ("| model | budget | method | accuracy | agreement | ECE | "
            + " | ".join(f"acc @ σ={s:g}" for s in DEFAULT_SIGMAS) + " |")  # fmt: skip
    lines = [head, "|" + "---|" * (6 + len(noise))]
    for s in summary:
        if math.isnan(s.get("agreement", math.nan)):
            continue
        cells = [_pm(s["finetuned_accuracy"], s["finetuned_accuracy_std"], s["seeds"]),
                 _pm(s["agreement"], s["agreement_std"], s["seeds"]), f"{s['ece']:.4f}"]  # fmt: skip
        cells += [f"{100 * s[n]:.2f}" for n in noise]
        lines.append(f"| {s['model']} | {100 * s['target']:g}% {s['metric']} | {s['method']} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    lines += ["", "After fine-tuning; mean (± std) over seeds; agreement = top-1 agreement with "
              "the dense model on the test set; noise = Gaussian noise of std σ added to the "
              "normalised inputs, the same noise for every method."]  # fmt: skip
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.1f}"


def _pm(mean: float, std: float, seeds: int) -> str:
    """Mean ± std in percent; just the mean for a single seed (no spread was measured)."""
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if seeds > 1 else "")


def plot_summary(summary: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Accuracy vs fraction removed, one line per method, one panel per (model, metric).

    Needs matplotlib, the "plots" extra: without it, ImportError says how to install it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install 'coreprune[plots]'") from err
    panels = sorted({(s["model"], s["metric"]) for s in summary})
    kinds: tuple[tuple[str, str], ...] = (
        ("pruned_accuracy", "no fine-tuning"), ("recalibrated_accuracy", "BN re-estimated"),
        ("finetuned_accuracy", "fine-tuned"),
    )  # fmt: skip
    # A kind no run measured (BN re-estimation at init, say) gets no row of empty panels.
    kinds = tuple(k for k in kinds if any(_finite(s[k[0]]) for s in summary))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    # Up to 20 methods get a colour each (tab10, then tab20); markers tell them apart beyond.
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    palette = [cmap(i) for i in range(cmap.N)]
    style = {m: (palette[i % len(palette)], "osD^v<>ph*"[i // len(palette) % 10])
             for i, m in enumerate(methods)}  # fmt: skip
    fig, axes = plt.subplots(len(kinds), len(panels), figsize=(4.2 * len(panels), 3.4 * len(kinds)),
                             squeeze=False)  # fmt: skip
    for col, (model, metric) in enumerate(panels):
        targets = sorted(
            {s["target"] for s in summary if (s["model"], s["metric"]) == (model, metric)}
        )
        single = len(targets) == 1  # one budget: methods side by side, not a line over targets
        for row, (key, label) in enumerate(kinds):
            ax = axes[row][col]
            for index, method in enumerate(methods):
                pts = sorted((s["target"], s[key], s[key + "_std"]) for s in summary
                             if s["model"] == model and s["metric"] == metric
                             and s["method"] == method and _finite(s[key]))  # fmt: skip
                if pts:
                    xs, ys, es = zip(*pts, strict=True)
                    color, marker = style[method]
                    where = [index] if single else xs
                    ax.errorbar(where, ys, yerr=es, marker=marker, color=color, capsize=3,
                                ls="none" if single else "-", label=method)  # fmt: skip
            dense = [s["dense_accuracy"] for s in summary if s["model"] == model]
            if dense:
                ax.axhline(statistics.fmean(dense), color="gray", ls="--", lw=1, label="dense")
            ax.set_title(f"{model}, matched {metric}, {label}", fontsize=9)
            if single:
                ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=7)
                ax.set_xlabel(f"method, at {100 * targets[0]:g}% of {metric} removed", fontsize=8)
            else:
                ax.set_xticks(targets)
                ax.set_xlabel(f"fraction of {metric} removed (target)")
            ax.set_ylabel("test accuracy")
            ax.grid(alpha=0.3)
    legend: dict[str, Any] = {}  # every method once, even one missing from the first panel
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    labels = [m for m in (*methods, "dense") if m in legend]
    handles = [legend[m] for m in labels]
    fig.tight_layout()
    # beside the panels, so that no legend covers a data point
    fig.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def write_summary(rows: Sequence[dict[str, Any]], out: str | Path) -> str:
    """summary.csv, summary.md and summary.png in `out` from the per-run rows; returns the table.

    Without matplotlib (the "plots" extra) the plot is left out and a line says how to get it.
    """
    out = Path(out)
    summary = summarize(rows)
    if not summary:
        raise ValueError(f"no results to summarise in {out}")
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    table = markdown_table(summary)
    if any(not math.isnan(s.get("agreement", math.nan)) for s in summary):
        table += "\n\n" + beyond_accuracy_table(summary)
    (out / "summary.md").write_text(table + "\n")
    try:
        plot_summary(summary, out / "summary.png")
    except ImportError as err:  # the table and CSV are complete without the plot; say so
        print(f"no summary.png: {err}")
    return table
