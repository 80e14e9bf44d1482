"""Benchmark torch's CPU thread count for the command line's two heavy steps.

Run as a script (``python benchmarks/bench_threads.py``) to write
``benchmarks/results/threads.md``. It times, for ``torch.set_num_threads(n)`` with n = 1, 2
and torch's default:

- ``coreprune.compress`` of a freshly initialised ResNet-20 (1 input channel, 28 px, as on
  Fashion-MNIST) to 50% of params removed, data-free, with one example image for the MACs;
- a slice of a training epoch: ``fit`` for one epoch over ``--train-images`` Fashion-MNIST-sized
  random images (batch 128) of the same ResNet-20.

The settings are interleaved (1, 2, default, 1, 2, default, ...) so a change in the machine's
load during the run falls on every setting alike; each figure is the median of ``--repeats``.
The fastest thread count of the two steps together is what the command line's ``--threads``
defaults to.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or with -m
from benchmarks._machine import machine
from coreprune.compress import compress
from coreprune.harness.models import build_model
from coreprune.harness.training import fit

RESULTS = Path(__file__).resolve().parent / "results"


def _compress_once() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1, num_classes=10)
    compress(model, target=0.5, example_input=torch.randn(1, 1, 28, 28), progress=False)


def _train_once(images: int) -> Callable[[], None]:
    def run() -> None:
        torch.manual_seed(0)
        model = build_model("resnet20", in_channels=1, num_classes=10)
        data = TensorDataset(torch.randn(images, 1, 28, 28), torch.randint(0, 10, (images,)))
        loader = DataLoader(data, batch_size=128, shuffle=True)
        fit(model, loader, epochs=1, lr=0.05, device="cpu", progress=False, seed=0)

    return run


def _time(step: Callable[[], None], threads: int) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting")
    parser.add_argument("--train-images", type=int, default=1024, help="images in the slice")
    parser.add_argument("--out", default=str(RESULTS / "threads.md"), help="markdown result")
    args = parser.parse_args()
    default = torch.get_num_threads()
    settings = {"1": 1, "2": 2, f"default ({default})": default}
    steps = {"compress resnet20, target 0.5": _compress_once,
             f"train 1 epoch, {args.train_images} images": _train_once(args.train_images)}  # fmt: skip
    header = machine()
    for step in steps.values():  # warm-up: imports, allocator, fx tracing caches
        _time(step, default)
    times: dict[tuple[str, str], list[float]] = {(s, t): [] for s in steps for t in settings}
    for _ in range(args.repeats):
        for step_name, step in steps.items():
            for label, threads in settings.items():
                times[step_name, label].append(_time(step, threads))
    torch.set_num_threads(default)
    lines = [
        "# Thread count: compress and a training-epoch slice",
        "",
        f"Machine: {header}. Median of {args.repeats} interleaved runs per setting, seconds.",
        "",
        "| step | " + " | ".join(f"{t} thread(s)" for t in settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    for step_name in steps:
        cells = [f"{statistics.median(times[step_name, t]):.2f}" for t in settings]
        lines.append(f"| {step_name} | " + " | ".join(cells) + " |")
    totals = {t: sum(statistics.median(times[s, t]) for s in steps) for t in settings}
    best = min(totals, key=totals.__getitem__)
    lines += [
        "",
        "Sum of both steps: "
        + ", ".join(f"{t}: {v:.2f} s" for t, v in totals.items())
        + f". Fastest: {best}.",
        "",
    ]
    runs = [f"{s} @ {t}: " + ", ".join(f"{v:.2f}" for v in times[s, t]) for s, t in times]
    lines.append("All runs per setting (s): " + "; ".join(runs) + ".")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
