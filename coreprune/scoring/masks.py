"""Unstructured pruning: any scoring rule -> exact-sparsity weight masks on a copy of the model.

Masks follow `torch.nn.utils.prune`: each pruned module gets a `weight_orig` parameter and a
`weight_mask` buffer, and `torch.nn.utils.prune.remove` makes the pruning permanent.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from coreprune.checks import check_bool, check_choice, check_fraction, check_module
from coreprune.torch_utils import module_weight

from .base import WeightScorer
from .registry import resolve_method

__all__ = ["MaskResult", "layer_names", "prune_weights", "select_mask"]

SCOPES = ("global", "layer")


@dataclass(frozen=True)
class MaskResult:
    """A masked copy of the model, the boolean masks (True = kept) and per-layer sparsity."""

    model: nn.Module
    masks: dict[str, torch.Tensor]
    method: str
    scope: str
    sparsity: float
    layer_sparsity: dict[str, float]
    collapsed: tuple[str, ...]

    @property
    def achieved(self) -> float:
        """Fraction of the scored weights that are masked."""
        total = sum(m.numel() for m in self.masks.values())
        return sum(int((~m).sum()) for m in self.masks.values()) / total

    def __str__(self) -> str:
        lines = [f"{self.method}, {self.scope} scope: {100 * self.achieved:.3f}% of weights masked"]
        lines += [f"  {n}: {100 * s:.2f}%" for n, s in self.layer_sparsity.items()]
        if self.collapsed:
            lines.append(f"  LAYER COLLAPSE (every weight masked): {', '.join(self.collapsed)}")
        return "\n".join(lines)


def prune_weights(
    model: nn.Module,
    method: str | WeightScorer,
    sparsity: float,
    *,
    scope: str = "global",
    layers: Sequence[str] | None = None,
    allow_collapse: bool = False,
    example_input: torch.Tensor | None = None,
) -> MaskResult:
    """Mask exactly round(sparsity * N) of the N weights of `layers` (default: every Linear and
    Conv2d) by the lowest scores of `method`, globally or the same fraction per layer.

    Ties go to the lower flat index, so results are deterministic. Unless `allow_collapse`, every
    layer keeps its best weight. Methods with `rounds` > 1 re-score on the exponential schedule
    density_k = (1 - sparsity) ** (k / rounds). `model` is not modified.
    """
    check_module(model, "model")
    pruner = resolve_method(method, kind="weight")
    sparsity = check_fraction(sparsity, "sparsity", low_open=False, high_open=True)
    check_choice(scope, SCOPES, "scope")
    check_bool(allow_collapse, "allow_collapse")
    names = layer_names(model, layers)
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(True)
    dense = {n: module_weight(work, n).detach().clone() for n in names}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in dense.items()}
    for k in range(1, pruner.rounds + 1):
        removed = 1 - (1 - sparsity) ** (k / pruner.rounds)
        with torch.no_grad():
            for n in names:
                module_weight(work, n).copy_(dense[n] * masks[n])
        scores = pruner.weight_scores(work, names, example_input)
        masks = select_mask(scores, masks, removed, scope=scope, allow_collapse=allow_collapse)
    out = copy.deepcopy(model)
    for n in names:
        torch_prune.custom_from_mask(out.get_submodule(n), "weight", masks[n])
    layer_sparsity = {n: float((~m).sum()) / m.numel() for n, m in masks.items()}
    collapsed = tuple(n for n, m in masks.items() if not bool(m.any()))
    return MaskResult(out, masks, pruner.name, scope, float(sparsity), layer_sparsity, collapsed)


def select_mask(
    scores: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    fraction: float,
    *,
    scope: str = "global",
    allow_collapse: bool = False,
) -> dict[str, torch.Tensor]:
    """New masks removing round(fraction * N) weights (per layer with scope='layer'): already
    masked ones first, then the lowest scores; ties to the lower index."""
    ranked: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        score = scores[name].detach().double().cpu().reshape(-1)
        if score.numel() != mask.numel():
            raise ValueError(
                f"scores for {name!r} have {score.numel()} entries, need {mask.numel()}"
            )
        if not torch.isfinite(score).all():
            raise ValueError(f"scores for {name!r} are not all finite")
        flat_mask = mask.reshape(-1).cpu()
        score = torch.where(flat_mask, score, torch.full_like(score, -math.inf))
        if not allow_collapse:
            score[int(torch.argmax(score))] = math.inf  # the layer's best weight always stays
        ranked[name] = score
    out: dict[str, torch.Tensor] = {}
    if scope == "layer":
        for name, score in ranked.items():
            count = round(fraction * score.numel())
            if not allow_collapse:
                count = min(count, score.numel() - 1)
            out[name] = _keep_all_but_lowest(score, count).reshape(masks[name].shape)
    else:
        flat = torch.cat(list(ranked.values()))
        count = round(fraction * flat.numel())
        if not allow_collapse:
            count = min(count, flat.numel() - len(ranked))
        keep = _keep_all_but_lowest(flat, count)
        start = 0
        for name, score in ranked.items():
            out[name] = keep[start : start + score.numel()].reshape(masks[name].shape)
            start += score.numel()
    return {n: m.to(masks[n].device) for n, m in out.items()}


def _keep_all_but_lowest(score: torch.Tensor, count: int) -> torch.Tensor:
    order = torch.sort(score, stable=True).indices
    keep = torch.ones(score.numel(), dtype=torch.bool)
    keep[order[:count]] = False
    return keep


def layer_names(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """The checked names of the modules whose weights are scored (default: every Linear, Conv2d)."""
    modules = dict(model.named_modules())
    if layers is None:
        names = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
        if not names:
            raise ValueError("model has no nn.Linear or nn.Conv2d layer to prune")
        return names
    if isinstance(layers, str):
        raise TypeError("layers must be a sequence of module names, not one string")
    names = list(layers)
    if not names:
        raise ValueError("layers is empty; leave it None to prune every Linear and Conv2d")
    for n in names:
        if n not in modules or not isinstance(getattr(modules[n], "weight", None), torch.Tensor):
            raise ValueError(f"layers: {n!r} is not a module with a weight in this model")
    return names
