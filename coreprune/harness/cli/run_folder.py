"""The run folder of `train` and `compress`: the files they write, the settings they record and
the check that a resumed or repeated run matches them."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from coreprune.harness.data import Loaders, make_loaders
from coreprune.harness.evaluation.machine import describe_device
from coreprune.harness.folders import remove_files

# Files `train` and `compress` write into their run folder (all that --overwrite deletes).
_RUN_FILES = ("config.json", "metrics.json", "checkpoint.pt", "report.md", "model")


# Recorded options that do not shape a run's results.
_NOT_SETTINGS = ("machine", "started", "resume", "overwrite", "threads", "device", "out",
                 "data_root")  # fmt: skip


def _settings(a: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(a).items() if k not in ("prepare", "parser")}


def check_run_folder(out: Path, a: argparse.Namespace, *, resume: bool) -> None:
    """Refuse to write over an earlier run, unless --overwrite; --resume needs its settings."""
    recorded_file = out / "config.json"
    if a.overwrite or not recorded_file.exists():
        return
    if not resume:
        raise ValueError(f"{out} holds an earlier run; use a new --out folder, or --overwrite "
                         "to replace it")  # fmt: skip
    recorded = json.loads(recorded_file.read_text())
    asked = json.loads(json.dumps(_settings(a), default=str))
    differences = [f"{k}: {json.dumps(recorded.get(k))} in the folder, {json.dumps(v)} asked"
                   for k, v in asked.items()
                   if k not in _NOT_SETTINGS and recorded.get(k) != v]  # fmt: skip
    if differences:
        raise ValueError(f"--resume: {out} was run with other settings ({'; '.join(differences)}); "
                         "resume with the same ones, or use a new --out folder")  # fmt: skip


def run_dir(out: Path, a: argparse.Namespace, device: torch.device) -> Path:
    if a.overwrite:
        remove_files(out, _RUN_FILES)
    out.mkdir(parents=True, exist_ok=True)
    config = _settings(a)
    config.update(machine=describe_device(device), started=time.strftime("%Y-%m-%d %H:%M:%S"))
    write_json(out / "config.json", config)
    return out


def run_loaders(a: argparse.Namespace, image_size: int | None) -> Loaders:
    return make_loaders(a.dataset, a.data_root, batch_size=a.batch_size, limit=a.limit,
                        image_size=a.image_size or image_size)  # fmt: skip


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
