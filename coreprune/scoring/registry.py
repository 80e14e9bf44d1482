"""Method names -> scoring rules, so callers can say method="synflow"."""

from __future__ import annotations

from .base import Pruner
from .gradflow import GradNormIncrease, GradNormPreservation, LossPreservation, MagnitudeL2
from .grasp import GraSP
from .magnitude import Magnitude
from .random_pruner import Random
from .snip import SNIP
from .synflow import SynFlow

__all__ = ["BASELINES", "resolve_method"]

BASELINES: dict[str, type[Pruner]] = {
    "magnitude": Magnitude,
    "snip": SNIP,
    "synflow": SynFlow,
    "random": Random,
    "grasp": GraSP,
    "magnitude_l2": MagnitudeL2,
    "loss_preservation": LossPreservation,
    "gradnorm_increase": GradNormIncrease,
    "gradnorm_preservation": GradNormPreservation,
}
NEEDS_DATA = {
    "snip": "SNIP(loader)",
    "grasp": "GraSP(loader)",
    "loss_preservation": "LossPreservation(loader)",
    "gradnorm_increase": "GradNormIncrease(loader)",
    "gradnorm_preservation": "GradNormPreservation(loader)",
}


def resolve_method(method: object) -> Pruner:
    """A Pruner instance, or the default instance of a data-free method named by string."""
    if isinstance(method, Pruner):
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a name or a Pruner, got {type(method).__name__}")
    if method in NEEDS_DATA:
        raise ValueError(
            f"method={method!r} needs labelled data: pass method={NEEDS_DATA[method]} "
            "(from coreprune.scoring) instead of the name"
        )
    if method not in BASELINES:
        raise ValueError(f"method must be one of {tuple(BASELINES)} or a Pruner, got {method!r}")
    return BASELINES[method]()
