"""Activations as objects that know whether the envelope certificate covers them.

Every certificate rests on |phi(t)| <= |t| for all real t (docs/theory.md §1). One table
(`table`) says, per activation: its parameters and their defaults, how to evaluate it, whether
it is covered (and if not, why). `Activation` (`activation`) is one phi with its parameters;
`modules` and `functions` say which phi a torch module, function or tensor method computes.
`activation_of` (`resolve`) turns a name, module, function or `Activation` into an
`Activation` (covered or not); `resolve_activation` does the same and refuses an uncovered one.
"""

from coreprune.surgery.activations.activation import Activation
from coreprune.surgery.activations.activation import _rebuild as _rebuild  # unpickling
from coreprune.surgery.activations.functions import (
    function_activation,
    is_activation_function,
    is_activation_method,
)
from coreprune.surgery.activations.modules import looks_like_activation, module_activation
from coreprune.surgery.activations.resolve import activation_of, resolve_activation
from coreprune.surgery.activations.table import known_activation_names

__all__ = [
    "Activation",
    "activation_of",
    "function_activation",
    "is_activation_function",
    "is_activation_method",
    "known_activation_names",
    "looks_like_activation",
    "module_activation",
    "resolve_activation",
]
