"""coreprune: provable structured pruning with Löwner-ellipsoid and Carathéodory coresets."""

from coreprune.certify import (
    Guarantee,
    HeldOutCertificate,
    certified_compress,
    certify,
    layer_exceedance,
)
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
    "Guarantee",
    "HeldOutCertificate",
    "PruneResult",
    "QuerySpace",
    "adversarial_search",
    "certified_compress",
    "certify",
    "compress",
    "coreset_prune",
    "layer_exceedance",
    "measure_error",
]
__version__ = "0.1.0"
