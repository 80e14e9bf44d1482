"""Saving: a model's spec (class, size attributes and tensor shapes of every module) and its
unique tensors, written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from coreprune.serialization.format import (
    ARCH_FILE,
    FORMAT,
    SIZE_ATTRIBUTES,
    VERSION,
    WEIGHTS_FILE,
    Spec,
    _is_int,
    _join,
    _own_tensors,
    _sha256,
)


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Write `model` to the directory `path` (created if needed) as spec + safetensors weights.

    Args:
        model: the (pruned) model; it is not modified. Its tensors may live on any real device.
        path: a directory; `architecture.json` and `weights.safetensors` are written into it.
        arch: a `coreprune.zoo` name whose `build_model(arch, **arch_kwargs)` is the
            unpruned base, so `load_model(path)` needs no `factory=`. Leave None for any other
            architecture; loading then needs `factory=`.
        arch_kwargs: JSON-serialisable constructor arguments for `arch`.

    Raises `ValueError` for what cannot be saved exactly: a module with extra state
    (`get_extra_state`), tensors on the meta device, or two tensors that overlap in memory
    without being the same tensor.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if arch is not None and (not isinstance(arch, str) or not arch):
        raise TypeError(
            f"arch must be None or a non-empty model name such as 'resnet20', got {arch!r}"
        )
    if arch is None and arch_kwargs:
        raise ValueError("arch_kwargs were given without arch; pass arch= too, or drop them")
    kwargs = _check_kwargs(arch_kwargs)
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(
            f"path {str(folder)!r} exists and is not a directory; pass a directory path"
        )
    modules = _module_specs(model)
    tensors, aliases = _unique_tensors(model)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, weights)
    spec = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "arch_kwargs": kwargs,
        "training": model.training,
        "training_differs": [n for n, m in model.named_modules() if m.training != model.training],
        "modules": modules,
        "aliases": aliases,
        "frozen": [
            n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad
        ],
        "weights_sha256": _sha256(weights),
    }
    _write_text(folder / ARCH_FILE, json.dumps(spec, indent=1, allow_nan=False))


def _check_kwargs(arch_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    if arch_kwargs is None:
        return {}
    if not isinstance(arch_kwargs, Mapping) or not all(isinstance(k, str) for k in arch_kwargs):
        raise TypeError("arch_kwargs must be a dict with str keys, or None")
    try:
        result: dict[str, Any] = json.loads(json.dumps(dict(arch_kwargs), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"arch_kwargs must hold only JSON values (numbers, strings, lists, dicts): {err}"
        ) from err
    return result


def _size_attributes(module: nn.Module) -> dict[str, int | list[int]]:
    """The module's size attributes that hold an int or a tuple of ints (bools excluded)."""
    found: dict[str, int | list[int]] = {}
    for name in sorted(SIZE_ATTRIBUTES):
        value = module.__dict__.get(name)
        if _is_int(value):
            found[name] = int(value)
        elif isinstance(value, tuple) and all(_is_int(v) for v in value):
            found[name] = [int(v) for v in value]
    return found


def _module_specs(model: nn.Module) -> dict[str, Spec]:
    """Class, size attributes and tensor shapes of every module that has any; a module met
    again under another name points at its first name."""
    specs: dict[str, Spec] = {}
    first_name: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if type(module).get_extra_state is not nn.Module.get_extra_state:
            raise ValueError(
                f"module {name or '<root>'!r} ({type(module).__name__}) has extra state "
                "(get_extra_state), which a safetensors file cannot hold; save it separately"
            )
        entry = _module_spec(name, module)
        if entry is None:
            continue
        if id(module) in first_name:
            specs[name] = {"same_as": first_name[id(module)]}
            continue
        first_name[id(module)] = name
        specs[name] = entry
    return specs


def _module_spec(name: str, module: nn.Module) -> Spec | None:
    tensors: dict[str, Spec] = {}
    absent: list[str] = []
    for key, tensor, kind in _own_tensors(module):
        if tensor is None:
            absent.append(key)
            continue
        if tensor.is_meta:
            raise ValueError(
                f"{_join(name, key)!r} is on the meta device and has no values to save; "
                "materialise the model (e.g. to_empty + load weights) first"
            )
        tensors[key] = {
            "shape": list(tensor.shape),
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "kind": kind,
        }
    attributes = _size_attributes(module)
    if not tensors and not absent and not attributes:
        return None
    return {
        "type": type(module).__name__,
        "attributes": attributes,
        "tensors": tensors,
        "absent": absent,
    }


def _unique_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every parameter and buffer (non-persistent ones too) without repeats: a tensor reachable
    under two keys is stored once and the other key is recorded as an alias."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    storages: dict[int, str] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, tensor, _ in _own_tensors(module):
            if tensor is None:
                continue
            key = _join(prefix, name)
            t = tensor.detach()
            if t.numel() > 0:
                ident = (t.untyped_storage().data_ptr(), int(t.storage_offset()), tuple(t.shape),
                         tuple(t.stride()), t.dtype)  # fmt: skip
                if ident in seen:
                    aliases[key] = seen[ident]
                    continue
                ptr = ident[0]
                if ptr in storages:
                    raise ValueError(
                        f"{key!r} and {storages[ptr]!r} share memory without being the same "
                        "tensor; clone one of them before saving"
                    )
                seen[ident], storages[ptr] = key, key
            tensors[key] = t.to("cpu").contiguous().clone()
    return tensors, aliases


def _write_text(file: Path, text: str) -> None:
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, file)
