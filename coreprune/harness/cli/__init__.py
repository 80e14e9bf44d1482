"""The `coreprune` command line: oneshot, train, compress (with held-out certificates), compare,
report.

Every command writes to a run folder (--out): the config it ran with (config.json), its
metrics (metrics.json), tables (CSV, markdown) and plots, plus models saved without pickle.
Inputs are checked first: a bad value is a one-line usage error (exit code 2), and the run
folder is only created once the inputs are valid.

Its rooms: `parser` (the commands and their options), `arguments` (argument types that refuse
bad values), `commands` (train, compare, oneshot, report), `compress_command` (compress and
certify), `run_folder` (what a run writes and records).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from coreprune.harness.cli.arguments import check_device
from coreprune.harness.cli.commands import compare_config
from coreprune.harness.cli.compress_command import load_with_code
from coreprune.harness.cli.parser import DEFAULT_THREADS, add_compare_arguments, build_parser

__all__ = [
    "DEFAULT_THREADS",
    "add_compare_arguments",
    "build_parser",
    "compare_config",
    "load_with_code",
    "main",
]

INPUT_ERRORS = (ValueError, TypeError, FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (usage errors exit with 2 via argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command: argparse.ArgumentParser = args.parser
    torch.set_num_threads(args.threads)
    try:
        check_device(args.device)
        work = args.prepare(args)  # every input check; nothing written yet
    except INPUT_ERRORS as err:
        command.error(" ".join(str(err).split()))  # exits with code 2
    return int(work() or 0)
