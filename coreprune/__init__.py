"""coreprune: provable structured pruning with Löwner-ellipsoid and Carathéodory coresets.

This root is the top of the house (docs/architecture.md): it imports every layer and composes
what no layer may import from above. `compress(guarantee=...)` runs `certified_compress`, which
lives in `coreprune.certify`, one layer above compress: it is plugged in here. And
`coreprune.compress` and `coreprune.certify` are both packages and their main functions: calling
the package calls its function of the same name (`coreprune.compress(model, ...)` is
`coreprune.compress.compress(model, ...)`), while `coreprune.compress.choosers` stays a package.
"""

import inspect
import sys
import types
from typing import TYPE_CHECKING, Any

from coreprune._version import __version__ as __version__
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
from coreprune.compress.api import plug_certified_search as _plug_certified_search
from coreprune.coreset import (
    Certificate,
    PruneResult,
    QuerySpace,
    adversarial_search,
    coreset_prune,
    measure_error,
)
from coreprune.surgery.graph import PrunablePair, find_prunable_pairs, validate_pairs

_plug_certified_search(certified_compress)


class _CallablePackage(types.ModuleType):
    """A package that is also its main function, the one of its own name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(getattr(self, self.__name__.rpartition(".")[2]))


def _callable_package(name: str) -> types.ModuleType:
    package = sys.modules[name]
    package.__class__ = _CallablePackage
    return package


if not TYPE_CHECKING:  # for type checkers they stay the functions they call
    compress = _callable_package("coreprune.compress")
    certify = _callable_package("coreprune.certify")

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
