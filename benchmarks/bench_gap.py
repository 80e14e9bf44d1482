"""The proven optimality gap of the default calibrated choice, per layer, on the shipped models.

For every single pair and coupled group that the default `compress` (the coreset's refit choice,
least-squares rewiring) prunes, this records the kept set's relative refit residual, the lower
bound that no choice of as many units can beat (docs/theory.md §11, Theorem G), and their
ratio. A coupled group's gap rates its channel choice on the dense model's consumer inputs. The
calibration batch is bench_oneshot's fixed subset, and the allocation is uniform on params.

    python benchmarks/bench_gap.py     # writes benchmarks/results/gap.md
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or with -m
from benchmarks import bench_oneshot
from benchmarks._machine import machine
from coreprune.compress import compress
from coreprune.harness.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gap.md"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["lenet300100", "vgg_small", "resnet20"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    p.add_argument("--calibration", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    data_args = bench_oneshot.parse_args(
        ["--calibration", str(args.calibration), "--snip-batch", "1"]
    )
    calib = bench_oneshot.load_data(data_args, 0).calibration
    lines = [
        "# The proven optimality gap of the default calibrated choice",
        "",
        f"- {machine()}, {args.threads} torch thread(s)",
        f"- calibration: {calib.shape[0]} training images (bench_oneshot's fixed subset); "
        "uniform allocation, params target; the default coreset refit choice with least squares",
        f"- command: `python benchmarks/bench_gap.py {' '.join(argv or sys.argv[1:])}`",
        "- residual: the kept set's relative refit error on the choice's rows; bound: no set of as "
        "many units can do better (Theorem G); ratio = residual / bound (no bound: the bound is 0)",
        "",
        "| model | params removed | layer | kind | units | residual | bound | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.models:
        model = load_pretrained(name)
        for target in args.budgets:
            report = compress(model, target=target, calibration=calib, progress=False).report
            for row in report.rows:
                if row.gap is None:
                    continue
                kind = "coupled group" if row.modules else "pair"
                ratio = f"{row.gap.ratio:.3g}x" if row.gap.informative else "no bound"
                lines.append(
                    f"| {name} | {100 * target:g}% | {row.producer} | {kind} | "
                    f"{row.units_before} → {row.units_after} | {row.gap.residual:.3g} | "
                    f"{row.gap.lower:.3g} | {ratio} |"
                )
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
