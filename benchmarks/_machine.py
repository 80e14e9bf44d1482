"""The machine a benchmark ran on, for the header of its committed result."""

from __future__ import annotations

import datetime
import os
import platform

import torch


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"load average {load:.1f} at start, {datetime.date.today().isoformat()}"
    )
