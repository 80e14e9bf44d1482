"""Wall time of the default calibrated compress (the coreset's refit choice with least-squares
rewiring) against magnitude + least squares, side by side in one run.

Both prune the same shipped model to the same widths (uniform allocation) on the same
calibration batch (the fixed subset `bench_oneshot` uses) and refit every consumer by the same
least squares; they differ only in how the kept units are chosen. Rounds alternate the two
methods so that a busy machine slows both alike; the table gives each method's median over the
rounds and the median of the per-round ratios.

    python benchmarks/bench_choice_speed.py --models vgg_small resnet20 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or with -m
from benchmarks import bench_oneshot
from benchmarks._machine import machine
from coreprune.compress import compress
from coreprune.harness.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "choice_speed.md"
RIVALS: dict[str, dict[str, Any]] = {
    "default (coreset, refit choice) + lstsq": {},
    "magnitude + lstsq": {"method": "magnitude", "compensate": "lstsq"},
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vgg_small", "resnet20"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calibration", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.calibration < 2:
        p.error("--rounds must be >= 1 and --calibration >= 2")
    return args


def time_one(
    model: torch.nn.Module, target: float, calib: torch.Tensor, kwargs: dict[str, Any]
) -> float:
    start = time.perf_counter()
    compress(model, target=target, calibration=calib, progress=False, **kwargs)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    data_args = bench_oneshot.parse_args(
        ["--calibration", str(args.calibration), "--snip-batch", "1"]
    )
    calib = bench_oneshot.load_data(data_args, 0).calibration
    lines = [
        "# Compress wall time: the default calibrated choice against magnitude + lstsq",
        "",
        f"- {machine()}, {args.threads} torch thread(s); the cores were shared with other jobs, so rounds "
        "alternate the methods and the medians are reported",
        f"- calibration: {calib.shape[0]} training images (bench_oneshot's fixed subset); "
        f"uniform allocation, params target; {args.rounds} rounds",
        f"- command: `python benchmarks/bench_choice_speed.py {' '.join(argv or sys.argv[1:])}`",
        "",
        "| model | params removed | " + " | ".join(f"{k} (s)" for k in RIVALS) + " | ratio |",
        "|---|---|" + "---|" * (len(RIVALS) + 1),
    ]
    for name in args.models:
        model = load_pretrained(name)
        for target in args.budgets:
            times: dict[str, list[float]] = {k: [] for k in RIVALS}
            for _ in range(args.rounds):
                for label, kwargs in RIVALS.items():
                    times[label].append(time_one(model, target, calib, kwargs))
            ours, theirs = (times[k] for k in RIVALS)
            ratio = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
            cells = " | ".join(f"{statistics.median(t):.1f}" for t in times.values())
            lines.append(f"| {name} | {100 * target:g}% | {cells} | {ratio:.2f}x |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
