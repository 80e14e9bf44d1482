"""Save a pruned model as an architecture spec (JSON) plus weights (safetensors); no pickle.

A pruned model differs from its base architecture only in the sizes of its Linear, Conv2d and
BatchNorm modules. So the spec names the base architecture (a `coreprune.harness.models` registry name
and its kwargs) and records the constructor configuration of every such module; loading rebuilds
the base model, swaps in fresh modules of the recorded sizes and loads the weights strictly.
Nothing in either file is executable, so loading an untrusted file cannot run code.

Layout: `path/` is a directory holding `architecture.json` and `weights.safetensors`. The spec
stores the weights file's SHA-256 so a spec and weights from different saves are caught.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["ARCH_FILE", "FORMAT", "WEIGHTS_FILE", "load_model", "save_model"]

FORMAT = "coreprune-model"
VERSION = 1
ARCH_FILE = "architecture.json"
WEIGHTS_FILE = "weights.safetensors"

_CONV_KEYS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
              "groups", "padding_mode")  # fmt: skip
_NORM_KEYS = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_RECORDED: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "Linear": (nn.Linear, ("in_features", "out_features")),
    "Conv2d": (nn.Conv2d, _CONV_KEYS),
    "BatchNorm1d": (nn.BatchNorm1d, _NORM_KEYS),
    "BatchNorm2d": (nn.BatchNorm2d, _NORM_KEYS),
}
_KINDS = {cls: kind for kind, (cls, _) in _RECORDED.items()}
_TUPLE_KEYS = ("kernel_size", "stride", "dilation", "padding")


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str,
    arch_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Write `model` to the directory `path` (created if needed) as spec + safetensors weights.

    `arch` and `arch_kwargs` must rebuild the unpruned base model with
    `coreprune.harness.models.build_model(arch, **arch_kwargs)` (or pass `factory=` when loading).
    Raises `ValueError` for a module with parameters that is not Linear / Conv2d / BatchNorm1d /
    BatchNorm2d, since its size could not be recorded.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(arch, str) or not arch:
        raise TypeError(f"arch must be a non-empty model name such as 'resnet20', got {arch!r}")
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
    _write_text(folder / ARCH_FILE, json.dumps(spec, indent=1, sort_keys=True, allow_nan=False))


def load_model(
    path: str | os.PathLike[str], *, factory: Callable[[], nn.Module] | None = None
) -> nn.Module:
    """Rebuild the model saved at `path`, on the CPU, with the saved weights, dtypes and mode.

    The base model comes from `coreprune.harness.models.build_model(arch, **arch_kwargs)`, or from
    `factory()` when given (for models outside the registry).
    """
    folder = Path(path)
    spec_file, weights_file = folder / ARCH_FILE, folder / WEIGHTS_FILE
    for file in (spec_file, weights_file):
        if not file.is_file():
            raise ValueError(f"{str(file)!r} not found; pass the directory written by save_model")
    spec = _read_spec(spec_file)
    digest = _sha256(weights_file)
    if digest != spec["weights_sha256"]:
        raise ValueError(
            f"{str(weights_file)!r} does not match {str(spec_file)!r}: its SHA-256 is {digest}, "
            f"the spec expects {spec['weights_sha256']} (files from different saves, or corrupt)"
        )
    try:
        state = load_file(str(weights_file))
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{str(weights_file)!r} is not a readable safetensors file: {err}"
        ) from err
    model = _replace_modules(_base_model(spec, factory), spec["modules"], spec_file)
    for alias, primary in spec["aliases"].items():
        if primary not in state:
            raise ValueError(f"{str(spec_file)!r}: alias {alias!r} points at missing {primary!r}")
        state[alias] = state[primary]
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(
            f"{str(weights_file)!r} does not fit the architecture in {str(spec_file)!r}: {err}"
        ) from err
    _retie(model, spec["aliases"])
    for name, param in model.named_parameters(remove_duplicate=False):
        param.requires_grad_(name not in spec["frozen"])
    model.train(spec["training"])
    modules = dict(model.named_modules())
    for name in spec["training_differs"]:
        if name in modules:
            modules[name].training = not spec["training"]
    return model


# --------------------------------------------------------------------------------------------
# Saving


def _check_kwargs(arch_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    if arch_kwargs is None:
        return {}
    if not isinstance(arch_kwargs, Mapping) or not all(isinstance(k, str) for k in arch_kwargs):
        raise TypeError("arch_kwargs must be a dict with str keys, or None")
    try:
        return json.loads(json.dumps(dict(arch_kwargs), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"arch_kwargs must hold only JSON values (numbers, strings, lists, dicts): {err}"
        ) from err


def _module_specs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Constructor configuration of every recorded module; a shared one points at its first name."""
    specs: dict[str, dict[str, Any]] = {}
    first_name: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) in first_name:
            if _is_recorded(module):
                specs[name] = {"same_as": first_name[id(module)]}
            continue
        first_name[id(module)] = name
        if _is_recorded(module):
            specs[name] = _config(module)
        elif any(True for _ in module.parameters(recurse=False)):
            raise ValueError(
                f"module {name or '<root>'!r} ({type(module).__name__}) has parameters but its "
                f"size cannot be recorded; supported: {', '.join(_RECORDED)}"
            )
    return specs


def _is_recorded(module: nn.Module) -> bool:
    """Exact types only: a subclass may behave differently from the plain module rebuilt."""
    return type(module) in _KINDS


def _config(module: nn.Module) -> dict[str, Any]:
    kind = type(module).__name__
    config: dict[str, Any] = {"type": kind}
    for key in _RECORDED[kind][1]:
        value = getattr(module, key)
        config[key] = list(value) if isinstance(value, tuple) else value
    if kind in ("Linear", "Conv2d"):
        config["bias"] = module.bias is not None
    return config


def _unique_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict without repeats: a tensor shared under two keys is stored once."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    storages: dict[int, str] = {}
    for key, tensor in model.state_dict(keep_vars=False).items():
        t = tensor.detach()
        if t.numel() > 0:
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
                     tuple(t.stride()), t.dtype)  # fmt: skip
            if ident in seen:
                aliases[key] = seen[ident]
                continue
            ptr = ident[0]
            if ptr in storages:
                raise ValueError(
                    f"{key!r} and {storages[ptr]!r} share memory without being the same tensor; "
                    "clone one of them before saving"
                )
            seen[ident], storages[ptr] = key, key
        tensors[key] = t.to("cpu").contiguous().clone()
    return tensors, aliases


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_text(file: Path, text: str) -> None:
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, file)


# --------------------------------------------------------------------------------------------
# Loading


def _read_spec(file: Path) -> dict[str, Any]:
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(file)!r} is not valid JSON: {err}") from err
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ValueError(f"{str(file)!r} is not a coreprune model spec (format != {FORMAT!r})")
    if spec.get("version") != VERSION:
        raise ValueError(
            f"{str(file)!r} has format version {spec.get('version')!r}; this coreprune reads "
            f"version {VERSION}"
        )
    expected: dict[str, type] = {
        "arch": str, "arch_kwargs": dict, "training": bool, "training_differs": list,
        "modules": dict, "aliases": dict, "frozen": list, "weights_sha256": str,
    }  # fmt: skip
    for key, kind in expected.items():
        if not isinstance(spec.get(key), kind):
            raise ValueError(f"{str(file)!r}: field {key!r} is missing or not a {kind.__name__}")
    return spec


def _base_model(spec: dict[str, Any], factory: Callable[[], nn.Module] | None) -> nn.Module:
    if factory is not None:
        if not callable(factory):
            raise TypeError(
                f"factory must be a callable returning the base nn.Module, got {factory!r}"
            )
        model = factory()
        source = "factory()"
    else:
        from coreprune.harness.models import build_model

        model = build_model(spec["arch"], **spec["arch_kwargs"])
        source = f"build_model({spec['arch']!r})"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{source} must return an nn.Module, got {type(model).__name__}")
    return model


def _replace_modules(model: nn.Module, specs: dict[str, Any], spec_file: Path) -> nn.Module:
    """`model` with every recorded module swapped for a fresh one of the recorded size."""
    built: dict[str, nn.Module] = {}
    for name, config in specs.items():
        if not isinstance(config, dict):
            raise ValueError(f"{str(spec_file)!r}: module {name!r} has a malformed entry")
        if "same_as" not in config:
            built[name] = _build(name, config, spec_file)
    for name, config in specs.items():
        if "same_as" in config and config["same_as"] not in built:
            raise ValueError(f"{str(spec_file)!r}: module {name!r} is the same as an unknown one")
        fresh = built[config["same_as"]] if "same_as" in config else built[name]
        if name == "":
            if type(model) is not type(fresh):
                raise ValueError(
                    f"{str(spec_file)!r} records the whole model as {type(fresh).__name__}, but "
                    f"the base model is a {type(model).__name__}"
                )
            return fresh
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
            old = parent.get_submodule(child)
        except AttributeError as err:
            raise ValueError(
                f"{str(spec_file)!r} records module {name!r}, which the base model does not have "
                f"(wrong arch or arch_kwargs?)"
            ) from err
        if type(old) is not type(fresh):
            raise ValueError(
                f"{str(spec_file)!r} records {name!r} as {type(fresh).__name__}, but the base "
                f"model has a {type(old).__name__} there"
            )
        setattr(parent, child, fresh)
    return model


def _build(name: str, config: dict[str, Any], spec_file: Path) -> nn.Module:
    kind = config.get("type")
    if kind not in _RECORDED:
        raise ValueError(f"{str(spec_file)!r}: module {name!r} has unknown type {kind!r}")
    cls, keys = _RECORDED[kind]
    kwargs = {k: config[k] for k in keys if k in config}
    missing = [k for k in keys if k not in config]
    if missing:
        raise ValueError(f"{str(spec_file)!r}: module {name!r} is missing {missing}")
    for key in _TUPLE_KEYS:
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    if kind in ("Linear", "Conv2d"):
        kwargs["bias"] = config.get("bias")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{str(spec_file)!r}: cannot build {name!r} from {config}: {err}") from err


def _retie(model: nn.Module, aliases: dict[str, str]) -> None:
    """Make tensors that were one tensor at save time one tensor again (weight tying)."""
    for alias, primary in aliases.items():
        owner_a, _, attr_a = alias.rpartition(".")
        owner_p, _, attr_p = primary.rpartition(".")
        source = model.get_submodule(owner_p)
        value = getattr(source, attr_p)
        target = model.get_submodule(owner_a)
        if getattr(target, attr_a) is not value:
            setattr(target, attr_a, value)
