"""`coreset_prune`: one layer's units -> sensitivities -> a kept, reweighted subset + certificate."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from coreprune.checks import (
    check_bool,
    check_choice,
    check_float,
    check_generator,
    check_int,
    check_probability,
)
from coreprune.coreset.certificate import Certificate
from coreprune.coreset.query import QuerySpace
from coreprune.coreset.result import PruneResult
from coreprune.coreset.sampling import (
    anytime_delta,
    draw_counts,
    draw_until_distinct,
    sample_eps,
    sample_size,
)
from coreprune.coreset.sensitivity import Provenance, Sensitivities, compute_sensitivities
from coreprune.surgery.activations import Activation, resolve_activation
from coreprune.surgery.units import (
    Norm,
    check_consumer,
    check_producer,
    layer_units,
    next_weights,
)

MODES = ("sample", "select")


def coreset_prune(
    layer: nn.Module,
    *budget_and_next: float | nn.Module | None,
    next_layer: nn.Module | None = None,
    eps: float | None = None,
    keep: int | None = None,
    mode: str = "select",
    delta: float = 0.1,
    query: QuerySpace | None = None,
    generator: torch.Generator | None = None,
    activation: str | nn.Module | Activation = "relu",
    norm: nn.Module | None = None,
    sensitivity: str = "auto",
    tol: float = 1e-3,
    progress: bool = False,
    sensitivities: Sensitivities | None = None,
    max_pooling: bool = False,
) -> PruneResult:
    """Prune the units of `layer` (nn.Linear or nn.Conv2d) with a certified relative error.

    Call it as `coreset_prune(layer, eps)`, `coreset_prune(layer, eps, next_layer)`,
    `coreset_prune(layer, next_layer, keep=k)` or with keywords: a number in the second place is
    `eps` (the certificate's target), a module is `next_layer`. Give `eps` or `keep` (how many
    units remain; the certificate then reports the eps achieved).
    `mode="select"` (the default) removes the least sensitive units deterministically;
    `mode="sample"` is the paper's sensitivity sampling, which at real layer sizes often keeps
    every unit. Without `next_layer`, U is a single row of ones. `query`
    restricts the inputs the certificate covers (default: all of R^d, data-free); for a conv
    layer, queries are im2col patches. `norm` is an eval-mode batch norm between `layer` and its
    activation. Neither module is modified; call `.apply()` for the smaller ones.
    `sensitivities` reuses an earlier result's bounds; they are refused unless they were computed
    for these very units, reading weights and query space (their provenance). Say
    `max_pooling=True` when a max pool sits between the layers: the certificate then states that
    eps covers the map before pooling only.
    """
    eps, next_layer = _positional(budget_and_next, eps, next_layer)
    check_generator(generator, "generator")
    layer = check_producer(layer)
    check_choice(mode, MODES, "mode")
    check_bool(max_pooling, "max_pooling")
    act = resolve_activation(activation)
    units_full = layer_units(layer, cast(Norm | None, norm))  # layer_units checks its type
    n = units_full.shape[0]
    if next_layer is not None:
        next_layer = check_consumer(next_layer, n, producer=layer)
        if next_layer.weight.device != layer.weight.device:
            raise ValueError(
                f"layer is on {layer.weight.device} but next_layer on {next_layer.weight.device}; move both to one device"
            )
    _check_request(eps, keep, delta, n)
    zero = torch.nonzero(units_full.abs().sum(dim=1) == 0).flatten()
    if zero.numel():
        raise ValueError(
            f"layer has {zero.numel()} all-zero units (weights and bias), e.g. unit {int(zero[0])}: they "
            "contribute nothing; remove them first (slice them out) or re-initialise them"
        )
    query = _resolve_query(query, units_full.shape[1] - 1)
    reading = next_weights(next_layer, n, device=units_full.device)
    # Data-free, the lifting is the identity: skip a (d+1)^2 matmul that dominates on wide convs.
    units_q, error = _lift(units_full, query)
    if sensitivities is None:
        sens = compute_sensitivities(
            units_q, reading, sensitivity, tol=tol, progress=progress, query=query, error=error
        )
    else:
        sens = _check_sensitivities(sensitivities, Provenance.of(units_q, reading, query))
    if mode == "select":
        kept, scale, fields = _select(sens, eps, keep)
    else:
        kept, scale, fields = _sample(sens, eps, keep, delta, act, n, generator)
    used = "+".join(sens.bounds)
    cert = Certificate(
        query=query.describe(), mode=mode, sensitivity=used, units=n, kept=int(kept.numel()),
        caveats=_caveats(query, sens, next_layer is None, max_pooling)
        + _nothing_removed(sens, eps, mode, int(kept.numel()), n), **fields,
    )  # fmt: skip
    return PruneResult(
        keep=kept,
        scale=scale,
        sensitivity=sens.per_unit,
        certificate=cert,
        sensitivities=sens,
        units=units_full.clone(),  # the certified layers as they are now, whatever the caller
        reading=reading.clone(),  # does to its modules later (next_weights may alias weights)
        activation=act,
        query=query,
        layer=layer,
        next_layer=next_layer,
        norm=cast(Norm | None, norm),
    )


def _lift(units: torch.Tensor, query: QuerySpace) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Units in query coordinates, and an entry-wise bound on the rounding of the lifting product.

    |fl(P L) - P L| <= gamma_K |P| |L| with gamma_K <= (K + 1) eps for inner dimension K; the
    bound is charged into the sensitivities (docs/theory.md §6). Data-free, nothing is rounded.
    """
    if query.basis is None:
        return units, None
    lift = query.lifting(units.device)
    gamma = (units.shape[1] + 1) * torch.finfo(torch.float64).eps
    return units @ lift, gamma * (units.abs() @ lift.abs())


def _check_sensitivities(given: object, wanted: Provenance) -> Sensitivities:
    """Accept earlier bounds only for the very units, reading weights and query space at hand."""
    if not isinstance(given, Sensitivities):
        raise TypeError(
            f"sensitivities must come from an earlier result's .sensitivities, got {type(given).__name__}"
        )
    if given.provenance is None:
        raise ValueError(
            "sensitivities carry no provenance (built by hand?), so nothing shows they hold for "
            "this layer pair; compute them with compute_sensitivities(..., query=...) or take an "
            "earlier result's .sensitivities"
        )
    differ = given.provenance.differences(wanted)
    if differ:
        raise ValueError(
            "sensitivities were computed for different inputs: "
            + "; ".join(differ)
            + " differ from this call's. Recompute them (sensitivities=None)"
        )
    return given


def _caveats(
    query: QuerySpace, sens: Sensitivities, no_next: bool, max_pooling: bool
) -> tuple[str, ...]:
    """Every condition the certificate's eps is subject to, in words."""
    out = []
    if query.basis is not None:
        out.append(
            f"covers only inputs in the query space ({query.describe()}); inputs outside it are "
            "not covered (QuerySpace.residual measures how far they stick out)"
        )
    if sens.charge > 0:
        out.append(
            f"rounding charged into the sensitivities: additive delta up to {sens.charge:.2g} "
            "(docs/theory.md §6)"
        )
    if no_next:
        out.append("no next layer given: eps bounds the plain sum of the units' outputs")
    if max_pooling:
        out.append("max pooling between the layers: eps covers the map before pooling")
    return tuple(out)


def _nothing_removed(
    sens: Sensitivities, eps: float | None, mode: str, kept: int, n: int
) -> tuple[str, ...]:
    """Why an eps request kept every unit: no unit's bound fits in eps (docs/theory.md §7)."""
    if eps is None or mode != "select" or kept < n:
        return ()
    smallest = float(sens.per_next.sum(dim=0).min()) if sens.per_next.numel() else 0.0
    lowest = float(sens.per_unit.min())
    return (
        f"nothing removed: the least sensitive unit's bound ({lowest:.3g}, summed over next "
        f"units {smallest:.3g}) already exceeds eps={eps:g}; units linearly independent on the "
        "query space all have sensitivity near 1 (docs/theory.md §7): raise eps, pass keep=, "
        "or restrict the query space (query=QuerySpace.from_calibration(...))",
    )


def _positional(
    args: tuple[object, ...], eps: float | None, next_layer: nn.Module | None
) -> tuple[float | None, nn.Module | None]:
    """(eps, next_layer) from the positional forms (layer, eps), (layer, eps, next_layer) and
    (layer, next_layer), checked against the keywords so nothing is given twice."""
    if len(args) > 2:
        raise TypeError(
            f"coreset_prune takes at most 3 positional arguments (layer, eps, next_layer), got "
            f"{1 + len(args)}"
        )
    rest = list(args)
    if rest and _is_number(rest[0]):
        if eps is not None:
            raise TypeError("eps given twice: as the second positional argument and as eps=")
        eps = cast(float, rest.pop(0))
    if rest:
        value = rest.pop(0)
        if _is_number(value):
            raise TypeError(
                f"next_layer must be a module, got the number {value!r}; the budget comes "
                f"second: coreset_prune(layer, eps, next_layer), or keep=... for a unit count"
            )
        if rest and _is_number(rest[0]):
            raise TypeError(
                f"the budget comes second: coreset_prune(layer, {rest[0]!r}, next_layer), not "
                "after next_layer"
            )
        if value is not None and not isinstance(value, nn.Module):
            raise TypeError(
                f"the argument after layer must be eps (a number) or next_layer (a module), "
                f"got {type(value).__name__}"
            )
        if value is not None and next_layer is not None:
            raise TypeError("next_layer given twice: positionally and as next_layer=")
        next_layer = next_layer if value is None else value
    if rest:
        raise TypeError("after next_layer, pass the remaining options by keyword (keep=, mode=...)")
    return eps, next_layer


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_request(eps: float | None, keep: int | None, delta: float, n: int) -> None:
    if (eps is None) == (keep is None):
        raise ValueError(
            "give exactly one of eps (the error target) and keep (how many units remain)"
        )
    if eps is not None:
        check_float(eps, "eps", low=0.0, low_open=True)
    if keep is not None:
        check_int(keep, "keep", minimum=1)
        if keep > n:
            raise ValueError(f"keep must be <= {n} (the layer has {n} units), got {keep}")
    check_probability(delta, "delta")


def _resolve_query(query: QuerySpace | None, dim: int) -> QuerySpace:
    if query is None:
        return QuerySpace.full(dim)
    if not isinstance(query, QuerySpace):
        raise TypeError(
            f"query must be a coreprune.QuerySpace (e.g. QuerySpace.from_calibration(x, rank)), got {type(query).__name__}"
        )
    if query.dim != dim:
        raise ValueError(f"query lives in R^{query.dim} but the layer's inputs are in R^{dim}")
    return query


def _select(
    sens: Sensitivities, eps: float | None, keep: int | None
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Remove the longest prefix of least sensitive units whose summed bound stays <= eps.

    The certified eps is max_j sum_{i removed} s_ij (Theorem 5), never above the request.
    """
    s = sens.per_unit
    n = s.numel()
    order = torch.argsort(s, stable=True)
    cumulative = (
        sens.per_next[:, order].cumsum(dim=1).max(dim=0).values
    )  # eps after removing a prefix
    if keep is None:
        assert eps is not None  # _check_request: exactly one of eps and keep
        removable = int((cumulative <= eps).sum())
        removed = min(removable, n - 1)  # at least one unit stays
    else:
        removed = n - keep
    achieved = float(cumulative[removed - 1]) if removed > 0 else 0.0
    kept = torch.sort(order[removed:]).values
    scale = torch.ones(kept.numel(), dtype=torch.float64, device=s.device)
    return kept, scale, {"eps": achieved, "delta": 0.0, "total_sensitivity": sens.total}


def _sample(
    sens: Sensitivities,
    eps: float | None,
    keep: int | None,
    delta: float,
    act: Activation,
    n: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Sensitivity sampling (Theorem 4), plus the always-valid bound of Theorem 5 on the draw."""
    s = sens.per_unit
    total = float(s.sum())
    k = sens.per_next.shape[0]
    if total == 0:
        raise ValueError(
            "every unit is inert on the query space (all sensitivities are 0); use mode='select'"
        )
    probs = s / total
    note = ""
    if keep is None:
        if not act.piecewise_linear:
            raise ValueError(
                f"mode='sample' with eps needs a piecewise-linear activation (relu, leaky_relu, identity) "
                f"for Theorem 4; {act} is not: use mode='select', or keep= for a deterministic bound"
            )
        assert eps is not None  # _check_request: exactly one of eps and keep
        draws = sample_size(eps, delta, total, n, sens.dim, k)
        counts = draw_counts(probs, draws, generator)
        eps_prob = sample_eps(draws, delta, total, n, sens.dim, k)
    else:
        counts, draws = draw_until_distinct(probs, keep, generator)
        eps_prob = math.inf
        if act.piecewise_linear:
            eps_prob = sample_eps(draws, anytime_delta(delta, draws), total, n, sens.dim, k)
        else:
            note = f"{act} is not piecewise linear: only the deterministic bound applies"
    kept = torch.nonzero(counts > 0).flatten().to(s.device)
    scale = counts[kept.cpu()].to(s) * total / (draws * s[kept])
    weights = torch.zeros_like(s)
    weights[kept] = scale
    eps_det = float(((weights - 1).abs()[None, :] * sens.per_next).sum(dim=1).max())
    if eps_det <= eps_prob:
        eps_final, delta_final = eps_det, 0.0
    else:
        eps_final, delta_final = eps_prob, delta
    return (
        kept,
        scale,
        {
            "eps": eps_final,
            "delta": delta_final,
            "total_sensitivity": total,
            "draws": draws,
            "eps_deterministic": eps_det,
            "eps_probabilistic": eps_prob,
            "note": note,
        },
    )
