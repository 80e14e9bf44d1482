"""Small PyTorch helpers that several layers of the library need, kept in one copy.

Where a model lives (`model_device`), which device a user's setting names (`resolve_device`),
swapping a submodule by its qualified name (`replace_submodule`), and leaving a model's
train/eval and ``requires_grad`` flags as they were found (`training_flags`, `restore_flags`,
`preserved_flags`, `eval_mode`). Each used to be re-implemented per module with slightly
different rules; one copy keeps the rules (and error messages) the same everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from coreprune.checks import check_bool, check_module

# float64 elements a chunked computation materialises at once (32 MiB): patches, Gram
# products, per-row sensitivities. One budget, so memory use is predictable across the library.
CHUNK_ELEMENTS = 1 << 22

__all__ = [
    "TrainingFlags",
    "eval_mode",
    "model_device",
    "module_weight",
    "preserved_flags",
    "replace_submodule",
    "resolve_device",
    "restore_flags",
    "training_flags",
]


def model_device(model: nn.Module) -> torch.device:
    """The one device holding every parameter and buffer of ``model`` (CPU when it has none).

    A model spread over several devices is refused (ValueError listing them) rather than
    reported by its first tensor, since inputs moved to that device would fail later, deeper
    inside a forward pass and with a less helpful message.
    """
    check_module(model, "model")
    devices = {t.device for t in model.parameters()} | {t.device for t in model.buffers()}
    if len(devices) > 1:
        listed = ", ".join(sorted(str(d) for d in devices))
        raise ValueError(
            f"model has parameters or buffers on several devices ({listed}); "
            f"move it to one with model.to(device)"
        )
    return devices.pop() if devices else torch.device("cpu")


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """The device a user's setting names: ``"auto"`` or ``None`` mean CUDA when available,
    else CPU; anything else is parsed by ``torch.device``.

    An explicit CUDA request on a machine without CUDA is a ValueError, not a silent fall back
    to CPU, so a run never reports CPU numbers as GPU ones.
    """
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(spec, (str, torch.device)):
        raise TypeError(
            f"device must be a str, a torch.device or None, got {type(spec).__name__}; "
            f"use e.g. 'cpu', 'cuda', 'cuda:1' or 'auto'"
        )
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ValueError(
            f"device {spec!r} is not a valid torch device; use e.g. 'cpu', 'cuda', 'cuda:1' "
            f"or 'auto'"
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={spec!r} asks for CUDA but CUDA is not available on this machine; "
            f"use 'cpu' or 'auto'"
        )
    return device


def replace_submodule(root: nn.Module, dotted_name: str, new: nn.Module) -> None:
    """Put ``new`` at the qualified name ``dotted_name`` inside ``root`` (e.g. ``"features.3"``).

    The old submodule must exist: a typo would otherwise add a new, unused attribute and leave
    the model unchanged. ``root`` itself cannot be replaced (empty name); rebind it instead.
    """
    check_module(root, "root")
    check_module(new, "new")
    if not isinstance(dotted_name, str):
        raise TypeError(f"dotted_name must be a str, got {type(dotted_name).__name__}")
    if not dotted_name:
        raise ValueError("dotted_name is empty: the root module cannot replace itself")
    parent_name, _, child = dotted_name.rpartition(".")
    try:
        parent = root.get_submodule(parent_name)
    except AttributeError as error:
        raise ValueError(
            f"{type(root).__name__} has no submodule {parent_name!r} (on the way to "
            f"{dotted_name!r}); list the names with [n for n, _ in model.named_modules()]"
        ) from error
    if not isinstance(getattr(parent, child, None), nn.Module):
        raise ValueError(
            f"{type(root).__name__} has no submodule {dotted_name!r}; list the names with "
            f"[n for n, _ in model.named_modules()]"
        )
    setattr(parent, child, new)


def module_weight(root: nn.Module, dotted_name: str) -> torch.Tensor:
    """The ``weight`` tensor of the submodule at ``dotted_name`` (a Parameter, or a plain
    tensor while ``torch.nn.utils.prune`` masks it).

    ``root.get_submodule(name).weight`` is typed ``Tensor | Module`` and raises AttributeError
    for a typo; this returns a checked tensor or raises ValueError naming the module.
    """
    check_module(root, "root")
    try:
        module = root.get_submodule(dotted_name)
    except AttributeError as error:
        raise ValueError(
            f"{type(root).__name__} has no submodule {dotted_name!r}; list the names with "
            f"[n for n, _ in model.named_modules()]"
        ) from error
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(
            f"submodule {dotted_name!r} ({type(module).__name__}) has no weight tensor; "
            f"name a layer with a weight such as nn.Linear or nn.Conv2d"
        )
    return weight


@dataclass(frozen=True)
class TrainingFlags:
    """A model's train flags by qualified module name (``""`` is the root) and its
    parameters' ``requires_grad`` by qualified parameter name.

    Names rather than object references, so the flags of a model can be put back on a copy of
    it that surgery has changed (same names, new module objects).
    """

    training: Mapping[str, bool]
    requires_grad: Mapping[str, bool]


def training_flags(model: nn.Module) -> TrainingFlags:
    """Record every submodule's ``training`` and every parameter's ``requires_grad``."""
    check_module(model, "model")
    return TrainingFlags(
        training={n: m.training for n, m in model.named_modules(remove_duplicate=False)},
        requires_grad={
            n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)
        },
    )


def restore_flags(model: nn.Module, flags: TrainingFlags) -> None:
    """Set the recorded flags on ``model`` (the model they came from, or a copy of it).

    Every recorded name must still exist in ``model``: a missing one is a ValueError listing
    them, because a flag that cannot be put back would leave the model silently different.
    Modules and parameters that ``flags`` does not name keep their own flags.
    """
    check_module(model, "model")
    if not isinstance(flags, TrainingFlags):
        raise TypeError(
            f"flags must be a TrainingFlags from training_flags(), got {type(flags).__name__}"
        )
    modules = dict(model.named_modules(remove_duplicate=False))
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [n for n in flags.training if n not in modules]
    missing += [n for n in flags.requires_grad if n not in params]
    if missing:
        raise ValueError(
            f"model lacks {len(missing)} recorded module/parameter name(s) "
            f"({', '.join(repr(n) for n in missing[:5])}); restore flags only onto the model "
            f"they were recorded from or a copy with the same names"
        )
    for name, flag in flags.training.items():
        modules[name].training = flag
    for name, flag in flags.requires_grad.items():
        params[name].requires_grad_(flag)


@contextlib.contextmanager
def preserved_flags(*models: nn.Module) -> Iterator[None]:
    """Inside the block the models' train flags and ``requires_grad`` may change freely;
    on leaving (also by an exception) each model gets its recorded flags back."""
    for index, model in enumerate(models):
        check_module(model, f"models[{index}]")
    saved = [training_flags(model) for model in models]
    try:
        yield
    finally:
        for model, flags in zip(models, saved, strict=True):
            restore_flags(model, flags)


@contextlib.contextmanager
def eval_mode(*models: nn.Module, no_grad: bool = False) -> Iterator[None]:
    """Every model in eval mode for the block (and autograd off when ``no_grad``); each
    submodule's own train flag and each parameter's ``requires_grad`` are restored after.

    ``model.train(previous)`` would not do: it overwrites submodules that were deliberately in
    a different mode from their parent (e.g. frozen batch norms in a training model).
    """
    check_bool(no_grad, "no_grad")
    with preserved_flags(*models):
        for model in models:
            model.eval()
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            yield
