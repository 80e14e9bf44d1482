"""The structured form of DPF: per-pair unit masks by filter norm, applied at the consumers.

A masked unit is zeroed where its consumer reads it, which is exactly what removing it does
(every op between producer and consumer is channel-wise and maps 0 to 0). The zeroing goes
through x + (m x - x).detach(), a straight-through gradient, so a masked unit's filter still gets
the gradient of the pruned model and can come back. At the end exactly the units of the final
mask are cut out with `coreprune.compress.apply_plan`, so the result equals the masked network
it was trained as.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from coreprune.compress import (
    CompressReport,
    PairCut,
    apply_plan,
    compress,
    count_macs,
    count_params,
)
from coreprune.compress.cost import removed_fraction
from coreprune.methods.dpf.masks import _Masker, _record
from coreprune.methods.dpf.result import MaskUpdate
from coreprune.surgery.graph import PrunablePair, find_prunable_pairs
from coreprune.torch_utils import model_device, module_weight


class _UnitMasker(_Masker):
    """Per-pair unit masks by dense filter L2 norm (the producer's weight rows).

    The per-pair unit counts are those `compress(target=..., method="magnitude", groups=False)`
    keeps on the original model (single pairs: coupled channel groups such as residual streams
    are left whole); at the end exactly the units of the final mask are cut with `apply_plan`.
    """

    def __init__(
        self,
        original: nn.Module,
        work: nn.Module,
        target: float,
        pairs: Sequence[PrunablePair] | None,
        example_input: torch.Tensor | None,
    ) -> None:
        self.model = work
        self.target = target
        self.example_input = example_input
        self.plan = compress(
            original, target=target, method="magnitude", pairs=pairs,
            example_input=example_input, progress=False, groups=False,
        ).report  # fmt: skip  # groups=False: one row per pair, the unit DPF masks
        self.pairs = _plan_pairs(original, self.plan, pairs)
        consumers = [p.consumer for p in self.pairs]
        if len(set(consumers)) != len(consumers):
            raise ValueError(
                "two pairs share a consumer; structured DPF needs one pair per consumer"
            )
        self.rows = [(r.producer, r.consumer, r.units_before, r.units_after) for r in self.plan]
        self.masks = {p: torch.ones(n, dtype=torch.bool) for p, _, n, _ in self.rows}
        self.started = time.perf_counter()

    def update(self, step: int, sparsity: float) -> MaskUpdate:
        progress = sparsity / self.target
        new = {}
        for producer, _, n, k in self.rows:
            weight = module_weight(self.model, producer).detach()
            norms = torch.linalg.vector_norm(weight.flatten(1).double(), dim=1).cpu()
            drop = round(progress * (n - k))
            keep = torch.ones(n, dtype=torch.bool)
            keep[torch.sort(norms, stable=True).indices[:drop]] = False
            new[producer] = keep
        record = _record(step, sparsity, self.masks.values(), new.values())
        self.masks = new
        return record

    def pruned(self) -> Any:
        return _InputMasks(self.model, [(c, self.masks[p]) for p, c, _, _ in self.rows])

    def finish(self) -> tuple[nn.Module, dict[str, torch.Tensor], CompressReport | None]:
        keeps = [torch.nonzero(self.masks[p.producer]).flatten() for p in self.pairs]
        pruned = apply_plan(self.model, self.pairs, [PairCut(keep) for keep in keeps])
        return pruned, {p: m.clone() for p, m in self.masks.items()}, self._report(pruned, keeps)

    def _report(self, pruned: nn.Module, keeps: Sequence[torch.Tensor]) -> CompressReport:
        """The planning report with DPF's kept units in its rows and the pruned model's totals.

        Each row's params and MACs depend only on how many units the pair keeps, which DPF's
        final mask shares with the plan; the totals are counted on the pruned model itself.
        `seconds` is the wall time from the plan to the cut, training included.
        """
        rows = tuple(
            replace(row, keep=keep.clone(), scale=torch.ones(keep.numel(), dtype=torch.float64))
            for row, keep in zip(self.plan, keeps, strict=True)
        )
        params_after = count_params(pruned)
        names = dict.fromkeys(n for p in self.pairs for n in (p.producer, p.norm, p.consumer) if n)
        prunable_after = sum(
            t.numel() for n in names for t in pruned.get_submodule(n).parameters(recurse=False)
        )
        macs_after = None
        if self.example_input is not None and self.plan.macs_before is not None:
            macs_after = count_macs(pruned, self.example_input.to(model_device(pruned)))
        achieved = removed_fraction(self.plan.params_before, params_after)
        budget = (
            f"target {100 * self.target:g}% of params removed, per-pair unit counts of "
            f"compress(method='magnitude', allocation='uniform'), units chosen by DPF's final "
            f"mask; achieved {100 * achieved:.2f}% params removed"
        )
        return replace(
            self.plan, rows=rows, method="dpf", budget=budget, achieved=achieved,
            target_reached=achieved >= self.target - 1e-12, params_after=params_after,
            prunable_params_after=prunable_after, macs_after=macs_after,
            seconds=time.perf_counter() - self.started,
        )  # fmt: skip


def _plan_pairs(
    model: nn.Module, plan: CompressReport, given: Sequence[PrunablePair] | None
) -> list[PrunablePair]:
    """The pairs of the plan's rows, in the rows' order (from `given`, or as found in `model`)."""
    pool = list(given) if given is not None else find_prunable_pairs(model)[0]
    by_producer = {p.producer: p for p in pool}
    return [by_producer[row.producer] for row in plan]


class _InputMasks:
    """Forward pre-hooks zeroing masked units at each consumer's input, straight-through."""

    def __init__(self, model: nn.Module, entries: Sequence[tuple[str, torch.Tensor]]) -> None:
        self.model = model
        self.entries = list(entries)
        self.handles: list[Any] = []

    def __enter__(self) -> None:
        for consumer, mask in self.entries:
            module = self.model.get_submodule(consumer)
            self.handles.append(module.register_forward_pre_hook(_mask_hook(module, mask)))

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _mask_hook(module: nn.Module, mask: torch.Tensor) -> Callable[..., Any]:
    n = mask.numel()

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        m = mask.to(device=x.device, dtype=x.dtype)
        if isinstance(module, nn.Conv2d):
            m = m.view(1, n, *([1] * (x.ndim - 2)))
        else:  # a Linear reads unit i through a block of in_features // n columns
            m = m.repeat_interleave(x.shape[-1] // n)
        return (x + (x * m - x).detach(), *args[1:])

    return hook
