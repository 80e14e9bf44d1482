"""Held-out, distribution-free certificates for pruned models, and certified compression.

`certify` bounds a pruned model's agreement with the dense one, its accuracy and its accuracy
drop from a held-out sample (exact Clopper-Pearson bounds); `layer_exceedance` bounds how often
each layer's relative output error exceeds eps; `certified_compress` picks the strongest budget
whose guarantee the holdout certifies, by fixed-sequence testing. All assume only that the
holdout is an i.i.d. sample of the deployment distribution, used for nothing else.
"""

from coreprune.certify.bounds import (
    clopper_pearson_lower,
    clopper_pearson_upper,
    min_holdout_size,
)
from coreprune.certify.disjoint import check_disjoint
from coreprune.certify.heldout import (
    ASSUMPTION,
    HeldOutCertificate,
    Predictions,
    certify,
    certify_predictions,
    predict,
)
from coreprune.certify.layers import LayerExceedance, LayerExceedanceReport, layer_exceedance
from coreprune.certify.search import (
    BudgetTest,
    CertifiedCompression,
    Guarantee,
    certified_compress,
)

__all__ = [
    "ASSUMPTION",
    "BudgetTest",
    "CertifiedCompression",
    "Guarantee",
    "HeldOutCertificate",
    "LayerExceedance",
    "LayerExceedanceReport",
    "Predictions",
    "certified_compress",
    "certify",
    "certify_predictions",
    "check_disjoint",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "layer_exceedance",
    "min_holdout_size",
    "predict",
]
