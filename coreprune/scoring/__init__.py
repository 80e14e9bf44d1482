"""Baselines on the same budgets and surgery as the coreset: magnitude, SNIP, SynFlow, random,
GraSP, the gradient-flow measures of Lubana & Dick, and the activation-aware transformer scores
Wanda (structured) and FLAP.

Each is a `Pruner` with weight scores (for masks, `prune_weights`) and unit scores (for
`coreprune.compress(method=...)`, physical removal). Definitions: docs/baselines.md.
"""

from .activation import FLAP, Wanda, compensate_bias
from .base import Pruner, UnitScorer, WeightScorer
from .bn_scale import BNScale
from .data import labelled_batch
from .gates import UnitGates
from .gradflow import (
    GRADFLOW_MEASURES,
    GradFlow,
    GradNormIncrease,
    GradNormPreservation,
    LossPreservation,
    MagnitudeL2,
)
from .grasp import GraSP, class_balanced_batch, hessian_gradient
from .magnitude import Magnitude
from .masks import MaskResult, prune_weights, select_mask
from .random_pruner import Random
from .registry import BASELINES, SCORERS, make_scorer, needs_data, resolve_method
from .snip import SNIP
from .synflow import SynFlow

__all__ = [
    "BASELINES",
    "FLAP",
    "GRADFLOW_MEASURES",
    "SCORERS",
    "SNIP",
    "BNScale",
    "GraSP",
    "GradFlow",
    "GradNormIncrease",
    "GradNormPreservation",
    "LossPreservation",
    "Magnitude",
    "MagnitudeL2",
    "MaskResult",
    "Pruner",
    "Random",
    "SynFlow",
    "UnitGates",
    "UnitScorer",
    "Wanda",
    "WeightScorer",
    "class_balanced_batch",
    "compensate_bias",
    "hessian_gradient",
    "labelled_batch",
    "make_scorer",
    "needs_data",
    "prune_weights",
    "resolve_method",
    "select_mask",
]
