"""Tracing a model for the pair walk and the group discovery: the tracer both use, the one error
a failed trace becomes (saying what to do instead), and which modules share weights.
"""

from __future__ import annotations

from torch import fx, nn

from coreprune.surgery.activations import looks_like_activation
from coreprune.surgery.attention import HeadAttention
from coreprune.surgery.graph.pair import FxTraceError
from coreprune.surgery.registry import layer_kind


class _Tracer(fx.Tracer):
    """The default tracer, but every layer type of the registry (HF's Conv1D included) and every
    module that looks like an activation (HF's GELUActivation, a subclass of nn.ReLU, ...) stays
    one call, so the walk sees the layer and can ask the activation what it computes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if super().is_leaf_module(m, module_qualified_name) or layer_kind(m) is not None:
            return True
        if isinstance(m, HeadAttention):  # a cut nn.MultiheadAttention stays one call, as it was
            return True
        stateless = not any(True for _ in m.parameters()) and not any(True for _ in m.buffers())
        return stateless and looks_like_activation(m)


_BY_HAND = (
    "Pass the pairs by hand instead (compress(..., pairs=[PrunablePair(...), ...])) and check "
    "them with coreprune.surgery.graph.validate_pairs."
)


def _trace(model: nn.Module, tracer: fx.Tracer | None = None, hint: str = _BY_HAND) -> fx.Graph:
    """The model's fx graph, traced by `tracer` (default: the pair walk's); an FxTraceError
    naming `hint` when fx cannot trace it."""
    try:
        return (tracer or _Tracer()).trace(model)
    except Exception as err:  # fx raises many types; all mean the same thing here
        raise FxTraceError(
            f"torch.fx could not trace {type(model).__name__} ({type(err).__name__}: {err}). "
            + hint
        ) from err


def _tied_modules(model: nn.Module) -> dict[str, str]:
    """Module name -> the other module it shares a parameter tensor with (weight tying)."""
    owner: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, module in model.named_modules():
        for param in module._parameters.values():
            if param is None:
                continue
            first = owner.setdefault(id(param), name)
            if first != name:
                tied[name], tied[first] = first, name
    return tied
