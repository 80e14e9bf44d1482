"""The group discovery's step for a called module: how each kind of module writes, reads,
keeps or ties the channel spaces of its input.

A registry layer with groups=1 writes a new space and reads its input's (a producer and a
consumer); a depthwise conv keeps its input's space and is sliced on both sides; a grouped conv
makes both spaces split into per-group blocks; batch norms (fused ones too), dropout, identity,
pooling and activations keep the space; any other leaf module keeps it only if a probe shows it
is channel-wise.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import fx, nn

from coreprune.surgery.activations import looks_like_activation, module_activation
from coreprune.surgery.graph.ops import _DROPOUT_MODULES, _POOL_MODULES
from coreprune.surgery.groups.group import (
    ChannelWise,
    Consumer,
    is_depthwise,
    is_grouped,
)
from coreprune.surgery.groups.spaces import _GATE_NAMES, _Spaces, _Tag
from coreprune.surgery.registry import layer_kind, norm_kind

_PROBE_SIZE = 5


class _ModuleSteps(_Spaces):
    """The steps for `call_module` nodes."""

    def _module(self, node: fx.Node, inputs: list[_Tag], position: int) -> _Tag | str:
        name = str(node.target)
        module = self.modules[name]
        tag = self._only_first(node, inputs)
        problem = self._module_problem(name)
        kind = layer_kind(module)
        if kind is not None:
            return self._layer(node, name, module, tag, problem, position)
        if isinstance(tag, str):
            return tag
        if problem is not None:
            return problem
        if norm_kind(module) is not None:
            return self._norm(name, module, tag)
        if isinstance(module, (*_DROPOUT_MODULES, nn.Identity)):
            return tag
        if isinstance(module, nn.Flatten):
            if (module.start_dim, module.end_dim) != (1, -1):
                return f"flatten {name!r} does not keep the batch (start_dim=1, end_dim=-1)"
            return self._flatten(tag, name)
        if type(module) in _POOL_MODULES:
            if getattr(module, "return_indices", False):
                return f"pooling {name!r} returns indices"
            return self._pool(tag, name)
        if looks_like_activation(module):
            try:
                act = module_activation(module, name)
            except ValueError as err:
                return f"activation {name!r} is not elementwise: {err}"
            gate = act is not None and act.name in _GATE_NAMES
            return self._activation(tag, gate)
        return self._probe(name, module, tag)

    def _module_problem(self, name: str) -> str | None:
        module = self.modules[name]
        stateful = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
        if self.calls[name] > 1 and stateful:
            return (
                f"{name!r} is called {self.calls[name]} times in forward (one weight, many calls)"
            )
        if name in self.tied:
            return f"{name!r} shares a parameter with {self.tied[name]!r} (tied weights)"
        return None

    def _layer(
        self,
        node: fx.Node,
        name: str,
        module: nn.Module,
        tag: _Tag | str,
        problem: str | None,
        position: int,
    ) -> _Tag | str:
        kind = layer_kind(module)
        assert kind is not None
        in_tag = tag if isinstance(tag, _Tag) else None
        if isinstance(tag, str):
            for t in self._input_tags(node):
                self.block(t, tag)
        if not (is_depthwise(module) or is_grouped(module)):
            problem = problem or kind.unsupported(module)
        if is_depthwise(module) and problem is None and in_tag is not None:
            return self._depthwise(name, module, in_tag)
        if is_depthwise(module) and problem is None:
            problem = f"depthwise conv {name!r} reads channels that are not traced"
        if is_grouped(module) and in_tag is not None and len(in_tag.spaces) > 1:
            problem = (
                f"{name!r} is a grouped convolution (groups={module.groups}) fed by a "
                "concatenation: its blocks do not line up with the concatenated channels"
            )
        out_width = kind.out_units(module)
        sid = self.new(out_width, position)
        layout = "conv" if isinstance(module, nn.Conv2d) else "dense"
        out = _Tag((sid,), (out_width,), layout, fresh=name)
        if problem is not None:
            self.block(in_tag, problem)
            self.space(sid).blocked.append(problem)
            return out
        self.space(sid).producers.append(name)
        if is_grouped(module):
            assert isinstance(module, nn.Conv2d)
            self.space(sid).blocks = math.lcm(self.space(sid).blocks, module.groups)
            self.space(sid).joins.append(f"grouped conv {name!r} (groups={module.groups})")
            if in_tag is not None:
                space = self.space(in_tag.spaces[0])
                space.blocks = math.lcm(space.blocks, module.groups)
                space.joins.append(f"grouped conv {name!r} (groups={module.groups})")
        if in_tag is not None:
            reason = self._read(name, module, in_tag)
            if reason is not None:
                self.block(in_tag, reason)
        return out

    def _read(self, name: str, module: nn.Module, tag: _Tag) -> str | None:
        """Record `module` as a consumer of every space in `tag`, or say why it cannot read them."""
        kind = layer_kind(module)
        assert kind is not None
        total = tag.total
        if total is None:
            return f"{name!r} reads channels whose width is unknown"
        width = kind.in_units(module)
        conv = isinstance(module, nn.Conv2d)
        if tag.layout == "any":
            return None
        if conv and tag.layout != "conv":
            return f"the conv {name!r} reads features that are not channels"
        if not conv and tag.layout == "conv":
            return f"{name!r} reads a conv output without a flatten (it mixes a spatial dimension)"
        block = 1
        if tag.layout == "flat":
            if width % total:
                return f"{name!r} reads {width} features, not a multiple of {total} channels"
            block = width // total
        elif width != total:
            return f"{name!r} reads {width} channels, not {total}"
        for sid, offset in zip(tag.spaces, tag.offsets(), strict=True):
            self.space(sid).consumers.append(Consumer(name, offset, total, block))
        return None

    def _depthwise(self, name: str, module: nn.Module, tag: _Tag) -> _Tag | str:
        if tag.layout != "conv" or tag.total != module.in_channels:
            return f"depthwise conv {name!r} does not read exactly the traced channels"
        for sid, offset in zip(tag.spaces, tag.offsets(), strict=True):
            self.space(sid).channelwise.append(
                ChannelWise(name, offset, int(module.in_channels), "depthwise")
            )
            self.space(sid).joins.append("depthwise conv")
        return tag.plain()

    def _norm(self, name: str, module: nn.Module, tag: _Tag) -> _Tag | str:
        kind = norm_kind(module)
        assert kind is not None
        problem = kind.unsupported(module)
        if problem is not None:
            return f"batch norm {name!r}: {problem}"
        if tag.total != kind.units(module) or tag.layout not in ("conv", "dense"):
            return f"batch norm {name!r} has {kind.units(module)} features, not {tag.total}"
        fused = type(module) not in (nn.BatchNorm1d, nn.BatchNorm2d)
        for sid, offset in zip(tag.spaces, tag.offsets(), strict=True):
            space = self.space(sid)
            space.channelwise.append(ChannelWise(name, offset, kind.units(module), "norm"))
            if fused:
                space.joins.append(f"fused norm {type(module).__name__}")
        if tag.fresh is not None and len(tag.spaces) == 1:
            self.space(tag.spaces[0]).norms_after[tag.fresh] = name
        return tag.plain()

    def _probe(self, name: str, module: nn.Module, tag: _Tag) -> _Tag | str:
        """A leaf module is channel-wise when perturbing input channel c changes only output
        channel c (checked on random inputs); its tensors must be 1-D per-channel."""
        total = tag.total
        label = f"module {name!r} ({type(module).__name__})"
        if total is None or tag.layout not in ("conv", "dense"):
            return f"{label} cannot be probed (unknown width)"
        tensors = [*module.parameters(), *module.buffers()]
        if any(t.ndim != 1 or t.shape[0] != total for t in tensors if t.is_floating_point()):
            return f"{label} has tensors that are not one entry per channel"
        probe = copy.deepcopy(module).eval()
        shape = (2, total, _PROBE_SIZE, _PROBE_SIZE) if tag.layout == "conv" else (2, total)
        gen = torch.Generator().manual_seed(0)
        try:
            with torch.no_grad():
                x = torch.randn(shape, generator=gen)
                base = probe(x)
                for c in sorted({0, total - 1}):
                    bumped = x.clone()
                    bumped[:, c] += 1.0
                    changed = (probe(bumped) - base).abs()
                    others = torch.ones(total, dtype=torch.bool)
                    others[c] = False
                    if not isinstance(base, torch.Tensor) or base.shape != x.shape:
                        return f"{label} changes the shape of its input"
                    if changed[:, others].max() > 0:
                        return f"{label} is not channel-wise (it mixes channels)"
        except Exception as err:  # a probe failing for any reason means: not understood
            return f"{label} could not be probed ({type(err).__name__}: {err})"
        for sid, offset in zip(tag.spaces, tag.offsets(), strict=True):
            self.space(sid).channelwise.append(ChannelWise(name, offset, total, "probed"))
        return tag.plain()
