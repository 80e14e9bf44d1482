"""coreprune: provable structured pruning with Löwner-ellipsoid and Carathéodory coresets."""

from coreprune.coreset import (
    Certificate,
    PruneResult,
    QuerySpace,
    adversarial_search,
    coreset_prune,
    measure_error,
)

__all__ = [
    "Certificate",
    "PruneResult",
    "QuerySpace",
    "adversarial_search",
    "coreset_prune",
    "measure_error",
]
__version__ = "0.1.0"
