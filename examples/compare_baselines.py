"""Coreset vs magnitude, SNIP, SynFlow and random at matched params and MACs.

Trains each model on Fashion-MNIST (one dense model per seed), compresses it with every method
to each target (the same architecture for all methods: uniform allocation), and measures test
accuracy before and after the same fine-tuning. Writes results.csv (one row per run, resumable),
summary.csv, summary.md, summary.png and config.json to --out, and prints the table.

Defaults are the quick main job (ResNet-20 on 4000 training images, one seed, 50% and 75% of
params removed, 1 epoch of fine-tuning), a few minutes on a 2-core CPU; flags give the full
protocol, e.g.
    python examples/compare_baselines.py --models resnet20 resnet56 vgg11 vgg16 \\
        --train-limit 0 --test-limit 0 --epochs 30 --finetune-epochs 5 --device cuda
The same run is `coreprune compare ...` on the command line.
"""

from __future__ import annotations

import sys

from coreprune.harness.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """The `coreprune compare` command (same flags, including --threads)."""
    return cli_main(["compare", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
