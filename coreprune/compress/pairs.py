"""Single pairs inside `compress`: cut the chosen units, rewire the consumer (merge or least
squares) and certify the rewiring; the report row with its params and MACs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from coreprune.compress.apply import PairCut, cut_pair
from coreprune.compress.capture import capture_input
from coreprune.compress.choosers.base import Choice
from coreprune.compress.choosers.worst_case import modules_of, out_units
from coreprune.compress.options import Options
from coreprune.compress.refit_choice import TargetOf
from coreprune.compress.report import LayerRow
from coreprune.surgery.activations import resolve_activation
from coreprune.surgery.graph import BlockedLayer, PrunablePair, find_prunable_pairs, validate_pairs
from coreprune.surgery.registry import layer_kind
from coreprune.surgery.rewire import (
    expand_reading,
    merge_weights,
    refit_consumer,
    rewired_eps,
    with_fitted_weights,
)
from coreprune.surgery.units import layer_units, next_weights
from coreprune.torch_utils import replace_submodule


def cut_and_rewire(
    opts: Options,
    work: nn.Module,
    pair: PrunablePair,
    picked: Choice,
    target_of: TargetOf | None,
) -> LayerRow:
    """Cut `picked`'s units from the pair in `work` and rewire its consumer as `opts` asks;
    `target_of` gives the dense consumer outputs a least-squares refit fits."""
    producer, norm, consumer = modules_of(work, pair)
    n = out_units(producer)
    order = torch.argsort(picked.keep.cpu())
    keep, scale = picked.keep.cpu()[order], picked.scale.detach().cpu()[order]
    if keep.numel() == n and bool((scale == 1).all()):
        return untouched_row(opts, pair, n, keep, scale, picked)
    reading = next_weights(consumer, n)
    cut = PairCut(keep, None if bool((scale == 1).all()) else scale)
    notes = [picked.note] if picked.note else []
    eps_rewired: float | None = None
    rewiring = ""
    if opts.compensate == "merge":
        scaled = reading.clone()
        if cut.scale is not None:
            scaled[:, keep] = scaled[:, keep] * cut.scale.to(scaled)[None, :]
        merged = merge_weights(layer_units(producer, norm), scaled, keep, pair.activation)
        kind = layer_kind(consumer)
        assert kind is not None
        weight = kind.weight_from_reading(consumer, merged.reading)
        cut = PairCut(keep, None, consumer_weight=weight)
        rewiring = merged.note
        if picked.per_next is not None:
            eps_rewired = rewired_eps(reading, merged.full_reading, picked.per_next)
    cut_pair(work, pair, cut)
    selection = picked.selection
    if opts.compensate == "lstsq" and selection is not None:
        # the refit choice already solved the kept set's least squares on the same rows
        sliced = work.get_submodule(pair.consumer)
        refit = with_fitted_weights(sliced, selection.weights[0], selection.biases[0])
        replace_submodule(work, pair.consumer, refit)
        rewiring = (
            f"least squares on {selection.fit_rows} rows (solved with the choice; the gap on "
            f"{selection.gap.rows} of them)"
        )
        if picked.per_next is not None:
            eps_rewired = _rewired_certificate(consumer, refit, reading, keep, n, picked, notes)
    elif opts.compensate == "lstsq":
        assert opts.calibration is not None
        inputs = capture_input(work, pair.consumer, opts.calibration)
        assert target_of is not None
        target = target_of(work, pair.consumer)
        refit, fit = refit_consumer(
            work.get_submodule(pair.consumer), inputs, target, ridge=opts.ridge
        )
        replace_submodule(work, pair.consumer, refit)
        rewiring = f"least squares on {fit.rows} rows, relative residual {fit.residual:.3g}"
        if fit.note:
            rewiring += f" ({fit.note})"
        if picked.per_next is not None:
            eps_rewired = _rewired_certificate(consumer, refit, reading, keep, n, picked, notes)
    cert = picked.certificate
    return LayerRow(
        producer=pair.producer, consumer=pair.consumer, norm=pair.norm, units_before=n,
        units_after=int(keep.numel()), params_before=0, params_after=0, macs_before=None,
        macs_after=None, eps=None if cert is None else cert.eps,
        delta=None if cert is None else cert.delta,
        vacuous=None if cert is None else cert.vacuous,
        query=None if cert is None else cert.query,
        sensitivity=None if cert is None else cert.sensitivity, note="; ".join(notes),
        keep=keep, scale=scale, certificate=cert,
        compensate=opts.compensate, eps_rewired=eps_rewired, rewiring=rewiring,
        gap=selection.gap if selection is not None and opts.compensate == "lstsq" else None,
    )  # fmt: skip


def _rewired_certificate(
    consumer: nn.Module, refit: nn.Module, reading: torch.Tensor, keep: torch.Tensor, n: int,
    picked: Choice, notes: list[str],
) -> float:  # fmt: skip
    """Theorem R1's eps of a refitted consumer; inf when its bias changed (not covered)."""
    assert picked.per_next is not None
    full = expand_reading(next_weights(refit, keep.numel()), keep, n)  # type: ignore[arg-type]
    weights_only = rewired_eps(reading, full, picked.per_next)
    old_bias, new_bias = getattr(consumer, "bias", None), getattr(refit, "bias", None)
    changed = False
    if old_bias is not None and new_bias is not None:
        changed = not torch.equal(old_bias, new_bias)
    if changed:
        notes.append("the refitted consumer bias is not covered by the relative certificate")
    return float("inf") if changed else weights_only


def untouched_row(
    opts: Options, pair: PrunablePair, n: int, keep: torch.Tensor, scale: torch.Tensor,
    picked: Choice,
) -> LayerRow:  # fmt: skip
    """Nothing removed: no surgery and no rewiring, so the layers stay exactly as they were."""
    cert = picked.certificate
    notes = [picked.note] if picked.note else []
    notes.append("nothing removed: layers left as they were")
    return LayerRow(
        producer=pair.producer, consumer=pair.consumer, norm=pair.norm, units_before=n,
        units_after=n, params_before=0, params_after=0, macs_before=None, macs_after=None,
        eps=None if cert is None else cert.eps, delta=None if cert is None else cert.delta,
        vacuous=None if cert is None else cert.vacuous,
        query=None if cert is None else cert.query,
        sensitivity=None if cert is None else cert.sensitivity, note="; ".join(notes),
        keep=keep, scale=scale, certificate=cert, compensate="none",
    )  # fmt: skip


def resolve_pairs(
    work: nn.Module, pairs: Sequence[PrunablePair] | None, ignored: Sequence[str] = ()
) -> tuple[list[PrunablePair], list[BlockedLayer]]:
    """The pairs to prune in forward order, and the layers that cannot be pruned with why."""
    check_ignored(work, ignored)
    if pairs is None:
        found, blocked = find_prunable_pairs(work)
    else:
        found, blocked = validate_pairs(work, pairs), []
    usable: list[PrunablePair] = []
    for pair in found:
        touched = {n for n in (pair.producer, pair.consumer, pair.norm) if n} & set(ignored)
        if touched:
            blocked.append(BlockedLayer(pair.producer, f"ignored_layers names {sorted(touched)}"))
            continue
        if certifiable(pair, blocked):
            usable.append(pair)
    if not usable:
        raise no_prunable_pair(blocked)
    return usable, blocked


def check_ignored(work: nn.Module, ignored: Sequence[str]) -> None:
    """`ignored_layers` must be module names of the model."""
    if isinstance(ignored, str) or not all(isinstance(n, str) for n in ignored):
        raise TypeError("ignored_layers must be a list of module names (str)")
    names = dict(work.named_modules())
    unknown = [n for n in ignored if n not in names]
    if unknown:
        raise ValueError(
            f"ignored_layers names {unknown} that are not modules of the model; use names from "
            "model.named_modules()"
        )


def certifiable(pair: PrunablePair, blocked: list[BlockedLayer]) -> bool:
    """Whether the certificate covers the pair's activation; if not, it joins `blocked`.

    Excluded for every method, so all methods prune the same pairs (matched budgets).
    """
    try:
        resolve_activation(pair.activation)
    except (TypeError, ValueError) as err:
        blocked.append(BlockedLayer(pair.producer, f"activation not certifiable: {err}"))
        return False
    return True


def no_prunable_pair(blocked: Sequence[BlockedLayer]) -> ValueError:
    """The error for a model with nothing to prune, naming what blocked each layer."""
    reasons = "; ".join(f"{b.name}: {b.reason}" for b in blocked[:10])
    more = f" (and {len(blocked) - 10} more)" if len(blocked) > 10 else ""
    return ValueError(
        f"the model has no prunable layer pair. Blocked: {reasons or 'no Linear/Conv2d'}{more}. "
        "If fx misreads the model, pass pairs=[PrunablePair(...)] by hand"
    )


def params_of(modules: dict[str, nn.Module], names: Sequence[str]) -> int:
    return sum(p.numel() for name in names for p in modules[name].parameters(recurse=False))


def with_costs(
    row: LayerRow,
    before: dict[str, nn.Module],
    after: dict[str, nn.Module],
    macs_before: dict[str, int] | None,
    macs_after: dict[str, int] | None,
) -> LayerRow:
    from dataclasses import replace

    names = list(row.modules) or [n for n in (row.producer, row.norm, row.consumer) if n]
    fields: dict[str, object] = {
        "params_before": params_of(before, names),
        "params_after": params_of(after, names),
    }
    if macs_before is not None and macs_after is not None:
        fields["macs_before"] = sum(macs_before.get(n, 0) for n in names)
        fields["macs_after"] = sum(macs_after.get(n, 0) for n in names)
    return replace(row, **fields)  # type: ignore[arg-type]
