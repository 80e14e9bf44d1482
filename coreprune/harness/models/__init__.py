"""The model zoo, as the harness names it: every public name of `coreprune.zoo`.

The definitions live in `coreprune.zoo`, low in the house, because serialization rebuilds the
zoo's architectures by name (`load_model` of a spec saved with `arch=`) and may import only
downward. This package keeps the harness's own spelling, `coreprune.harness.models`, working;
it takes the zoo's `__all__` as its own, so the public names are listed in one place.
"""

from coreprune.zoo import *  # noqa: F403
from coreprune.zoo import __all__ as __all__
