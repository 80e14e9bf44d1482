"""The comparison's settings (`CompareConfig`, the methods it runs) and its run folder: created
for the settings, refused when a resumed run's recorded settings differ."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coreprune.checks import check_float, check_fraction, check_int
from coreprune.compress import allocate
from coreprune.compress.cost import CostModel
from coreprune.compress.coupled import resolve_groups
from coreprune.compress.options import DEFAULT_FLOOR
from coreprune.harness.data import ImageData, dataset_spec, load_dataset
from coreprune.harness.evaluation.robustness import DEFAULT_SIGMAS
from coreprune.harness.folders import remove_files
from coreprune.harness.training import (
    build_for_dataset,
    default_image_size,
)
from coreprune.torch_utils import resolve_device
from coreprune.zoo import MODEL_NAMES

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
        remove_files(out, RUN_FILES)
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
