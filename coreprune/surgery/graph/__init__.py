"""Find the layer pairs a whole-model pass may prune, by reading the model's torch.fx graph.

A pair is a producer (any layer type of `coreprune.surgery.registry`: nn.Linear, nn.Conv2d, an
HF-style Conv1D) whose output units are removed and the single such layer that reads them.
Removing a unit is only safe when nothing but that consumer sees the unit, and only through
channel-wise ops (a folded batch norm, one activation, dropout, pooling, a batch-preserving
flatten). Everything else (a residual add, a concat, a second user, a shared module) ties the
channels to another path, so the layer is reported as blocked, with the reason, instead of being
pruned. So is a pair whose activation the certificate does not cover (|phi(t)| > |t| for some
t): every pair returned is certifiable. When fx cannot trace a model, pairs can be given by hand
(`PrunablePair.simple`) and checked with `validate_pairs`.

A transformer feed-forward block (LayerNorm -> Linear -> GELU -> dropout -> Linear -> residual
add) is an ordinary pair: its hidden units feed only the second Linear, while the second Linear's
outputs (on the residual stream) and the attention projections are blocked with their reason.

The modules: `pair` (the result types), `trace` (the tracer, tied weights), `ops` (which fx ops
are channel-wise; shared with `coreprune.surgery.groups`), `walk` (`find_prunable_pairs`),
`layout` (how a consumer must read its producer's units) and `validate` (`validate_pairs`).
The names callers use are re-exported here.
"""

from coreprune.surgery.graph.pair import BlockedLayer, FxTraceError, PrunablePair
from coreprune.surgery.graph.validate import validate_pairs
from coreprune.surgery.graph.walk import find_prunable_pairs

__all__ = [
    "BlockedLayer",
    "FxTraceError",
    "PrunablePair",
    "find_prunable_pairs",
    "validate_pairs",
]
