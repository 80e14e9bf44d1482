"""The machine a benchmark ran on, for the header of its committed result."""

from __future__ import annotations

import datetime
import os

import torch

from coreprune.harness.evaluation.machine import cpu_name


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"load average {load:.1f} at start, {datetime.date.today().isoformat()}"
    )
