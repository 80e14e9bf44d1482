"""Attention heads as coupled groups: find them, cut whole heads, keep the module's contract.

A head h of multi-head attention owns a slice of the q, k and v projections' outputs (head_dim
rows of each) and the matching head_dim input columns of the output projection. Removing it
means cutting all four slices together, and telling the module it now has fewer heads; any
other cut changes what the remaining heads compute. Three layouts are handled:

- "fused": one qkv layer (nn.Linear or HF Conv1D) whose outputs are [q heads | k heads | v
  heads], each head `head_dim` wide (timm, HF ViT/GPT-2's c_attn), an output projection, and a
  `num_heads` attribute the module's forward reads (e.g. `coreprune.zoo.vit`);
- "separate": q, k and v layers of their own, same head layout;
- "mha": `nn.MultiheadAttention`. Its embed_dim is at once its input, inner and output width,
  so it cannot hold fewer heads; a cut replaces it by `HeadAttention`, which computes the same
  function with separate q/k/v Linears and the same call signature and return value.

`find_attention_heads` recognises these by module type and attributes (fx keeps an attention
module whole, and a reshape that splits heads is not a unit-wise op, so the pair walk leaves
them alone); `AttentionHeads.fused(...)` / `.separate(...)` name one by hand. Cutting never
mutates the caller's model (`prune_heads` works on a copy). Keeping every head is the
identity: the model is returned unchanged, bit for bit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from coreprune.surgery.registry import layer_kind
from coreprune.torch_utils import replace_submodule

__all__ = [
    "AttentionHeads",
    "HeadAttention",
    "check_heads",
    "find_attention_heads",
    "head_columns",
    "head_rows",
    "prune_heads",
]

LAYOUTS = ("fused", "separate", "mha")
_OUT_NAMES = ("proj", "out_proj", "o_proj", "c_proj", "o", "out", "dense")
_QKV_NAMES = ("qkv", "c_attn", "in_proj", "qkv_proj", "Wqkv")
_SEPARATE_NAMES = (("q", "k", "v"), ("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))


@dataclass(frozen=True)
class AttentionHeads:
    """Where one attention module's heads live (paths relative to the model).

    `projections` are the qkv layer ("fused"), the q, k, v layers ("separate") or empty
    ("mha"); `out` is the output projection; `heads_attr` the attribute holding the head count
    (None for "mha").
    """

    module: str
    layout: str
    projections: tuple[str, ...]
    out: str
    num_heads: int
    head_dim: int
    heads_attr: str | None = "num_heads"

    @staticmethod
    def fused(
        module: str, num_heads: int, head_dim: int, *, qkv: str = "qkv", out: str = "proj",
        heads_attr: str = "num_heads",
    ) -> AttentionHeads:  # fmt: skip
        """By hand: a fused [q | k | v] layer `module.qkv` and output `module.out`."""
        prefix = f"{module}." if module else ""
        return AttentionHeads(
            module, "fused", (prefix + qkv,), prefix + out, num_heads, head_dim, heads_attr
        )

    @staticmethod
    def separate(
        module: str, num_heads: int, head_dim: int, *, q: str = "q", k: str = "k", v: str = "v",
        out: str = "o", heads_attr: str = "num_heads",
    ) -> AttentionHeads:  # fmt: skip
        """By hand: separate q, k, v layers and an output layer inside `module`."""
        prefix = f"{module}." if module else ""
        names = (prefix + q, prefix + k, prefix + v)
        return AttentionHeads(
            module, "separate", names, prefix + out, num_heads, head_dim, heads_attr
        )


class HeadAttention(nn.Module):
    """What `nn.MultiheadAttention` computes, with `num_heads` heads of `head_dim` each that
    need not fill its embed_dim: separate q/k/v Linears (embed -> heads * head_dim) and an
    out_proj Linear (heads * head_dim -> embed). Same call signature and (output, weights)
    return as nn.MultiheadAttention (no bias_k/bias_v, no add_zero_attn)."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @staticmethod
    def from_multihead(mha: nn.MultiheadAttention) -> HeadAttention:
        """The same function as `mha` (eval mode), in this module's layout."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported"
            )
        e, h = mha.embed_dim, mha.num_heads
        bias = mha.in_proj_bias is not None
        new = HeadAttention(
            e, h, e // h, kdim=mha.kdim, vdim=mha.vdim, bias=bias, dropout=mha.dropout,
            batch_first=mha.batch_first,
        )  # fmt: skip
        if mha._qkv_same_embed_dim:
            assert mha.in_proj_weight is not None
            weights = mha.in_proj_weight.detach().chunk(3)
        else:
            weights = tuple(getattr(mha, f"{c}_proj_weight").detach() for c in ("q", "k", "v"))
        biases = mha.in_proj_bias.detach().chunk(3) if bias else (None, None, None)
        ref = mha.out_proj.weight
        with torch.no_grad():
            for layer, w, b in zip(
                (new.q_proj, new.k_proj, new.v_proj), weights, biases, strict=True
            ):
                layer.weight.copy_(w)
                if b is not None:
                    layer.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight.detach())
            if bias and mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias.detach())
        new.to(device=ref.device, dtype=ref.dtype)
        new.train(mha.training)
        return new

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = query if key is None else key
        value = key if value is None else value
        unbatched = query.ndim == 2
        if unbatched:
            query, key, value = query[:, None], key[:, None], value[:, None]
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask[None]
        if not self.batch_first or unbatched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, tq, _ = query.shape
        tk = key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).reshape(b, tq, h, d).transpose(1, 2)
        k = self.k_proj(key).reshape(b, tk, h, d).transpose(1, 2)
        v = self.v_proj(value).reshape(b, tk, h, d).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))
        scores = scores + _additive_mask(attn_mask, key_padding_mask, is_causal, b, h, tq, tk, q)
        weights = scores.softmax(dim=-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, p=self.dropout)
        out = (weights @ v).transpose(1, 2).reshape(b, tq, h * d)
        out = self.out_proj(out)
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out[:, 0]
        if not need_weights:
            return out, None
        shown = weights.mean(dim=1) if average_attn_weights else weights
        return out, shown[0] if unbatched else shown


def _additive_mask(
    attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, is_causal: bool,
    b: int, h: int, tq: int, tk: int, like: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """nn.MultiheadAttention's masks as one additive (b, h, tq, tk) term (-inf = blocked)."""
    total = torch.zeros(b, h, tq, tk, dtype=like.dtype, device=like.device)
    if is_causal and attn_mask is None:
        attn_mask = torch.ones(tq, tk, dtype=torch.bool, device=like.device).triu(1)
    for mask, shape in ((attn_mask, None), (key_padding_mask, (b, 1, 1, tk))):
        if mask is None:
            continue
        if mask.dtype == torch.bool:
            mask = torch.zeros_like(mask, dtype=like.dtype).masked_fill(mask, float("-inf"))
        if shape is not None:
            total = total + mask.to(like.dtype).reshape(shape)
        elif mask.ndim == 2:
            total = total + mask.to(like.dtype)
        else:
            total = total + mask.to(like.dtype).reshape(b, h, tq, tk)
    return total


def head_rows(heads: Sequence[int] | torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Indices of one projection's outputs (a q, k or v layer) that belong to `heads`."""
    keep = torch.as_tensor(heads, dtype=torch.long).flatten()
    return (keep[:, None] * head_dim + torch.arange(head_dim)[None, :]).flatten()


def head_columns(spec: AttentionHeads, heads: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Indices of the output projection's inputs that `heads` write (the same as `head_rows`:
    heads are concatenated in order)."""
    return head_rows(heads, spec.num_heads, spec.head_dim)


def _fused_rows(spec: AttentionHeads, keep: torch.Tensor) -> torch.Tensor:
    inner = spec.num_heads * spec.head_dim
    rows = head_rows(keep, spec.num_heads, spec.head_dim)
    return torch.cat([rows + part * inner for part in range(3)])


def _check_keep(spec: AttentionHeads, heads: object) -> torch.Tensor:
    if not isinstance(heads, (torch.Tensor, Sequence)) or isinstance(heads, (str, bytes)):
        raise TypeError(f"heads must be a sequence of head indices, got {type(heads).__name__}")
    keep = torch.as_tensor(heads)
    if keep.dtype not in (torch.int64, torch.int32) and keep.numel() > 0:
        raise TypeError("heads must hold integer head indices")
    keep = keep.long().flatten()
    if keep.numel() == 0:
        raise ValueError(f"{spec.module!r}: keep at least one head (got none)")
    if keep.min() < 0 or keep.max() >= spec.num_heads or keep.unique().numel() != keep.numel():
        raise ValueError(
            f"{spec.module!r}: heads must be distinct indices in [0, {spec.num_heads}), "
            f"got {keep.tolist()}"
        )
    return keep.sort().values


def check_heads(model: nn.Module, spec: AttentionHeads) -> None:
    """Raise unless the spec's layers exist in `model` with the widths it says."""
    if not isinstance(spec, AttentionHeads):
        raise TypeError(f"spec must be an AttentionHeads, got {type(spec).__name__}")
    if spec.layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {spec.layout!r}")
    inner = spec.num_heads * spec.head_dim
    if spec.layout == "mha":
        module = model.get_submodule(spec.module)
        if not isinstance(module, (nn.MultiheadAttention, HeadAttention)):
            raise TypeError(f"{spec.module!r} is {type(module).__name__}, not multi-head attention")
        return
    widths = {"fused": 3 * inner, "separate": inner}[spec.layout]
    for name in spec.projections:
        layer = model.get_submodule(name)
        kind = layer_kind(layer)
        if kind is None or kind.out_units(layer) != widths:
            raise ValueError(
                f"{name!r} must be a Linear/Conv1D with {widths} outputs "
                f"({spec.num_heads} heads x {spec.head_dim}), got {type(layer).__name__}"
            )
    out = model.get_submodule(spec.out)
    kind = layer_kind(out)
    if kind is None or kind.in_units(out) != inner:
        raise ValueError(f"{spec.out!r} must read {inner} inputs ({spec.num_heads} heads)")
    if spec.heads_attr is not None:
        owner = model.get_submodule(spec.module)
        if getattr(owner, spec.heads_attr, None) != spec.num_heads:
            raise ValueError(
                f"{spec.module!r}.{spec.heads_attr} must be {spec.num_heads}, got "
                f"{getattr(owner, spec.heads_attr, None)!r}"
            )


def find_attention_heads(model: nn.Module) -> list[AttentionHeads]:
    """Every attention module whose heads can be cut, in module order.

    `nn.MultiheadAttention` and `HeadAttention` by type; a hand-written module when it has an
    int `num_heads`, a fused qkv layer (named like qkv, c_attn) or q/k/v layers, and an output
    projection (proj, out_proj, o_proj, c_proj, ...) whose widths fit `num_heads` heads.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    found: list[AttentionHeads] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            e, h = module.embed_dim, module.num_heads
            found.append(AttentionHeads(name, "mha", (), f"{name}.out_proj", h, e // h, None))
            continue
        spec = _hand_written(name, module)
        if spec is not None:
            found.append(spec)
    return found


def _hand_written(name: str, module: nn.Module) -> AttentionHeads | None:
    heads = module.__dict__.get("num_heads")
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        return None
    children = dict(module.named_children())
    out = next((n for n in _OUT_NAMES if n in children and layer_kind(children[n])), None)
    if out is None:
        return None
    out_layer = children[out]
    kind = layer_kind(out_layer)
    assert kind is not None
    inner = kind.in_units(out_layer)
    if inner % heads:
        return None
    head_dim = inner // heads
    prefix = f"{name}." if name else ""
    for qkv in _QKV_NAMES:
        layer = children.get(qkv)
        qkind = layer_kind(layer) if layer is not None else None
        if qkind is not None and qkind.out_units(layer) == 3 * inner:
            spec = AttentionHeads(name, "fused", (prefix + qkv,), prefix + out, heads, head_dim)
            return spec if module.__dict__.get("head_dim", head_dim) == head_dim else None
    for names in _SEPARATE_NAMES:
        layers = [children.get(n) for n in names]
        kinds = [layer_kind(m) if m is not None else None for m in layers]
        if all(
            k is not None and k.out_units(m) == inner for k, m in zip(kinds, layers, strict=True)
        ):
            return AttentionHeads(
                name, "separate", tuple(prefix + n for n in names), prefix + out, heads, head_dim
            )
    return None


def prune_heads(
    model: nn.Module, specs: Sequence[AttentionHeads], keeps: Sequence[Sequence[int] | torch.Tensor]
) -> nn.Module:
    """A copy of `model` in which each attention module keeps only the heads in `keeps`.

    The q, k, v slices of removed heads and their output-projection columns are cut, and the
    head count is lowered; the output projection's bias and output width are untouched (refit
    it with `coreprune.compress.heads.refit_out_projection` to compensate). An
    nn.MultiheadAttention that loses heads becomes a `HeadAttention`. A module keeping every
    head is left exactly as it was. `model` is not changed.
    """
    if len(specs) != len(keeps):
        raise ValueError(f"got {len(specs)} attention specs but {len(keeps)} keeps; one each")
    checked = []
    for spec, heads in zip(specs, keeps, strict=True):
        check_heads(model, spec)
        checked.append(_check_keep(spec, heads))
    work = copy.deepcopy(model)
    for spec, keep in zip(specs, checked, strict=True):
        if keep.numel() == spec.num_heads:
            continue
        _cut(work, spec, keep)
    return work


def _cut(work: nn.Module, spec: AttentionHeads, keep: torch.Tensor) -> None:
    columns = head_columns(spec, keep)
    if spec.layout == "mha":
        module = work.get_submodule(spec.module)
        if isinstance(module, nn.MultiheadAttention):
            module = HeadAttention.from_multihead(module)
        spec = AttentionHeads(
            spec.module, "separate",
            tuple(f"{spec.module}.{c}_proj" for c in "qkv"), f"{spec.module}.out_proj",
            spec.num_heads, spec.head_dim,
        )  # fmt: skip
        replace_submodule(work, spec.module, module)
    if spec.layout == "fused":
        rows_by_layer = {spec.projections[0]: _fused_rows(spec, keep)}
    else:
        rows = head_rows(keep, spec.num_heads, spec.head_dim)
        rows_by_layer = {name: rows for name in spec.projections}
    for name, rows in rows_by_layer.items():
        layer = work.get_submodule(name)
        kind = layer_kind(layer)
        assert kind is not None
        replace_submodule(work, name, kind.slice_outputs(layer, rows))
    out = work.get_submodule(spec.out)
    kind = layer_kind(out)
    assert kind is not None
    inner = spec.num_heads * spec.head_dim
    replace_submodule(work, spec.out, kind.slice_inputs(out, inner, columns, None))
    owner: Any = work.get_submodule(spec.module)
    setattr(owner, spec.heads_attr or "num_heads", int(keep.numel()))
