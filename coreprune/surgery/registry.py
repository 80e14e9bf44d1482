"""One place that knows each supported layer type: its units, how a consumer reads them, how to
slice either side, how a batch norm folds into it, and what it costs.

Everything else (units, slicing, pair discovery, cost model, gates, serialization) asks this
registry, so a new layer type is one new entry here. Modules are rebuilt smaller by copying the
module and swapping its tensors, so subclasses, forward hooks, train flags and `requires_grad`
survive surgery.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

__all__ = [
    "LAYER_KINDS",
    "NORM_KINDS",
    "LayerKind",
    "NormKind",
    "is_conv1d",
    "layer_kind",
    "norm_kind",
    "slice_channel_tensors",
    "slice_depthwise",
    "slice_grouped_inputs",
    "unsupported_reason",
]


class LayerKind(Protocol):
    """What the library needs to know about a layer type whose outputs are units."""

    @property
    def module_type(self) -> type[nn.Module]: ...

    def out_units(self, module: Any) -> int: ...
    def in_units(self, module: Any) -> int: ...
    def weights_per_pair(self, module: Any) -> int: ...
    def inputs_per_output(self, module: Any) -> int: ...
    def bias_params(self, module: Any) -> int: ...
    def unsupported(self, module: Any) -> str | None: ...
    def unit_weights(self, module: Any) -> torch.Tensor: ...
    def unit_view(self, module: Any, tensor: torch.Tensor) -> torch.Tensor: ...
    def reading(self, module: Any, n_units: int) -> torch.Tensor: ...
    def weight_from_reading(self, module: Any, reading: torch.Tensor) -> torch.Tensor: ...
    def slice_outputs(self, module: Any, keep: torch.Tensor) -> nn.Module: ...
    def slice_inputs(
        self, module: Any, n_units: int, keep: torch.Tensor, scale: torch.Tensor | None
    ) -> nn.Module: ...


def _with_tensors(module: nn.Module, **tensors: torch.Tensor | None) -> Any:
    """A copy of `module` (same class, hooks and flags) with the named tensors replaced.

    Parameters keep their `requires_grad`; buffers stay buffers.
    """
    new = copy.deepcopy(module)
    for name, value in tensors.items():
        old = getattr(module, name)
        if value is None or old is None:
            continue
        value = value.detach().to(device=old.device, dtype=old.dtype).clone()
        if isinstance(old, nn.Parameter):
            setattr(new, name, nn.Parameter(value, requires_grad=old.requires_grad))
        else:
            new._buffers[name] = value
    return new


def _float64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def _rows_of(tensor: torch.Tensor, n: int, shape: torch.Size, what: str) -> torch.Tensor:
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(
            f"tensor must have the {what} weight's shape {tuple(shape)}, got {tuple(tensor.shape)}"
        )
    return tensor.reshape(n, -1)


@dataclass(frozen=True)
class _LinearKind:
    module_type: type[nn.Module] = nn.Linear

    def out_units(self, module: nn.Linear) -> int:
        return int(module.out_features)

    def in_units(self, module: nn.Linear) -> int:
        return int(module.in_features)

    def weights_per_pair(self, module: nn.Linear) -> int:
        return 1

    def inputs_per_output(self, module: nn.Linear) -> int:
        return int(module.in_features)

    def bias_params(self, module: nn.Linear) -> int:
        return int(module.bias is not None)

    def unsupported(self, module: nn.Linear) -> str | None:
        return None

    def unit_weights(self, module: nn.Linear) -> torch.Tensor:
        return _float64(module.weight)

    def unit_view(self, module: nn.Linear, tensor: torch.Tensor) -> torch.Tensor:
        """A weight-shaped tensor (a gradient, a score) as one row per unit: its rows."""
        return _rows_of(tensor, self.out_units(module), module.weight.shape, "Linear")

    def reading(self, module: nn.Linear, n_units: int) -> torch.Tensor:
        """One row per (output, flatten position): a unit feeds a block of in_features/n."""
        w = _float64(module.weight)
        block = w.shape[1] // n_units
        return w.reshape(w.shape[0], n_units, block).permute(0, 2, 1).reshape(-1, n_units)

    def weight_from_reading(self, module: nn.Linear, reading: torch.Tensor) -> torch.Tensor:
        out = module.out_features
        n = reading.shape[1]
        block = reading.shape[0] // out
        return reading.reshape(out, block, n).permute(0, 2, 1).reshape(out, n * block)

    def slice_outputs(self, module: nn.Linear, keep: torch.Tensor) -> nn.Module:
        keep = keep.to(module.weight.device)
        bias = None if module.bias is None else module.bias.index_select(0, keep)
        new = _with_tensors(module, weight=module.weight.index_select(0, keep), bias=bias)
        new.out_features = int(keep.numel())
        return new

    def slice_inputs(
        self, module: nn.Linear, n_units: int, keep: torch.Tensor, scale: torch.Tensor | None
    ) -> nn.Module:
        keep = keep.to(module.weight.device)
        w = module.weight.detach()
        block = module.in_features // n_units
        blocks = w.reshape(w.shape[0], n_units, block).index_select(1, keep)
        if scale is not None:
            blocks = (_float64(blocks) * scale.to(w.device, torch.float64)[None, :, None]).to(
                w.dtype
            )
        new = _with_tensors(module, weight=blocks.reshape(w.shape[0], -1))
        new.in_features = int(keep.numel()) * block
        return new


@dataclass(frozen=True)
class _Conv2dKind:
    module_type: type[nn.Module] = nn.Conv2d

    def out_units(self, module: nn.Conv2d) -> int:
        return int(module.out_channels)

    def in_units(self, module: nn.Conv2d) -> int:
        return int(module.in_channels)

    def weights_per_pair(self, module: nn.Conv2d) -> int:
        return int(module.kernel_size[0] * module.kernel_size[1])

    def inputs_per_output(self, module: nn.Conv2d) -> int:
        kh, kw = module.kernel_size
        return int(module.in_channels // module.groups * kh * kw)

    def bias_params(self, module: nn.Conv2d) -> int:
        return int(module.bias is not None)

    def unsupported(self, module: nn.Conv2d) -> str | None:
        if module.groups == 1:
            return None
        kind = "depthwise" if module.groups == module.in_channels else "grouped"
        return f"a {kind} convolution (groups={module.groups}); only groups=1 is supported"

    def unit_weights(self, module: nn.Conv2d) -> torch.Tensor:
        return _float64(module.weight).reshape(module.weight.shape[0], -1)

    def unit_view(self, module: nn.Conv2d, tensor: torch.Tensor) -> torch.Tensor:
        """A weight-shaped tensor as one row per output filter, flattened."""
        return _rows_of(tensor, self.out_units(module), module.weight.shape, "Conv2d")

    def reading(self, module: nn.Conv2d, n_units: int) -> torch.Tensor:
        """One row per (output channel, kernel offset)."""
        return _float64(module.weight).permute(0, 2, 3, 1).reshape(-1, n_units)

    def weight_from_reading(self, module: nn.Conv2d, reading: torch.Tensor) -> torch.Tensor:
        kh, kw = module.kernel_size
        n = reading.shape[1]
        return reading.reshape(module.out_channels, kh, kw, n).permute(0, 3, 1, 2).contiguous()

    def slice_outputs(self, module: nn.Conv2d, keep: torch.Tensor) -> nn.Module:
        keep = keep.to(module.weight.device)
        bias = None if module.bias is None else module.bias.index_select(0, keep)
        new = _with_tensors(module, weight=module.weight.index_select(0, keep), bias=bias)
        new.out_channels = int(keep.numel())
        return new

    def slice_inputs(
        self, module: nn.Conv2d, n_units: int, keep: torch.Tensor, scale: torch.Tensor | None
    ) -> nn.Module:
        keep = keep.to(module.weight.device)
        w = module.weight.detach().index_select(1, keep)
        if scale is not None:
            w = (_float64(w) * scale.to(w.device, torch.float64)[None, :, None, None]).to(w.dtype)
        new = _with_tensors(module, weight=w)
        new.in_channels = int(keep.numel())
        return new


@dataclass(frozen=True)
class _Conv1DKind:
    """HF transformers' `Conv1D` (GPT-2 style): a Linear whose weight is stored transposed.

    y = x @ weight + bias, weight (nx, nf) = (inputs, outputs), `nf` the number of outputs. There
    is no class to import (transformers is optional), so a module is one when a class in its MRO
    is named "Conv1D" and its tensors have that shape (see `_is_conv1d`). Unit i is column i of
    the weight; everything else is the Linear rule on the transposed weight.
    """

    module_type: type[nn.Module] = nn.Module

    def out_units(self, module: Any) -> int:
        return int(module.weight.shape[1])

    def in_units(self, module: Any) -> int:
        return int(module.weight.shape[0])

    def weights_per_pair(self, module: Any) -> int:
        return 1

    def inputs_per_output(self, module: Any) -> int:
        return int(module.weight.shape[0])

    def bias_params(self, module: Any) -> int:
        return int(module.bias is not None)

    def unsupported(self, module: Any) -> str | None:
        return None

    def unit_weights(self, module: Any) -> torch.Tensor:
        return _float64(module.weight).T.contiguous()

    def unit_view(self, module: Any, tensor: torch.Tensor) -> torch.Tensor:
        """A weight-shaped tensor (nx, nf) as one row per unit: its columns, transposed. Reading
        its rows instead would score the inputs, not the units."""
        if tuple(tensor.shape) != tuple(module.weight.shape):
            raise ValueError(
                f"tensor must have the Conv1D weight's shape {tuple(module.weight.shape)}, got "
                f"{tuple(tensor.shape)}"
            )
        return tensor.T

    def reading(self, module: Any, n_units: int) -> torch.Tensor:
        """Rows are outputs, as for the Linear reading of weight.T."""
        w = _float64(module.weight).T
        block = w.shape[1] // n_units
        return w.reshape(w.shape[0], n_units, block).permute(0, 2, 1).reshape(-1, n_units)

    def weight_from_reading(self, module: Any, reading: torch.Tensor) -> torch.Tensor:
        """In the module's own (inputs, outputs) layout."""
        out = self.out_units(module)
        n = reading.shape[1]
        block = reading.shape[0] // out
        linear = reading.reshape(out, block, n).permute(0, 2, 1).reshape(out, n * block)
        return linear.T.contiguous()

    def slice_outputs(self, module: Any, keep: torch.Tensor) -> nn.Module:
        keep = keep.to(module.weight.device)
        bias = None if module.bias is None else module.bias.index_select(0, keep)
        new = _with_tensors(module, weight=module.weight.index_select(1, keep), bias=bias)
        new.nf = int(keep.numel())
        return new

    def slice_inputs(
        self, module: Any, n_units: int, keep: torch.Tensor, scale: torch.Tensor | None
    ) -> nn.Module:
        keep = keep.to(module.weight.device)
        w = module.weight.detach()
        block = w.shape[0] // n_units
        blocks = w.reshape(n_units, block, w.shape[1]).index_select(0, keep)
        if scale is not None:
            blocks = (_float64(blocks) * scale.to(w.device, torch.float64)[:, None, None]).to(
                w.dtype
            )
        new = _with_tensors(module, weight=blocks.reshape(-1, w.shape[1]))
        if hasattr(new, "nx"):
            new.nx = int(keep.numel()) * block
        return new


def _is_conv1d(module: object) -> bool:
    """HF's Conv1D by class name and behaviour: a 2-D weight (nx, nf) with `nf` outputs and a
    bias of nf entries (or none)."""
    if not isinstance(module, nn.Module):
        return False
    if not any(cls.__name__ == "Conv1D" for cls in type(module).__mro__):
        return False
    # Read the registered tensors directly: while fx traces, attribute access yields proxies.
    weight = module._parameters.get("weight")
    bias = module._parameters.get("bias", module._buffers.get("bias"))
    nf = module.__dict__.get("nf")
    return (
        isinstance(weight, nn.Parameter)
        and weight.ndim == 2
        and isinstance(nf, int)
        and weight.shape[1] == nf
        and (bias is None or (isinstance(bias, torch.Tensor) and tuple(bias.shape) == (nf,)))
    )


_CONV1D = _Conv1DKind()


def is_conv1d(module: object) -> bool:
    """Whether `module` is read as HF's Conv1D (weight (nx, nf), y = x @ weight + bias)."""
    return _is_conv1d(module)


@dataclass(frozen=True)
class NormKind:
    """A per-channel norm with running statistics that folds into the layer before it."""

    module_type: type[nn.Module]

    def units(self, module: Any) -> int:
        return int(module.num_features)

    def params_per_unit(self, module: Any) -> int:
        return 2 if module.affine else 0

    def unsupported(self, module: Any) -> str | None:
        if module.running_mean is None or module.running_var is None:
            return (
                "it has no running statistics (track_running_stats=False), so it cannot be folded"
            )
        return None

    def fold(
        self, weight: torch.Tensor, bias: torch.Tensor, module: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BN(y) = a * y + b per channel with its running statistics, as in eval mode."""
        scale = 1.0 / torch.sqrt(_float64(module.running_var) + module.eps)
        shift = -_float64(module.running_mean) * scale
        if module.affine:
            gamma = _float64(module.weight)
            scale, shift = scale * gamma, shift * gamma + _float64(module.bias)
        return weight * scale[:, None], bias * scale + shift

    def slice(self, module: Any, keep: torch.Tensor) -> nn.Module:
        ref = module.weight if module.affine else module.running_mean
        keep = keep.to(ref.device if ref is not None else "cpu")
        pick = {
            name: getattr(module, name).index_select(0, keep)
            for name in ("weight", "bias", "running_mean", "running_var")
            if getattr(module, name, None) is not None
        }
        new = _with_tensors(module, **pick)
        new.num_features = int(keep.numel())
        return new


LAYER_KINDS: dict[type[nn.Module], LayerKind] = {
    nn.Linear: _LinearKind(),
    nn.Conv2d: _Conv2dKind(),
}
NORM_KINDS: dict[type[nn.Module], NormKind] = {
    nn.BatchNorm1d: NormKind(nn.BatchNorm1d),
    nn.BatchNorm2d: NormKind(nn.BatchNorm2d),
}


def _lookup(table: dict[type[nn.Module], Any], module: object) -> Any:
    for cls in type(module).__mro__:
        if cls in table:
            return table[cls]
    return None


def layer_kind(module: object) -> LayerKind | None:
    """The registry entry for a module whose outputs are units (subclasses included), or None."""
    kind: LayerKind | None = _lookup(LAYER_KINDS, module)
    if kind is None and _is_conv1d(module):
        return _CONV1D
    return kind


def norm_kind(module: object) -> NormKind | None:
    """The registry entry for a foldable norm, or None."""
    return _lookup(NORM_KINDS, module)


def unsupported_reason(module: object) -> str | None:
    """Why `module` cannot be a pair's producer or consumer, or None when it can."""
    kind = layer_kind(module)
    if kind is None:
        supported = ", ".join(f"nn.{t.__name__}" for t in LAYER_KINDS)
        return (
            f"{type(module).__name__} is not a supported layer type ({supported}, or HF's "
            "Conv1D with weight (nx, nf))"
        )
    return kind.unsupported(module)


def slice_depthwise(module: nn.Conv2d, keep: torch.Tensor) -> nn.Conv2d:
    """The kept channels of a depthwise conv (groups == in == out): both sides at once."""
    if not (module.groups == module.in_channels == module.out_channels):
        raise ValueError(
            f"not a depthwise conv (groups={module.groups}, {module.in_channels} -> "
            f"{module.out_channels})"
        )
    keep = keep.to(module.weight.device)
    bias = None if module.bias is None else module.bias.index_select(0, keep)
    new = _with_tensors(module, weight=module.weight.index_select(0, keep), bias=bias)
    k = int(keep.numel())
    new.in_channels = new.out_channels = new.groups = k
    return new


def slice_channel_tensors(
    module: nn.Module, keep: torch.Tensor, attrs: tuple[str, ...] | None = None
) -> nn.Module:
    """A copy of a channel-wise module with its 1-D per-channel tensors (`attrs`, default all
    floating-point parameters and buffers) cut to the kept channels; a `num_features` attribute
    follows."""
    names = attrs
    if names is None:
        names = tuple(
            n
            for n, t in [*module._parameters.items(), *module._buffers.items()]
            if t is not None and t.is_floating_point()
        )
    pick: dict[str, torch.Tensor | None] = {}
    for name in names:
        tensor = getattr(module, name)
        if tensor is None:
            continue
        pick[name] = tensor.index_select(0, keep.to(tensor.device))
    new = _with_tensors(module, **pick)
    if isinstance(getattr(new, "num_features", None), int):
        new.num_features = int(keep.numel())
    return new


def slice_grouped_inputs(module: nn.Conv2d, keep: torch.Tensor) -> nn.Conv2d:
    """A grouped conv reading only the kept input channels (global indices, sorted); every one
    of its `groups` blocks must keep the same number, so it stays a grouped conv."""
    g, c_in, c_out = module.groups, module.in_channels, module.out_channels
    per_in, per_out = c_in // g, c_out // g
    keep = torch.sort(keep.cpu()).values
    block = keep // per_in
    counts = torch.bincount(block, minlength=g)
    if not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
        raise ValueError(
            f"a grouped conv (groups={g}) must keep the same number of input channels in each "
            f"block, got {counts.tolist()}"
        )
    k = int(counts[0])
    local = (keep - block * per_in).reshape(g, k)  # kept positions within each block
    rows = local.repeat_interleave(per_out, dim=0).to(module.weight.device)  # (c_out, k)
    w = module.weight.detach()
    index = rows[:, :, None, None].expand(-1, -1, w.shape[2], w.shape[3])
    new = _with_tensors(module, weight=torch.gather(w, 1, index))
    new.in_channels = int(keep.numel())
    return new
