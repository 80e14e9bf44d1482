"""`python -m coreprune.harness.cli`: the `coreprune` command."""

import sys

from coreprune.harness.cli import main

sys.exit(main())
