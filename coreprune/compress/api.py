"""`compress`: prune every prunable layer pair and channel group of a model; return a new,
smaller model and a report.

It is a short composition of public steps: find the channel groups (`coreprune.surgery.groups`;
single pairs from `coreprune.surgery.graph` are its simple groups), build the cost model
(`cost.CostModel`), allocate kept counts (`plan`), then ask the run's chooser
(`choosers.Chooser`, the one interface every method meets; `compress` names none):

- coupled groups (residual streams, depthwise blocks, gates, concatenations) are chosen on the
  dense model and cut first, all at once (`apply.cut_groups`);
- then, in forward order and in the network as compressed so far, each single pair's kept units
  are chosen and cut (`apply.cut_pair`) and its consumer rewired (`rewire`), and each consumer
  of a cut coupled group is refitted by least squares (compensate="lstsq").

Planning lives in `plan`, coupled groups in `coupled`, single pairs in `pairs`; this module
only composes them. The caller's model is never touched.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from coreprune.checks import check_int
from coreprune.compress import allocate
from coreprune.compress.capture import DenseTargets, LayerRecords
from coreprune.compress.choosers import DEFAULT_METHOD, Choice, ChoiceContext, Chooser
from coreprune.compress.choosers.base import group_label
from coreprune.compress.cost import (
    Inputs,
    as_args,
    count_macs,
    count_params,
    module_macs,
    removed_fraction,
)
from coreprune.compress.coupled import (
    coupled_refits,
    cut_coupled,
    group_row,
    group_steps,
    refit_one,
    resolve_groups,
)
from coreprune.compress.options import (
    DEFAULT_FLOOR,
    Options,
    check_model_inputs,
    check_options,
)
from coreprune.compress.pairs import cut_and_rewire, params_of, with_costs
from coreprune.compress.plan import plan_counts
from coreprune.compress.report import (
    CompressReport,
    CompressResult,
    CompressStep,
    LayerRow,
    combine_steps,
)
from coreprune.scoring.base import UnitScorer
from coreprune.surgery.graph import PrunablePair
from coreprune.surgery.groups import ChannelGroup
from coreprune.surgery.rewire import (
    DEFAULT_RIDGE,
)
from coreprune.torch_utils import restore_flags, training_flags

__all__ = ["compress"]


def compress(
    model: nn.Module,
    *,
    eps: float | None = None,
    target: float | None = None,
    method: str | UnitScorer | Chooser = DEFAULT_METHOD,
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
    worst_case: bool | None = None,
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
        method: "coreset", a baseline name ("magnitude", "synflow", "random", ...), a
            `coreprune.scoring.Pruner` instance such as `SNIP(loader)`, or any
            `coreprune.compress.choosers.Chooser` (docs/api.md, "A chooser of your own").
        mode: "select" (deterministic) or "sample" (the coreset's sensitivity sampling).
        allocation: "uniform" (same kept fraction everywhere) or "global" (one ranking across
            layers: the coreset's certified eps, or the baseline's unit scores).
        metric: "params" or "macs" (needs `example_input`).
        example_input: a batch the model accepts; used for MACs.
        calibration: a batch of model inputs: the query space of each layer's certificate, the
            empirical choice and the least-squares rewiring use it.
        rank: dimension of each layer's calibration query space (default 8, or one less than a
            layer's input dimension where that is 8 or fewer; a given rank is never lowered).
        pairs: (producer, consumer) pairs by hand, for models torch.fx cannot trace.
        delta: failure probability of sampled certificates.
        generator: seeds sampling and the random baseline.
        sensitivity: the worst-case bound ("auto", "paper", "leverage", "exact", "all").
        compensate: how each consumer is rewired after its producer loses units: "none",
            "merge" (data-free) or "lstsq" (refit on `calibration`). Default: "lstsq" with
            calibration, else "merge", for the coreset; "none" for baselines.
        choice: how the coreset picks units with `target`: "refit" (default with calibration:
            greedy structured OBS on each consumer's least-squares problem, choosing for what
            the refit loses; with compensate="lstsq" the report's `gap` bounds how far the
            kept set is from the best possible one on the calibration rows), "empirical" (the
            worst-row empirical sensitivity), "empirical_rms" (root-mean-square contribution)
            or "certified" (the worst-case sensitivities; default without calibration).
        worst_case: compute each pair's worst-case (Löwner / leverage) certificate for the
            kept set. Default: yes, except with choice="refit", where it is vacuous at the
            budgets users prune to and costs more than the choice (giving `rank` or
            `sensitivity` asks for it too); True computes it anyway.
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
        "worst_case": worst_case,
    }  # fmt: skip
    if guarantee is not None or holdout is not None:
        if guarantee is None or holdout is None:
            raise ValueError("certified compression needs both guarantee= and holdout=")
        if target is not None or eps is not None or steps != 1:
            raise ValueError(
                "with guarantee=, the budget is searched: leave target, eps and steps unset"
            )
        # Certified compression runs compress at each budget, so it lives one layer up
        # (coreprune.certify); the package root plugs it in (`plug_certified_search`).
        search = _CERTIFIED_SEARCH.get("search")
        if search is None:
            raise RuntimeError(
                "certified compression is not plugged in: import coreprune (the package root "
                "plugs in coreprune.certify.certified_compress)"
            )
        del options["eps"], options["target"]
        return search(model, guarantee=guarantee, holdout=holdout, confidence=confidence, **options)
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
    """`steps` compressions, each toward 1 - (1 - target)^(step / steps) of the dense cost.

    The result's report describes the whole run against the dense model (`combine_steps`): the
    overall target, what was achieved, and every step (`report.steps`), skipped ones included.
    """
    target = options["target"]
    if target is None:
        raise ValueError("steps > 1 needs target= (eps applies per layer in one step)")
    check_options(
        model, None, target, options["method"], options["mode"], options["allocation"],
        options["metric"], options["example_input"], options["calibration"], options["rank"],
        options["delta"], options["generator"], options["sensitivity"], options["compensate"],
        options["choice"], options["floor"], options["ridge"], options["worst_case"],
    )  # fmt: skip
    args = None if options["example_input"] is None else as_args(options["example_input"])
    measure = (
        (lambda m: count_macs(m, args)) if options["metric"] == "macs" and args else count_params
    )
    start = time.perf_counter()
    dense_cost = measure(model)
    current, result = model, None
    done: list[CompressStep] = []
    for step in range(1, steps + 1):
        wanted = (1 - target) ** (step / steps) * dense_cost  # cost left after this step
        relative = 1 - wanted / measure(current)
        if relative <= 0:  # an earlier step overshot (round_to, floors): nothing left to cut
            done.append(CompressStep(step, 0.0, 1 - measure(current) / dense_cost, None))
            continue
        result = _compress_once(current, **{**options, "target": min(relative, 1 - 1e-9)})
        current = result.model
        done.append(CompressStep(step, relative, 1 - measure(current) / dense_cost, result.report))
        if on_step is not None:
            on_step(current, step)
    assert result is not None  # step 1 always prunes: relative = 1 - (1 - target)^(1/steps) > 0
    report = combine_steps(
        done, target=target, metric=options["metric"], seconds=time.perf_counter() - start
    )
    return CompressResult(result.model, report)


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
    worst_case: bool | None,
) -> CompressResult:
    start = time.perf_counter()
    opts = check_options(
        model, eps, target, method, mode, allocation, metric, example_input, calibration, rank,
        delta, generator, sensitivity, compensate, choice, floor, ridge, worst_case,
    )  # fmt: skip
    if not isinstance(groups, bool):
        raise TypeError(f"groups must be True or False, got {type(groups).__name__}")
    round_to = check_int(round_to, "round_to", minimum=1)
    work = copy.deepcopy(model)
    flags = training_flags(work)
    work.eval()
    check_model_inputs(work, example_input, calibration)
    items, blocked = resolve_groups(work, pairs, ignored_layers, groups, opts.target is not None)
    args = None if example_input is None else as_args(example_input)
    dense = copy.deepcopy(work)
    dense_macs = module_macs(dense, args) if args is not None else None
    steps_of = _rounding(items, round_to)
    units = [g.width for g in items]
    floors = allocate.floors_for(units, opts.floor, steps_of)
    out_keep: dict[str, torch.Tensor] = {}  # outputs of consumers cut as coupled-group members
    context = _context(opts, dense, items, args, out_keep, progress)
    refine = groups and pairs is None  # with groups: kept counts land just above the target
    keeps, planned, budget = plan_counts(
        opts, work, items, units, floors, context, args, steps_of, refine
    )
    cut_list = _cut_groups(opts, work, items, keeps, planned, context, out_keep)
    rows = _cut_pairs(opts, work, items, cut_list, keeps, planned, context, progress)
    restore_flags(work, flags)
    final_macs = module_macs(work, args) if args is not None else None
    dense_modules, after_modules = dict(dense.named_modules()), dict(work.named_modules())
    rows = [with_costs(r, dense_modules, after_modules, dense_macs, final_macs) for r in rows]
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
        prunable_params_before=params_of(dense_modules, prunable),
        prunable_params_after=params_of(after_modules, prunable),
        macs_before=macs_before, macs_after=macs_after, seconds=time.perf_counter() - start,
        advice=_advice(work, opts.calibration is not None),
    )  # fmt: skip
    return CompressResult(work, report)


def _rounding(items: list[ChannelGroup], round_to: int) -> list[int]:
    """Each item's kept-count step: `round_to`, and whole blocks for grouped convs."""
    units = [g.width for g in items]
    for group, n in zip(items, units, strict=True):
        if round_to > n:
            raise ValueError(
                f"round_to={round_to} is larger than {group_label(group)!r} ({n} units); pass "
                f"round_to <= {min(units)} or ignore that layer (ignored_layers=)"
            )
    return [math.lcm(round_to, g.blocks) for g in items]


def _context(
    opts: Options, dense: nn.Module, items: list[ChannelGroup],
    args: tuple[torch.Tensor, ...] | None, out_keep: dict[str, torch.Tensor], progress: bool,
) -> ChoiceContext:  # fmt: skip
    """What the chooser may read. With calibration, one pass of the dense model records every
    consumer's output (the refits' targets) and, for the refit choice, the inputs of coupled
    groups' consumers (chosen before any cut); `out_keep` later names the outputs kept of
    consumers cut as coupled-group members."""
    target_of, records = None, None
    if opts.calibration is not None:
        consumers = [c.name for g in items for c in g.consumers]
        group_consumers = [c.name for g in items if g.pair is None for c in g.consumers]
        records = LayerRecords(
            dense, opts.calibration, outputs=consumers,
            inputs=group_consumers if opts.choice == "refit" else [],
        )  # fmt: skip
        target_of = DenseTargets(records, out_keep)
    return ChoiceContext(
        calibration=opts.calibration, target_of=target_of, records=records, ridge=opts.ridge,
        example=args[0] if args is not None else opts.calibration, progress=progress,
    )  # fmt: skip


def _cut_groups(
    opts: Options, work: nn.Module, items: list[ChannelGroup], keeps: list[int] | None,
    planned: list[Choice] | None, context: ChoiceContext, out_keep: dict[str, torch.Tensor],
) -> list[tuple[int, Choice]]:  # fmt: skip
    """Choose every coupled group on the dense model, then cut them all at once; each group's
    (index, choice), and `out_keep` filled with the channels its producers keep."""
    chosen: list[tuple[int, Choice]] = []
    coupled = [i for i, g in enumerate(items) if g.pair is None]
    bar = tqdm(
        coupled, desc="choose (groups)", disable=not (context.progress and coupled), unit="group"
    )
    for index in bar:
        group = items[index]
        assert keeps is not None  # coupled groups are pruned with target= only
        picked = (
            planned[index]
            if planned is not None
            else opts.chooser.choose(work, group, keeps[index], context)
        )
        picked = replace(picked, keep=picked.keep.cpu())
        chosen.append((index, picked))
        if picked.keep.numel() < group.width:
            for name in (*group.producers, *group.gates):
                out_keep[name] = picked.keep
    cut_coupled(work, items, [(i, c.keep) for i, c in chosen])
    return chosen


def _cut_pairs(
    opts: Options, work: nn.Module, items: list[ChannelGroup], groups: list[tuple[int, Choice]],
    keeps: list[int] | None, planned: list[Choice] | None, context: ChoiceContext,
    progress: bool,
) -> list[LayerRow]:  # fmt: skip
    """In forward order, in the network as cut so far: choose, cut and rewire each single pair,
    and refit each consumer of a cut coupled group; every item's report row, in item order."""
    cut_list = [(i, c.keep) for i, c in groups]
    refits = coupled_refits(opts, work, items, cut_list)
    bar = tqdm(
        group_steps(work, items, refits), desc=f"compress ({opts.method})",
        disable=not progress, unit="layer",
    )  # fmt: skip
    rows: dict[int, LayerRow] = {}
    for kind, index in bar:
        try:
            if kind == "refit":
                assert context.target_of is not None
                refit_one(opts, work, refits[index], context.target_of)
                continue
            item = items[index]
            assert item.pair is not None
            count = None if keeps is None else keeps[index]
            picked = (
                planned[index]
                if planned is not None
                else opts.chooser.choose(work, item, count, context)
            )
            rows[index] = cut_and_rewire(opts, work, item.pair, picked, context.target_of)
        except (TypeError, ValueError) as err:
            err_kind = TypeError if isinstance(err, TypeError) else ValueError
            where = refits[index] if kind == "refit" else group_label(items[index])
            raise err_kind(f"{where!r}: {err}") from err
    for index, picked in groups:
        gap = None if picked.selection is None else picked.selection.gap
        rows[index] = group_row(opts, items[index], picked.keep, picked.note, gap)
    return [rows[i] for i in sorted(rows)]


BN_ADVICE = (
    "the model has batch norm and was pruned without calibration data: its running statistics "
    "still describe the dense network, which can drop accuracy to near chance; re-estimate them "
    "on a few training batches (coreprune.training.recalibrated_copy) before evaluating"
)


def _advice(model: nn.Module, calibrated: bool) -> tuple[str, ...]:
    """What to do next that the report can tell from the run (docs/api.md, batch norm)."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return (BN_ADVICE,) if has_bn and not calibrated else ()


# --------------------------------------------------------------------------------------------
# compress(guarantee=...): the certified search of the layer above, plugged in from there so
# that compress never imports its caller.
_CERTIFIED_SEARCH: dict[str, Callable[..., Any]] = {}


def plug_certified_search(search: Callable[..., Any]) -> None:
    """Make `compress(guarantee=..., holdout=...)` run `search` (called as
    `search(model, guarantee=, holdout=, confidence=, **options)`); the package root plugs in
    `coreprune.certify.certified_compress`."""
    _CERTIFIED_SEARCH["search"] = search
