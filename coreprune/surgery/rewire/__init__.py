"""Rewire the next layer after units are removed, so it compensates for what they carried.

Slicing alone drops a removed unit's contribution U_jr phi(p_r . x~) from every next unit j. Two
rewirings give some of it back (docs/theory.md, "Rewiring the next layer"):

- `merge_weights` (`merge`), data-free: when phi is positively homogeneous (phi(lambda t) =
  lambda phi(t) for lambda > 0) and a kept unit m points the same way as the removed unit r,
  p_r ~ lambda p_m, then phi(p_r . x~) ~ lambda phi(p_m . x~), so lambda U[:, r] is added to
  U[:, m].
- `refit_consumer` (`lstsq`), with calibration data: the sliced consumer's weights (and bias)
  are refitted by ridge least squares (`lstsq_weights`) on the rows of `refit_rows` (`rows`) so
  that, on the kept units' outputs in the partly compressed network, it reproduces the dense
  consumer's outputs.

`rewired_eps` (`certificate`) turns any rewired reading U' into a certificate relative to the
envelope (Theorem R1 in docs/theory.md); `reading` converts a reading of the kept units between
its k x |keep| and k x n forms and a module. All arithmetic runs in float64; inputs are only
read. The names the rest of the library imports are re-exported here.
"""

from coreprune.surgery.rewire.certificate import bias_change, check_same_geometry, rewired_eps
from coreprune.surgery.rewire.lstsq import DEFAULT_RIDGE, lstsq_weights, refit_consumer
from coreprune.surgery.rewire.merge import merge_weights, positively_homogeneous
from coreprune.surgery.rewire.reading import consumer_from_reading, expand_reading
from coreprune.surgery.rewire.rows import refit_rows, with_fitted_weights

__all__ = [
    "DEFAULT_RIDGE",
    "bias_change",
    "check_same_geometry",
    "consumer_from_reading",
    "expand_reading",
    "lstsq_weights",
    "merge_weights",
    "positively_homogeneous",
    "refit_consumer",
    "refit_rows",
    "rewired_eps",
    "with_fitted_weights",
]
