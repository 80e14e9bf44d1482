"""Point-set geometry in float64 on torch tensors: Löwner ellipsoid, Carathéodory, affine hulls."""

from coreprune.geometry.affine import AffineHull, affine_hull, linear_span
from coreprune.geometry.caratheodory import caratheodory
from coreprune.geometry.ellipsoid import Ellipsoid
from coreprune.geometry.mvee import mvee
from coreprune.geometry.reference import mvee_reference

__all__ = [
    "AffineHull",
    "Ellipsoid",
    "affine_hull",
    "caratheodory",
    "linear_span",
    "mvee",
    "mvee_reference",
]
