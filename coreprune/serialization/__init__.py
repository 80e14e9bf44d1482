"""Save a pruned model as an architecture spec (JSON) plus weights (safetensors); no pickle.

A pruned model has the structure of its unpruned base architecture; only the sizes of some
tensors (and the size attributes that describe them, such as `out_features`) differ. So the spec
names how to rebuild the base (a `coreprune.zoo` name, or a `factory=` the caller
passes when loading) and records, for every module that holds tensors or size attributes, its
class name, its size attributes (`SIZE_ATTRIBUTES`) and the shape and dtype of each parameter
and buffer. Any architecture works: Linear, Conv, BatchNorm, LayerNorm, GroupNorm, Embedding,
root-level parameters and custom modules that only hold parameters.

Loading rebuilds the base on the ``meta`` device (no memory), sets the recorded attributes, gives
each recorded tensor a shape-only placeholder and then assigns the saved weights with strict key
and shape checks. Every recorded size is compared with the safetensors header (read without
loading data) before anything is allocated, and safetensors itself refuses a header whose sizes
the file's bytes do not cover, so a tampered file cannot make the loader allocate more than the
file holds. Nothing in either file is executable, so loading an untrusted file runs no code of
its own; it only calls the base builder.

Not saved: forward/backward hooks, plain (unregistered) tensor attributes and any other Python
state a module keeps outside its parameters, buffers and size attributes; they come from the
base builder, as for any freshly built model.

Layout: `path/` is a directory holding `architecture.json` and `weights.safetensors`. The spec
stores the weights file's SHA-256 so a spec and weights from different saves are caught.

Example:
    >>> import tempfile
    >>> from torch import nn
    >>> def factory() -> nn.Module:
    ...     return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    >>> pruned = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 2))
    >>> folder = tempfile.mkdtemp()
    >>> save_model(pruned, folder)
    >>> loaded = load_model(folder, factory=factory)
    >>> loaded[1].normalized_shape, tuple(loaded[2].weight.shape)
    ((5,), (2, 5))
"""

from coreprune.serialization.format import ARCH_FILE, FORMAT, SIZE_ATTRIBUTES, VERSION, WEIGHTS_FILE
from coreprune.serialization.load import load_model
from coreprune.serialization.save import save_model

__all__ = [
    "ARCH_FILE",
    "FORMAT",
    "SIZE_ATTRIBUTES",
    "VERSION",
    "WEIGHTS_FILE",
    "load_model",
    "save_model",
]
