"""Train-time pruning: methods that prune while (or before) a model trains, using the trainer.

DPF (dynamic pruning with feedback), pruning early in training, and early-bird tickets. They are
built on the public plan/apply steps of `coreprune.compress` and the shared trainer.
"""

from coreprune.methods.earlybird import (
    BNScale,
    EarlyBird,
    SplineEarlyBird,
    bn_channel_mask,
    bn_pairs,
    mask_distance,
    partition_code,
    spline_grid,
)

__all__ = [
    "BNScale",
    "EarlyBird",
    "SplineEarlyBird",
    "bn_channel_mask",
    "bn_pairs",
    "mask_distance",
    "partition_code",
    "spline_grid",
]
