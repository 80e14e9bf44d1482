"""Loading, part two: build the base (on the meta device when it can), give each recorded
module its recorded sizes, fill in the weights with strict checks."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from coreprune.serialization.format import (
    _DTYPES,
    _PARAMETER,
    _TRANSIENT,
    ARCH_FILE,
    WEIGHTS_FILE,
    Spec,
    _is_int,
    _join,
    _own_tensors,
    _sha256,
)
from coreprune.serialization.verify import (
    _check_header,
    _expected_tensors,
    _read_header,
    _read_spec,
)
from coreprune.zoo import MODEL_NAMES, build_model


def load_model(
    path: str | os.PathLike[str], *, factory: Callable[[], nn.Module] | None = None
) -> nn.Module:
    """Rebuild the model saved at `path`, on the CPU, with the saved sizes, weights, dtypes,
    `requires_grad` flags and train/eval modes.

    Args:
        path: a directory written by `save_model`.
        factory: a zero-argument callable returning the unpruned base architecture. Needed
            unless the model was saved with a `coreprune.zoo` name (`arch=`). It is
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
    if arch.lower() not in MODEL_NAMES:
        raise ValueError(
            f"{str(spec_file)!r} names architecture {arch!r}, which is not a coreprune model "
            f"({', '.join(MODEL_NAMES)}); {hint}"
        )
    return (lambda: build_model(arch, **kwargs)), f"build_model({arch!r})"


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
