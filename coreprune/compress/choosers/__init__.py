"""Choosers: which units of each pair and coupled group stay (`base.Chooser`, the one interface
`compress` calls), the coreset, greedy structured OBS, the unit scorers, and the registry of
method names."""

from coreprune.compress.choosers.base import (
    Budget,
    Choice,
    ChoiceContext,
    ChoiceSettings,
    Chooser,
    Plan,
)
from coreprune.compress.choosers.coreset import CHOICES, DEFAULT_RANK, CoresetChooser
from coreprune.compress.choosers.group_scores import GroupScores, group_scores
from coreprune.compress.choosers.obs import GreedyOBS
from coreprune.compress.choosers.registry import CHOOSERS, DEFAULT_METHOD, find_chooser
from coreprune.compress.choosers.scorer import ScorerChooser

__all__ = [
    "CHOICES",
    "CHOOSERS",
    "DEFAULT_METHOD",
    "DEFAULT_RANK",
    "Budget",
    "Choice",
    "ChoiceContext",
    "ChoiceSettings",
    "Chooser",
    "CoresetChooser",
    "GreedyOBS",
    "GroupScores",
    "Plan",
    "ScorerChooser",
    "find_chooser",
    "group_scores",
]
