"""`compress`: prune every prunable layer pair and channel group of a model; return a new,
smaller model and a report.

It is a short composition of public steps: find the channel groups (`coreprune.surgery.groups`;
single pairs from `coreprune.surgery.graph` are its simple groups), build the cost model
(`cost.CostModel`), allocate kept counts (`allocate`), then:

- coupled groups (residual streams, depthwise blocks, gates, concatenations) are scored on the
  dense model (`choose.group_scores`, or the sum of a baseline's producer scores) and cut first,
  all at once (`apply.cut_groups`);
- then, in forward order and in the network as compressed so far, each single pair's kept units
  are chosen (the coreset's `choose.CoresetChooser`, or a baseline's unit scores) and cut
  (`apply.cut_pair`) and its consumer rewired (`rewire`), and each consumer of a cut coupled
  group is refitted by least squares (compensate="lstsq").

The caller's model is never touched.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from coreprune.checks import check_int
from coreprune.compress import allocate
from coreprune.compress.apply import GroupCut, PairCut, cut_groups, cut_pair
from coreprune.compress.capture import capture_input, capture_output
from coreprune.compress.choose import (
    Choice,
    CoresetChooser,
    GroupScores,
    group_scores,
    modules_of,
    ones,
)
from coreprune.compress.cost import (
    CostModel,
    Inputs,
    as_args,
    count_macs,
    count_params,
    module_macs,
    removed_fraction,
)
from coreprune.compress.options import DEFAULT_FLOOR, Options, check_model_inputs, check_options
from coreprune.compress.report import CompressReport, CompressResult, LayerRow
from coreprune.scoring.base import UnitScorer
from coreprune.scoring.gates import UnitGates, group_gate_pairs, reduce_group_scores
from coreprune.surgery.activations import resolve_activation
from coreprune.surgery.graph import BlockedLayer, PrunablePair, find_prunable_pairs, validate_pairs
from coreprune.surgery.groups import (
    ChannelGroup,
    find_channel_groups,
    forward_order,
    group_from_pair,
    is_grouped,
)
from coreprune.surgery.registry import layer_kind
from coreprune.surgery.rewire import (
    DEFAULT_RIDGE,
    expand_reading,
    merge_weights,
    refit_consumer,
    rewired_eps,
)
from coreprune.surgery.units import layer_units, next_weights
from coreprune.torch_utils import replace_submodule, restore_flags, training_flags

__all__ = ["compress"]


def compress(
    model: nn.Module,
    *,
    eps: float | None = None,
    target: float | None = None,
    method: str | UnitScorer = "coreset",
    mode: str = "select",
    allocation: str = "uniform",
    metric: str = "params",
    example_input: Inputs | None = None,
    calibration: torch.Tensor | None = None,
    rank: int | None = None,
    pairs: Sequence[PrunablePair] | None = None,
    delta: float = 0.1,
    generator: torch.Generator | None = None,
    sensitivity: str = "auto",
    compensate: str | None = None,
    choice: str | None = None,
    floor: float = DEFAULT_FLOOR,
    ridge: float = DEFAULT_RIDGE,
    round_to: int = 1,
    ignored_layers: Sequence[str] = (),
    groups: bool = True,
    steps: int = 1,
    on_step: Callable[[nn.Module, int], None] | None = None,
    guarantee: Any = None,
    holdout: Any = None,
    confidence: float = 0.95,
    progress: bool = True,
) -> Any:
    """Prune every prunable layer pair of `model`; return a new, smaller model and a report.

    Args:
        model: the network; it is deep-copied and never modified.
        eps: each layer's certificate target (coreset only). Give this or `target`.
        target: the fraction of the model's params (or MACs, `metric="macs"`) to remove.
        method: "coreset", a baseline name ("magnitude", "synflow", "random", ...) or a
            `coreprune.scoring.Pruner` instance such as `SNIP(loader)`.
        mode: "select" (deterministic) or "sample" (the coreset's sensitivity sampling).
        allocation: "uniform" (same kept fraction everywhere) or "global" (one ranking across
            layers: the coreset's certified eps, or the baseline's unit scores).
        metric: "params" or "macs" (needs `example_input`).
        example_input: a batch the model accepts; used for MACs.
        calibration: a batch of model inputs: the query space of each layer's certificate, the
            empirical choice and the least-squares rewiring use it.
        rank: dimension of each layer's calibration query space (default 8).
        pairs: (producer, consumer) pairs by hand, for models torch.fx cannot trace.
        delta: failure probability of sampled certificates.
        generator: seeds sampling and the random baseline.
        sensitivity: the worst-case bound ("auto", "paper", "leverage", "exact", "all").
        compensate: how each consumer is rewired after its producer loses units: "none",
            "merge" (data-free) or "lstsq" (refit on `calibration`). Default: "lstsq" with
            calibration, else "merge", for the coreset; "none" for baselines.
        choice: the coreset's ranking with `target`: "empirical" (default with calibration)
            or "certified" (the worst-case sensitivities).
        floor: no pair keeps fewer than ceil(floor * units) units (at least 1).
        ridge: relative ridge of the least-squares rewiring.
        round_to: kept counts are multiples of this (8 or 16 for real speed), capped at a
            layer's width.
        ignored_layers: module names never pruned (as producer or consumer).
        groups: prune coupled channel groups too (`coreprune.surgery.groups`): residual
            streams, depthwise blocks, squeeze-excitation gates, fused norm + activation
            modules, concatenations. Each is scored by the method's documented reduction
            (baselines: the sum of its producers' unit scores; coreset: the summed empirical
            sensitivities of its consumers with calibration, their data-free envelope share
            without), cut on every member, and each consumer refitted by least squares when
            compensate="lstsq" (left sliced otherwise: "merge" applies to single pairs only).
            Coupled groups carry no worst-case certificate (held-out certificates,
            `coreprune.certify`, apply) and are pruned with `target` only. False: single
            pairs only, as `find_prunable_pairs` finds them.
        steps: prune in this many steps toward `target` (each removes the same fraction of
            what remains), calling `on_step(model, step)` after each (e.g. a short fine-tune,
            which may train the model in place).
        guarantee: certified compression: e.g. {"agreement": 0.97}; the strongest budget
            whose guarantee `holdout` certifies at `confidence` (fixed-sequence testing over
            increasing targets). Needs `holdout` (never used for anything else) and no
            `target`/`eps`. See `coreprune.certify.certified_compress`.
        holdout: held-out labelled data for `guarantee`: a DataLoader or (inputs, labels).
        confidence: the confidence of the certified guarantee.
        progress: show progress bars.

    Returns:
        `CompressResult` with `.model` (a new module) and `.report` (per-layer rows); with
        `guarantee`, a `coreprune.certify.CertifiedCompression` (its `.model`, `.result` and
        the tested budgets).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from coreprune import compress
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> result = compress(net, target=0.4, progress=False)
        >>> result.model[0].out_features
        9
    """
    options: dict[str, Any] = {
        "eps": eps, "target": target, "method": method, "mode": mode,
        "allocation": allocation, "metric": metric, "example_input": example_input,
        "calibration": calibration, "rank": rank, "pairs": pairs, "delta": delta,
        "generator": generator, "sensitivity": sensitivity, "compensate": compensate,
        "choice": choice, "floor": floor, "ridge": ridge, "round_to": round_to,
        "ignored_layers": ignored_layers, "groups": groups, "progress": progress,
    }  # fmt: skip
    if guarantee is not None or holdout is not None:
        if guarantee is None or holdout is None:
            raise ValueError("certified compression needs both guarantee= and holdout=")
        if target is not None or eps is not None or steps != 1:
            raise ValueError(
                "with guarantee=, the budget is searched: leave target, eps and steps unset"
            )
        # coreprune.certify sits above compress (it runs compress); imported at call time.
        from coreprune.certify.search import certified_compress

        del options["eps"], options["target"]
        return certified_compress(
            model, guarantee=guarantee, holdout=holdout, confidence=confidence, **options
        )
    steps = check_int(steps, "steps", minimum=1)
    if on_step is not None and not callable(on_step):
        raise TypeError(f"on_step must be a callable (model, step), got {type(on_step).__name__}")
    if steps == 1:
        result = _compress_once(model, **options)
        if on_step is not None:
            on_step(result.model, 1)
        return result
    return _iterative(model, steps, on_step, options)


def _iterative(
    model: nn.Module,
    steps: int,
    on_step: Callable[[nn.Module, int], None] | None,
    options: dict[str, Any],
) -> CompressResult:
    """`steps` compressions, each toward 1 - (1 - target)^(step / steps) of the dense cost."""
    target = options["target"]
    if target is None:
        raise ValueError("steps > 1 needs target= (eps applies per layer in one step)")
    check_options(
        model, None, target, options["method"], options["mode"], options["allocation"],
        options["metric"], options["example_input"], options["calibration"], options["rank"],
        options["delta"], options["generator"], options["sensitivity"], options["compensate"],
        options["choice"], options["floor"], options["ridge"],
    )  # fmt: skip
    args = None if options["example_input"] is None else as_args(options["example_input"])
    measure = (
        (lambda m: count_macs(m, args)) if options["metric"] == "macs" and args else count_params
    )
    dense_cost = measure(model)
    current, result = model, None
    for step in range(1, steps + 1):
        wanted = (1 - target) ** (step / steps) * dense_cost  # cost left after this step
        relative = 1 - wanted / measure(current)
        if relative <= 0:
            continue
        result = _compress_once(current, **{**options, "target": min(relative, 1 - 1e-9)})
        current = result.model
        if on_step is not None:
            on_step(current, step)
    assert result is not None
    return result


def _compress_once(
    model: nn.Module,
    *,
    eps: float | None,
    target: float | None,
    method: str | UnitScorer,
    mode: str,
    allocation: str,
    metric: str,
    example_input: Inputs | None,
    calibration: torch.Tensor | None,
    rank: int | None,
    pairs: Sequence[PrunablePair] | None,
    delta: float,
    generator: torch.Generator | None,
    sensitivity: str,
    compensate: str | None,
    choice: str | None,
    floor: float,
    ridge: float,
    round_to: int,
    ignored_layers: Sequence[str],
    groups: bool,
    progress: bool,
) -> CompressResult:
    start = time.perf_counter()
    opts = check_options(
        model, eps, target, method, mode, allocation, metric, example_input, calibration, rank,
        delta, generator, sensitivity, compensate, choice, floor, ridge,
    )  # fmt: skip
    if not isinstance(groups, bool):
        raise TypeError(f"groups must be True or False, got {type(groups).__name__}")
    work = copy.deepcopy(model)
    flags = training_flags(work)
    work.eval()
    check_model_inputs(work, example_input, calibration)
    items, blocked = _resolve_groups(work, pairs, ignored_layers, groups, opts.target is not None)
    round_to = check_int(round_to, "round_to", minimum=1)
    args = None if example_input is None else as_args(example_input)
    dense = copy.deepcopy(work)
    dense_modules = dict(dense.named_modules())
    dense_macs = module_macs(dense, args) if args is not None else None
    units = [g.width for g in items]
    for group, n in zip(items, units, strict=True):
        if round_to > n:
            raise ValueError(
                f"round_to={round_to} is larger than {_label(group)!r} ({n} units); pass "
                f"round_to <= {min(units)} or ignore that layer (ignored_layers=)"
            )
    steps_of = [math.lcm(round_to, g.blocks) for g in items]  # grouped convs: whole blocks
    floors = allocate.floors_for(units, opts.floor, steps_of)
    chooser = _chooser(opts)
    scores = _coupled_scores(opts, work, items, progress)
    refine = groups and pairs is None  # with groups: kept counts land just above the target
    keeps, unit_sets, budget = _plan(
        opts, work, items, units, floors, chooser, scores, args, steps_of, progress, refine
    )
    rows: list[LayerRow] = []
    coupled = [i for i, g in enumerate(items) if g.pair is None]
    out_keep: dict[str, torch.Tensor] = {}
    cut_list: list[tuple[int, torch.Tensor]] = []
    for index in coupled:
        assert keeps is not None  # coupled groups are pruned with target= only
        if unit_sets is not None:
            keep = unit_sets[index]
        else:
            ranked = scores[index].per_unit
            mask = allocate.keep_top_blocks(ranked, keeps[index], items[index].blocks)
            keep = torch.nonzero(mask).flatten()
        cut_list.append((index, keep))
        if keep.numel() < items[index].width:
            for name in (*items[index].producers, *items[index].gates):
                out_keep[name] = keep
    _cut_coupled(work, items, cut_list)
    refits = _coupled_refits(opts, work, items, cut_list)
    steps = _steps(work, items, refits)
    bar = tqdm(steps, desc=f"compress ({opts.method})", disable=not progress, unit="layer")
    group_rows: dict[int, LayerRow] = {}
    for kind, index in bar:
        current = items[index] if kind == "pair" else None
        try:
            if kind == "refit":
                _refit(opts, work, dense, refits[index], out_keep)
                continue
            assert current is not None and current.pair is not None
            pair = current.pair
            count = None if keeps is None else keeps[index]
            if unit_sets is not None:
                keep = unit_sets[index]
                picked = Choice(keep, ones(keep.numel()), None, None, "")
            else:
                assert chooser is not None
                picked = chooser.choose(work, pair, count)
            group_rows[index] = _cut_and_rewire(opts, work, dense, pair, picked, out_keep)
        except (TypeError, ValueError) as err:
            err_kind = TypeError if isinstance(err, TypeError) else ValueError
            where = refits[index] if kind == "refit" else _label(items[index])
            raise err_kind(f"{where!r}: {err}") from err
    for index, keep in cut_list:
        group_rows[index] = _group_row(opts, items[index], keep, scores.get(index))
    rows = [group_rows[i] for i in sorted(group_rows)]
    restore_flags(work, flags)
    final_macs = module_macs(work, args) if args is not None else None
    after_modules = dict(work.named_modules())
    rows = [_with_costs(r, dense_modules, after_modules, dense_macs, final_macs) for r in rows]
    prunable = list(dict.fromkeys(name for g in items for name in g.modules))
    params_before, params_after = count_params(model), count_params(work)
    macs_before = count_macs(dense, args) if args is not None else None
    macs_after = count_macs(work, args) if args is not None else None
    achieved = reached = None
    if opts.target is not None:
        if opts.metric == "macs":
            assert macs_before is not None and macs_after is not None
            achieved = removed_fraction(macs_before, macs_after)
        else:
            achieved = removed_fraction(params_before, params_after)
        reached = achieved >= opts.target - 1e-12
        budget += f"; achieved {100 * achieved:.2f}% {opts.metric} removed"
    report = CompressReport(
        rows=tuple(rows), blocked=tuple(blocked), pairs_by_hand=pairs is not None,
        method=opts.method, mode=opts.mode,
        allocation=opts.allocation if opts.target is not None else None,
        metric=opts.metric if opts.target is not None else None,
        eps=opts.eps, target=opts.target, achieved=achieved, target_reached=reached, budget=budget,
        params_before=params_before, params_after=params_after,
        prunable_params_before=_params_of(dense_modules, prunable),
        prunable_params_after=_params_of(after_modules, prunable),
        macs_before=macs_before, macs_after=macs_after, seconds=time.perf_counter() - start,
    )  # fmt: skip
    return CompressResult(work, report)


def _label(group: ChannelGroup) -> str:
    if group.pair is not None:
        return f"{group.pair.producer}' -> '{group.pair.consumer}"
    return " + ".join(group.producers)


COUPLED_NOTE = (
    "not certified: coupled group ({joins}); worst-case certificates cover single pairs; "
    "held-out certificates (coreprune.certify) apply"
)


def _resolve_groups(
    work: nn.Module,
    pairs: Sequence[PrunablePair] | None,
    ignored: Sequence[str],
    groups: bool,
    budgeted: bool,
) -> tuple[list[ChannelGroup], list[BlockedLayer]]:
    """The groups to prune in forward order (single pairs as simple groups), and the layers
    that cannot be pruned with why."""
    if pairs is not None or not groups:
        pair_list, blocked = _resolve_pairs(work, pairs, ignored)
        return [group_from_pair(work, p) for p in pair_list], blocked
    if isinstance(ignored, str) or not all(isinstance(n, str) for n in ignored):
        raise TypeError("ignored_layers must be a list of module names (str)")
    names = dict(work.named_modules())
    unknown = [n for n in ignored if n not in names]
    if unknown:
        raise ValueError(
            f"ignored_layers names {unknown} that are not modules of the model; use names from "
            "model.named_modules()"
        )
    found, blocked = find_channel_groups(work)
    usable: list[ChannelGroup] = []
    for group in found:
        writers = (*group.producers, *group.gates)
        touched = set(group.modules) & set(ignored)
        if touched:
            blocked += [BlockedLayer(w, f"ignored_layers names {sorted(touched)}") for w in writers]
            continue
        if group.pair is None and not budgeted:
            reason = (
                f"coupled channel group ({group.describe}): eps= sizes certified single pairs "
                "only; pass target= to prune it"
            )
            blocked += [BlockedLayer(w, reason) for w in writers]
            continue
        if group.pair is not None:
            try:
                resolve_activation(group.pair.activation)
            except (TypeError, ValueError) as err:
                blocked.append(
                    BlockedLayer(group.pair.producer, f"activation not certifiable: {err}")
                )
                continue
        usable.append(group)
    if not usable:
        reasons = "; ".join(f"{b.name}: {b.reason}" for b in blocked[:10])
        more = f" (and {len(blocked) - 10} more)" if len(blocked) > 10 else ""
        raise ValueError(
            f"the model has no prunable layer pair. Blocked: {reasons or 'no Linear/Conv2d'}{more}. "
            "If fx misreads the model, pass pairs=[PrunablePair(...)] by hand"
        )
    return usable, blocked


def _coupled_scores(
    opts: Options, work: nn.Module, items: list[ChannelGroup], progress: bool
) -> dict[int, GroupScores]:
    """The coreset's channel scores of every coupled group, on the dense model."""
    if opts.pruner is not None or opts.target is None:
        return {}
    coupled = [i for i, g in enumerate(items) if g.pair is None]
    bar = tqdm(coupled, desc="score (groups)", disable=not progress, unit="group")
    return {i: group_scores(work, items[i], opts.calibration) for i in bar}


def _cut_coupled(
    work: nn.Module, items: list[ChannelGroup], cut_list: list[tuple[int, torch.Tensor]]
) -> None:
    todo = [(items[i], GroupCut(k)) for i, k in cut_list if k.numel() < items[i].width]
    if todo:
        cut_groups(work, [g for g, _ in todo], [c for _, c in todo])


def _coupled_refits(
    opts: Options,
    work: nn.Module,
    items: list[ChannelGroup],
    cut_list: list[tuple[int, torch.Tensor]],
) -> list[str]:
    """Consumers of cut coupled groups, each refitted once (least squares only; a grouped conv
    consumer is left sliced)."""
    if opts.compensate != "lstsq":
        return []
    names: dict[str, None] = {}
    for index, keep in cut_list:
        if keep.numel() < items[index].width:
            for consumer in items[index].consumers:
                if not is_grouped(work.get_submodule(consumer.name)):  # lstsq: groups=1 only
                    names[consumer.name] = None
    return list(names)


def _steps(work: nn.Module, items: list[ChannelGroup], refits: list[str]) -> list[tuple[str, int]]:
    """Simple pairs and coupled-consumer refits, ordered by the module each one refits (in
    forward order, so every refit sees its final inputs); pairs in their given order when
    nothing is coupled."""
    pairs = [i for i, g in enumerate(items) if g.pair is not None]
    if not refits:
        return [("pair", i) for i in pairs]
    position = {name: i for i, name in enumerate(forward_order(work))}
    events: list[tuple[int, str, int]] = []
    for i in pairs:
        pair = items[i].pair
        assert pair is not None
        events.append((position.get(pair.consumer, len(position)), "pair", i))
    for j, name in enumerate(refits):
        events.append((position.get(name, len(position)), "refit", j))
    events.sort(key=lambda e: (e[0], e[1] == "pair"))
    return [(kind, index) for _, kind, index in events]


def _refit(
    opts: Options, work: nn.Module, dense: nn.Module, name: str, out_keep: dict[str, torch.Tensor]
) -> None:
    """Least squares on the consumer's own dense output (its kept outputs), inputs as cut."""
    assert opts.calibration is not None
    inputs = capture_input(work, name, opts.calibration)
    target = _dense_target(dense, work, name, opts.calibration, out_keep)
    refit, _ = refit_consumer(work.get_submodule(name), inputs, target, ridge=opts.ridge)
    replace_submodule(work, name, refit)


def _dense_target(
    dense: nn.Module,
    work: nn.Module,
    name: str,
    calibration: torch.Tensor,
    out_keep: dict[str, torch.Tensor],
) -> torch.Tensor:
    target = capture_output(dense, name, calibration)
    keep = out_keep.get(name)
    if keep is None:
        return target
    dim = 1 if isinstance(work.get_submodule(name), nn.Conv2d) else target.ndim - 1
    return target.index_select(dim, keep.to(target.device))


def _group_row(
    opts: Options, group: ChannelGroup, keep: torch.Tensor, scores: GroupScores | None
) -> LayerRow:
    removed = keep.numel() < group.width
    compensate = opts.compensate if opts.compensate == "lstsq" and removed else "none"
    notes = [COUPLED_NOTE.format(joins=group.describe)]
    if opts.compensate == "merge" and removed:
        notes.append("merge applies to single pairs only: the consumers are left sliced")
    if scores is not None:
        notes.append(f"channels ranked by {scores.how}")
    elif opts.pruner is not None:
        notes.append(f"channels ranked by the sum of {opts.pruner.name} unit scores of producers")
    rewiring = "least squares per consumer on its dense output" if compensate == "lstsq" else ""
    norms = [n for n in group.producer_norms if n is not None]
    return LayerRow(
        producer=" + ".join(group.producers), consumer=" + ".join(c.name for c in group.consumers),
        norm=" + ".join(norms) or None, units_before=group.width, units_after=int(keep.numel()),
        params_before=0, params_after=0, macs_before=None, macs_after=None, eps=None,
        delta=None, vacuous=None, query=None, sensitivity=None, note="; ".join(notes),
        keep=keep, scale=ones(keep.numel()), certificate=None, compensate=compensate,
        eps_rewired=None, rewiring=rewiring, modules=group.modules,
    )  # fmt: skip


def _chooser(opts: Options) -> CoresetChooser | None:
    if opts.pruner is not None:
        return None
    return CoresetChooser(
        mode=opts.mode, eps=opts.eps, delta=opts.delta, sensitivity=opts.sensitivity,
        generator=opts.generator, calibration=opts.calibration, rank=opts.rank,
        choice=opts.choice,
    )  # fmt: skip


def _out_units(model: nn.Module, pair: PrunablePair) -> int:
    producer = model.get_submodule(pair.producer)
    kind = layer_kind(producer)
    assert kind is not None
    return kind.out_units(producer)


def _resolve_pairs(
    work: nn.Module, pairs: Sequence[PrunablePair] | None, ignored: Sequence[str] = ()
) -> tuple[list[PrunablePair], list[BlockedLayer]]:
    """The pairs to prune in forward order, and the layers that cannot be pruned with why."""
    if isinstance(ignored, str) or not all(isinstance(n, str) for n in ignored):
        raise TypeError("ignored_layers must be a list of module names (str)")
    names = dict(work.named_modules())
    unknown = [n for n in ignored if n not in names]
    if unknown:
        raise ValueError(
            f"ignored_layers names {unknown} that are not modules of the model; use names from "
            "model.named_modules()"
        )
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
        try:
            resolve_activation(pair.activation)
        except (TypeError, ValueError) as err:
            # Excluded for every method, so all methods prune the same pairs (matched budgets).
            blocked.append(BlockedLayer(pair.producer, f"activation not certifiable: {err}"))
            continue
        usable.append(pair)
    if not usable:
        reasons = "; ".join(f"{b.name}: {b.reason}" for b in blocked[:10])
        more = f" (and {len(blocked) - 10} more)" if len(blocked) > 10 else ""
        raise ValueError(
            f"the model has no prunable layer pair. Blocked: {reasons or 'no Linear/Conv2d'}{more}. "
            "If fx misreads the model, pass pairs=[PrunablePair(...)] by hand"
        )
    return usable, blocked


# --------------------------------------------------------------------------------------------
# Planning: kept counts (and, for baselines, the kept units) before any surgery


def _plan(
    opts: Options,
    work: nn.Module,
    items: list[ChannelGroup],
    units: list[int],
    floors: list[int],
    chooser: CoresetChooser | None,
    scores: dict[int, GroupScores],
    args: tuple[torch.Tensor, ...] | None,
    round_to: list[int],
    progress: bool,
    refine: bool,
) -> tuple[list[int] | None, list[torch.Tensor] | None, str]:
    """Kept counts per group (None in eps mode), kept unit sets (baselines), and the budget."""
    if opts.target is None:
        return None, None, f"eps = {opts.eps:g} per layer"
    cost = CostModel.build_groups(work, items, opts.metric, args)
    allocate.check_reachable(cost, floors, opts.target, opts.floor)
    unit_sets = None
    if opts.pruner is not None:
        example = args[0] if args is not None else opts.calibration
        unit_sets = _baseline_units(
            opts,
            opts.pruner,
            work,
            items,
            units,
            floors,
            cost,
            example,
            round_to,
            progress,
            refine,
        )
        keeps = [int(u.numel()) for u in unit_sets]
        label = f"{opts.pruner.name} unit scores"
    elif opts.allocation == "uniform":
        keeps = allocate.uniform(cost, units, floors, opts.target, round_to)
        label = "same kept fraction per layer"
        if refine:
            keeps = allocate.refine_up(cost, units, keeps, opts.target, round_to)
            label += ", then raised one group at a time while the target holds"
    else:
        assert chooser is not None
        bar = tqdm(items, desc="score (budget)", disable=not progress, unit="layer")
        curves = [
            chooser.curve(work, g.pair) if g.pair is not None else scores[i].curve()
            for i, g in enumerate(bar)
        ]
        keeps, level = allocate.global_by_curves(cost, curves, floors, opts.target, round_to)
        label = f"common eps {level:.4g} (certified), scored on the dense model"
        if len(scores):
            label += "; coupled groups on their summed sensitivities (not certified)"
    planned = cost.removed(keeps)
    budget = (
        f"target {100 * opts.target:g}% of {opts.metric} removed, {opts.allocation} allocation "
        f"({label}, floor {opts.floor:g}"
        + (f", round_to {max(round_to)}" if max(round_to) > 1 else "")
        + f"); planned {100 * planned:.2f}%"
    )
    return keeps, unit_sets, budget


def _baseline_units(
    opts: Options, pruner: UnitScorer, work: nn.Module, items: list[ChannelGroup],
    units: list[int], floors: list[int], cost: CostModel, example: torch.Tensor | None,
    round_to: list[int], progress: bool, refine: bool,
) -> list[torch.Tensor]:  # fmt: skip
    """Kept units of a baseline, scored on the dense model; with `rounds` > 1 re-scored on
    the exponential schedule 1 - (1 - target)^(k / rounds), pruned units staying pruned.
    A coupled group's score is the sum of its producers' unit scores (`group_gate_pairs`)."""
    assert opts.target is not None
    alive = [torch.ones(n, dtype=torch.bool) for n in units]
    gate_pairs, owners = group_gate_pairs(items)
    bar = tqdm(range(1, pruner.rounds + 1), desc=f"score ({pruner.name})", disable=not progress)
    for k in bar:
        fraction = 1 - (1 - opts.target) ** (k / pruner.rounds)
        gates = UnitGates(work, gate_pairs, masks=[alive[o].float() for o in owners])
        raw = pruner.unit_scores(work, gates, example)
        labels = [p.producer for p in gate_pairs]
        _ranked(pruner, labels, raw, [alive[o] for o in owners])
        summed = reduce_group_scores(raw, owners, len(items))
        ranked = _ranked(pruner, [_label(g) for g in items], summed, alive)
        if opts.allocation == "uniform":
            keeps = allocate.uniform(cost, units, floors, fraction, round_to)
            if refine:
                keeps = allocate.refine_up(cost, units, keeps, fraction, round_to)
            alive = [
                allocate.keep_top_blocks(r, c, g.blocks)
                for r, c, g in zip(ranked, keeps, items, strict=True)
            ]
        else:
            alive = allocate.global_by_scores(cost, ranked, floors, fraction)
            if max(round_to) > 1:
                alive = allocate.round_masks(ranked, alive, round_to)
            alive = [
                a if g.blocks == 1 else allocate.keep_top_blocks(r, int(a.sum()), g.blocks)
                for a, r, g in zip(alive, ranked, items, strict=True)
            ]
    return [torch.nonzero(a).flatten() for a in alive]


def _ranked(
    pruner: UnitScorer,
    labels: list[str],
    scores: Sequence[torch.Tensor],
    alive: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """Checked scores as float64, with already pruned units at -inf (they stay pruned)."""
    if len(scores) != len(labels):
        raise ValueError(f"{pruner!r} returned {len(scores)} score vectors for {len(labels)} pairs")
    out = []
    for label, score, mask in zip(labels, scores, alive, strict=True):
        score = score.detach().double().cpu()
        if score.shape != mask.shape or not torch.isfinite(score).all():
            raise ValueError(
                f"{pruner!r} must return {mask.numel()} finite scores for {label!r}, "
                f"got shape {tuple(score.shape)}"
            )
        out.append(torch.where(mask, score, torch.full_like(score, -torch.inf)))
    return out


# --------------------------------------------------------------------------------------------
# One pair: cut, then rewire the consumer


def _cut_and_rewire(
    opts: Options,
    work: nn.Module,
    dense: nn.Module,
    pair: PrunablePair,
    picked: Choice,
    out_keep: dict[str, torch.Tensor] | None = None,
) -> LayerRow:
    producer, norm, consumer = modules_of(work, pair)
    n = _out_units(work, pair)
    order = torch.argsort(picked.keep.cpu())
    keep, scale = picked.keep.cpu()[order], picked.scale.detach().cpu()[order]
    if keep.numel() == n and bool((scale == 1).all()):
        return _untouched_row(opts, pair, n, keep, scale, picked)
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
    if opts.compensate == "lstsq":
        assert opts.calibration is not None
        inputs = capture_input(work, pair.consumer, opts.calibration)
        target = _dense_target(dense, work, pair.consumer, opts.calibration, out_keep or {})
        refit, fit = refit_consumer(
            work.get_submodule(pair.consumer), inputs, target, ridge=opts.ridge
        )
        replace_submodule(work, pair.consumer, refit)
        rewiring = f"least squares on {fit.rows} rows, relative residual {fit.residual:.3g}"
        if fit.note:
            rewiring += f" ({fit.note})"
        if picked.per_next is not None:
            full = expand_reading(next_weights(refit, keep.numel()), keep, n)
            weights_only = rewired_eps(reading, full, picked.per_next)
            old_bias, new_bias = consumer.bias, refit.bias
            changed = False
            if old_bias is not None and new_bias is not None:
                changed = not torch.equal(old_bias, new_bias)
            eps_rewired = float("inf") if changed else weights_only
            if changed:
                notes.append(
                    "the refitted consumer bias is not covered by the relative certificate"
                )
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
    )  # fmt: skip


def _untouched_row(
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


# --------------------------------------------------------------------------------------------
# Costs in the report


def _pair_module_names(pairs: Sequence[PrunablePair]) -> list[str]:
    names: dict[str, None] = {}
    for pair in pairs:
        for name in (pair.producer, pair.norm, pair.consumer):
            if name is not None:
                names[name] = None
    return list(names)


def _params_of(modules: dict[str, nn.Module], names: Sequence[str]) -> int:
    return sum(p.numel() for name in names for p in modules[name].parameters(recurse=False))


def _with_costs(
    row: LayerRow,
    before: dict[str, nn.Module],
    after: dict[str, nn.Module],
    macs_before: dict[str, int] | None,
    macs_after: dict[str, int] | None,
) -> LayerRow:
    from dataclasses import replace

    names = list(row.modules) or [n for n in (row.producer, row.norm, row.consumer) if n]
    fields: dict[str, object] = {
        "params_before": _params_of(before, names),
        "params_after": _params_of(after, names),
    }
    if macs_before is not None and macs_after is not None:
        fields["macs_before"] = sum(macs_before.get(n, 0) for n in names)
        fields["macs_after"] = sum(macs_after.get(n, 0) for n in names)
    return replace(row, **fields)  # type: ignore[arg-type]
