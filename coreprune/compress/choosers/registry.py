"""Method names -> choosers: the one table `compress(method=...)` reads.

A name in `CHOOSERS` is built with the run's settings (`Chooser.from_settings`); the unit
scorers' names come from `coreprune.scoring.registry` (each becomes a `ScorerChooser`). A
`Chooser` or `UnitScorer` instance can be passed as the method itself.
"""

from __future__ import annotations

import torch

from coreprune.compress.choosers.base import Chooser
from coreprune.compress.choosers.coreset import CoresetChooser
from coreprune.compress.choosers.scorer import ScorerChooser
from coreprune.scoring.base import UnitScorer
from coreprune.scoring.random_pruner import Random
from coreprune.scoring.registry import BASELINES, resolve_method

__all__ = ["CHOOSERS", "DEFAULT_METHOD", "find_chooser"]

CHOOSERS: dict[str, type[Chooser]] = {
    CoresetChooser.name: CoresetChooser,
}
DEFAULT_METHOD = CoresetChooser.name  # what compress(method=...) runs unless told otherwise


def find_chooser(method: object, generator: torch.Generator | None) -> Chooser | type[Chooser]:
    """The chooser `method` names: a class to build with the run's settings (a `CHOOSERS`
    name), or an instance (a chooser, or a scorer wrapped as one). `generator` seeds the
    random baseline, so compress(method="random", generator=g) is reproducible."""
    if isinstance(method, Chooser):
        if not isinstance(getattr(method, "name", None), str):
            raise TypeError(
                f"{type(method).__name__} needs a name (a str class attribute): the report "
                "labels the method by it"
            )
        return method
    if isinstance(method, str) and method in CHOOSERS:
        return CHOOSERS[method]
    if method == "random" and generator is not None:
        return ScorerChooser(Random(generator))
    if isinstance(method, UnitScorer):
        return ScorerChooser(method)
    try:
        return ScorerChooser(resolve_method(method))
    except ValueError as err:
        if isinstance(method, str) and method not in BASELINES:
            raise ValueError(
                f"method must be one of {(*CHOOSERS, *BASELINES)}, a Chooser or a scorer, "
                f"got {method!r}"
            ) from err
        raise
