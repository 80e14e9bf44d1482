"""Units -> sensitivities -> sample | select -> certificate; `coreset_prune`."""

from coreprune.coreset.certificate import Certificate
from coreprune.coreset.prune import coreset_prune
from coreprune.coreset.query import QuerySpace
from coreprune.coreset.result import PruneResult
from coreprune.coreset.sensitivity import Sensitivities, compute_sensitivities
from coreprune.coreset.verify import ErrorReport, adversarial_search, measure_error, relative_errors

__all__ = [
    "Certificate",
    "ErrorReport",
    "PruneResult",
    "QuerySpace",
    "Sensitivities",
    "adversarial_search",
    "compute_sensitivities",
    "coreset_prune",
    "measure_error",
    "relative_errors",
]
