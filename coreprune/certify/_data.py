"""Held-out data and models as the certificates see them: checked, batched, run read-only.

A holdout is either a DataLoader yielding (inputs, labels) batches or an (inputs, labels) pair
of tensors. Models run in eval mode under no_grad, and every module's train flag is restored
afterwards; a model whose parameters live elsewhere than the requested device runs as a copy,
so the caller's model is never moved or changed. Before the run, each model is tried on one
held-out example (`check_fits`), so inputs of the wrong shape or dtype are refused by name
rather than surfacing as a matrix-shape error from deep inside the first batch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from coreprune.checks import check_int
from coreprune.torch_utils import model_device, resolve_device

Holdout = DataLoader | tuple[torch.Tensor, torch.Tensor] | Sequence[torch.Tensor]

DEFAULT_BATCH_SIZE = 1024


def check_model(model: object, name: str) -> nn.Module:
    """`model` as an nn.Module, or a TypeError naming the argument."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{name} must be a torch.nn.Module (the model itself, not its outputs or state_dict), "
            f"got {type(model).__name__}"
        )
    return model


def check_confidence(confidence: object) -> float:
    """The confidence level as a float in (0, 1), or an error naming the fix."""
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        raise TypeError(f"confidence must be a float in (0, 1), got {type(confidence).__name__}")
    value = float(confidence)
    if not 0 < value < 1:
        raise ValueError(
            f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence}"
        )
    return value


def check_batch_size(batch_size: object) -> int:
    """`batch_size` as an int >= 1; the library's one int check (`coreprune.checks.check_int`),
    so the certificates word a bad batch size as every other count is worded."""
    return check_int(batch_size, "batch_size", minimum=1)


@dataclass(frozen=True)
class Batches:
    """A checked holdout: iterate it for (inputs, labels-or-None) batches; `size` if known."""

    loader: DataLoader | None
    inputs: torch.Tensor | None
    labels: torch.Tensor | None
    batch_size: int
    size: int | None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        if self.loader is None:
            assert self.inputs is not None
            for start in range(0, len(self.inputs), self.batch_size):
                stop = start + self.batch_size
                yield (
                    self.inputs[start:stop],
                    None if self.labels is None else self.labels[start:stop],
                )
            return
        for batch in self.loader:
            if isinstance(batch, torch.Tensor):
                yield batch, None
            elif isinstance(batch, (tuple, list)) and len(batch) >= 1:
                x = batch[0]
                y = batch[1] if len(batch) >= 2 else None
                if not isinstance(x, torch.Tensor) or not (
                    y is None or isinstance(y, torch.Tensor)
                ):
                    raise TypeError("holdout: a DataLoader must yield (inputs, labels) tensors")
                yield x, y
            else:
                raise TypeError(
                    "holdout: a DataLoader must yield (inputs, labels) tensor pairs, got "
                    f"{type(batch).__name__}"
                )

    def first(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first batch (a small probe run before the real work)."""
        for batch in self:
            return batch
        raise ValueError("holdout is empty: pass at least one held-out example")


def check_holdout(
    holdout: object, batch_size: int, *, labelled: bool, name: str = "holdout"
) -> Batches:
    """Check the holdout's type and size without running any model.

    `labelled`: the labels are required (accuracy needs them); otherwise inputs alone suffice.
    """
    if isinstance(holdout, DataLoader):
        try:
            size = len(holdout.dataset)  # type: ignore[arg-type]
        except TypeError:
            size = None  # an iterable dataset: its size is known only after the run
        if size == 0:
            raise ValueError(f"{name} is empty: pass a DataLoader over at least one example")
        return Batches(holdout, None, None, batch_size, size)
    if isinstance(holdout, torch.Tensor):
        if labelled:
            raise TypeError(
                f"{name} must be a DataLoader or an (inputs, labels) pair of tensors; got a "
                "single tensor (pass (inputs, labels))"
            )
        inputs, labels = holdout, None
    elif isinstance(holdout, (tuple, list)) and len(holdout) == 2:
        inputs, labels = holdout
        if not isinstance(inputs, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise TypeError(
                f"{name} must be an (inputs, labels) pair of tensors, got "
                f"({type(inputs).__name__}, {type(labels).__name__})"
            )
    else:
        raise TypeError(
            f"{name} must be a DataLoader yielding (inputs, labels) or an (inputs, labels) pair "
            f"of tensors, got {type(holdout).__name__}"
        )
    if inputs.ndim == 0 or len(inputs) == 0:
        raise ValueError(f"{name} is empty: pass at least one held-out example")
    check_finite_inputs(inputs, name, 0)
    if labels is not None:
        if labels.ndim != 1 or len(labels) != len(inputs):
            raise ValueError(
                f"{name}: labels must be a 1-D tensor with one class index per input "
                f"({len(inputs)}), got shape {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(
                f"{name}: labels must be integer class indices, got dtype {labels.dtype} "
                "(convert with labels.long())"
            )
    return Batches(None, inputs, labels, batch_size, len(inputs))


def check_finite_inputs(inputs: torch.Tensor, name: str, offset: int) -> None:
    """Held-out inputs must be finite: a model's prediction on NaN is arbitrary, not a vote."""
    if not inputs.is_floating_point() and not inputs.is_complex():
        return
    bad = ~torch.isfinite(inputs.reshape(len(inputs), -1)).all(dim=1)
    if bool(bad.any()):
        raise ValueError(
            f"{name}: {int(bad.sum())} input(s) contain NaN or Inf (first: example "
            f"{offset + int(torch.nonzero(bad)[0])}); drop or fix them: predictions on them are "
            "arbitrary, so they cannot count for or against a certificate"
        )


def check_labels(labels: torch.Tensor | None, classes: int, name: str = "holdout") -> None:
    """Every label must index one of the model's `classes` outputs."""
    if labels is None:
        raise ValueError(f"{name}: labels are needed (yield (inputs, labels) batches)")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(
            f"{name}: labels must lie in [0, {classes}) (the models have {classes} outputs), "
            f"got labels from {int(labels.min())} to {int(labels.max())}; check the dataset "
            "matches the models"
        )


def run_device(device: torch.device | str | None, dense: nn.Module) -> torch.device:
    """Where the certificate runs: `dense`'s device for None, else the device `device` names.

    The name is read by `coreprune.torch_utils.resolve_device`, so a misspelt device or CUDA on
    a machine without it is a ValueError naming `device` before any model runs, worded as
    everywhere else in the library.
    """
    return model_device(dense) if device is None else resolve_device(device)


def check_fits(model: nn.Module, inputs: torch.Tensor, name: str, holdout: str = "holdout") -> None:
    """Run `model` (already on `inputs`' device) on the first of `inputs`, read-only.

    Held-out inputs of the wrong shape or dtype otherwise fail as the model's own error (a torch
    matrix-shape RuntimeError, say) that names neither the holdout nor what was expected. One
    example is enough to find that out and costs next to nothing; the error is re-raised as a
    ValueError naming `holdout` and, where the failing layer is a linear or convolution, the
    input shape it wants.
    """
    running: list[nn.Module] = []

    def enter(module: nn.Module, _args: object) -> None:
        running.append(module)

    def leave(module: nn.Module, _args: object, _output: object) -> None:
        running.pop()

    handles = [
        handle
        for module in model.modules()
        if not isinstance(module, torch.jit.ScriptModule)  # scripted modules take no hooks
        for handle in (module.register_forward_pre_hook(enter), module.register_forward_hook(leave))
    ]
    try:
        with read_only(model):
            model(inputs[:1])
    except Exception as err:  # the model's own error, re-raised with the argument's name
        raise ValueError(
            f"{holdout} does not fit {name}: each held-out input has shape "
            f"{tuple(inputs.shape[1:])} and dtype {inputs.dtype}"
            f"{_wanted(model, running[-1] if running else model)}; pass held-out inputs shaped "
            f"like the model's training inputs ({type(err).__name__}: {err})"
        ) from err
    finally:
        for handle in handles:
            handle.remove()


def _wanted(model: nn.Module, failing: nn.Module) -> str:
    """What the layer that failed wants of its input, for the layers whose wish is plain."""
    names = {id(m): n for n, m in model.named_modules()}
    where = f"layer {names.get(id(failing), '?')!r}" if failing is not model else "the model"
    kind = type(failing).__name__
    if isinstance(failing, nn.Linear):
        return (
            f", but {where} ({kind}) wants {failing.weight.dtype} input with "
            f"{failing.in_features} features in the last dimension, e.g. shape "
            f"(batch, {failing.in_features})"
        )
    for conv, spatial in ((nn.Conv1d, "L"), (nn.Conv2d, "H, W"), (nn.Conv3d, "D, H, W")):
        if isinstance(failing, conv):
            channels = failing.in_channels
            return (
                f", but {where} ({kind}) wants {failing.weight.dtype} input with {channels} "
                f"channels in dimension 1, shape (batch, {channels}, {spatial})"
            )
    return f", which {where} ({kind}) refused"


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` itself if it lives on `device`, else a copy moved there (never the original)."""
    devices = {t.device for t in model.parameters()} | {t.device for t in model.buffers()}
    if not devices or devices == {device}:
        return model
    return copy.deepcopy(model).to(device)


@contextmanager
def read_only(*models: nn.Module) -> Iterator[None]:
    """Eval mode and no_grad for the duration; every module's train flag restored after."""
    flags = [[(m, m.training) for m in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        with torch.no_grad():
            yield
    finally:
        for saved in flags:
            for module, training in saved:
                module.training = training
