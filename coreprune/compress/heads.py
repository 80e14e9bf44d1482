"""Prune whole attention heads: score them, cut them as coupled groups, refit the output
projection by least squares.

A head is the group of its q, k, v output slices and the output projection's input columns it
writes (`coreprune.surgery.attention`). Modules are pruned one at a time in model order, each on
the partly compressed network, as `compress` does for FFN pairs: score the heads, keep the best,
cut, and (with `compensate="lstsq"`) refit the output projection on the kept heads' outputs so
it reproduces the dense projection's output on calibration inputs, every (batch, token) a row.

Head scores (higher is kept), from the output projection's input X (the concatenated head
outputs, one column c per head channel) and weight W:
- "magnitude": sum of |w| over the head's q, k, v rows and output columns (Li et al.'s filter
  L1, for the coupled group);
- "wanda": Wanda's structured form summed over the head's channels, sum_c sum_i |W_ic| ||X_c||;
- "flap": FLAP's fluctuation summed over the head's channels, sum_c Var(X_c) ||W_:,c||^2 (its
  head score); with compensate="bias", FLAP's bias compensation of the removed heads' means;
- "refit": greedy structured OBS over heads, the coreset's refit choice (`coreset.refit`): drop,
  one at a time, the head whose removal raises the output projection's ridge refit error
  ||T - A_S W_S|| least (a kept set judged by what the refit can do with it, not by any head's
  share of the dense output); the note gives the kept heads' optimality gap (Theorem G);
- "random": a seeded random choice.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from coreprune.checks import check_choice
from coreprune.compress.capture import capture_input, capture_output
from coreprune.coreset.refit import GapCertificate, RefitProblem, greedy_selection
from coreprune.surgery.attention import (
    AttentionHeads,
    HeadAttention,
    check_heads,
    find_attention_heads,
    head_columns,
    prune_heads,
)
from coreprune.surgery.registry import layer_kind
from coreprune.surgery.rewire import DEFAULT_RIDGE, refit_consumer
from coreprune.torch_utils import replace_submodule

__all__ = [
    "HEAD_METHODS",
    "HeadPruneResult",
    "as_head_attention",
    "head_scores",
    "prune_attention_heads",
    "refit_out_projection",
]

HEAD_METHODS = ("magnitude", "wanda", "flap", "refit", "random")
COMPENSATIONS = ("none", "lstsq", "bias")
_MAX_ROWS = 16_384


@dataclass(frozen=True)
class HeadPruneResult:
    """The pruned model, each module's kept heads (indices into its dense heads), the specs
    as found in the dense model, and per module what happened."""

    model: nn.Module
    specs: tuple[AttentionHeads, ...]
    keeps: tuple[torch.Tensor, ...]
    notes: tuple[str, ...] = field(default=())


def as_head_attention(
    model: nn.Module, specs: Sequence[AttentionHeads]
) -> tuple[nn.Module, list[AttentionHeads]]:
    """A copy of `model` with every nn.MultiheadAttention among `specs` replaced by the
    equivalent `HeadAttention` (its out projection is then called as a module, so its input can
    be read), and the specs for that copy."""
    work = copy.deepcopy(model)
    out: list[AttentionHeads] = []
    for spec in specs:
        module = work.get_submodule(spec.module)
        if isinstance(module, nn.MultiheadAttention):
            replace_submodule(work, spec.module, HeadAttention.from_multihead(module))
            spec = AttentionHeads(
                spec.module, "separate", tuple(f"{spec.module}.{c}_proj" for c in "qkv"),
                f"{spec.module}.out_proj", spec.num_heads, spec.head_dim,
            )  # fmt: skip
        out.append(spec)
    return work, out


def _consumer_matrix(layer: nn.Module) -> torch.Tensor:
    """The output projection's weight as (outputs, inputs), float64, whatever its layout."""
    kind = layer_kind(layer)
    if kind is None:
        raise TypeError(f"output projection is {type(layer).__name__}, not a registry layer")
    return kind.reading(layer, kind.in_units(layer))


def head_scores(
    model: nn.Module,
    spec: AttentionHeads,
    method: str,
    calibration: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One score per head of `spec` in `model` (higher is kept); see the module docstring."""
    check_choice(method, HEAD_METHODS, "method")
    h, d = spec.num_heads, spec.head_dim
    if method == "random":
        return torch.rand(h, generator=generator, dtype=torch.float64)
    w_out = _consumer_matrix(model.get_submodule(spec.out))  # (outputs, h * d)
    if method == "magnitude":
        score = w_out.abs().sum(dim=0).reshape(h, d).sum(dim=1)
        for name in spec.projections:
            layer = model.get_submodule(name)
            kind = layer_kind(layer)
            assert kind is not None
            rows = kind.unit_weights(layer).abs().sum(dim=1)
            parts = rows.reshape(-1, h, d).sum(dim=(0, 2))  # fused: (3, h, d)
            score = score + parts
        return score
    if calibration is None:
        raise ValueError(f"method={method!r} needs calibration= (a batch of model inputs)")
    x = capture_input(model, spec.out, calibration).double().reshape(-1, h * d)
    if method == "wanda":
        per_channel = w_out.abs().sum(dim=0) * x.norm(dim=0)
        return per_channel.reshape(h, d).sum(dim=1)
    if method == "flap":
        per_channel = x.var(dim=0, unbiased=True) * (w_out**2).sum(dim=0)
        return per_channel.reshape(h, d).sum(dim=1)
    raise AssertionError(method)  # "refit" is a selector, not a score: see _choose


def _rows(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    if x.shape[0] > _MAX_ROWS:
        pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:_MAX_ROWS]
        x, y = x[pick], y[pick]
    return x, y


def _greedy_refit(
    model: nn.Module, dense: nn.Module, spec: AttentionHeads, calibration: torch.Tensor, keep: int,
    ridge: float,
) -> tuple[torch.Tensor, GapCertificate]:  # fmt: skip
    """Greedy structured OBS over heads (`coreprune.coreset.refit`): each head owns its
    head_dim input columns of the output projection, and heads are removed one at a time
    (a twentieth of the heads per step, at least one), each the one whose removal raises the
    projection's ridge refit error least; with the optimality gap of the kept heads (Theorem G)
    on the calibration rows."""
    x = capture_input(model, spec.out, calibration)
    target = capture_output(dense, spec.out, calibration)
    x, target = _rows(x, target)
    bias = getattr(model.get_submodule(spec.out), "bias", None) is not None
    owner = torch.full((x.shape[1],), -1, dtype=torch.long)
    for head in range(spec.num_heads):
        owner[head_columns(spec, [head])] = head
    problem = RefitProblem.from_rows(x, target, owner.to(x.device), ridge=ridge, bias=bias)
    selection = greedy_selection([problem], spec.num_heads, keep)
    return selection.keep, selection.gap


def refit_out_projection(
    dense: nn.Module,
    pruned: nn.Module,
    spec: AttentionHeads,
    calibration: torch.Tensor,
    *,
    ridge: float = DEFAULT_RIDGE,
) -> tuple[nn.Module, str]:
    """A copy of `pruned` whose output projection of `spec` is refitted by ridge least squares
    to reproduce `dense`'s projection output from the kept heads (every leading index a row).
    Both models must call the projection as a module (`as_head_attention`)."""
    inputs = capture_input(pruned, spec.out, calibration)
    target = capture_output(dense, spec.out, calibration)
    refit, fit = refit_consumer(pruned.get_submodule(spec.out), inputs, target, ridge=ridge)
    out = copy.deepcopy(pruned)
    replace_submodule(out, spec.out, refit)
    return out, f"least squares on {fit.rows} rows, relative residual {fit.residual:.3g}"


def _bias_compensation(
    dense: nn.Module, pruned: nn.Module, spec: AttentionHeads, removed: torch.Tensor,
    calibration: torch.Tensor,
) -> nn.Module:  # fmt: skip
    """FLAP: the removed heads' mean outputs, through their columns, into the projection bias."""
    x = capture_input(dense, spec.out, calibration).double()
    mean = x.reshape(-1, x.shape[-1]).mean(dim=0)
    w = _consumer_matrix(dense.get_submodule(spec.out))
    cols = head_columns(spec, removed)
    shift = w[:, cols] @ mean[cols]
    out = copy.deepcopy(pruned)
    layer = out.get_submodule(spec.out)
    bias = getattr(layer, "bias", None)
    if not isinstance(bias, torch.Tensor):
        raise ValueError(f"{spec.out!r} has no bias to compensate into")
    with torch.no_grad():
        bias.add_(shift.to(bias))
    return out


def prune_attention_heads(
    model: nn.Module,
    fraction: float,
    *,
    method: str = "magnitude",
    calibration: torch.Tensor | None = None,
    compensate: str = "none",
    specs: Sequence[AttentionHeads] | None = None,
    ridge: float = DEFAULT_RIDGE,
    generator: torch.Generator | None = None,
) -> HeadPruneResult:
    """Remove `fraction` of the heads of every attention module (uniformly: each keeps
    round((1 - fraction) * heads), at least one), chosen by `method`, and rewire the output
    projection (`compensate`: "none", "lstsq" or, FLAP's, "bias"). `specs` default to
    `find_attention_heads(model)`. `model` is not changed; nn.MultiheadAttention modules come
    back as `HeadAttention`.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"fraction must be a number in [0, 1), got {type(fraction).__name__}")
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1) (the share of heads removed), got {fraction}")
    check_choice(method, HEAD_METHODS, "method")
    check_choice(compensate, COMPENSATIONS, "compensate")
    needs = method in ("wanda", "flap", "refit") or compensate != "none"
    if needs and calibration is None:
        raise ValueError(
            f"method={method!r} with compensate={compensate!r} needs calibration= (a batch of "
            "model inputs); magnitude or random with compensate='none' need none"
        )
    if calibration is not None and not isinstance(calibration, torch.Tensor):
        raise TypeError(f"calibration must be a tensor, got {type(calibration).__name__}")
    found = list(find_attention_heads(model) if specs is None else specs)
    if not found:
        raise ValueError("no attention module found; pass specs=[AttentionHeads.fused(...)]")
    for spec in found:
        check_heads(model, spec)
    dense, current = as_head_attention(model, found)
    work = copy.deepcopy(dense)
    keeps: list[torch.Tensor] = []
    notes: list[str] = []
    for spec in current:
        count = max(1, round((1 - fraction) * spec.num_heads))
        if count == spec.num_heads:
            keeps.append(torch.arange(spec.num_heads))
            notes.append(f"{spec.module}: every head kept")
            continue
        gap = None
        if method == "refit":
            assert calibration is not None
            keep, gap = _greedy_refit(work, dense, spec, calibration, count, ridge)
        else:
            scores = head_scores(work, spec, method, calibration, generator=generator)
            keep = torch.argsort(scores, descending=True, stable=True)[:count]
        keep = keep.sort().values
        removed = torch.tensor([h for h in range(spec.num_heads) if h not in set(keep.tolist())])
        cut = prune_heads(work, [spec], [keep])
        note = f"{spec.module}: kept heads {keep.tolist()} of {spec.num_heads}"
        if gap is not None:
            note += f"; {gap.describe()}"
        if compensate == "lstsq":
            assert calibration is not None
            cut, how = refit_out_projection(
                dense, cut, _after(spec, keep), calibration, ridge=ridge
            )
            note += f"; {how}"
        elif compensate == "bias":
            assert calibration is not None
            cut = _bias_compensation(work, cut, spec, removed, calibration)
            note += "; removed heads' means folded into the projection bias"
        work = cut
        keeps.append(keep)
        notes.append(note)
    return HeadPruneResult(work, tuple(found), tuple(keeps), tuple(notes))


def _after(spec: AttentionHeads, keep: torch.Tensor) -> AttentionHeads:
    """The spec of a module once it keeps `keep` (names unchanged, fewer heads)."""
    return AttentionHeads(
        spec.module, spec.layout, spec.projections, spec.out, int(keep.numel()), spec.head_dim,
        spec.heads_attr,
    )  # fmt: skip
