"""Training checkpoints: written atomically, read without arbitrary pickle, and checked
against the model and settings they are resumed with.

A checkpoint holds only tensors, numbers, strings and containers of them, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

FORMAT = "coreprune.train-checkpoint/1"


def as_path(value: object, name: str) -> Path:
    """A str or os.PathLike as a Path; anything else is a TypeError naming ``name``."""
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, flushed
    to disk, then renamed over ``path``, so a crash mid-write leaves the previous checkpoint
    intact instead of a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(dict(payload), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by ``fit`` onto the CPU, with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        raise ValueError(
            f"{path}: corrupt, truncated or not a coreprune training checkpoint ({error})"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a coreprune training checkpoint (format {FORMAT!r})")
    return payload


def _shape(tensor: object) -> tuple[int, ...] | str:
    return tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__


def check_state_matches(
    model_state: Mapping[str, Any], saved_state: Mapping[str, Any], path: object
) -> None:
    """Raise ValueError naming the first entry where the checkpoint's weights do not fit the
    model (missing, extra, or of another shape): a checkpoint of another architecture."""
    fix = "resume with the architecture that wrote it, or give fit a new checkpoint path"
    for name, tensor in model_state.items():
        if name not in saved_state:
            raise ValueError(
                f"checkpoint {path} does not match the model: the model has {name!r} "
                f"{_shape(tensor)} but the checkpoint does not; {fix}"
            )
        if _shape(saved_state[name]) != _shape(tensor):
            raise ValueError(
                f"checkpoint {path} does not match the model: {name!r} has shape "
                f"{_shape(saved_state[name])} in the checkpoint but {_shape(tensor)} in the "
                f"model; {fix}"
            )
    for name in saved_state:
        if name not in model_state:
            raise ValueError(
                f"checkpoint {path} does not match the model: the checkpoint has {name!r} "
                f"{_shape(saved_state[name])} but the model does not; {fix}"
            )


def check_config_matches(
    saved: Mapping[str, Any], current: Mapping[str, Any], path: object
) -> None:
    """Raise ValueError naming the first training setting that differs from the one the
    checkpoint was written with (resuming under other settings would not continue the run)."""
    for key, value in current.items():
        if key in saved and saved[key] != value:
            raise ValueError(
                f"checkpoint {path} was written with {key}={saved[key]!r} but this call has "
                f"{key}={value!r}; pass the same settings to resume, or use a new checkpoint path"
            )
