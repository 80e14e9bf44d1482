"""Whole-model compression: prune every prunable layer pair in forward order, then report.

`compress` deep-copies the model, finds the (producer, consumer) pairs with torch.fx (or takes
them by hand), decides how many units each producer keeps (from a per-layer `eps`, or from a
model-level `target` fraction of params or MACs), and replaces the modules of each pair by
physically smaller ones. Each layer is scored in the network as already compressed, so a
consumer's weights already reflect earlier pruning. The caller's model is never touched.

Budgets are planned analytically: a module's params (and MACs) are bilinear in its kept output
and input units, so the whole model's cost is known exactly from the kept counts, and the
bisection never runs surgery. The surgery then runs once. `allocation="global"` ranks units by
sensitivities computed on the dense model to fix the kept counts; each layer's certificate is
then recomputed in the compressed network (so a row's eps can differ from the common eps).

Speed: when a layer's units are linearly independent on the query space (data-free convs with
n <= C_in*kh*kw), every sensitivity is exactly 1 where the consumer reads the unit, found with
one QR instead of one SVD per next unit (`_fast_sensitivities`). With all sensitivities tied,
select mode then removes the lowest-index units, and the certificate is vacuous: the honest
data-free answer for such layers; a calibration query space is the way to a useful one.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from coreprune.coreset.certificate import Certificate
from coreprune.coreset.prune import coreset_prune
from coreprune.coreset.query import QuerySpace
from coreprune.coreset.sensitivity import _RANK_RTOL, Sensitivities
from coreprune.coreset.sensitivity import METHODS as SENSITIVITY_METHODS
from coreprune.harness.evaluation.metrics import count_macs, count_params
from coreprune.scoring.base import Pruner
from coreprune.scoring.gates import UnitGates
from coreprune.scoring.random_pruner import Random
from coreprune.scoring.registry import BASELINES, resolve_method
from coreprune.surgery.activations import resolve_activation
from coreprune.surgery.graph import BlockedLayer, PrunablePair, find_prunable_pairs, validate_pairs
from coreprune.surgery.slicing import slice_consumer, slice_norm, slice_producer
from coreprune.surgery.units import layer_units, next_weights

__all__ = ["CompressReport", "CompressResult", "LayerRow", "compress"]

MODES = ("select", "sample")
ALLOCATIONS = ("uniform", "global")
METRICS = ("params", "macs")
DEFAULT_RANK = 8
MAX_CALIBRATION_ROWS = 4000  # im2col patches per layer kept for the calibration query space
_PATCH_SEED = 0  # patch subsampling uses its own generator, so it never shifts the user's stream

Inputs = torch.Tensor | tuple[torch.Tensor, ...]


# --------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class LayerRow:
    """One pruned pair. Params/MACs cover producer + norm + consumer, in the input and output model.

    `keep` indexes the producer's units as they were in the input model; `scale` multiplies each
    kept unit's outgoing weights (all 1 in select mode). `eps`, `delta`, `vacuous`, `query` and
    `sensitivity` come from the layer's certificate, and are None for methods without one.
    """

    producer: str
    consumer: str
    norm: str | None
    units_before: int
    units_after: int
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    eps: float | None
    delta: float | None
    vacuous: bool | None
    query: str | None
    sensitivity: str | None
    note: str
    keep: torch.Tensor = field(repr=False)
    scale: torch.Tensor = field(repr=False)
    certificate: Certificate | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CompressReport(Sequence[LayerRow]):
    """Per-layer rows (iterate or index it like a list) plus model totals and the budget outcome.

    Totals count every parameter once. `prunable_*` counts the modules of the pairs (producers,
    norms, consumers, each once), so it is below the sum of the rows when a consumer is also the
    next pair's producer. `achieved` is the removed fraction in the budget's metric.
    """

    rows: tuple[LayerRow, ...]
    blocked: tuple[BlockedLayer, ...]
    pairs_by_hand: bool
    method: str
    mode: str
    allocation: str | None
    metric: str | None
    eps: float | None
    target: float | None
    achieved: float | None
    target_reached: bool | None
    budget: str
    params_before: int
    params_after: int
    prunable_params_before: int
    prunable_params_after: int
    macs_before: int | None
    macs_after: int | None
    seconds: float

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Any:
        return self.rows[index]

    def __iter__(self) -> Iterator[LayerRow]:
        return iter(self.rows)

    @property
    def params_removed(self) -> float:
        """Fraction of the whole model's parameters removed."""
        return _fraction(self.params_before, self.params_after)

    @property
    def prunable_params_removed(self) -> float:
        """Fraction of the prunable modules' parameters removed."""
        return _fraction(self.prunable_params_before, self.prunable_params_after)

    @property
    def macs_removed(self) -> float | None:
        """Fraction of MACs removed (None without `example_input`)."""
        if self.macs_before is None or self.macs_after is None:
            return None
        return _fraction(self.macs_before, self.macs_after)

    def to_markdown(self) -> str:
        """A per-layer table, the totals, the budget outcome and the blocked layers."""
        head = "| producer | consumer | units | eps | delta | query space | params | MACs | note |"
        lines = [head, "|" + "---|" * 9]
        for r in self.rows:
            eps = "—" if r.eps is None else f"{r.eps:.4g}" + (" (vacuous)" if r.vacuous else "")
            delta = "—" if r.delta is None else f"{r.delta:g}"
            macs = "—" if r.macs_before is None else f"{r.macs_before:,} → {r.macs_after:,}"
            producer = r.producer + (f" (+{r.norm})" if r.norm else "")
            lines.append(
                f"| {producer} | {r.consumer} | {r.units_before} → {r.units_after} | {eps} | "
                f"{delta} | {r.query or '—'} | {r.params_before:,} → {r.params_after:,} | {macs} "
                f"| {r.note} |"
            )
        lines += [
            "",
            f"- method: {self.method}, mode: {self.mode}, {self.budget}",
            f"- params: {self.params_before:,} → {self.params_after:,} "
            f"({100 * self.params_removed:.2f}% of the model removed; prunable modules "
            f"{self.prunable_params_before:,} → {self.prunable_params_after:,}, "
            f"{100 * self.prunable_params_removed:.2f}% removed)",
        ]
        if self.macs_before is not None and self.macs_after is not None:
            lines.append(
                f"- MACs: {self.macs_before:,} → {self.macs_after:,} "
                f"({100 * (self.macs_removed or 0.0):.2f}% removed)"
            )
        lines.append(f"- wall time: {self.seconds:.2f} s")
        if self.pairs_by_hand:
            lines.append("- pairs given by hand: no blocked-layer analysis")
        elif self.blocked:
            lines.append(f"- blocked layers ({len(self.blocked)}):")
            lines += [f"  - `{b.name}`: {b.reason}" for b in self.blocked]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


@dataclass(frozen=True)
class CompressResult:
    """The compressed model (a new module) and its report."""

    model: nn.Module
    report: CompressReport

    def __str__(self) -> str:
        return self.report.to_markdown()


# --------------------------------------------------------------------------------------------
# Public entry point


def compress(
    model: nn.Module,
    *,
    eps: float | None = None,
    target: float | None = None,
    method: str | Pruner = "coreset",
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
    progress: bool = True,
) -> CompressResult:
    """Prune every prunable layer pair of `model`; return a new, smaller model and a report.

    Give exactly one of `eps` (each layer's certificate target; coreset only) or `target` (the
    fraction of the whole model's params, or MACs with `metric="macs"`, to remove).
    `allocation="uniform"` keeps the same fraction of units in every pair; `"global"` finds one
    common eps, each layer removing its least sensitive units while its certified eps stays below
    it. `calibration` (a batch of model inputs) restricts each layer's query space to the top
    `rank` principal directions of its real inputs; otherwise certificates are data-free.
    `pairs` replaces the fx analysis for models fx cannot trace. `method` may instead name a
    baseline ("magnitude", "synflow", "random") or be a `coreprune.scoring.Pruner` such as
    `SNIP(loader)`: it prunes the same pairs to the same budgets (uniform: the same kept counts
    as the coreset; global: one ranking of unit scores across layers), scoring every unit on the
    dense model (re-scored `rounds` times for SynFlow), by the same surgery.
    """
    start = time.perf_counter()
    opts = _check_options(
        model, eps, target, method, mode, allocation, metric, example_input, calibration, rank,
        delta, generator, sensitivity,
    )  # fmt: skip
    device = _single_device(model)
    for arg_name, value in (("example_input", example_input), ("calibration", calibration)):
        _check_input_device(value, device, arg_name)
    flags = {name: m.training for name, m in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    work = copy.deepcopy(model).eval()
    pair_list, blocked = _resolve_pairs(work, pairs)
    args = _as_args(example_input)
    dense_macs = _module_macs(work, args) if args is not None else None
    dense_modules = dict(work.named_modules())
    example = args[0] if args is not None else calibration
    planner = _Planner(opts, work, pair_list, dense_macs, calibration, example, progress)
    keeps, budget = planner.plan()

    rows: list[LayerRow] = []
    bar = tqdm(pair_list, desc=f"compress ({opts.method})", disable=not progress, unit="layer")
    for index, pair in enumerate(bar):
        count = None if keeps is None else keeps[index]
        try:
            rows.append(planner.prune_pair(index, pair, count))
        except (TypeError, ValueError) as err:
            kind = TypeError if isinstance(err, TypeError) else ValueError
            raise kind(f"pair {pair.producer!r} -> {pair.consumer!r}: {err}") from err

    for name, module in work.named_modules():
        if name in flags:
            module.training = flags[name]
    for name, param in work.named_parameters():
        if name in grads:
            param.requires_grad_(grads[name])
    final_macs = _module_macs(work, args) if args is not None else None
    rows = [_with_costs(r, dense_modules, dict(work.named_modules()), dense_macs, final_macs)
            for r in rows]  # fmt: skip
    prunable = _pair_module_names(pair_list)
    params_before, params_after = count_params(model), count_params(work)
    macs_before = count_macs(model, args) if args is not None else None
    macs_after = count_macs(work, args) if args is not None else None
    achieved, reached = None, None
    if opts.target is not None:
        if opts.metric == "macs":
            assert macs_before is not None and macs_after is not None
            achieved = _fraction(macs_before, macs_after)
        else:
            achieved = _fraction(params_before, params_after)
        reached = achieved >= opts.target - 1e-12
        budget += f"; achieved {100 * achieved:.2f}% {opts.metric} removed" + (
            "" if reached else " — TARGET NOT REACHED"
        )
    report = CompressReport(
        rows=tuple(rows), blocked=tuple(blocked), pairs_by_hand=pairs is not None,
        method=opts.method, mode=opts.mode,
        allocation=opts.allocation if opts.target is not None else None,
        metric=opts.metric if opts.target is not None else None,
        eps=opts.eps, target=opts.target, achieved=achieved, target_reached=reached, budget=budget,
        params_before=params_before, params_after=params_after,
        prunable_params_before=_params_of(dense_modules, prunable),
        prunable_params_after=_params_of(dict(work.named_modules()), prunable),
        macs_before=macs_before, macs_after=macs_after, seconds=time.perf_counter() - start,
    )  # fmt: skip
    return CompressResult(work, report)


# --------------------------------------------------------------------------------------------
# Argument checks


@dataclass(frozen=True)
class _Options:
    eps: float | None
    target: float | None
    method: str
    mode: str
    allocation: str
    metric: str
    rank: int
    calibrated: bool
    delta: float
    generator: torch.Generator | None
    sensitivity: str
    pruner: Pruner | None


def _resolve_baseline(method: object, generator: object) -> Pruner:
    if method == "random" and isinstance(generator, torch.Generator):
        return Random(generator)  # compress(generator=...) seeds the random baseline
    try:
        return resolve_method(method)
    except ValueError as err:
        if isinstance(method, str) and method not in BASELINES:
            raise ValueError(
                f"method must be one of {('coreset', *BASELINES)} or a Pruner, got {method!r}"
            ) from err
        raise


def _check_options(
    model: object, eps: object, target: object, method: object, mode: object,
    allocation: object, metric: object, example_input: object, calibration: object,
    rank: object, delta: object, generator: object, sensitivity: object,
) -> _Options:  # fmt: skip
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if (eps is None) == (target is None):
        raise ValueError(
            "give exactly one of eps (each layer's certificate target) and target (the fraction "
            "of the model to remove)"
        )
    pruner = None if method == "coreset" else _resolve_baseline(method, generator)
    method = "coreset" if pruner is None else pruner.name
    _check_choice(mode, MODES, "mode")
    _check_choice(allocation, ALLOCATIONS, "allocation")
    _check_choice(metric, METRICS, "metric")
    _check_choice(sensitivity, SENSITIVITY_METHODS, "sensitivity")
    if eps is not None:
        eps = _check_number(eps, "eps")
        if not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"eps must be a finite number > 0, got {eps}")
        if method != "coreset":
            raise ValueError(
                f"eps needs method='coreset' (method={method!r} gives no certificate); "
                "pass target= instead"
            )
        if allocation != "uniform" or metric != "params":
            raise ValueError(
                "allocation and metric apply only with target=; with eps every layer meets the "
                "same certificate target, so leave them at their defaults"
            )
    if target is not None:
        target = _check_number(target, "target")
        if not 0 < target < 1:
            raise ValueError(
                f"target must be a fraction in (0, 1) of the model's {metric} to remove, "
                f"got {target}"
            )
        if metric == "macs" and example_input is None:
            raise ValueError("metric='macs' needs example_input (a batch the model accepts)")
    if method != "coreset" and mode != "select":
        raise ValueError(f"mode={mode!r} is a coreset mode; method={method!r} needs mode='select'")
    if example_input is not None:
        _as_args(example_input)
    if calibration is not None:
        if not isinstance(calibration, torch.Tensor):
            raise TypeError(
                f"calibration must be a tensor (a batch of model inputs), got "
                f"{type(calibration).__name__}"
            )
        if calibration.ndim == 0 or calibration.shape[0] < 1:
            raise ValueError("calibration must be a non-empty batch of model inputs")
    if rank is not None:
        if calibration is None:
            raise ValueError("rank sets the calibration query space; pass calibration= with it")
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise TypeError(f"rank must be an int, got {type(rank).__name__}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
    delta = _check_number(delta, "delta")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be a probability in (0, 1), got {delta}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return _Options(
        eps=eps, target=target, method=str(method), mode=str(mode), allocation=str(allocation),
        metric=str(metric), rank=DEFAULT_RANK if rank is None else int(rank),
        calibrated=calibration is not None, delta=delta, generator=generator,
        sensitivity=str(sensitivity), pruner=pruner,
    )  # fmt: skip


def _check_choice(value: object, choices: Sequence[str], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _check_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    return float(value)


def _single_device(model: nn.Module) -> torch.device:
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    if len(devices) > 1:
        listed = ", ".join(sorted(str(d) for d in devices))
        raise ValueError(
            f"model has tensors on several devices ({listed}); move it to one with .to()"
        )
    return devices.pop() if devices else torch.device("cpu")


def _check_input_device(value: object, device: torch.device, name: str) -> None:
    if value is None:
        return
    tensors = (value,) if isinstance(value, torch.Tensor) else tuple(value)  # type: ignore[arg-type]
    for tensor in tensors:
        if tensor.device != device:
            raise ValueError(f"{name} is on {tensor.device} but the model on {device}; move it")


def _as_args(value: object) -> tuple[torch.Tensor, ...] | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return (value,)
    if (
        isinstance(value, (tuple, list))
        and value
        and all(isinstance(v, torch.Tensor) for v in value)
    ):
        return tuple(value)
    raise TypeError(
        "example_input must be a tensor or a tuple of tensors (the forward's arguments)"
    )


def _resolve_pairs(
    work: nn.Module, pairs: Sequence[PrunablePair] | None
) -> tuple[list[PrunablePair], list[BlockedLayer]]:
    """The pairs to prune in forward order, and the layers that cannot be pruned with why."""
    if pairs is None:
        found, blocked = find_prunable_pairs(work)
    else:
        found, blocked = validate_pairs(work, pairs), []
    usable: list[PrunablePair] = []
    for pair in found:
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
# Budget planning and per-pair pruning


@dataclass
class _Term:
    """A module's cost: product * out * in + linear * out, with out/in possibly a pair's kept units."""

    product: int
    linear: int
    out_units: int
    in_units: int
    out_pair: int | None
    in_pair: int | None

    def cost(self, keeps: Sequence[int] | None) -> int:
        out = self.out_units if keeps is None or self.out_pair is None else keeps[self.out_pair]
        inp = self.in_units if keeps is None or self.in_pair is None else keeps[self.in_pair]
        return self.product * out * inp + self.linear * out


@dataclass
class _CostModel:
    fixed: int
    terms: list[_Term]

    def cost(self, keeps: Sequence[int] | None) -> int:
        return self.fixed + sum(t.cost(keeps) for t in self.terms)

    def removed(self, keeps: Sequence[int]) -> float:
        return _fraction(self.cost(None), self.cost(keeps))


@dataclass
class _Choice:
    keep: torch.Tensor
    scale: torch.Tensor
    certificate: Certificate | None
    note: str


class _Planner:
    """Holds the working copy; plans kept counts, then prunes one pair at a time in place."""

    def __init__(
        self,
        opts: _Options,
        work: nn.Module,
        pairs: list[PrunablePair],
        dense_macs: dict[str, int] | None,
        calibration: torch.Tensor | None,
        example: torch.Tensor | None,
        progress: bool,
    ) -> None:
        self.opts = opts
        self.example = example
        self.unit_sets: list[torch.Tensor] | None = None
        self.work = work
        self.pairs = pairs
        self.dense_macs = dense_macs
        self.calibration = calibration
        self.progress = progress
        self.units = [_out_units(work.get_submodule(p.producer)) for p in pairs]
        self.cache: dict[int, tuple[tuple[nn.Module | None, ...], Sensitivities, torch.Tensor]] = {}
        seed = torch.Generator().manual_seed(0)
        self.random = opts.generator if opts.generator is not None else seed

    # ---- planning

    def plan(self) -> tuple[list[int] | None, str]:
        """Kept units per pair (None in eps mode) and a sentence describing the budget."""
        opts = self.opts
        if opts.target is None:
            return None, f"eps = {opts.eps:g} per layer"
        cost = self._cost_model()
        if opts.pruner is not None:
            keeps, label, reachable = self._plan_baseline(cost, opts.pruner)
        elif opts.allocation == "uniform":
            keeps, label, reachable = self._plan_uniform(cost, opts.target)
        else:
            keeps, label, reachable = self._plan_global(cost)
        planned = cost.removed(keeps)
        budget = (
            f"target {100 * opts.target:g}% of {opts.metric} removed, {opts.allocation} "
            f"allocation ({label}); planned {100 * planned:.2f}%"
        )
        if not reachable:
            msg = (
                f"target {opts.target:g} of {opts.metric} is not reachable: with every prunable "
                f"pair at its limit only {planned:.4f} can be removed (the rest sits in blocked "
                "layers); compressing to that maximum instead"
            )
            warnings.warn(msg, UserWarning, stacklevel=3)
            budget += f"; UNREACHABLE: at most {100 * planned:.2f}% can be removed"
        return keeps, budget

    def _cost_model(self) -> _CostModel:
        roles: dict[str, dict[str, int]] = {}
        for i, pair in enumerate(self.pairs):
            roles.setdefault(pair.producer, {})["out"] = i
            roles.setdefault(pair.consumer, {})["in"] = i
            if pair.norm is not None:
                roles.setdefault(pair.norm, {})["out"] = i
        terms: list[_Term] = []
        covered = 0
        for name, role in roles.items():
            module = self.work.get_submodule(name)
            term = self._term(module, name, role)
            terms.append(term)
            if self.opts.metric == "params":
                covered += sum(p.numel() for p in module.parameters(recurse=False))
            else:
                assert self.dense_macs is not None
                covered += self.dense_macs.get(name, 0)
        total = count_params(self.work) if self.opts.metric == "params" else None
        if total is None:
            assert self.dense_macs is not None
            total = self.dense_macs["__total__"]
        return _CostModel(total - covered, terms)

    def _term(self, module: nn.Module, name: str, role: dict[str, int]) -> _Term:
        out_pair, in_pair = role.get("out"), role.get("in")
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            linear = 2 if module.affine and self.opts.metric == "params" else 0
            return _Term(0, linear, module.num_features, 1, out_pair, None)
        assert isinstance(module, (nn.Linear, nn.Conv2d))
        out_units = _out_units(module)
        if isinstance(module, nn.Conv2d):
            in_units, per_in = module.in_channels, module.kernel_size[0] * module.kernel_size[1]
        elif in_pair is not None:
            in_units = self.units[in_pair]
            per_in = module.in_features // in_units  # the flatten block each unit feeds
        else:
            in_units, per_in = module.in_features, 1
        if self.opts.metric == "params":
            product, linear = per_in, int(module.bias is not None)
            actual = sum(p.numel() for p in module.parameters(recurse=False))
            if product * out_units * in_units + linear * out_units != actual:
                raise ValueError(
                    f"module {name!r} ({type(module).__name__}) has {actual} parameters, not the "
                    "weight + bias its shape implies; a subclass with extra parameters cannot be "
                    "budgeted"
                )
        else:
            assert self.dense_macs is not None
            macs = self.dense_macs.get(name, 0)
            if macs % (out_units * in_units):
                raise ValueError(f"MACs of {name!r} ({macs}) are not bilinear in its units")
            product, linear = macs // (out_units * in_units), 0
        return _Term(product, linear, out_units, in_units, out_pair, in_pair)

    def _plan_uniform(self, cost: _CostModel, target: float) -> tuple[list[int], str, bool]:
        """Largest common kept fraction f (k = ceil(f n), at least 1) that meets the target."""
        fractions = sorted({Fraction(k, n) for n in self.units for k in range(1, n + 1)})
        candidates = [Fraction(0), *fractions]

        def keeps_at(f: Fraction) -> list[int]:
            return [max(1, math.ceil(f * n)) for n in self.units]

        best = _last_true(candidates, lambda f: cost.removed(keeps_at(f)) >= target)
        reachable = best is not None
        f = candidates[best] if best is not None else Fraction(0)
        return keeps_at(f), f"kept fraction {float(f):.4f} per layer", reachable

    def _plan_baseline(self, cost: _CostModel, pruner: Pruner) -> tuple[list[int], str, bool]:
        """Kept units of a baseline, scored on the dense model; with `rounds` > 1 re-scored on
        the exponential schedule 1 - (1 - target)^(k / rounds), pruned units staying pruned."""
        assert self.opts.target is not None
        alive = [torch.ones(n, dtype=torch.bool) for n in self.units]
        label, reachable = "", True
        rounds = range(1, pruner.rounds + 1)
        bar = tqdm(rounds, desc=f"score ({pruner.name})", disable=not self.progress, unit="round")
        for k in bar:
            fraction = 1 - (1 - self.opts.target) ** (k / pruner.rounds)
            gates = UnitGates(self.work, self.pairs, masks=[a.float() for a in alive])
            ranked = self._ranked(pruner, pruner.unit_scores(self.work, gates, self.example), alive)
            if self.opts.allocation == "uniform":
                keeps, label, reachable = self._plan_uniform(cost, fraction)
                alive = [_keep_top(r, count) for r, count in zip(ranked, keeps, strict=True)]
            else:
                alive, reachable = _global_ranking(cost, ranked, fraction)
                label = f"one ranking of {pruner.name} unit scores across layers"
        self.unit_sets = [torch.nonzero(a).flatten() for a in alive]
        return [int(a.sum()) for a in alive], label, reachable

    def _ranked(
        self, pruner: Pruner, scores: Sequence[torch.Tensor], alive: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Checked scores as float64, with already pruned units at -inf (they stay pruned)."""
        if len(scores) != len(self.pairs):
            raise ValueError(
                f"{pruner!r} returned {len(scores)} score vectors for {len(self.pairs)} pairs"
            )
        out = []
        for pair, score, mask in zip(self.pairs, scores, alive, strict=True):
            score = score.detach().double().cpu()
            if score.shape != mask.shape or not torch.isfinite(score).all():
                raise ValueError(
                    f"{pruner!r} must return {mask.numel()} finite scores for {pair.producer!r}, "
                    f"got shape {tuple(score.shape)}"
                )
            out.append(torch.where(mask, score, torch.full_like(score, -math.inf)))
        return out

    def _plan_global(self, cost: _CostModel) -> tuple[list[int], str, bool]:
        """Smallest common eps whose per-layer removals meet the target (units scored densely)."""
        curves: list[torch.Tensor] = []
        bar = tqdm(self.pairs, desc="score (budget)", disable=not self.progress, unit="layer")
        for index, pair in enumerate(bar):
            curves.append(self._curve(index, pair))
        values = sorted({float(v) for c in curves for v in c.tolist()})

        def keeps_at(level: float) -> list[int]:
            out = []
            for curve in curves:
                removable = int((curve[1:] <= level).sum())  # curve[m]: eps after removing m
                out.append(max(1, curve.numel() - 1 - removable))
            return out

        found = _first_true(values, lambda e: cost.removed(keeps_at(e)) >= self.opts.target)
        reachable = found is not None
        level = values[found] if found is not None else values[-1]
        return keeps_at(level), f"common eps {level:.4g}, scored on the dense model", reachable

    def _curve(self, index: int, pair: PrunablePair) -> torch.Tensor:
        """eps certified after removing the m least sensitive non-zero units, m = 0..n'."""
        producer, norm, consumer = self._modules(pair)
        nonzero = _nonzero_units(producer, norm)
        if nonzero.numel() == 0:
            return torch.zeros(1, dtype=torch.float64)
        sub = _restrict(producer, norm, consumer, nonzero)
        query = self._query(pair, sub[0])
        sens = _fast_sensitivities(sub[0], sub[1], sub[2], query)
        if sens is None:
            result = coreset_prune(
                sub[0], None, sub[2], mode="select", keep=nonzero.numel(), query=query,
                activation=pair.activation, norm=sub[1], sensitivity=self.opts.sensitivity,
            )  # fmt: skip
            sens = result.sensitivities
        if not self.opts.calibrated:  # data-free sensitivities are reused if the pair is untouched
            self.cache[index] = ((producer, norm, consumer), sens, nonzero)
        order = torch.argsort(sens.per_unit, stable=True)
        cumulative = sens.per_next[:, order].cumsum(dim=1).max(dim=0).values
        return torch.cat([torch.zeros(1, dtype=torch.float64), cumulative.cpu()])

    # ---- pruning

    def prune_pair(self, index: int, pair: PrunablePair, count: int | None) -> LayerRow:
        """Choose the kept units of one pair in the current model and swap in smaller modules."""
        producer, norm, consumer = self._modules(pair)
        n = _out_units(producer)
        if self.unit_sets is None:
            choice = self._coreset_choice(index, pair, count)
        else:
            keep = self.unit_sets[index]
            note = "kept 1 unit: at least one unit stays" if keep.numel() == 1 else ""
            choice = _Choice(keep, _ones(keep.numel()), None, note)
        keep = choice.keep.to(producer.weight.device)
        new_producer = slice_producer(producer, keep)
        new_consumer = slice_consumer(consumer, n, keep, choice.scale)
        _replace(self.work, pair.producer, new_producer)
        _replace(self.work, pair.consumer, new_consumer)
        if norm is not None and pair.norm is not None:
            _replace(self.work, pair.norm, slice_norm(norm, keep))
        cert = choice.certificate
        return LayerRow(
            producer=pair.producer, consumer=pair.consumer, norm=pair.norm, units_before=n,
            units_after=int(keep.numel()), params_before=0, params_after=0, macs_before=None,
            macs_after=None, eps=None if cert is None else cert.eps,
            delta=None if cert is None else cert.delta,
            vacuous=None if cert is None else cert.vacuous,
            query=None if cert is None else cert.query,
            sensitivity=None if cert is None else cert.sensitivity, note=choice.note,
            keep=keep.cpu(), scale=choice.scale.detach().cpu(), certificate=cert,
        )  # fmt: skip

    def _coreset_choice(self, index: int, pair: PrunablePair, count: int | None) -> _Choice:
        producer, norm, consumer = self._modules(pair)
        n = _out_units(producer)
        notes: list[str] = []
        nonzero = _nonzero_units(producer, norm)
        if nonzero.numel() == 0:
            note = "every unit is all-zero (outputs 0); kept unit 0: at least one unit stays"
            return _Choice(torch.zeros(1, dtype=torch.long), _ones(1), None, note)
        if nonzero.numel() < n:
            notes.append(f"{n - nonzero.numel()} all-zero units (output exactly 0) removed first")
        if any("max" in kind for kind in pair.pooling):
            notes.append(
                "max pooling between the layers: eps covers the map before pooling only, not "
                "the pooled network (docs/theory.md §8)"
            )
        if count is not None and count > nonzero.numel():
            notes.append(f"budget allowed {count} units, only {nonzero.numel()} are non-zero")
            count = nonzero.numel()
        sub_producer, sub_norm, sub_consumer = _restrict(producer, norm, consumer, nonzero)
        query = self._query(pair, sub_producer)
        sens = self._cached(index, (producer, norm, consumer))
        if sens is None:
            sens = _fast_sensitivities(sub_producer, sub_norm, sub_consumer, query)
        result = coreset_prune(
            sub_producer, self.opts.eps if count is None else None, sub_consumer,
            delta=self.opts.delta, mode=self.opts.mode, keep=count, query=query,
            generator=self.opts.generator, activation=pair.activation, norm=sub_norm,
            sensitivity=self.opts.sensitivity, sensitivities=sens,
        )  # fmt: skip
        if count == 1 or (self.opts.eps is not None and result.keep.numel() == 1):
            whole = float(result.sensitivities.per_next.sum(dim=1).max())
            if self.opts.eps is not None and whole <= self.opts.eps:
                notes.append("eps allowed removing every unit; kept 1 (at least one unit stays)")
            elif count == 1:
                notes.append("kept 1 unit: at least one unit stays")
        keep = nonzero.to(result.keep.device)[result.keep]
        return _Choice(keep, result.scale, result.certificate, "; ".join(notes))

    # ---- helpers

    def _modules(self, pair: PrunablePair) -> tuple[Any, Any, Any]:
        norm = None if pair.norm is None else self.work.get_submodule(pair.norm)
        return (self.work.get_submodule(pair.producer), norm,
                self.work.get_submodule(pair.consumer))  # fmt: skip

    def _cached(self, index: int, modules: tuple[nn.Module | None, ...]) -> Sensitivities | None:
        """Sensitivities from budget planning, if the pair's modules are still the ones scored."""
        hit = self.cache.pop(index, None)
        if hit is None or any(a is not b for a, b in zip(hit[0], modules, strict=True)):
            return None
        return hit[1]

    def _query(self, pair: PrunablePair, producer: nn.Module) -> QuerySpace | None:
        """Data-free (None) or the calibration subspace of the producer's current inputs."""
        if self.calibration is None:
            return None
        rows = _calibration_rows(self.work, pair.producer, self.calibration)
        dim = rows.shape[1]
        if self.opts.rank >= dim:
            raise ValueError(
                f"rank={self.opts.rank} but the inputs of {pair.producer!r} have only {dim} "
                f"dimensions (patch size); pass rank < {dim}"
            )
        try:
            return QuerySpace.from_calibration(rows, self.opts.rank)
        except ValueError as err:
            raise ValueError(
                f"calibration query space for {pair.producer!r}: {err} (pass a smaller rank or "
                "more calibration inputs)"
            ) from err


def _keep_top(ranked: torch.Tensor, count: int) -> torch.Tensor:
    """Mask keeping the `count` highest-ranked units; ties drop the lower index first."""
    keep = torch.ones(ranked.numel(), dtype=torch.bool)
    keep[torch.sort(ranked, stable=True).indices[: ranked.numel() - count]] = False
    return keep


def _global_ranking(
    cost: _CostModel, ranked: Sequence[torch.Tensor], fraction: float
) -> tuple[list[torch.Tensor], bool]:
    """Remove units in one ascending order of score across layers (each layer's best unit
    excluded) until `fraction` of the cost is gone; the shortest such prefix."""
    protected = []
    for score in ranked:
        score = score.clone()
        score[int(torch.argmax(score))] = math.inf
        protected.append(score)
    flat = torch.cat(protected)
    layer = torch.cat([torch.full((s.numel(),), i) for i, s in enumerate(ranked)])
    order = torch.sort(flat, stable=True).indices[: flat.numel() - len(ranked)]
    sizes = [s.numel() for s in ranked]

    def keeps_at(r: int) -> list[int]:
        dropped = torch.bincount(layer[order[:r]], minlength=len(sizes)).tolist()
        return [n - d for n, d in zip(sizes, dropped, strict=True)]

    prefixes = list(range(order.numel() + 1))
    found = _first_true(prefixes, lambda r: cost.removed(keeps_at(r)) >= fraction)
    r = prefixes[-1] if found is None else prefixes[found]
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:r]] = False
    return list(keep.split(sizes)), found is not None


def _first_true(values: Sequence[Any], test: Callable[[Any], bool]) -> int | None:
    """Index of the first value passing a monotone (False...True) test, or None."""
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        if test(values[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo if lo < len(values) else None


def _last_true(values: Sequence[Any], test: Callable[[Any], bool]) -> int | None:
    """Index of the last value passing a monotone (True...False) test, or None."""
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        if test(values[mid]):
            lo = mid + 1
        else:
            hi = mid
    return lo - 1 if lo > 0 else None


# --------------------------------------------------------------------------------------------
# Units, sensitivities, calibration


def _out_units(module: nn.Module) -> int:
    return int(module.out_features if isinstance(module, nn.Linear) else module.out_channels)


def _ones(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.float64)


def _nonzero_units(producer: nn.Module, norm: nn.Module | None) -> torch.Tensor:
    """Indices of units whose folded weights and bias are not all zero (zero ones output 0)."""
    units = layer_units(producer, norm)  # type: ignore[arg-type]
    return torch.nonzero(units.abs().sum(dim=1) > 0).flatten().cpu()


def _restrict(
    producer: Any, norm: Any, consumer: Any, nonzero: torch.Tensor
) -> tuple[Any, Any, Any]:
    """The pair without its all-zero units (the same modules when there are none)."""
    n = _out_units(producer)
    if nonzero.numel() == n:
        return producer, norm, consumer
    idx = nonzero.to(producer.weight.device)
    return (
        slice_producer(producer, idx),
        None if norm is None else slice_norm(norm, idx),
        slice_consumer(consumer, n, idx, _ones(idx.numel())),
    )


def _fast_sensitivities(
    producer: Any, norm: Any, consumer: Any, query: QuerySpace | None
) -> Sensitivities | None:
    """Exact sensitivities when the units are linearly independent on Q, else None.

    Then each unit is alone in some direction of Q, so s_ij = 1 wherever the next unit j reads it
    and 0 where it does not (docs/theory.md §1, last paragraph). `compute_sensitivities` reaches
    the same values one next unit at a time (thousands of SVDs on a VGG layer); this needs one.
    """
    units = layer_units(producer, norm)
    n = units.shape[0]
    if query is not None:
        units = units @ query.lifting(units.device)
    if units.shape[1] < n:
        return None
    # The singular values of R (units^T = Q R) are those of the units: the rank test of
    # span_coordinates (same relative threshold) at a fraction of the cost of a wide SVD.
    sv = torch.linalg.svdvals(torch.linalg.qr(units.T, mode="r")[1])
    if sv[0] == 0 or int((sv > _RANK_RTOL * sv[0]).sum()) != n:
        return None
    per_next = (next_weights(consumer, n, device=units.device) != 0).to(torch.float64)
    return Sensitivities(per_next, {"independent": per_next}, n)


class _Stop(Exception):
    """Raised by the capture hook: nothing after the producer needs to run."""


def _calibration_rows(model: nn.Module, name: str, calibration: torch.Tensor) -> torch.Tensor:
    """The producer's inputs on the calibration batch, as rows (im2col patches for a conv)."""
    layer = model.get_submodule(name)
    seen: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append(args[0].detach())
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(calibration)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"{name!r} was not called when the model ran on calibration")
    x = seen[0]
    if isinstance(layer, nn.Conv2d):
        x = _pad(x, layer)
        patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation, stride=layer.stride)
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    else:
        rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] > MAX_CALIBRATION_ROWS:
        gen = torch.Generator().manual_seed(_PATCH_SEED)
        pick = torch.randperm(rows.shape[0], generator=gen)[:MAX_CALIBRATION_ROWS]
        rows = rows[pick.to(rows.device)]
    return rows


def _pad(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Apply the conv's own padding (any mode, 'same'/'valid' included) so unfold needs none."""
    if isinstance(conv.padding, str):
        pads: list[int] = []
        for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation), strict=True):
            total = d * (k - 1) if conv.padding == "same" else 0
            pads += [total // 2, total - total // 2]
    else:
        pads = [p for p in reversed(conv.padding) for _ in range(2)]
    if not any(pads):
        return x
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, pads, mode=mode)


# --------------------------------------------------------------------------------------------
# Costs and surgery helpers


def _module_macs(model: nn.Module, args: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """MACs of every Linear/Conv2d on one eval forward, plus the model's total under '__total__'.

    Per module: output entries x inputs per output (the rule PyTorch's flop counter uses).
    """
    macs: dict[str, int] = {}
    handles = []

    def make(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(module, nn.Conv2d):
                per = (
                    module.in_channels
                    // module.groups
                    * module.kernel_size[0]
                    * module.kernel_size[1]
                )
            else:
                per = module.in_features
            macs[name] = macs.get(name, 0) + out.numel() * per

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            handles.append(module.register_forward_hook(make(name)))
    try:
        total = count_macs(model, args)
    finally:
        for handle in handles:
            handle.remove()
    macs["__total__"] = total
    return macs


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at a qualified name (train flags and requires_grad are restored later)."""
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name), child, new)


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
    names = [n for n in (row.producer, row.norm, row.consumer) if n is not None]
    fields: dict[str, Any] = {
        "params_before": _params_of(before, names),
        "params_after": _params_of(after, names),
    }
    if macs_before is not None and macs_after is not None:
        fields["macs_before"] = sum(macs_before.get(n, 0) for n in names)
        fields["macs_after"] = sum(macs_after.get(n, 0) for n in names)
    return replace(row, **fields)


def _fraction(before: int, after: int) -> float:
    return 0.0 if before == 0 else (before - after) / before
