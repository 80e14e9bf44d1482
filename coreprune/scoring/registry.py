"""Method names -> scoring rules: the one factory, and the one record of which need data.

`SCORERS` maps every name to its class. Whether a method needs labelled data is the class's own
`needs_data`, so no second list has to be kept in step.
"""

from __future__ import annotations

from typing import Any

from coreprune.scoring.activation import FLAP, Wanda
from coreprune.scoring.base import Pruner, UnitScorer, WeightScorer
from coreprune.scoring.bn_scale import BNScale
from coreprune.scoring.gradflow import (
    GradNormIncrease,
    GradNormPreservation,
    LossPreservation,
    MagnitudeL2,
)
from coreprune.scoring.grasp import GraSP
from coreprune.scoring.magnitude import Magnitude
from coreprune.scoring.random_pruner import Random
from coreprune.scoring.snip import SNIP
from coreprune.scoring.synflow import SynFlow

__all__ = ["BASELINES", "SCORERS", "make_scorer", "needs_data", "resolve_method"]

SCORERS: dict[str, type[UnitScorer] | type[WeightScorer]] = {
    cls.name: cls
    for cls in (
        Magnitude, SNIP, SynFlow, Random, GraSP, MagnitudeL2, LossPreservation,
        GradNormIncrease, GradNormPreservation, BNScale,
        Wanda,  # activation-weighted magnitude (Sun et al. 2024), structured form
        FLAP,  # fluctuation score (An et al. 2024); bias compensation: compensate_bias
    )
}  # fmt: skip
# The scorers with both a weight and a unit form (masks and physical removal alike).
BASELINES: dict[str, type[Pruner]] = {
    name: cls for name, cls in SCORERS.items() if issubclass(cls, Pruner)
}


def needs_data(name: str) -> bool:
    """Whether the method named `name` must be built with labelled data."""
    if name not in SCORERS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(SCORERS)}")
    return SCORERS[name].needs_data


def make_scorer(name: str, data: Any = None, **options: Any) -> UnitScorer | WeightScorer:
    """The scorer `name`, built with `data` (labelled batches) when it needs it.

    `options` go to its constructor (e.g. `rounds=` for SynFlow, `batch_size=` for SNIP).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a method name (str), got {type(name).__name__}")
    cls = SCORERS.get(name)
    if cls is None:
        raise ValueError(f"unknown method {name!r}; known: {sorted(SCORERS)}")
    if cls.needs_data:
        if data is None:
            raise ValueError(
                f"method {name!r} needs labelled data: pass data= (a DataLoader or an "
                f"(inputs, labels) pair), e.g. make_scorer({name!r}, data=loader)"
            )
        return cls(data, **options)  # type: ignore[call-arg]
    if data is not None:
        raise ValueError(f"method {name!r} uses no data; drop data=")
    return cls(**options)


def resolve_method(method: object, kind: str = "unit") -> Any:
    """A scorer instance of `kind` ("unit" or "weight"), or the default instance of a
    data-free method named by string."""
    wanted = UnitScorer if kind == "unit" else WeightScorer
    if isinstance(method, wanted):
        return method
    if isinstance(method, (UnitScorer, WeightScorer)):
        raise TypeError(f"{method!r} has no {kind} form; use it where {kind} scores are not needed")
    if not isinstance(method, str):
        raise TypeError(f"method must be a name or a scorer, got {type(method).__name__}")
    if method in SCORERS and SCORERS[method].needs_data:
        raise ValueError(
            f"method={method!r} needs labelled data: pass method="
            f"make_scorer({method!r}, data=loader) (or {SCORERS[method].__name__}(loader)) instead "
            "of the name"
        )
    if method not in SCORERS:
        raise ValueError(f"method must be one of {tuple(SCORERS)} or a scorer, got {method!r}")
    scorer = make_scorer(method)
    if not isinstance(scorer, wanted):
        raise TypeError(f"method {method!r} has no {kind} form")
    return scorer
