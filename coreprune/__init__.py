"""coreprune: provable structured pruning with Löwner-ellipsoid and Carathéodory coresets."""

from coreprune.certify import (
    Guarantee,
    HeldOutCertificate,
    certified_compress,
    certify,
    layer_exceedance,
)
from coreprune.compress import (
    CompressReport,
    CompressResult,
    PairCut,
    apply_plan,
    compress,
    cut_pair,
)
from coreprune.coreset import (
    Certificate,
    PruneResult,
    QuerySpace,
    adversarial_search,
    coreset_prune,
    measure_error,
)
from coreprune.surgery.graph import PrunablePair, find_prunable_pairs, validate_pairs

__all__ = [
    "Certificate",
    "CompressReport",
    "CompressResult",
    "Guarantee",
    "HeldOutCertificate",
    "PairCut",
    "PrunablePair",
    "PruneResult",
    "QuerySpace",
    "adversarial_search",
    "apply_plan",
    "certified_compress",
    "certify",
    "compress",
    "coreset_prune",
    "cut_pair",
    "find_prunable_pairs",
    "layer_exceedance",
    "measure_error",
    "validate_pairs",
]
__version__ = "0.1.0"
