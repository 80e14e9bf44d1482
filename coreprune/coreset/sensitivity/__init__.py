"""Upper bounds on each unit's sensitivity to each next unit (docs/theory.md §2, §6).

For next unit j the weighted points are v_l = |U_jl| P_l, with P the unit vectors in query
coordinates, and s_ij = sup_y |v_i . y| / sum_l |v_l . y|. Three bounds, all valid, one module
each:

- ``paper`` (`paper`): the L-infinity coresets of Tukan et al. from the Löwner ellipsoid and
  Carathéodory, peeled round by round (Theorem 2), each round's constant verified on the points
  it covers;
- ``leverage`` (`leverage`): sqrt of the L2 leverage score of v_i, since
  sum_l |v_l . y| >= ||V y||_2 (Theorem 3); cheap and batched;
- ``exact`` (`exact`): the linear program whose value is 1/s_ij, certified through its dual
  (Theorem 1).

Each returns a (k x n) matrix. `compute_sensitivities` (`compute`) runs them: ``auto`` takes the
entry-wise minimum of ``leverage`` and, when the layer is small enough for it to finish in
seconds (``PAPER_BUDGET`` unit-rows), ``paper``; the result's ``bounds`` says which ran. ``all``
is the minimum of the three. The result, `Sensitivities`, and the `Provenance` that binds it to
its layer are in `result`.

Soundness at every scale (docs/theory.md §6, `rounding`): s_ij is a scale-free ratio, so no
direction of the points may be dropped as "numerically zero". Nothing is dropped except columns
that are exactly zero; every rounding error is charged into the bound through the smallest
singular value, and a layer whose smallest singular value is within rounding of zero is refused
with a ValueError rather than certified. The names the rest of the library imports are
re-exported here.
"""

from coreprune.coreset.sensitivity.compute import METHODS, compute_sensitivities
from coreprune.coreset.sensitivity.exact import exact_bound
from coreprune.coreset.sensitivity.leverage import leverage_bound
from coreprune.coreset.sensitivity.paper import paper_bound
from coreprune.coreset.sensitivity.result import Provenance, Sensitivities
from coreprune.coreset.sensitivity.rounding import ILL_CONDITIONED, RANK_RTOL, span_coordinates

__all__ = [
    "ILL_CONDITIONED",
    "METHODS",
    "RANK_RTOL",
    "Provenance",
    "Sensitivities",
    "compute_sensitivities",
    "exact_bound",
    "leverage_bound",
    "paper_bound",
    "span_coordinates",
]
