"""Coupled channel groups: every layer, norm and op that must lose the same channels together.

A *channel space* is a set of channels that several tensors share one for one. The model's
torch.fx graph is walked once and every channel-carrying tensor gets a space; spaces are merged
where an op ties channels together:

- a residual add or subtract of two traced tensors (x + f(x)): one space;
- an elementwise product of two traced tensors (squeeze-excitation x * sigmoid(fc(pool(x))), a
  gated unit a * b): one space; a side that went through a sigmoid-like activation is a *gate*,
  and the layer writing it is a gate member (sliced on its output only, not scored);
- a channel-wise op or module keeps its input's space: batch norms (any `BatchNorm` subclass,
  so fused norm + activation modules such as timm's `BatchNormAct2d` count; the functional
  `F.batch_norm` on module tensors too), activations, dropout, identity, pooling, and leaf modules
  that pass a probe (perturbing input channel c changes only output channel c);
- a depthwise convolution (groups == in == out channels) keeps its input's space and is sliced
  on both sides;
- a concatenation along channels keeps each input's space: its readers read several spaces at
  offsets, and each space is pruned on its own.

Grouped convolutions (1 < groups, not depthwise) tie channels in per-group blocks: output block
b reads only input block b. They are pruned by whole per-group blocks: a space a grouped conv
reads or writes gets `blocks` = its number of groups (the least common multiple when several
do), and every block keeps the same number of channels, so the conv stays a grouped conv with
fewer channels per group (kept counts are rounded to multiples of `blocks`). A grouped conv fed
by a concatenation is refused.

A space is prunable when at least one registry layer with groups=1 writes it (a producer), every
reader is a registry layer (a consumer) or a channel-wise op, and it never reaches the model's
input or output. `find_channel_groups` returns one frozen `ChannelGroup` per prunable space, in
forward order. A group with exactly one producer, one consumer and nothing coupling it is the
classic pair: `ChannelGroup.pair` holds the `PrunablePair` the fx pair walk finds for it, and
`simple` is True.

The modules: `group` (the result types), `spaces` (channel spaces and tensor tags),
`module_steps` and `function_steps` (what each called module, function or method does to the
spaces), and `discovery` (`find_channel_groups`, `forward_order`). The names callers use are
re-exported here.
"""

from coreprune.surgery.groups.discovery import find_channel_groups, forward_order
from coreprune.surgery.groups.group import (
    ChannelGroup,
    ChannelWise,
    Consumer,
    group_from_pair,
    is_depthwise,
    is_grouped,
)

__all__ = [
    "ChannelGroup",
    "ChannelWise",
    "Consumer",
    "find_channel_groups",
    "forward_order",
    "group_from_pair",
    "is_depthwise",
    "is_grouped",
]
