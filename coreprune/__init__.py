"""coreprune: provable structured pruning with Löwner-ellipsoid and Carathéodory coresets."""

from coreprune.compress import CompressResult, compress
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
    "CompressResult",
    "PruneResult",
    "QuerySpace",
    "adversarial_search",
    "compress",
    "coreset_prune",
    "measure_error",
]
__version__ = "0.1.0"
