"""Record what a layer sees on calibration inputs: its input, or its output, in a given model.

Capture runs the model forward under `no_grad` with one temporary hook and stops as soon as the
layer has been called, so nothing after it runs. The model is only read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from coreprune.surgery.patches import conv_patches
from coreprune.torch_utils import eval_mode

__all__ = [
    "MAX_CALIBRATION_ROWS",
    "DenseTargets",
    "LayerRecords",
    "capture_input",
    "capture_output",
    "input_rows",
    "subsample_rows",
]

MAX_RECORD_BYTES = 1 << 31  # layer inputs or outputs kept from one forward pass (2 GiB)
MAX_CALIBRATION_ROWS = 4000  # im2col patches per layer kept for a calibration query space
_ROW_SEED = 0  # row subsampling uses its own generator, so it never shifts the caller's stream


class _Stop(Exception):
    """Raised by the capture hook: nothing after the layer needs to run."""


def _capture(model: nn.Module, name: str, inputs: torch.Tensor, *, output: bool) -> torch.Tensor:
    layer = model.get_submodule(name)
    seen: list[torch.Tensor] = []

    def before(_module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append(args[0].detach())
        raise _Stop

    def after(_module: nn.Module, _args: Any, out: torch.Tensor) -> None:
        seen.append(out.detach())
        raise _Stop

    handle = (
        layer.register_forward_hook(after) if output else layer.register_forward_pre_hook(before)
    )
    try:
        with eval_mode(model, no_grad=True):
            model(inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"{name!r} was not called when the model ran on the calibration inputs")
    return seen[0]


def capture_input(model: nn.Module, name: str, inputs: torch.Tensor) -> torch.Tensor:
    """The input tensor of submodule `name` when `model` runs (eval mode) on `inputs`."""
    return _capture(model, name, inputs, output=False)


def capture_output(model: nn.Module, name: str, inputs: torch.Tensor) -> torch.Tensor:
    """The output tensor of submodule `name` when `model` runs (eval mode) on `inputs`."""
    return _capture(model, name, inputs, output=True)


def subsample_rows(rows: torch.Tensor, limit: int = MAX_CALIBRATION_ROWS) -> torch.Tensor:
    """At most `limit` rows, drawn without replacement by a fixed generator (deterministic)."""
    if rows.shape[0] <= limit:
        return rows
    gen = torch.Generator().manual_seed(_ROW_SEED)
    pick = torch.randperm(rows.shape[0], generator=gen)[:limit]
    return rows[pick.to(rows.device)]


def input_rows(model: nn.Module, name: str, inputs: torch.Tensor) -> torch.Tensor:
    """The layer's inputs on `inputs` as rows (im2col patches for a conv), subsampled."""
    layer = model.get_submodule(name)
    x = capture_input(model, name, inputs)
    rows = conv_patches(x, layer) if isinstance(layer, nn.Conv2d) else x.reshape(-1, x.shape[-1])
    return subsample_rows(rows)


class LayerRecords:
    """What layers receive (`inputs`) and return (`outputs`) when `model` runs once on
    `calibration`: one forward pass for all of them instead of one per layer, up to `max_bytes`
    (later ones are captured again when asked). Valid while `model` is unchanged."""

    def __init__(
        self,
        model: nn.Module,
        calibration: torch.Tensor,
        *,
        inputs: Sequence[str] = (),
        outputs: Sequence[str] = (),
        max_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self.model, self.calibration, self.max_bytes = model, calibration, max_bytes
        self.names = {False: list(dict.fromkeys(inputs)), True: list(dict.fromkeys(outputs))}
        self.recorded: dict[tuple[bool, str], torch.Tensor] | None = None

    def _record(self) -> dict[tuple[bool, str], torch.Tensor]:
        seen: dict[tuple[bool, str], torch.Tensor] = {}
        held: dict[int, torch.Tensor] = {}  # a tensor several layers read counts once (kept alive)
        used = [0]

        def keep(key: tuple[bool, str], value: torch.Tensor) -> None:
            size = 0 if id(value) in held else value.numel() * value.element_size()
            if key not in seen and used[0] + size <= self.max_bytes:
                seen[key] = value.detach()
                held[id(value)] = value
                used[0] += size

        handles = []
        for name in self.names[False]:
            layer = self.model.get_submodule(name)
            handles.append(
                layer.register_forward_pre_hook(lambda _m, a, n=name: keep((False, n), a[0]))
            )
        for name in self.names[True]:
            layer = self.model.get_submodule(name)
            handles.append(
                layer.register_forward_hook(lambda _m, _a, out, n=name: keep((True, n), out))
            )
        try:
            with eval_mode(self.model, no_grad=True):
                self.model(self.calibration)
        finally:
            for h in handles:
                h.remove()
        return seen

    def _get(self, name: str, output: bool) -> torch.Tensor:
        if self.recorded is None:
            self.recorded = self._record()
        value = self.recorded.get((output, name))
        if value is None:
            value = _capture(self.model, name, self.calibration, output=output)
        return value

    def input(self, name: str) -> torch.Tensor:
        """What layer `name` received."""
        return self._get(name, output=False)

    def output(self, name: str) -> torch.Tensor:
        """What layer `name` returned."""
        return self._get(name, output=True)


class DenseTargets:
    """The dense model's output of each consumer on the calibration batch: the least-squares
    targets of every refit, recorded in one forward pass of the dense model (`LayerRecords`).

    `out_keep` is read at call time: a consumer whose own outputs were cut (a coupled group's
    member) gets only its kept outputs."""

    def __init__(self, records: LayerRecords, out_keep: dict[str, torch.Tensor]) -> None:
        self.records, self.out_keep = records, out_keep

    def __call__(self, work: nn.Module, name: str) -> torch.Tensor:
        target = self.records.output(name)
        keep = self.out_keep.get(name)
        if keep is None:
            return target
        dim = 1 if isinstance(work.get_submodule(name), nn.Conv2d) else target.ndim - 1
        return target.index_select(dim, keep.to(target.device))
