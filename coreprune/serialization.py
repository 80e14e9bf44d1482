"""Save a pruned model as an architecture spec (JSON) plus weights (safetensors); no pickle.

A pruned model has the structure of its unpruned base architecture; only the sizes of some
tensors (and the size attributes that describe them, such as `out_features`) differ. So the spec
names how to rebuild the base (a `coreprune.harness.models` name, or a `factory=` the caller
passes when loading) and records, for every module that holds tensors or size attributes, its
class name, its size attributes (`SIZE_ATTRIBUTES`) and the shape and dtype of each parameter
and buffer. Any architecture works: Linear, Conv, BatchNorm, LayerNorm, GroupNorm, Embedding,
root-level parameters and custom modules that only hold parameters.

Loading rebuilds the base on the ``meta`` device (no memory), sets the recorded attributes, gives
each recorded tensor a shape-only placeholder and then assigns the saved weights with strict key
and shape checks. Every recorded size is compared with the safetensors header (read without
loading data) before anything is allocated, and safetensors itself refuses a header whose sizes
the file's bytes do not cover, so a tampered file cannot make the loader allocate more than the
file holds. Nothing in either file is executable, so loading an untrusted file runs no code of
its own; it only calls the base builder.

Not saved: forward/backward hooks, plain (unregistered) tensor attributes and any other Python
state a module keeps outside its parameters, buffers and size attributes; they come from the
base builder, as for any freshly built model.

Layout: `path/` is a directory holding `architecture.json` and `weights.safetensors`. The spec
stores the weights file's SHA-256 so a spec and weights from different saves are caught.

Example:
    >>> import tempfile
    >>> from torch import nn
    >>> def factory() -> nn.Module:
    ...     return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    >>> pruned = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 2))
    >>> folder = tempfile.mkdtemp()
    >>> save_model(pruned, folder)
    >>> loaded = load_model(folder, factory=factory)
    >>> loaded[1].normalized_shape, tuple(loaded[2].weight.shape)
    ((5,), (2, 5))
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeGuard

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

__all__ = ["ARCH_FILE", "FORMAT", "SIZE_ATTRIBUTES", "WEIGHTS_FILE", "load_model", "save_model"]

FORMAT = "coreprune-model"
VERSION = 2
ARCH_FILE = "architecture.json"
WEIGHTS_FILE = "weights.safetensors"

# Attributes that describe a tensor size. These are the ones surgery changes (registry.py) and
# the ones the standard torch modules keep; only these names are ever set from a file.
SIZE_ATTRIBUTES: frozenset[str] = frozenset(
    {
        "in_features", "out_features", "in1_features", "in2_features",
        "in_channels", "out_channels", "groups",
        "num_features", "num_channels", "num_groups", "normalized_shape",
        "num_embeddings", "embedding_dim",
        "embed_dim", "kdim", "vdim", "num_heads", "head_dim",
        "input_size", "hidden_size", "proj_size",
    }
)  # fmt: skip

_PARAMETER, _BUFFER, _TRANSIENT = "parameter", "buffer", "nonpersistent_buffer"
_TENSOR_KINDS = (_PARAMETER, _BUFFER, _TRANSIENT)
# safetensors header dtype codes -> torch dtype names (those this torch has).
_HEADER_CODES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}  # fmt: skip
_HEADER_DTYPES: dict[str, str] = {
    code: name
    for code, name in _HEADER_CODES.items()
    if isinstance(getattr(torch, name, None), torch.dtype)
}
_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in _HEADER_DTYPES.values()}

Spec = dict[str, Any]


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
        arch: a `coreprune.harness.models` name whose `build_model(arch, **arch_kwargs)` is the
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


def load_model(
    path: str | os.PathLike[str], *, factory: Callable[[], nn.Module] | None = None
) -> nn.Module:
    """Rebuild the model saved at `path`, on the CPU, with the saved sizes, weights, dtypes,
    `requires_grad` flags and train/eval modes.

    Args:
        path: a directory written by `save_model`.
        factory: a zero-argument callable returning the unpruned base architecture. Needed
            unless the model was saved with a `coreprune.harness.models` name (`arch=`). It is
            first called under `torch.device("meta")` so no dense weights are allocated; if that
            fails, or leaves tensors the file does not restore (plain tensor attributes), it is
            called again normally.

    Raises:
        FileNotFoundError: `path` or one of its two files is missing.
        TypeError: `factory` is not callable, or does not return an nn.Module.
        ValueError: a corrupt or tampered file, sizes in the spec that disagree with the
            weights file (found before any tensor is allocated), or a base model that does not
            have the recorded modules and tensors.

    Example (a model outside the library, pruned by hand):
        >>> import tempfile
        >>> from torch import nn
        >>> base = lambda: nn.Sequential(nn.Embedding(10, 6), nn.LayerNorm(6), nn.Linear(6, 3))
        >>> pruned = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 3))
        >>> folder = tempfile.mkdtemp()
        >>> save_model(pruned, folder)
        >>> load_model(folder, factory=base)[0].embedding_dim
        4
    """
    if isinstance(factory, nn.Module):
        raise TypeError(
            "factory must be a zero-argument callable returning the unpruned model, got an "
            f"nn.Module instance ({type(factory).__name__}); pass e.g. factory=lambda: MyNet()"
        )
    if factory is not None and not callable(factory):
        raise TypeError(
            f"factory must be a zero-argument callable returning the unpruned nn.Module, "
            f"got {type(factory).__name__}"
        )
    folder = Path(path)
    spec_file, weights_file = folder / ARCH_FILE, folder / WEIGHTS_FILE
    for file in (spec_file, weights_file):
        if not file.is_file():
            raise FileNotFoundError(
                f"{str(file)!r} not found; pass as path the directory written by save_model"
            )
    spec = _read_spec(spec_file)
    builder = _builder(spec, factory, spec_file)
    digest = _sha256(weights_file)
    if digest != spec["weights_sha256"]:
        raise ValueError(
            f"{str(weights_file)!r} does not match {str(spec_file)!r}: its SHA-256 is {digest}, "
            f"the spec expects {spec['weights_sha256']} (files from different saves, or corrupt)"
        )
    expected = _expected_tensors(spec, spec_file)
    _check_header(expected, spec["aliases"], _read_header(weights_file), weights_file)
    model = _build(builder, on_meta=True)
    if model is not None:
        _shrink(model, spec, spec_file)
        _fill(model, spec, _read_weights(weights_file, spec["aliases"]), expected, weights_file)
        if not _leftover_meta(model):
            return model
    # The meta build failed or left tensors the file does not restore: build for real.
    model = _build(builder, on_meta=False)
    assert model is not None
    _shrink(model, spec, spec_file)
    _fill(model, spec, _read_weights(weights_file, spec["aliases"]), expected, weights_file)
    leftover = _leftover_meta(model)
    if leftover:
        raise ValueError(
            f"the base model keeps tensors on the meta device ({', '.join(leftover[:5])}) that "
            f"{str(weights_file)!r} does not restore; build it on a real device in the factory"
        )
    return model


# --------------------------------------------------------------------------------------------
# Saving


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


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _own_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor | None, str]]:
    """(name, tensor or None, kind) for the module's own parameters and buffers."""
    for name, param in module._parameters.items():
        yield name, param, _PARAMETER
    for name, buf in module._buffers.items():
        kind = _TRANSIENT if name in module._non_persistent_buffers_set else _BUFFER
        yield name, buf, kind


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


def _join(module: str, name: str) -> str:
    return f"{module}.{name}" if module else name


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
# Loading: checks that allocate nothing


def _read_spec(file: Path) -> Spec:
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{str(file)!r} is not valid JSON ({err}); it is corrupt, save the model again"
        ) from err
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ValueError(f"{str(file)!r} is not a coreprune model spec (format != {FORMAT!r})")
    if spec.get("version") != VERSION:
        raise ValueError(
            f"{str(file)!r} has format version {spec.get('version')!r}; this coreprune reads "
            f"version {VERSION}: save the model again with this version"
        )
    expected: dict[str, type | tuple[type, ...]] = {
        "arch": (str, type(None)), "arch_kwargs": dict, "training": bool,
        "training_differs": list, "modules": dict, "aliases": dict, "frozen": list,
        "weights_sha256": str,
    }  # fmt: skip
    for key, kind in expected.items():
        if not isinstance(spec.get(key), kind):
            raise ValueError(f"{str(file)!r}: field {key!r} is missing or has the wrong type")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in spec["aliases"].items()):
        raise ValueError(f"{str(file)!r}: field 'aliases' must map names to names")
    for key in ("training_differs", "frozen"):
        if not all(isinstance(v, str) for v in spec[key]):
            raise ValueError(f"{str(file)!r}: field {key!r} must be a list of names")
    return spec


def _builder(
    spec: Spec, factory: Callable[[], nn.Module] | None, spec_file: Path
) -> tuple[Callable[[], nn.Module], str]:
    """The callable that builds the unpruned base, and how to name it in messages."""
    if factory is not None:
        return factory, "factory()"
    arch, kwargs = spec["arch"], spec["arch_kwargs"]
    hint = "pass factory=, a zero-argument callable that returns the unpruned model"
    if arch is None:
        raise ValueError(f"{str(spec_file)!r} was saved without arch=; {hint}")
    # Lazy: the model zoo sits above this module and is needed only for its own names.
    from coreprune.harness.models import MODEL_NAMES, build_model

    if arch.lower() not in MODEL_NAMES:
        raise ValueError(
            f"{str(spec_file)!r} names architecture {arch!r}, which is not a coreprune model "
            f"({', '.join(MODEL_NAMES)}); {hint}"
        )
    return (lambda: build_model(arch, **kwargs)), f"build_model({arch!r})"


def _expected_tensors(spec: Spec, spec_file: Path) -> dict[str, Spec]:
    """Every tensor key the spec describes (shared modules expanded), checked for form."""
    where = str(spec_file)
    modules: dict[str, Any] = spec["modules"]
    table: dict[str, Spec] = {}
    for name, entry in modules.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{where!r}: module {name!r} has a malformed entry")
        if "same_as" in entry:
            target = entry["same_as"]
            if set(entry) != {"same_as"} or not isinstance(modules.get(target), dict):
                raise ValueError(f"{where!r}: module {name!r} is the same as an unknown one")
            if "same_as" in modules[target]:
                raise ValueError(f"{where!r}: module {name!r} points at another alias")
            continue
        _check_entry(name, entry, where)
    for name, entry in modules.items():
        source = modules[entry["same_as"]] if "same_as" in entry else entry
        for key, info in source["tensors"].items():
            table[_join(name, key)] = info
    return table


def _check_entry(name: str, entry: Spec, where: str) -> None:
    if set(entry) != {"type", "attributes", "tensors", "absent"}:
        raise ValueError(f"{where!r}: module {name!r} needs exactly type/attributes/tensors/absent")
    if not isinstance(entry["type"], str) or not isinstance(entry["absent"], list):
        raise ValueError(f"{where!r}: module {name!r} has a malformed type or absent list")
    attributes, tensors = entry["attributes"], entry["tensors"]
    if not isinstance(attributes, dict) or not isinstance(tensors, dict):
        raise ValueError(f"{where!r}: module {name!r} has malformed attributes or tensors")
    for attr, value in attributes.items():
        if attr not in SIZE_ATTRIBUTES:
            raise ValueError(f"{where!r}: module {name!r} sets {attr!r}, not a size attribute")
        if not (_is_size(value) or (isinstance(value, list) and all(map(_is_size, value)))):
            raise ValueError(f"{where!r}: {name!r}.{attr} = {value!r} is not a size")
    for key, info in tensors.items():
        ok = (
            isinstance(info, dict)
            and set(info) == {"shape", "dtype", "kind"}
            and isinstance(info["shape"], list)
            and all(map(_is_size, info["shape"]))
            and info["dtype"] in _DTYPES
            and info["kind"] in _TENSOR_KINDS
        )
        if not ok:
            raise ValueError(f"{where!r}: tensor {_join(name, key)!r} has a malformed entry")


def _is_size(value: object) -> bool:
    return _is_int(value) and value >= 0


def _read_header(file: Path) -> dict[str, tuple[list[int], str]]:
    """Shape and dtype of every tensor in a safetensors file, read without loading any data.

    safetensors refuses a header whose tensors do not exactly cover the file's bytes, so these
    sizes are bounded by the file size.
    """
    header: dict[str, tuple[list[int], str]] = {}
    try:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - a safetensors handle is not a dict
                part = handle.get_slice(key)
                header[key] = (list(part.get_shape()), str(part.get_dtype()))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{str(file)!r} is not a readable safetensors file: {err}") from err
    return header


def _check_header(
    expected: dict[str, Spec],
    aliases: dict[str, str],
    header: dict[str, tuple[list[int], str]],
    weights_file: Path,
) -> None:
    """Every recorded shape and dtype equals the weights file's, before anything is built."""
    where = str(weights_file)
    stored = {k for k in expected if k not in aliases}
    if stored != set(header):
        missing, extra = sorted(stored - set(header)), sorted(set(header) - stored)
        raise ValueError(
            f"{where!r} does not hold the tensors the spec records: missing {missing[:5]}, "
            f"unexpected {extra[:5]} (files edited or from different saves)"
        )
    for key in stored:
        shape, code = header[key]
        info = expected[key]
        if info["shape"] != shape or _HEADER_DTYPES.get(code) != info["dtype"]:
            raise ValueError(
                f"the spec records {key!r} as {info['dtype']}{info['shape']} but {where!r} "
                f"holds {code}{shape}; refusing to build sizes the weights do not back"
            )
    for alias, primary in aliases.items():
        if alias not in expected or primary not in stored:
            raise ValueError(f"{where!r}: alias {alias!r} -> {primary!r} names an unknown tensor")
        a, p = expected[alias], expected[primary]
        if (a["shape"], a["dtype"]) != (p["shape"], p["dtype"]):
            raise ValueError(f"{where!r}: alias {alias!r} and {primary!r} differ in shape or dtype")


# --------------------------------------------------------------------------------------------
# Loading: building, shrinking, filling


def _build(builder: tuple[Callable[[], nn.Module], str], *, on_meta: bool) -> nn.Module | None:
    """The base model, on the meta device when `on_meta` (None if it cannot be built there)."""
    make, source = builder
    if on_meta:
        try:
            with torch.device("meta"):
                model = make()
        except Exception:  # any failure on the meta device means: build it for real
            return None
    else:
        model = make()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{source} must return an nn.Module, got {type(model).__name__}")
    return model


def _shrink(model: nn.Module, spec: Spec, spec_file: Path) -> None:
    """Give every recorded module its recorded sizes, with shape-only meta placeholders."""
    where = str(spec_file)
    modules: dict[str, Spec] = spec["modules"]
    for name, entry in modules.items():
        if "same_as" in entry:
            continue
        module = _submodule(model, name, where)
        if type(module).__name__ != entry["type"]:
            raise ValueError(
                f"{where!r} records {name or 'the whole model'!r} as {entry['type']}, but the "
                f"base model has a {type(module).__name__} there (wrong factory or arch?)"
            )
        for attr, value in entry["attributes"].items():
            current = module.__dict__.get(attr)
            fits = _is_int(current) if _is_int(value) else isinstance(current, tuple)
            if not fits:
                raise ValueError(
                    f"{where!r} sets {name!r}.{attr} = {value!r}, but the base module's "
                    f"{attr} is {current!r}"
                )
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
        own = {key: kind for key, _, kind in _own_tensors(module)}
        for key, info in entry["tensors"].items():
            if own.get(key) != info["kind"]:
                raise ValueError(
                    f"{where!r} records {_join(name, key)!r} as a {info['kind']}, but the base "
                    f"model has {('a ' + own[key]) if key in own else 'nothing'} there"
                )
            placeholder = torch.empty(info["shape"], dtype=_DTYPES[info["dtype"]], device="meta")
            if info["kind"] == _PARAMETER:
                module._parameters[key] = nn.Parameter(placeholder, requires_grad=False)
            else:
                module._buffers[key] = placeholder
        for key in entry["absent"]:
            if key not in own:
                raise ValueError(f"{where!r}: {name!r} has no parameter or buffer {key!r}")
            store = module._parameters if own[key] == _PARAMETER else module._buffers
            store[key] = None
        _check_sizes(name, module, where)
    for name, entry in modules.items():
        if "same_as" in entry:
            parent_name, _, child = name.rpartition(".")
            parent = _submodule(model, parent_name, where)
            if child not in parent._modules:
                raise ValueError(f"{where!r} records module {name!r}, which the base lacks")
            parent._modules[child] = _submodule(model, entry["same_as"], where)


def _submodule(model: nn.Module, name: str, where: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        raise ValueError(
            f"{where!r} records module {name!r}, which the base model does not have "
            "(wrong factory, arch or arch_kwargs?)"
        ) from err


def _rules(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Tensor shapes implied by a standard module's size attributes."""
    m: Any = module
    if isinstance(m, nn.Linear):
        return {"weight": (m.out_features, m.in_features), "bias": (m.out_features,)}
    if isinstance(m, nn.Bilinear):
        return {
            "weight": (m.out_features, m.in1_features, m.in2_features),
            "bias": (m.out_features,),
        }
    if isinstance(m, _ConvNd):
        if m.groups <= 0 or m.in_channels % m.groups or m.out_channels % m.groups:
            return {"weight": (-1,)}  # sizes no weight can match
        first, second = (m.in_channels, m.out_channels) if m.transposed else (
            m.out_channels, m.in_channels)  # fmt: skip
        return {"weight": (first, second // m.groups, *m.kernel_size), "bias": (m.out_channels,)}
    if isinstance(m, _NormBase):
        n = (m.num_features,)
        return {"weight": n, "bias": n, "running_mean": n, "running_var": n}
    if isinstance(m, nn.GroupNorm):
        return {"weight": (m.num_channels,), "bias": (m.num_channels,)}
    if isinstance(m, nn.LayerNorm | nn.RMSNorm):
        return {"weight": tuple(m.normalized_shape), "bias": tuple(m.normalized_shape)}
    if isinstance(m, nn.Embedding | nn.EmbeddingBag):
        return {"weight": (m.num_embeddings, m.embedding_dim)}
    return {}


def _check_sizes(name: str, module: nn.Module, where: str) -> None:
    """A standard module's size attributes agree with its (placeholder) tensors."""
    for key, shape in _rules(module).items():
        tensor = getattr(module, key, None)
        if isinstance(tensor, torch.Tensor) and tuple(tensor.shape) != shape:
            raise ValueError(
                f"{where!r}: the size attributes of {name or '<root>'!r} "
                f"({type(module).__name__}) imply {key} of shape {list(shape)}, but the weights "
                f"hold {list(tensor.shape)}"
            )


def _read_weights(file: Path, aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{str(file)!r} is not a readable safetensors file: {err}") from err
    for alias, primary in aliases.items():
        state[alias] = state[primary]
    return state


def _fill(
    model: nn.Module,
    spec: Spec,
    state: dict[str, torch.Tensor],
    expected: dict[str, Spec],
    weights_file: Path,
) -> None:
    """Assign the saved tensors (strict keys and shapes), then flags and modes."""
    persistent = {k: v for k, v in state.items() if expected[k]["kind"] != _TRANSIENT}
    try:
        model.load_state_dict(persistent, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(
            f"{str(weights_file)!r} does not fit the base model: {err} (wrong factory or arch?)"
        ) from err
    for key, tensor in state.items():
        if expected[key]["kind"] == _TRANSIENT:
            owner, _, attr = key.rpartition(".")
            model.get_submodule(owner)._buffers[attr] = tensor
    _retie(model, spec["aliases"])
    frozen = set(spec["frozen"])
    for name, param in model.named_parameters(remove_duplicate=False):
        param.requires_grad_(name not in frozen)
    model.train(spec["training"])
    modules = dict(model.named_modules())
    for name in spec["training_differs"]:
        if name in modules:
            modules[name].training = not spec["training"]


def _retie(model: nn.Module, aliases: dict[str, str]) -> None:
    """Make tensors that were one tensor at save time one tensor again (weight tying)."""
    for alias, primary in aliases.items():
        owner_a, _, attr_a = alias.rpartition(".")
        owner_p, _, attr_p = primary.rpartition(".")
        value = getattr(model.get_submodule(owner_p), attr_p)
        target = model.get_submodule(owner_a)
        if getattr(target, attr_a) is not value:
            store = target._parameters if attr_a in target._parameters else target._buffers
            store[attr_a] = value


def _leftover_meta(model: nn.Module) -> list[str]:
    """Names of tensors still on the meta device: parameters, buffers, tensor attributes."""
    found = [n for n, t in model.named_parameters(remove_duplicate=False) if t.is_meta]
    found += [n for n, t in model.named_buffers(remove_duplicate=False) if t.is_meta]
    for prefix, module in model.named_modules(remove_duplicate=False):
        for attr, value in vars(module).items():
            values = value if isinstance(value, list | tuple) else [value]
            if any(isinstance(v, torch.Tensor) and v.is_meta for v in values):
                found.append(_join(prefix, attr))
    return found
